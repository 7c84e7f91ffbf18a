"""xf.ops.mlm_mask: BERT/RoBERTa masked-LM corruption with a counter-based RNG.

Contract (every backend, CPU and GPU, must reproduce it bit for bit):

    masked_ids, labels, masked_positions = mlm_mask(
        input_ids (B, T) int32/int64, *, vocab_size, mask_id, seed, step,
        mask_prob=0.15, pad_id=1, mask_special=False)

* A position is *eligible* unless it holds pad_id, or (mask_special=False) <s>=0 or </s>=2.
* Random numbers are three uint32 draws per position, a pure function of
  (seed, step, flat position p = b*T + t):
      key  = key32(seed, step)                          (host scalar, see mask_key)
      h    = mix32(mix32(p ^ key) ^ key2),  key2 = mix32(key ^ 0x85EBCA6B)
      r_s  = mix32(h ^ (s * 0x9E3779B9 mod 2^32))   for s = 1, 2, 3
  mix32 is Wellons' "lowbias32" bijection of uint32 (xorshift-multiply, two rounds).
* Selected iff eligible and r_1 < round(mask_prob * 2^32) (a Bernoulli(mask_prob) per position).
* A selected position becomes <mask> if r_2 < 0.8*2^32, a random ordinary id
  4 + (r_3 mod (vocab_size - 5)) in [4, vocab_size-1) if r_2 < 0.9*2^32, else stays.
  (modulo bias < vocab_size / 2^32, i.e. < 6e-5 relative at 250,002.)
* labels = original id at selected positions, -100 elsewhere (int64);
  masked_positions = flat indices of selected positions, ascending (int64).

Everything is 32-bit integer arithmetic (xor, shifts, multiply mod 2^32, compare), so
torch, C++, CUDA and Triton give identical bits. Different steps give independent masks.
"""
from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
MIX_C1 = 0x7FEB352D
MIX_C2 = 0x846CA68B
KEY2_XOR = 0x85EBCA6B
STREAM_C = 0x9E3779B9
SEED_XOR = 0x243F6A88
THRESH_MASK = int(0.8 * 2**32)   # r_2 below this -> <mask>
THRESH_RANDOM = int(0.9 * 2**32)  # r_2 below this (and >= THRESH_MASK) -> random id
BOS_ID, EOS_ID = 0, 2
FIRST_ORDINARY_ID = 4
IGNORE_INDEX = -100


# ---- scalar definition (Python ints); the host computes the per-call keys with it ----
def mix32_int(x: int) -> int:
    """lowbias32 on a Python int in [0, 2^32)."""
    x &= M32
    x ^= x >> 16
    x = (x * MIX_C1) & M32
    x ^= x >> 15
    x = (x * MIX_C2) & M32
    x ^= x >> 16
    return x


def mask_key(seed: int, step: int) -> tuple[int, int]:
    """(key, key2): the two uint32 keys of one masking call, derived from 64-bit seed and step."""
    if seed < 0 or step < 0:
        raise ValueError(f"mlm_mask: seed and step must be >= 0, got seed={seed}, step={step}")
    k = mix32_int((seed & M32) ^ SEED_XOR)
    k = mix32_int(k ^ ((seed >> 32) & M32))
    k = mix32_int(k ^ (step & M32))
    k = mix32_int(k ^ ((step >> 32) & M32))
    return k, mix32_int(k ^ KEY2_XOR)


def select_threshold(mask_prob: float) -> int:
    """Selection threshold on r_1, an integer in [0, 2^32]."""
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mlm_mask: mask_prob must be in [0, 1], got {mask_prob}")
    return int(round(mask_prob * 2**32))


def draws_int(seed: int, step: int, p: int) -> tuple[int, int, int]:
    """The three uint32 draws of flat position p (scalar; for documentation and tests)."""
    key, key2 = mask_key(seed, step)
    h = mix32_int(mix32_int((p & M32) ^ key) ^ key2)
    return tuple(mix32_int(h ^ ((s * STREAM_C) & M32)) for s in (1, 2, 3))


# ---- vectorised torch version (int64 tensors holding uint32 values) ----
def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2^32 without int64 overflow: split c into 16-bit halves.
    lo = (x * (c & 0xFFFF)) & M32
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on an int64 tensor of uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_C1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_C2)
    return x ^ (x >> 16)


def mask_draws(numel: int, seed: int, step: int, device="cpu") -> torch.Tensor:
    """(3, numel) int64 tensor of the uint32 draws r_1, r_2, r_3 for flat positions 0..numel-1."""
    key, key2 = mask_key(seed, step)
    p = torch.arange(numel, dtype=torch.int64, device=device) & M32
    h = mix32(mix32(p ^ key) ^ key2)
    return torch.stack([mix32(h ^ ((s * STREAM_C) & M32)) for s in (1, 2, 3)])


def _check(input_ids, vocab_size, mask_id, pad_id):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"mlm_mask: input_ids must be a 2-D (B, T) tensor, got "
                         f"{getattr(input_ids, 'shape', type(input_ids))}")
    if input_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"mlm_mask: input_ids must be int32 or int64, got {input_ids.dtype}")
    if vocab_size < 6:
        raise ValueError(f"mlm_mask: vocab_size must be >= 6 (4 specials, <mask>, one piece), got {vocab_size}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mlm_mask: mask_id={mask_id} outside [0, vocab_size={vocab_size})")
    if input_ids.numel() >= 2**32:
        raise ValueError("mlm_mask: more than 2^32 positions in one call; split the batch")


def mlm_mask_reference(input_ids, *, vocab_size: int, mask_id: int, seed: int, step: int,
                       mask_prob: float = 0.15, pad_id: int = 1, mask_special: bool = False):
    """Plain-torch reference of the contract above (any device)."""
    _check(input_ids, vocab_size, mask_id, pad_id)
    thresh = select_threshold(mask_prob)
    ids = input_ids.reshape(-1).long()
    r1, r2, r3 = mask_draws(ids.numel(), seed, step, device=ids.device)
    eligible = ids != pad_id
    if not mask_special:
        eligible &= (ids != BOS_ID) & (ids != EOS_ID)
    selected = eligible & (r1 < thresh)
    rand_ids = FIRST_ORDINARY_ID + r3 % (vocab_size - 5)
    new = torch.where(r2 < THRESH_MASK, torch.full_like(ids, mask_id),
                      torch.where(r2 < THRESH_RANDOM, rand_ids, ids))
    masked = torch.where(selected, new, ids).to(input_ids.dtype).view_as(input_ids)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX)).view(input_ids.shape)
    positions = selected.nonzero().view(-1)
    return masked, labels, positions


def mlm_mask(input_ids, *, vocab_size: int, mask_id: int, seed: int, step: int,
             mask_prob: float = 0.15, pad_id: int = 1, mask_special: bool = False):
    """MLM masking; dispatches to the fastest available backend (see module docstring)."""
    return mlm_mask_reference(input_ids, vocab_size=vocab_size, mask_id=mask_id, seed=seed,
                              step=step, mask_prob=mask_prob, pad_id=pad_id,
                              mask_special=mask_special)

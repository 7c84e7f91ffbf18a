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

Static-shape variant (the training path: no host sync, CUDA-graph and torch.compile friendly):

    masked_ids, labels, positions, count = mlm_mask_static(input_ids, *, ..., capacity)

* positions is (capacity,) int64: the ascending flat positions, then -1 padding;
  count is a (1,) int64 tensor on input_ids' device holding the number of selected positions.
* Overflow (count > capacity): only the first `capacity` selected positions (flat order) are
  kept; the later ones are left unselected (original id, label -100), so the three outputs
  agree; count still holds the number drawn, so a caller can detect the overflow.

Backends (mlm_mask_backend() returns the choice and the reason):
    cuda       the compiled extension xlmr_fast._C: on CUDA tensors one launch of
               kernels/cuda/mlm_mask.cu; on CPU tensors the C++ kernel of csrc/mlm_mask.cpp
               (segment-parallel, two passes). Both share kernels/cuda/mlm_mask.cuh.
    triton     kernels/triton/mlm_mask.py, one launch (CUDA tensors, or CPU under
               TRITON_INTERPRET=1).
    reference  the plain torch functions below.
Order on CUDA tensors: triton > extension > reference (Triton measured 2x less device time on
an H100); on CPU tensors: extension > triton > reference, by availability (so the C++ kernel
serves CPU tensors and the Triton interpreter runs only when forced or when the extension is
missing). XLMR_FAST_BACKEND=reference|triton|cuda forces one; an input it cannot run raises.

Host syncs: mlm_mask returns exact-length positions, which on a GPU means reading the count back
(one device->host sync per call, like the reference's nonzero()). mlm_mask_static never syncs.
Both ops are registered with torch.library (xlmr_fast::mlm_mask, xlmr_fast::mlm_mask_static) so
torch.compile traces them; seed and step are Python ints turned into keys on the host, so a
compiled region that takes them as arguments specialises on them: call the op outside the
compiled region, or pass a fixed step.
"""
from __future__ import annotations

import torch

from .. import _ext
from . import _backend

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


def _draws_keyed(numel: int, key: int, key2: int, device) -> torch.Tensor:
    p = torch.arange(numel, dtype=torch.int64, device=device) & M32
    h = mix32(mix32(p ^ key) ^ key2)
    return torch.stack([mix32(h ^ ((s * STREAM_C) & M32)) for s in (1, 2, 3)])


def mask_draws(numel: int, seed: int, step: int, device="cpu") -> torch.Tensor:
    """(3, numel) int64 tensor of the uint32 draws r_1, r_2, r_3 for flat positions 0..numel-1."""
    key, key2 = mask_key(seed, step)
    return _draws_keyed(numel, key, key2, device)


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


def _select_keyed(ids: torch.Tensor, vocab_size: int, mask_id: int, key: int, key2: int,
                  thresh: int, pad_id: int, mask_special: bool):
    """(selected bool, replacement int64) for flat int64 ids: the contract, position by position."""
    r1, r2, r3 = _draws_keyed(ids.numel(), key, key2, ids.device)
    eligible = ids != pad_id
    if not mask_special:
        eligible &= (ids != BOS_ID) & (ids != EOS_ID)
    selected = eligible & (r1 < thresh)
    rand_ids = FIRST_ORDINARY_ID + r3 % (vocab_size - 5)
    new = torch.where(r2 < THRESH_MASK, torch.full_like(ids, mask_id),
                      torch.where(r2 < THRESH_RANDOM, rand_ids, ids))
    return selected, new


def _reference_keyed(input_ids, vocab_size, mask_id, key, key2, thresh, pad_id, mask_special):
    ids = input_ids.reshape(-1).long()
    selected, new = _select_keyed(ids, vocab_size, mask_id, key, key2, thresh, pad_id,
                                  mask_special)
    masked = torch.where(selected, new, ids).to(input_ids.dtype).view_as(input_ids)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX)).view(input_ids.shape)
    positions = selected.nonzero().view(-1)
    return masked, labels, positions


def _static_reference_keyed(input_ids, vocab_size, mask_id, key, key2, thresh, pad_id,
                            mask_special, capacity):
    # No nonzero(): ranks from a cumsum and a scatter into a (capacity + 1) buffer whose last
    # slot absorbs the unselected positions, so this is sync-free with static shapes. (Inductor
    # lowers the hash chain very slowly when compiling this directly; mlm_mask_static reaches it
    # through the opaque custom op, which avoids that.)
    ids = input_ids.reshape(-1).long()
    selected, new = _select_keyed(ids, vocab_size, mask_id, key, key2, thresh, pad_id,
                                  mask_special)
    sel = selected.long()
    rank = torch.cumsum(sel, 0) - 1
    keep = selected & (rank < capacity)
    masked = torch.where(keep, new, ids).to(input_ids.dtype).view(input_ids.shape)
    labels = torch.where(keep, ids, torch.full_like(ids, IGNORE_INDEX)).view(input_ids.shape)
    buf = torch.full((capacity + 1,), -1, dtype=torch.int64, device=ids.device)
    slot = torch.where(keep, rank, torch.full_like(rank, capacity))
    buf.scatter_(0, slot, torch.arange(ids.numel(), dtype=torch.int64, device=ids.device))
    positions = buf[:capacity].clone()
    count = sel.sum().reshape(1)
    return masked, labels, positions, count


def mlm_mask_reference(input_ids, *, vocab_size: int, mask_id: int, seed: int, step: int,
                       mask_prob: float = 0.15, pad_id: int = 1, mask_special: bool = False):
    """Plain-torch reference of the contract above (any device)."""
    _check(input_ids, vocab_size, mask_id, pad_id)
    key, key2 = mask_key(seed, step)
    return _reference_keyed(input_ids, vocab_size, mask_id, key, key2,
                            select_threshold(mask_prob), pad_id, mask_special)


def mlm_mask_static_reference(input_ids, *, vocab_size: int, mask_id: int, seed: int, step: int,
                              capacity: int, mask_prob: float = 0.15, pad_id: int = 1,
                              mask_special: bool = False):
    """Plain-torch reference of mlm_mask_static (sync-free; see the module docstring)."""
    _check(input_ids, vocab_size, mask_id, pad_id)
    _check_capacity(capacity)
    key, key2 = mask_key(seed, step)
    return _static_reference_keyed(input_ids, vocab_size, mask_id, key, key2,
                                   select_threshold(mask_prob), pad_id, mask_special, capacity)


def _check_capacity(capacity):
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
        raise ValueError(f"mlm_mask_static: capacity must be an int >= 0, got {capacity!r}")


# ---------------------------------------------------------------- backend choice
def _ext_refusal(device: torch.device) -> str | None:
    key = {"cuda": "CUDA", "cpu": "CPU"}.get(device.type)
    if key is None:
        return f"{device.type} tensors (the extension has CPU and CUDA kernels only)"
    if not _ext.has_kernel("mlm_mask", key):
        if not _ext.available():
            return "the extension xlmr_fast._C is not built or did not load"
        return f"the extension xlmr_fast._C has no {key} kernel for mlm_mask"
    return None


def _triton_refusal(device: torch.device) -> str | None:
    if not _backend.triton_importable():
        return "triton is not installed"
    if not _backend.triton_usable(device):
        return f"{device.type} tensors need CUDA, or TRITON_INTERPRET=1 on the CPU"
    return None


def mlm_mask_backend(input_ids: torch.Tensor) -> tuple[str, str]:
    """(backend, reason): 'cuda' (the extension, CPU or CUDA kernel), 'triton' or 'reference'."""
    dev = input_ids.device
    return _choose_backend(dev.type, dev.index)


@torch.compiler.assume_constant_result
def _choose_backend(dev_type: str, dev_index) -> tuple[str, str]:
    # A pure function of the device and the environment: torch.compile evaluates it once while
    # tracing instead of breaking the graph on the dispatcher and environment queries.
    f = _backend.forced()
    if f == "reference":
        return "reference", "XLMR_FAST_BACKEND=reference"
    device = torch.device(dev_type, dev_index) if dev_index is not None else torch.device(dev_type)
    no_ext = _ext_refusal(device)
    if f == "cuda":
        if no_ext:
            raise _backend.Unsupported(f"mlm_mask: XLMR_FAST_BACKEND=cuda but {no_ext}")
        return "cuda", "XLMR_FAST_BACKEND=cuda"
    no_triton = _triton_refusal(device)
    if f == "triton":
        if no_triton:
            raise _backend.Unsupported(f"mlm_mask: XLMR_FAST_BACKEND=triton but {no_triton}")
        return "triton", "XLMR_FAST_BACKEND=triton"
    if device.type == "cuda" and not no_triton:
        # H100, 2026-11-23 (bench_mlm_mask, CUDA-graph device time): Triton 10.3 us vs the
        # CUDA kernel 22.5 us at 64 x 512, 31 vs 76 us at 256 x 512.
        return "triton", "fastest on CUDA tensors (measured)"
    if not no_ext:
        return "cuda", "compiled extension"
    if not no_triton:
        return "triton", f"extension unavailable: {no_ext}"
    return "reference", f"extension: {no_ext}; triton: {no_triton}"


# ---------------------------------------------------------------- the registered ops
def _kernels():
    from xlmr_fast.kernels.triton import mlm_mask as kern  # imports triton: lazy
    return kern


def _dispatch_key(t: torch.Tensor) -> str:
    return "CUDA" if t.is_cuda else "CPU"


@torch.library.custom_op("xlmr_fast::mlm_mask_static", mutates_args=())
def _mlm_mask_static_op(input_ids: torch.Tensor, vocab_size: int, mask_id: int, key: int,
                        key2: int, threshold: int, pad_id: int, mask_special: bool,
                        capacity: int, backend: str
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masked_ids, labels, positions (capacity,) -1 padded, count (1,)); no host sync."""
    if backend == "cuda":
        op = _ext.require("mlm_mask_static", _dispatch_key(input_ids))
        m, l, p, c = op(input_ids, vocab_size, mask_id, key, key2, threshold, pad_id,
                        mask_special, capacity)
        return m, l, p, c
    if backend == "triton":
        return _kernels().mlm_mask_static(input_ids, vocab_size, mask_id, key, key2, threshold,
                                          pad_id, mask_special, capacity)
    return _static_reference_keyed(input_ids, vocab_size, mask_id, key, key2, threshold, pad_id,
                                   mask_special, capacity)


@_mlm_mask_static_op.register_fake
def _(input_ids, vocab_size, mask_id, key, key2, threshold, pad_id, mask_special, capacity,
      backend):
    return (input_ids.new_empty(input_ids.shape),
            input_ids.new_empty(input_ids.shape, dtype=torch.int64),
            input_ids.new_empty((capacity,), dtype=torch.int64),
            input_ids.new_empty((1,), dtype=torch.int64))


@torch.library.custom_op("xlmr_fast::mlm_mask", mutates_args=())
def _mlm_mask_op(input_ids: torch.Tensor, vocab_size: int, mask_id: int, key: int, key2: int,
                 threshold: int, pad_id: int, mask_special: bool, backend: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masked_ids, labels, positions (count,)); on a GPU reading count back is a host sync."""
    if backend == "cuda":
        op = _ext.require("mlm_mask", _dispatch_key(input_ids))
        m, l, p = op(input_ids, vocab_size, mask_id, key, key2, threshold, pad_id, mask_special)
        return m, l, p
    if backend == "triton":
        m, l, p, c = _kernels().mlm_mask_static(input_ids, vocab_size, mask_id, key, key2,
                                                threshold, pad_id, mask_special,
                                                input_ids.numel())
        return m, l, p[: int(c.item())].clone()  # .item(): the host sync of the exact variant
    return _reference_keyed(input_ids, vocab_size, mask_id, key, key2, threshold, pad_id,
                            mask_special)


@_mlm_mask_op.register_fake
def _(input_ids, vocab_size, mask_id, key, key2, threshold, pad_id, mask_special, backend):
    k = torch.library.get_ctx().new_dynamic_size()
    return (input_ids.new_empty(input_ids.shape),
            input_ids.new_empty(input_ids.shape, dtype=torch.int64),
            input_ids.new_empty((k,), dtype=torch.int64))


def mlm_mask(input_ids, *, vocab_size: int, mask_id: int, seed: int, step: int,
             mask_prob: float = 0.15, pad_id: int = 1, mask_special: bool = False):
    """MLM masking (contract in the module docstring) on the best backend for input_ids.

    Returns (masked_ids like input_ids, labels (B, T) int64, positions (count,) int64 ascending).
    Exact-length positions need the count on the host: on a GPU this is one device->host sync
    per call; use mlm_mask_static in a sync-free training step.
    """
    _check(input_ids, vocab_size, mask_id, pad_id)
    backend, _ = mlm_mask_backend(input_ids)
    key, key2 = mask_key(seed, step)
    thresh = select_threshold(mask_prob)
    if backend == "reference":
        return _reference_keyed(input_ids, vocab_size, mask_id, key, key2, thresh, pad_id,
                                bool(mask_special))
    return _mlm_mask_op(input_ids, int(vocab_size), int(mask_id), key, key2, thresh, int(pad_id),
                        bool(mask_special), backend)


def mlm_mask_static(input_ids, *, vocab_size: int, mask_id: int, seed: int, step: int,
                    capacity: int, mask_prob: float = 0.15, pad_id: int = 1,
                    mask_special: bool = False):
    """Sync-free MLM masking with a fixed-capacity positions buffer (see the module docstring).

    Returns (masked_ids like input_ids, labels (B, T) int64, positions (capacity,) int64 ascending
    then -1, count (1,) int64 tensor on input_ids' device = number of selected positions, which
    exceeds capacity on overflow; the selections past capacity are then dropped).
    """
    _check(input_ids, vocab_size, mask_id, pad_id)
    _check_capacity(capacity)
    backend, _ = mlm_mask_backend(input_ids)
    key, key2 = mask_key(seed, step)
    return _mlm_mask_static_op(input_ids, int(vocab_size), int(mask_id), key, key2,
                               select_threshold(mask_prob), int(pad_id), bool(mask_special),
                               capacity, backend)

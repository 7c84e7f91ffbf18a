"""Triton kernel of xf.ops.mlm_mask (contract: xlmr_fast/ops/mlm_mask.py; CUDA twin:
kernels/cuda/mlm_mask.cu).

Program i owns tile i (BLOCK positions). It first recounts the selected positions of all
earlier tiles (hash + compare, no stores), then hashes, selects and corrupts its own tile and
ranks its selections with tl.cumsum on top of that count, so the compacted ascending
positions come out of one launch with no host sync, no workspace and nothing to reset
between CUDA-graph replays. The last program writes the count and the -1 padding. (See the
note at the top of mlm_mask.cu: a single program walking every tile took ~75 us at
64 x 512 on an H100.)

Integer care (the bits must equal the torch reference):
* the hash runs in tl.uint32: multiplication wraps mod 2^32 and >> is a logical shift; literal
  constants >= 2^31 are typed uint32 by Triton and int32 literals promote to uint32;
* the selection threshold is compared in int64 because it can be 2^32 (mask_prob = 1);
* key, key2 and threshold are not specialised (a value of 1 would otherwise turn into a
  constexpr and change the argument's type); nor are n and capacity, so that batch shapes
  and capacities do not each compile a variant.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import LAUNCH, on_input_device
from .rng import mix32 as _mix32

DEFAULT_BLOCK = 2048
DEFAULT_WARPS = 8


@triton.jit(do_not_specialize=["n", "capacity", "key", "key2", "threshold"])
def _mlm_mask_kernel(
    Ids,        # (n,) int32 or int64 input ids, contiguous
    Masked,     # (n,) output ids, Ids' dtype
    Labels,     # (n,) int64: original id at kept selections, -100 elsewhere
    Positions,  # (capacity,) int64: ascending flat positions of kept selections, then -1
    Count,      # (1,) int64: number of selected positions (may exceed capacity)
    n, capacity,
    key, key2,  # uint32 keys of mask_key(seed, step)
    threshold,  # round(mask_prob * 2^32), in [0, 2^32]
    vocab_m5,   # vocab_size - 5 (modulus of the random id), as uint32 unless BIG_VOCAB
    mask_id, pad_id,
    MASK_SPECIAL: tl.constexpr,
    BIG_VOCAB: tl.constexpr,  # vocab_size - 5 >= 2^32: r_3 mod it is r_3 itself
    BLOCK: tl.constexpr,
):
    offs = tl.arange(0, BLOCK)
    k1 = key.to(tl.uint32)
    k2 = key2.to(tl.uint32)
    thr = threshold.to(tl.int64)
    tile = tl.program_id(0).to(tl.int64) * BLOCK

    before = tl.zeros([BLOCK], dtype=tl.int64)  # selections in the earlier tiles, recounted
    for start in range(0, tile, BLOCK):
        p = offs.to(tl.int64) + start
        ids = tl.load(Ids + p).to(tl.int64)  # earlier tiles are full: no bounds mask
        r1 = _mix32(_mix32(_mix32(p.to(tl.uint32) ^ k1) ^ k2) ^ 0x9E3779B9)
        before += (_eligible(ids, pad_id, MASK_SPECIAL) & (r1.to(tl.int64) < thr)).to(tl.int64)
    carry = tl.sum(before, axis=0)

    p = offs.to(tl.int64) + tile
    inb = p < n
    ids = tl.load(Ids + p, mask=inb, other=0).to(tl.int64)
    h = _mix32(_mix32(p.to(tl.uint32) ^ k1) ^ k2)
    r1 = _mix32(h ^ 0x9E3779B9)
    r2 = _mix32(h ^ 0x3C6EF372)  # 2 * 0x9E3779B9 mod 2^32
    r3 = _mix32(h ^ 0xDAA66D2B)  # 3 * 0x9E3779B9 mod 2^32
    sel = inb & _eligible(ids, pad_id, MASK_SPECIAL) & (r1.to(tl.int64) < thr)
    if BIG_VOCAB:
        rand_id = r3.to(tl.int64) + 4
    else:
        rand_id = (r3 % vocab_m5.to(tl.uint32)).to(tl.int64) + 4
    new = tl.where(r2 < 3435973836, mask_id, tl.where(r2 < 3865470566, rand_id, ids))

    sel_i = sel.to(tl.int32)
    rank = carry + (tl.cumsum(sel_i, axis=0) - sel_i).to(tl.int64)
    keep = sel & (rank < capacity)  # overflow: past capacity a selection is dropped
    tl.store(Masked + p, tl.where(keep, new, ids).to(Masked.dtype.element_ty), mask=inb)
    tl.store(Labels + p, tl.where(keep, ids, -100), mask=inb)
    tl.store(Positions + rank, p, mask=keep)
    if tile + BLOCK >= n:  # the last tile: the total is known here
        total = carry + tl.sum(sel_i, axis=0).to(tl.int64)
        for j0 in range(0, capacity, BLOCK):  # (a new name: `start` above is int64)
            q = offs.to(tl.int64) + j0
            tl.store(Positions + q, tl.full([BLOCK], -1, tl.int64),
                     mask=(q < capacity) & (q >= total))
        tl.store(Count, total)


@triton.jit
def _eligible(ids, pad_id, MASK_SPECIAL: tl.constexpr):
    ok = ids != pad_id
    if not MASK_SPECIAL:
        ok = ok & (ids != 0) & (ids != 2)
    return ok


@on_input_device
def mlm_mask_static(input_ids: torch.Tensor, vocab_size: int, mask_id: int, key: int, key2: int,
                    threshold: int, pad_id: int, mask_special: bool, capacity: int, *,
                    block: int = DEFAULT_BLOCK, num_warps: int = DEFAULT_WARPS):
    """(masked_ids, labels, positions (capacity,), count (1,)) on input_ids' device, one launch.

    Arguments as xlmr_fast_C::mlm_mask_static (keys and threshold already derived on the host).
    """
    ids = input_ids.contiguous()
    n = ids.numel()
    if n >= 2**32:
        raise ValueError("mlm_mask (triton): more than 2^32 - 1 positions in one call")
    if capacity < 0:
        raise ValueError(f"mlm_mask (triton): capacity must be >= 0, got {capacity}")
    masked = torch.empty_like(ids)
    labels = torch.empty(ids.shape, dtype=torch.int64, device=ids.device)
    positions = torch.empty(capacity, dtype=torch.int64, device=ids.device)
    count = torch.empty(1, dtype=torch.int64, device=ids.device)
    vm5 = vocab_size - 5
    big = vm5 >= 2**32
    grid = (max(1, triton.cdiv(n, block)),)
    _mlm_mask_kernel[grid](
        ids, masked, labels, positions, count, n, capacity, key, key2, threshold,
        0 if big else vm5, mask_id, pad_id,
        MASK_SPECIAL=bool(mask_special), BIG_VOCAB=big, BLOCK=block, num_warps=num_warps, **LAUNCH,
    )
    return masked, labels, positions, count

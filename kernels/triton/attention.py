"""FlashAttention-2-style attention in Triton: non-causal, key-padding mask or varlen, dropout.

Forward (one program per (query block, batch*head)): online softmax over key blocks in
base 2 (exp2 with the scale folded into log2(e)), fp32 statistics; stores O and the
row log-sum-exp (LSE, base-2 units, +inf for rows whose every key is padding).

Backward, deterministic (no atomics anywhere):
    1. _attn_bwd_pre:  Delta = rowsum(dO * O)                               (fp32)
    2. _attn_bwd_dkdv: one program per key block, loops over query blocks  -> dK, dV
    3. _attn_bwd_dq:   one program per query block, loops over key blocks  -> dQ
P is recomputed from Q, K and the LSE; the dropout keep-mask is regenerated from its
counter-based hash, never stored.

Layouts (one kernel body for both, selected by the IS_VARLEN constexpr):
    padded: q/k/v (B, H, T, D) with any strides (last dim unit); key_padding_mask (B, T),
            True (1) where the KEY is padding; arbitrary masks, loaded per key block. Key
            blocks past a row's last non-padding key are skipped (a right-padded batch
            pays no key-side work for its padding; padding query rows are still computed,
            as the reference computes them).
    varlen: q/k/v (total_tokens, H, D); cu_seqlens int32 (B+1,); max_seqlen sizes the grid;
            a program whose block starts past its sequence returns at once.
LSE / Delta: padded (B, H, T), varlen (H, total_tokens); fp32.

Dropout keep-mask (bit-identical to xlmr_fast.ops.attention.attention_dropout_mask):
    key  = host-side uint32 derived from the 64-bit seed
    hb   = mix32(key ^ bh*0x9E3779B9),  bh = b*H + h
    hr   = mix32(hb ^ row*0x85EBCA6B),  row = query position in its sequence
    r    = mix32(hr ^ col*0xC2B2AE35),  col = key position in its sequence
    keep = r >= round(p * 2^32)          (all arithmetic mod 2^32)
mix32 is the lowbias32 bijection: 2 multiplies and 3 xor-shifts, far cheaper per element
than Philox, and keyed by positions within a sequence so that the padded and varlen
layouts draw the same mask.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import LAUNCH, ForcedConfigs, on_input_device, tuned_here
from .rng import mix32 as _mix32

LOG2E = 1.4426950408889634

# Block configurations. The forward/dq kernels tile queries by BLOCK_M and keys by BLOCK_N;
# the dk/dv kernel tiles keys by BLOCK_N1 (its resident block) and queries by BLOCK_M1.
# bench/bench_attention.py --tune and bench/experiments/attn_ab.py try them all. Defaults
# (T <= 512, D = 64, bf16): the best fwd x bwd pair of the 25 on an H100, 2026-11-23:
# fwd 2 + bwd 2 gave 0.865 ms fwd+bwd at 64x12x512x64 (the previous 0 + 0: 0.99 ms).
DEFAULT_FWD, DEFAULT_BWD = 2, 2
FWD_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2),
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2),
    # short-sequence candidate (T <= 256: fewer keys per row, smaller tiles per program).
    # `python -m bench.compile_report --ops attention` lists registers and spills of each
    # entry for sm_90 without a GPU; candidates that spilled there were dropped.
    dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3),
]
BWD_CONFIGS = [
    dict(BLOCK_M1=32, BLOCK_N1=128, BLOCK_M2=128, BLOCK_N2=32, num_warps=4, num_stages=3),
    dict(BLOCK_M1=64, BLOCK_N1=128, BLOCK_M2=128, BLOCK_N2=64, num_warps=8, num_stages=2),
    dict(BLOCK_M1=64, BLOCK_N1=64, BLOCK_M2=64, BLOCK_N2=64, num_warps=4, num_stages=2),
    dict(BLOCK_M1=32, BLOCK_N1=64, BLOCK_M2=64, BLOCK_N2=32, num_warps=4, num_stages=3),
    # (64, 128, 128, 64) on 4 warps was dropped: 164-520 bytes of register spills on sm_90 in
    # every layout (bench/compile_report.py), and never the fastest in the 2026-11-23 sweep.
    # short-sequence candidate: 32 x 32 tiles on 2 warps (mma.sync rather than wgmma, twice
    # the programs of entry 3).
    dict(BLOCK_M1=32, BLOCK_N1=32, BLOCK_M2=32, BLOCK_N2=32, num_warps=2, num_stages=2),
]
# Choices by sequence length for 16-bit inputs with head dim <= 64, filled from
# `python -m bench.bench_attention --tune` (device time from CUDA graphs, per shape):
# (largest max_seqlen the row covers, FWD_CONFIGS index, BWD_CONFIGS index); the first row
# whose bound covers max_seqlen wins, no row -> DEFAULT_FWD / DEFAULT_BWD. Empty until the
# short-sequence candidates above have been measured on a device (`bench_attention --short
# --tune`). The table applies only on the architecture it is measured on (kernels/triton
# .TUNED_CAPABILITY, sm_90); DEFAULT_FWD / DEFAULT_BWD, also chosen on an H100, run everywhere.
TUNED_BY_SEQLEN: list[tuple[int, int, int]] = []
# The interpreter runs blocks as numpy arrays: small blocks make the CPU tests exercise
# several key and query blocks (and their tails) at T ~ 40.
_INTERP_FWD = dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=1)
_INTERP_BWD = dict(BLOCK_M1=16, BLOCK_N1=32, BLOCK_M2=32, BLOCK_N2=16, num_warps=4, num_stages=1)

# Keys of the padding mask read per load when the kernels look for the last non-padding key
# (_kv_end): one load covers XLM-R's longest sequence (512), the same value for every T so
# that no new compile is needed per padded length.
KV_SCAN = 512

# set_configs(fwd, bwd): force block configs (indices into FWD_CONFIGS / BWD_CONFIGS, or dicts
# shaped like their entries); None restores the default choice. Used by the benchmark's tuning
# sweep and the every-config tests.
_forced = ForcedConfigs(FWD_CONFIGS, BWD_CONFIGS)
set_configs = _forced.set


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _env_index(name):
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def fwd_config(head_dim: int, max_seqlen: int, dtype: torch.dtype, device: torch.device) -> dict:
    if _forced.fwd is not None:
        return _forced.fwd
    if _interpret():
        return _INTERP_FWD
    i = _env_index("XLMR_FAST_ATTN_FWD_CONFIG")
    if i is not None:
        return FWD_CONFIGS[i]
    if head_dim >= 128 or dtype == torch.float32:
        # Halve the tile so q, acc and the K/V pipeline stages fit in shared memory/registers.
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    return FWD_CONFIGS[_tuned(max_seqlen, device)[0]]


def bwd_config(head_dim: int, max_seqlen: int, dtype: torch.dtype, device: torch.device) -> dict:
    if _forced.bwd is not None:
        return _forced.bwd
    if _interpret():
        return _INTERP_BWD
    i = _env_index("XLMR_FAST_ATTN_BWD_CONFIG")
    if i is not None:
        return BWD_CONFIGS[i]
    if head_dim >= 128 or dtype == torch.float32:
        return dict(BLOCK_M1=32, BLOCK_N1=64, BLOCK_M2=64, BLOCK_N2=32, num_warps=4, num_stages=2)
    return BWD_CONFIGS[_tuned(max_seqlen, device)[1]]


def _tuned(max_seqlen: int, device: torch.device) -> tuple[int, int]:
    if not tuned_here(device):
        return DEFAULT_FWD, DEFAULT_BWD
    for bound, fwd, bwd in TUNED_BY_SEQLEN:
        if max_seqlen <= bound:
            return fwd, bwd
    return DEFAULT_FWD, DEFAULT_BWD


# ----------------------------------------------------------------------------- helpers
@triton.jit
def _row_hash(seed_key, bh, rows):
    key = seed_key.to(tl.uint32, bitcast=True)
    hb = _mix32(key ^ (bh.to(tl.uint32) * 0x9E3779B9))
    return _mix32(hb ^ (rows.to(tl.uint32) * 0x85EBCA6B))


@triton.jit
def _keep(hr, cols, drop_thresh):
    """(BLOCK_M, BLOCK_N) keep-mask from the per-row hashes hr and the key positions cols."""
    r = _mix32(hr[:, None] ^ (cols.to(tl.uint32) * 0xC2B2AE35)[None, :])
    return r >= drop_thresh.to(tl.uint32, bitcast=True)


@triton.jit
def _keep_t(hr, cols, drop_thresh):
    """Transposed keep-mask, (BLOCK_N, BLOCK_M), for the dk/dv kernel's key-major tiles."""
    r = _mix32(hr[None, :] ^ (cols.to(tl.uint32) * 0xC2B2AE35)[:, None])
    return r >= drop_thresh.to(tl.uint32, bitcast=True)


@triton.jit
def _dot(a, b, DOT_MODE: tl.constexpr):
    # 1: fp32 inputs, exact fp32 products (tf32 would miss the fp32 reference by ~1e-3).
    # 2: the interpreter (triton 3.9) multiplies bf16 bit patterns as integers in tl.dot;
    #    bf16 x bf16 products are exact in fp32, so upcasting gives the tensor-core result.
    if DOT_MODE == 1:
        return tl.dot(a, b, input_precision="ieee")
    elif DOT_MODE == 2:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _program_ids(NUM_BLOCKS):
    """(block index along the sequence, batch*head) of this program. The grid is 1-D,
    NUM_BLOCKS * B * H programs with the block index fastest: the order a 2-D grid
    (NUM_BLOCKS, B * H) would run in (a head's blocks together, sharing its K/V in L2), but
    without the 65,535 limit of a grid's second dimension, which B * H passes at B > 5,461
    with 12 heads (inference on many short sequences)."""
    pid = tl.program_id(0)
    return pid % NUM_BLOCKS, pid // NUM_BLOCKS


@triton.jit
def _seq_bounds(CU, b, T, IS_VARLEN: tl.constexpr):
    if IS_VARLEN:
        start = tl.load(CU + b)
        seqlen = tl.load(CU + b + 1) - start
    else:
        start = 0
        seqlen = T
    return start, seqlen


@triton.jit
def _key_valid(KPM, b, smb, cols, seqlen, HAS_MASK: tl.constexpr):
    valid = cols < seqlen
    if HAS_MASK:
        pad = tl.load(KPM + b * smb + cols, mask=valid, other=1)
        valid = valid & (pad == 0)
    return valid


@triton.jit
def _kv_end(KPM, b, smb, seqlen, HAS_MASK: tl.constexpr, KV_SCAN: tl.constexpr):
    """One past the last key that is not padding (0 when every key is): the key blocks at or
    past it are all padding, so the loops over keys stop there and those keys' dK and dV are
    zero. This skips a right-padded batch's padding blocks, work the mask alone would still do
    (their scores are computed, then set to -inf); padding elsewhere stays masked per element.
    KV_SCAN keys per load: one load for T <= KV_SCAN, before any K/V traffic."""
    if HAS_MASK:
        end = 0
        for s in range(0, seqlen, KV_SCAN):
            cols = s + tl.arange(0, KV_SCAN)
            pad = tl.load(KPM + b * smb + cols, mask=cols < seqlen, other=1)
            end = tl.maximum(end, tl.max(tl.where(pad == 0, cols + 1, 0), 0))
        return end
    else:
        return seqlen


@triton.jit
def _store_rows(X, base, toks, stride_t, offs_d, val, ok):
    """val (rows, HEAD_DIM) fp32 into X[base + toks * stride_t + d] in X's dtype, rows where ok."""
    ptrs = X + base + toks[:, None] * stride_t + offs_d[None, :]
    tl.store(ptrs, val.to(X.dtype.element_ty), mask=ok[:, None])


# ----------------------------------------------------------------------------- forward
@triton.jit(do_not_specialize=["seed_key", "drop_thresh"])
def _attn_fwd(
    Q, K, V, O, OLO, LSE,     # q/k/v/o: padded (B,H,T,D) or varlen (total,H,D); LSE fp32
    KPM, CU,                  # KPM: (B,T) uint8, 1 = padding key (HAS_MASK); CU: int32 (B+1,)
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,  # strides (0 batch stride: varlen)
    slb, slh, smb,            # LSE batch/head strides (token stride 1); KPM batch stride
    H, T, NUM_BLOCKS,         # heads; padded sequence length (unused when varlen); cdiv(T, BLOCK_M)
    qk_scale,                 # softmax_scale * log2(e)
    seed_key, drop_thresh, rp_scale,  # dropout: uint32 key and threshold (as int32), 1/(1-p)
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_MODE: tl.constexpr, STORE_LO: tl.constexpr, KV_SCAN: tl.constexpr,
):
    pid_m, bh = _program_ids(NUM_BLOCKS)
    b = bh // H
    h = bh % H
    start, seqlen = _seq_bounds(CU, b, T, IS_VARLEN)
    if pid_m * BLOCK_M >= seqlen:
        return
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    tok0 = start.to(tl.int64) if IS_VARLEN else 0
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen

    q_ptrs = Q + b64 * sqb + h64 * sqh + (tok0 + offs_m)[:, None] * sqt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    k_base = K + b64 * skb + h64 * skh + tok0 * skt
    v_base = V + b64 * svb + h64 * svh + tok0 * svt

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if DROPOUT:
        hr = _row_hash(seed_key, bh, offs_m)

    kv_end = _kv_end(KPM, b64, smb, seqlen, HAS_MASK, KV_SCAN)
    for start_n in range(0, kv_end, BLOCK_N):
        cols = start_n + offs_n
        col_in = cols < seqlen
        k = tl.load(k_base + cols[:, None] * skt + offs_d[None, :], mask=col_in[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :], mask=col_in[:, None], other=0.0)
        qk = _dot(q, tl.trans(k), DOT_MODE) * qk_scale
        valid = _key_valid(KPM, b64, smb, cols, seqlen, HAS_MASK)
        qk = tl.where(valid[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row with no valid key yet has m_new = -inf; subtracting 0 instead keeps
        # exp2(-inf - (-inf)) = NaN out of alpha and p (both become 0).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(qk - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)  # normaliser uses the undropped probabilities
        if DROPOUT:
            p = tl.where(_keep(hr, cols, drop_thresh), p, 0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_MODE)
        m_i = m_new

    empty = l_i == 0.0  # every key of this row is padding: output 0, LSE +inf (P = 0 in bwd)
    inv_l = 1.0 / tl.where(empty, 1.0, l_i)
    if DROPOUT:
        inv_l = inv_l * rp_scale
    acc = acc * inv_l[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    o_off = b64 * sob + h64 * soh + (tok0 + offs_m)[:, None] * sot + offs_d[None, :]
    o_hi = acc.to(O.dtype.element_ty)
    tl.store(O + o_off, o_hi, mask=row_ok[:, None])
    if STORE_LO:  # rounding residual of a 16-bit O (same layout): O_hi + O_lo ~ fp32 O
        tl.store(OLO + o_off, (acc - o_hi.to(tl.float32)).to(O.dtype.element_ty),
                 mask=row_ok[:, None])
    tl.store(LSE + b64 * slb + h64 * slh + tok0 + offs_m, lse, mask=row_ok)


# ----------------------------------------------------------------------------- backward
@triton.jit
def _attn_bwd_pre(
    O, OLO, DO, DELTA,
    sob, soh, sot, sdb, sdh, sdt, slb, slh,
    H, T, NUM_BLOCKS,
    CU, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, IS_VARLEN: tl.constexpr,
    HAS_LO: tl.constexpr,
):
    pid_m, bh = _program_ids(NUM_BLOCKS)
    b = bh // H
    h = bh % H
    start, seqlen = _seq_bounds(CU, b, T, IS_VARLEN)
    if pid_m * BLOCK_M >= seqlen:
        return
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    tok0 = start.to(tl.int64) if IS_VARLEN else 0
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen
    o_off = b64 * sob + h64 * soh + (tok0 + offs_m)[:, None] * sot + offs_d[None, :]
    o = tl.load(O + o_off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    if HAS_LO:
        o += tl.load(OLO + o_off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + b64 * sdb + h64 * sdh + (tok0 + offs_m)[:, None] * sdt + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + b64 * slb + h64 * slh + tok0 + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit(do_not_specialize=["seed_key", "drop_thresh"])
def _attn_bwd_dkdv(
    Q, K, V, DO, DK, DV, LSE, DELTA, KPM, CU,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
    sdkb, sdkh, sdkt, sdvb, sdvh, sdvt, slb, slh, smb,
    H, T, NUM_BLOCKS, qk_scale, sm_scale,
    seed_key, drop_thresh, rp_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_MODE: tl.constexpr, KV_SCAN: tl.constexpr,
):
    # Key-major: this program owns BLOCK_N keys and walks every query block, so dK and dV
    # are summed in registers and written once (deterministic).
    pid_n, bh = _program_ids(NUM_BLOCKS)
    b = bh // H
    h = bh % H
    start, seqlen = _seq_bounds(CU, b, T, IS_VARLEN)
    if pid_n * BLOCK_N >= seqlen:
        return
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    tok0 = start.to(tl.int64) if IS_VARLEN else 0
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_in = cols < seqlen
    if pid_n * BLOCK_N >= _kv_end(KPM, b64, smb, seqlen, HAS_MASK, KV_SCAN):
        # every key of this block is padding: no score reaches them, dK = dV = 0
        zero = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        _store_rows(DK, b64 * sdkb + h64 * sdkh, tok0 + cols, sdkt, offs_d, zero, col_in)
        _store_rows(DV, b64 * sdvb + h64 * sdvh, tok0 + cols, sdvt, offs_d, zero, col_in)
        return
    k = tl.load(K + b64 * skb + h64 * skh + (tok0 + cols)[:, None] * skt + offs_d[None, :],
                mask=col_in[:, None], other=0.0)
    v = tl.load(V + b64 * svb + h64 * svh + (tok0 + cols)[:, None] * svt + offs_d[None, :],
                mask=col_in[:, None], other=0.0)
    valid = _key_valid(KPM, b64, smb, cols, seqlen, HAS_MASK)
    q_base = Q + b64 * sqb + h64 * sqh + tok0 * sqt
    do_base = DO + b64 * sdb + h64 * sdh + tok0 * sdt
    l_base = LSE + b64 * slb + h64 * slh + tok0
    d_base = DELTA + b64 * slb + h64 * slh + tok0

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start_m in range(0, seqlen, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < seqlen
        q = tl.load(q_base + rows[:, None] * sqt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(do_base + rows[:, None] * sdt + offs_d[None, :], mask=row_ok[:, None],
                     other=0.0)
        lse = tl.load(l_base + rows, mask=row_ok, other=float("inf"))  # +inf -> P = 0
        delta = tl.load(d_base + rows, mask=row_ok, other=0.0)
        qkT = _dot(k, tl.trans(q), DOT_MODE) * qk_scale               # (BLOCK_N, BLOCK_M)
        pT = tl.math.exp2(qkT - lse[None, :])
        pT = tl.where(valid[:, None], pT, 0.0)
        dpT = _dot(v, tl.trans(do), DOT_MODE)                         # (dO V^T)^T
        if DROPOUT:
            keepT = _keep_t(_row_hash(seed_key, bh, rows), cols, drop_thresh)
            pdT = tl.where(keepT, pT * rp_scale, 0.0)
            dpT = tl.where(keepT, dpT * rp_scale, 0.0)
        else:
            pdT = pT
        dv += _dot(pdT.to(do.dtype), do, DOT_MODE)
        dsT = pT * (dpT - delta[None, :])
        dk += _dot(dsT.to(q.dtype), q, DOT_MODE)
    # (pointers built here, not before the loop: held across it they cost registers)
    _store_rows(DK, b64 * sdkb + h64 * sdkh, tok0 + cols, sdkt, offs_d, dk * sm_scale, col_in)
    _store_rows(DV, b64 * sdvb + h64 * sdvh, tok0 + cols, sdvt, offs_d, dv, col_in)


@triton.jit(do_not_specialize=["seed_key", "drop_thresh"])
def _attn_bwd_dq(
    Q, K, V, DO, DQ, LSE, DELTA, KPM, CU,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
    sdqb, sdqh, sdqt, slb, slh, smb,
    H, T, NUM_BLOCKS, qk_scale, sm_scale,
    seed_key, drop_thresh, rp_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_MODE: tl.constexpr, KV_SCAN: tl.constexpr,
):
    # Query-major: this program owns BLOCK_M queries and walks every key block (no atomics).
    pid_m, bh = _program_ids(NUM_BLOCKS)
    b = bh // H
    h = bh % H
    start, seqlen = _seq_bounds(CU, b, T, IS_VARLEN)
    if pid_m * BLOCK_M >= seqlen:
        return
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    tok0 = start.to(tl.int64) if IS_VARLEN else 0
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < seqlen
    q = tl.load(Q + b64 * sqb + h64 * sqh + (tok0 + rows)[:, None] * sqt + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b64 * sdb + h64 * sdh + (tok0 + rows)[:, None] * sdt + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + b64 * slb + h64 * slh + tok0 + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + b64 * slb + h64 * slh + tok0 + rows, mask=row_ok, other=0.0)
    k_base = K + b64 * skb + h64 * skh + tok0 * skt
    v_base = V + b64 * svb + h64 * svh + tok0 * svt
    if DROPOUT:
        hr = _row_hash(seed_key, bh, rows)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    kv_end = _kv_end(KPM, b64, smb, seqlen, HAS_MASK, KV_SCAN)
    for start_n in range(0, kv_end, BLOCK_N):
        cols = start_n + offs_n
        col_in = cols < seqlen
        k = tl.load(k_base + cols[:, None] * skt + offs_d[None, :], mask=col_in[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :], mask=col_in[:, None], other=0.0)
        valid = _key_valid(KPM, b64, smb, cols, seqlen, HAS_MASK)
        qk = _dot(q, tl.trans(k), DOT_MODE) * qk_scale
        p = tl.math.exp2(qk - lse[:, None])
        p = tl.where(valid[None, :], p, 0.0)
        dp = _dot(do, tl.trans(v), DOT_MODE)
        if DROPOUT:
            dp = tl.where(_keep(hr, cols, drop_thresh), dp * rp_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, DOT_MODE)
    dq = dq * sm_scale
    tl.store(DQ + b64 * sdqb + h64 * sdqh + (tok0 + rows)[:, None] * sdqt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


# ----------------------------------------------------------------------------- launchers
def _strides(x, varlen):
    """(batch, head, token) strides; the batch stride of a packed tensor is 0."""
    if varlen:
        return 0, x.stride(1), x.stride(0)
    return x.stride(0), x.stride(1), x.stride(2)


def _unit_last(x):
    return x if x.stride(-1) == 1 else x.contiguous()


I32_MAX = 2**31 - 1


def _kernel_strides_ok(x, varlen, T):
    """x itself, or a copy the kernels can index: their token offsets within one sequence,
    position * token stride, are 32-bit products (the batch and head offsets are 64-bit). A
    padded view of a sequence-first buffer of many sequences, (T, B, H, D) permuted, has a token
    stride of B*H*D and overflows them at large T*B (e.g. T 4,096, B 1,024, 16 heads of 64); the
    copy is stored as empty_like_layout stores outputs: (B, T, H, D), or contiguous packed."""
    x = _unit_last(x)
    if (T - 1) * x.stride(0 if varlen else 2) + x.shape[-1] <= I32_MAX:
        return x
    return x.contiguous() if varlen else x.transpose(1, 2).contiguous().transpose(1, 2)


def empty_like_layout(x, varlen):
    """Output buffer for a q-shaped tensor: packed (total, H, D), or (B, H, T, D) stored as
    (B, T, H, D) so the caller's transpose(1, 2).reshape(B, T, H*D) is a free view."""
    if varlen:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    B, H, T, D = x.shape
    return torch.empty((B, T, H, D), dtype=x.dtype, device=x.device).transpose(1, 2)


def stats_shape(q, varlen):
    """LSE / Delta shape: padded (B, H, T), varlen (H, total)."""
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[1], q.shape[2])


def _common(q, key_padding_mask, cu_seqlens, max_seqlen):
    varlen = cu_seqlens is not None
    if varlen:
        B, H, T = cu_seqlens.numel() - 1, q.shape[1], int(max_seqlen)
    else:
        B, H, T = q.shape[0], q.shape[1], q.shape[2]
    has_mask = key_padding_mask is not None
    # bool -> uint8 is a free reinterpretation; a dummy pointer when there is no mask/cu.
    kpm = key_padding_mask.contiguous().view(torch.uint8) if has_mask else q
    cu = cu_seqlens if varlen else q
    smb = kpm.stride(0) if has_mask else 0
    return varlen, B, H, T, has_mask, kpm, cu, smb


def _lse_strides(lse, varlen):
    # padded (B, H, T): (H*T, T); varlen (H, total): batch offset comes from cu_seqlens
    return (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))


@on_input_device
def attention_fwd(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, softmax_scale,
                  dropout_p, seed_key, drop_thresh):
    """Returns (out, lse, out_lo). seed_key/drop_thresh: uint32 ints from xlmr_fast.ops.attention.

    out_lo (16-bit inputs only; else an empty tensor) is the rounding residual of out, so that
    the backward's Delta = rowsum(dO * O) sees O to ~16 mantissa bits. With Delta taken from
    the rounded O alone, dS = P * (dP - Delta) cancels catastrophically where P is
    concentrated (a one-key row with dropout: O = V / (1 - p) is not representable), and dK
    ends up several times further from fp32 than plain torch, which keeps an fp32 P.
    """
    varlen, B, H, T, has_mask, kpm, cu, smb = _common(q, key_padding_mask, cu_seqlens, max_seqlen)
    q, k, v = (_kernel_strides_ok(t, varlen, T) for t in (q, k, v))
    D = q.shape[-1]
    out = empty_like_layout(q, varlen)
    store_lo = q.dtype != torch.float32
    out_lo = empty_like_layout(q, varlen) if store_lo else q.new_empty(0)
    lse = torch.empty(stats_shape(q, varlen), dtype=torch.float32, device=q.device)
    if B == 0 or T == 0 or q.numel() == 0:
        return out.zero_(), lse.fill_(float("inf")), out_lo.zero_()
    cfg = fwd_config(D, T, q.dtype, q.device)
    slb, slh = _lse_strides(lse, varlen)
    nb = triton.cdiv(T, cfg["BLOCK_M"])
    _attn_fwd[(nb * B * H,)](
        q, k, v, out, out_lo if store_lo else out, lse, kpm, cu,
        *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(out, varlen),
        slb, slh, smb, H, T if not varlen else 0, nb,
        softmax_scale * LOG2E,
        _as_i32(seed_key), _as_i32(drop_thresh), 1.0 / (1.0 - dropout_p),
        HEAD_DIM=D, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        IS_VARLEN=varlen, HAS_MASK=has_mask, DROPOUT=dropout_p > 0.0,
        DOT_MODE=_dot_mode(q.dtype), STORE_LO=store_lo, KV_SCAN=KV_SCAN,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **LAUNCH,
    )
    return out, lse, out_lo


@on_input_device
def attention_bwd(do, q, k, v, out, out_lo, lse, key_padding_mask, cu_seqlens, max_seqlen,
                  softmax_scale, dropout_p, seed_key, drop_thresh, dq=None, dk=None, dv=None):
    """Returns (dq, dk, dv), in the layout of empty_like_layout, or written into the given
    dq / dk / dv buffers (q-shaped, any strides with a unit last dim: e.g. the three slices of
    one packed dqkv). out_lo: see attention_fwd."""
    varlen, B, H, T, has_mask, kpm, cu, smb = _common(q, key_padding_mask, cu_seqlens, max_seqlen)
    do, q, k, v, out = (_kernel_strides_ok(t, varlen, T) for t in (do, q, k, v, out))
    has_lo = out_lo.numel() > 0
    if has_lo and out_lo.stride() != out.stride():  # the pre kernel reads both with O's strides
        out_lo = torch.empty_strided(out.shape, out.stride(), dtype=out.dtype,
                                     device=out.device).copy_(out_lo)
    D = q.shape[-1]
    dq, dk, dv = (buf if buf is not None else empty_like_layout(t, varlen)
                  for buf, t in ((dq, q), (dk, k), (dv, v)))
    for name, buf in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert buf.shape == q.shape and buf.dtype == q.dtype and buf.stride(-1) == 1, name
    if B == 0 or T == 0 or q.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty_like(lse)
    slb, slh = _lse_strides(lse, varlen)
    Tp = T if not varlen else 0
    pre_bm = 64 if not _interpret() else 32
    nb = triton.cdiv(T, pre_bm)
    _attn_bwd_pre[(nb * B * H,)](
        out, out_lo if has_lo else out, do, delta, *_strides(out, varlen),
        *_strides(do, varlen), slb, slh, H, Tp, nb, cu,
        HEAD_DIM=D, BLOCK_M=pre_bm, IS_VARLEN=varlen, HAS_LO=has_lo, **LAUNCH,
    )
    cfg = bwd_config(D, T, q.dtype, q.device)
    common = dict(HEAD_DIM=D, IS_VARLEN=varlen, HAS_MASK=has_mask, DROPOUT=dropout_p > 0.0,
                  DOT_MODE=_dot_mode(q.dtype), KV_SCAN=KV_SCAN, num_warps=cfg["num_warps"],
                  num_stages=cfg["num_stages"])
    rng = (_as_i32(seed_key), _as_i32(drop_thresh), 1.0 / (1.0 - dropout_p))
    strides_in = (*_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen),
                  *_strides(do, varlen))
    nb = triton.cdiv(T, cfg["BLOCK_N1"])
    _attn_bwd_dkdv[(nb * B * H,)](
        q, k, v, do, dk, dv, lse, delta, kpm, cu, *strides_in,
        *_strides(dk, varlen), *_strides(dv, varlen), slb, slh, smb,
        H, Tp, nb, softmax_scale * LOG2E, softmax_scale, *rng,
        BLOCK_M=cfg["BLOCK_M1"], BLOCK_N=cfg["BLOCK_N1"], **common, **LAUNCH,
    )
    nb = triton.cdiv(T, cfg["BLOCK_M2"])
    _attn_bwd_dq[(nb * B * H,)](
        q, k, v, do, dq, lse, delta, kpm, cu, *strides_in,
        *_strides(dq, varlen), slb, slh, smb,
        H, Tp, nb, softmax_scale * LOG2E, softmax_scale, *rng,
        BLOCK_M=cfg["BLOCK_M2"], BLOCK_N=cfg["BLOCK_N2"], **common, **LAUNCH,
    )
    return dq, dk, dv


def _dot_mode(dtype):
    if dtype == torch.float32:
        return 1
    return 2 if (_interpret() and dtype == torch.bfloat16) else 0


def _as_i32(u):
    """A uint32 value as the int32 with the same bits (the kernels bitcast it back)."""
    u &= 0xFFFFFFFF
    return u - (1 << 32) if u >= (1 << 31) else u

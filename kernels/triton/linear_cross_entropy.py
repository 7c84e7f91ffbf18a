"""Fused linear + cross-entropy in Triton: loss of softmax(X @ W^T + b) without the (N, V) logits.

Shapes: X (N, H) hidden rows, W (V, H) decoder weight, b (V,) bias or None, targets (N,) int.
V = 250,002 for XLM-R (not a multiple of any tile: every vocab tile is masked at the end).

Forward, one kernel + a tiny combine (never stores logits):
    _lce_fwd_kernel   grid (row blocks, vocab splits); row blocks vary fastest, so the programs
                      that share a W slice run together and W is read from HBM about once.
                      Each program loops over its vocab slice in BLOCK_V tiles; a tile's logits
                      are a tl.dot K-loop over H into an fp32 accumulator. Online log-sum-exp
                      per row (running max m and sum-exp s in fp32), the target logit, and
                      (for label smoothing) the sum of the row's logits. Writes one partial
                      (m, s, z_target, sum_z) per (split, row).
    lse_combine()     torch ops over the (splits, N) partials: row max M and
                      log S = log sum s*exp(m - M); stats (2, N) = (M, log S) for the backward.
Per-row loss = lse - (1 - eps) * z_t - eps / V * sum_z (torch's label-smoothing definition),
evaluated as (M - (1 - eps) z_t - eps sum_z / V) + log S; ignored rows give 0.

Backward (deterministic, no atomics), in vocabulary chunks of C columns:
    _lce_dlogits_kernel  grid (row blocks, vocab tiles of the chunk): recomputes the logits tile,
                         d = (exp((z - M) - log S) - eps/V - (1 - eps) [j == t]) * g_row, stores d
                         (compute dtype) into the (N, C) chunk buffer and the tile's column
                         sums (fp32) as per-row-block partials of db.
    _mm_kernel           dW[chunk] = d^T @ X    (K = N: each dW tile written exactly once, fp32
                         accumulation in registers, stored in W's dtype)
    _mm_kernel           dX_acc += d @ W[chunk]  (fp32 accumulator (N, H), one owner per tile)
The two GEMMs can instead run on cuBLAS (MM_BACKEND = "cublas", or XLMR_FAST_LCE_MM=cublas):
the same products with fp32 accumulation (torch.mm / addmm with out_dtype), while the fused
dlogits kernel keeps the logits out of HBM. Which is faster is a device measurement
(bench_linear_cross_entropy's ours-triton-cublasmm row); "triton" stays the default until then.
FLAT (XLMR_FAST_LCE_FLAT=1; off by default until measured): the forward and dlogits kernels
run each program's vocab tiles as one flattened (tile, H step) loop, so the load pipeline
does not drain and refill at every tile (see _lse_update).
Token-chunk schedule (SCHEDULE = "tokenchunk", or XLMR_FAST_LCE_SCHEDULE=tokenchunk; for a
summed or averaged loss under autograd): 6NHV FLOPs instead of the 8NHV above, the logits
kept instead of recomputed (kernels.md §1.5, design consequence 2). lce_fwdgrad() computes the
loss AND the gradients of the summed loss in the forward, R rows at a time:
    torch.mm           Z = X_R @ W^T into an (R, V_pad) buffer in the compute dtype: V_pad, a
                       multiple of 64, keeps every row 128-byte aligned (V = 250,002 rows of
                       500,004 bytes are not even 16-byte aligned, which keeps cuBLAS off its
                       fast kernels; the 2026-11-23 experiment with unpadded rows ran at ~200
                       TFLOP/s).
    _tc_stats_kernel   grid (row blocks, vocab splits): online (max, sum-exp, z_target, sum z)
                       over the stored logits (+ bias, fp32); lse_combine() merges the splits.
    _tc_grad_kernel    grid (vocab tiles): each program owns a column stripe over all R rows,
                       turns Z into d = softmax - smoothed one-hot in place (0 on ignored rows)
                       and accumulates the stripe's column sums: db written by one owner, no
                       atomics.
    torch.mm           dX_R = d @ W;  dW += d^T @ X_R  (fp32 accumulator: kernels.md §1.4)
The autograd backward then only scales (dX, dW, db) by the upstream scalar. d is unscaled (row
weight 1), so fp16 d does not underflow by 1/N.
g_row = dL/dloss_row (0 on ignored rows). Only the (N, C) chunk of d exists at any time:
§1.5 of kernels.md shows the logits GEMM recompute and the d round trip are both cheaper than
any H-wide register accumulator, which Triton cannot hold for H = 768/1024.
"""
from __future__ import annotations

import os
import warnings

import torch
import triton
import triton.language as tl

from . import LAUNCH, on_input_device, tuned_here


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _dot_step(x_ptrs, w_ptrs, x_mask, w_mask, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    # acc += X block @ W block^T for one BLOCK_H step (w_ptrs laid out (BLOCK_H, BLOCK_V)).
    x = tl.load(x_ptrs, mask=x_mask, other=0.0)
    w = tl.load(w_ptrs, mask=w_mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
        w = w.to(tl.float32)
    if IEEE:
        return tl.dot(x, w, acc, input_precision="ieee")
    return tl.dot(x, w, acc)


@triton.jit
def _logits_tile(X, W, rows, cols, row_ok, col_ok, H, stride_xn, stride_wv,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 IEEE: tl.constexpr, UPCAST: tl.constexpr, EVEN_H: tl.constexpr):
    # (BLOCK_N, BLOCK_V) fp32 logits tile X[rows] @ W[cols]^T (no bias), K-loop over H.
    # EVEN_H (H % BLOCK_H == 0, XLM-R's 768 / 1024): no mask along H, so the loads keep only
    # the row masks, which are uniform along the contiguous dimension (full-width vector loads).
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    offs_h = tl.arange(0, BLOCK_H)
    x_ptrs = X + rows[:, None].to(tl.int64) * stride_xn + offs_h[None, :]
    w_ptrs = W + cols[None, :].to(tl.int64) * stride_wv + offs_h[:, None]
    for k in range(0, H, BLOCK_H):
        if EVEN_H:
            acc = _dot_step(x_ptrs, w_ptrs, row_ok[:, None], col_ok[None, :], acc, IEEE, UPCAST)
        else:
            h_ok = (k + offs_h) < H
            acc = _dot_step(x_ptrs, w_ptrs, row_ok[:, None] & h_ok[None, :],
                            col_ok[None, :] & h_ok[:, None], acc, IEEE, UPCAST)
        x_ptrs += BLOCK_H
        w_ptrs += BLOCK_H
    return acc


# FLAT (H % BLOCK_H == 0 only): a program's vocab tiles run as ONE loop over (tile, H step)
# pairs, the tile's epilogue under `if k == last`. Triton software-pipelines only innermost
# loops: nested, every tile refills the load pipeline after its epilogue (a memory latency per
# 12-16 MMA steps at H = 768/1024); flattened, the next tile's loads are in flight while the
# epilogue runs (the sm_90 IR shows async copies issued before the epilogue's branch).
# Whether that wins is a device measurement (bench_linear_cross_entropy's ours-triton-flat).
@triton.jit
def _lse_update(z, cols, col_ok, tgt, m, s, zt, sz, B,
                HAS_BIAS: tl.constexpr, SMOOTH: tl.constexpr):
    # One tile's logits z into the running (max, sum-exp, target logit, sum of logits) per row.
    if HAS_BIAS:
        z += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    z = tl.where(col_ok[None, :], z, float("-inf"))
    # exp(-inf - m_new) = 0 masks the tail columns. A row can still have seen only -inf logits
    # (a -inf bias on the tile's columns: ids masked out of the head); exp(-inf - -inf) would
    # be NaN, so the shift is 0 until m_new is finite (then it is m_new: the same math).
    m_new = tl.maximum(m, tl.max(z, axis=1))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
    hit = cols[None, :] == tgt[:, None]
    zt += tl.sum(tl.where(hit, z, 0.0), axis=1)
    if SMOOTH:
        sz += tl.sum(tl.where(col_ok[None, :], z, 0.0), axis=1)
    return m_new, s, zt, sz


@triton.jit
def _lse_init(BLOCK: tl.constexpr):
    # Empty running (max, sum-exp, target logit, sum of logits) for BLOCK rows.
    zero = tl.zeros((BLOCK,), dtype=tl.float32)
    return tl.full((BLOCK,), float("-inf"), dtype=tl.float32), zero, zero, zero


@triton.jit
def _lse_store(PM, PS, PZT, PSZ, out, row_ok, m, s, zt, sz, SMOOTH: tl.constexpr):
    # One split's partials for its rows (out: offsets into the (splits, rows) buffers).
    tl.store(PM + out, m, mask=row_ok)
    tl.store(PS + out, s, mask=row_ok)
    tl.store(PZT + out, zt, mask=row_ok)
    if SMOOTH:
        tl.store(PSZ + out, sz, mask=row_ok)


@triton.jit
def _lce_fwd_kernel(
    X, W, B, T,         # X (N, H), W (V, H) compute dtype; B (V,) any float or dummy; T (N,) int
    PM, PS, PZT, PSZ,   # partials (splits, N) fp32: max, sum-exp, target logit, sum of logits
    N, V, H, stride_xn, stride_wv, ignore_index,
    TILES_PER_SPLIT,           # runtime: it follows N, and a constexpr would recompile per N
    HAS_BIAS: tl.constexpr, SMOOTH: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, EVEN_H: tl.constexpr, FLAT: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    # int32 targets and columns (V < 2^31): the per-element target compare below runs on every
    # logit of every tile, and 64-bit integer compares cost two 32-bit ones on the GPU.
    tgt = tl.load(T + rows, mask=row_ok, other=ignore_index).to(tl.int32)
    m, s, zt, sz = _lse_init(BLOCK_N)
    v0 = pid_s * (TILES_PER_SPLIT * BLOCK_V)
    if FLAT:
        KT = H // BLOCK_H
        offs_h = tl.arange(0, BLOCK_H)
        x_ptrs = X + rows[:, None].to(tl.int64) * stride_xn + offs_h[None, :]
        acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for it in range(TILES_PER_SPLIT * KT):
            t = it // KT
            k = it - t * KT
            cols = v0 + t * BLOCK_V + tl.arange(0, BLOCK_V)
            col_ok = cols < V
            w_ptrs = W + cols[None, :].to(tl.int64) * stride_wv + (k * BLOCK_H + offs_h)[:, None]
            acc = _dot_step(x_ptrs + k * BLOCK_H, w_ptrs, row_ok[:, None], col_ok[None, :], acc,
                            IEEE, UPCAST)
            if k == KT - 1:
                m, s, zt, sz = _lse_update(acc, cols, col_ok, tgt, m, s, zt, sz, B,
                                           HAS_BIAS, SMOOTH)
                acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    else:
        for t in range(TILES_PER_SPLIT):
            cols = v0 + t * BLOCK_V + tl.arange(0, BLOCK_V)
            col_ok = cols < V
            z = _logits_tile(X, W, rows, cols, row_ok, col_ok, H, stride_xn, stride_wv,
                             BLOCK_N, BLOCK_V, BLOCK_H, IEEE, UPCAST, EVEN_H)
            m, s, zt, sz = _lse_update(z, cols, col_ok, tgt, m, s, zt, sz, B, HAS_BIAS, SMOOTH)
    _lse_store(PM, PS, PZT, PSZ, pid_s * N + rows, row_ok, m, s, zt, sz, SMOOTH)


@triton.jit
def _softmax_grad(z, m, ls, cols, tgt, eps_over_v, one_minus_eps):
    # dloss_row / dz = softmax - smoothed one-hot, from the row's max m and log sum-exp(z - m).
    # (z - m) - log s, not z - lse: z - m is exact near the max, while lse = m + log s would
    # round at the logits' magnitude (|z| ~ 30 -> 2e-6) and perturb every probability.
    p = tl.exp((z - m[:, None]) - ls[:, None])
    return p - eps_over_v - tl.where(cols[None, :] == tgt[:, None], one_minus_eps, 0.0)


@triton.jit
def _dlogits_store(z, rows, row_ok, lcols, cols, col_ok, tgt, m, ls, g, D, DBP, pid_n, C,
                   stride_dn, eps_over_v, one_minus_eps):
    # One tile: d = softmax - smoothed one-hot, times the row's upstream grad, stored in the
    # compute dtype, plus the tile's fp32 column sums as this row block's db partial (z: the
    # logits with the bias).
    d = _softmax_grad(z, m, ls, cols, tgt, eps_over_v, one_minus_eps) * g[:, None]
    d = tl.where(row_ok[:, None] & col_ok[None, :], d, 0.0)
    tl.store(D + rows[:, None].to(tl.int64) * stride_dn + lcols[None, :],
             d.to(D.dtype.element_ty), mask=row_ok[:, None] & (lcols < C)[None, :])
    # db partial from the fp32 d (not the rounded one): summed over row blocks by the caller.
    tl.store(DBP + pid_n * C + lcols, tl.sum(d, axis=0), mask=lcols < C)


@triton.jit
def _add_bias(z, B, cols, col_ok, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        z += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return z


@triton.jit
def _row_stats(T, STATS, G, rows, row_ok, N, ignore_index):
    # Per row: target (int32, see _lce_fwd_kernel), max, log sum-exp, upstream grad (0 when
    # ignored).
    tgt = tl.load(T + rows, mask=row_ok, other=ignore_index).to(tl.int32)
    m = tl.load(STATS + rows, mask=row_ok, other=0.0)
    ls = tl.load(STATS + N + rows, mask=row_ok, other=0.0)
    g = tl.load(G + rows, mask=row_ok, other=0.0)
    return tgt, m, ls, tl.where(row_ok & (tgt != ignore_index), g, 0.0)


@triton.jit
def _lce_dlogits_kernel(
    X, W, B, T, STATS, G,      # STATS (2, N) fp32: row max m, log sum-exp(z - m); G (N,) fp32
    D, DBP,                    # D (N, C) chunk of d (compute dtype); DBP (row blocks, C) fp32
    N, V, H, c0, C, stride_xn, stride_wv, stride_dn, ignore_index, eps_over_v, one_minus_eps,
    TILES_PER_PROG,            # vocab tiles per program (1 unless FLAT)
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, EVEN_H: tl.constexpr,
    FLAT: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    if FLAT:
        tgt, m, ls, g = _row_stats(T, STATS, G, rows, row_ok, N, ignore_index)
        KT = H // BLOCK_H
        offs_h = tl.arange(0, BLOCK_H)
        x_ptrs = X + rows[:, None].to(tl.int64) * stride_xn + offs_h[None, :]
        acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        l0 = pid_v * TILES_PER_PROG * BLOCK_V
        for it in range(TILES_PER_PROG * KT):
            t = it // KT
            k = it - t * KT
            lcols = l0 + t * BLOCK_V + tl.arange(0, BLOCK_V)   # column inside the chunk
            cols = c0 + lcols
            col_ok = (lcols < C) & (cols < V)
            w_ptrs = W + cols[None, :].to(tl.int64) * stride_wv + (k * BLOCK_H + offs_h)[:, None]
            acc = _dot_step(x_ptrs + k * BLOCK_H, w_ptrs, row_ok[:, None], col_ok[None, :], acc,
                            IEEE, UPCAST)
            if k == KT - 1:
                z = _add_bias(acc, B, cols, col_ok, HAS_BIAS)
                _dlogits_store(z, rows, row_ok, lcols, cols, col_ok, tgt, m, ls, g, D, DBP,
                               pid_n, C, stride_dn, eps_over_v, one_minus_eps)
                acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    else:
        lcols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)       # column inside the chunk
        cols = c0 + lcols
        col_ok = (lcols < C) & (cols < V)
        z = _logits_tile(X, W, rows, cols, row_ok, col_ok, H, stride_xn, stride_wv,
                         BLOCK_N, BLOCK_V, BLOCK_H, IEEE, UPCAST, EVEN_H)
        z = _add_bias(z, B, cols, col_ok, HAS_BIAS)
        tgt, m, ls, g = _row_stats(T, STATS, G, rows, row_ok, N, ignore_index)
        _dlogits_store(z, rows, row_ok, lcols, cols, col_ok, tgt, m, ls, g, D, DBP, pid_n, C,
                       stride_dn, eps_over_v, one_minus_eps)


@triton.jit
def _mm_kernel(
    A, Bm, Cm,                  # C (M, Nn) [+]= A (M, K) @ B (K, Nn), any strides
    M, Nn, K, sam, sak, sbk, sbn, scm, scn,
    ACCUM: tl.constexpr, GROUP_M: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_NN: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Grouped ordering: GROUP_M row tiles share B column tiles in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(Nn, BLOCK_NN)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    gsize = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % group) % gsize)
    pid_n = (pid % group) // gsize
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_NN + tl.arange(0, BLOCK_NN)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < Nn
    a_ptrs = A + rm[:, None].to(tl.int64) * sam + rk[None, :].to(tl.int64) * sak
    b_ptrs = Bm + rk[:, None].to(tl.int64) * sbk + rn[None, :].to(tl.int64) * sbn
    acc = tl.zeros((BLOCK_M, BLOCK_NN), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        k_ok = (k + rk) < K
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * sak
        b_ptrs += BLOCK_K * sbk
    c_ptrs = Cm + rm[:, None].to(tl.int64) * scm + rn[None, :].to(tl.int64) * scn
    c_mask = m_ok[:, None] & n_ok[None, :]
    if ACCUM:
        acc += tl.load(c_ptrs, mask=c_mask, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(Cm.dtype.element_ty), mask=c_mask)


@triton.jit
def _tc_stats_kernel(
    Z, B, T,            # Z (R, >= VL) stored logits without bias, row stride stride_z; B; T (R,)
    PM, PS, PZT, PSZ,   # partials (splits, >= R) fp32 with row stride stride_p
    R, V, VL, stride_z, stride_p, ignore_index, TILES_PER_SPLIT,
    HAS_BIAS: tl.constexpr, SMOOTH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # The token-chunk schedule's softmax statistics: _lce_fwd_kernel's epilogue (_lse_update)
    # over logits read from memory instead of computed by a K-loop.
    # Loads are masked by VL, the buffer's padded width (a multiple of 16, which Triton's
    # specialisation sees), not by V = 250,002: a mask that may change at any column forces
    # one 2-byte load per element, one that holds for 16-column groups allows 16-byte vector
    # loads (sm_90 PTX: ld.global.b16 x 32 -> ld.global.v4 x 4 per thread and tile). The
    # columns in [V, VL) are read (unwritten memory: any bits, signalling NaNs included, which
    # is why they are zeroed before any arithmetic) and dropped by col_ok in _lse_update.
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    tgt = tl.load(T + rows, mask=row_ok, other=ignore_index).to(tl.int32)
    m, s, zt, sz = _lse_init(BLOCK_R)
    v0 = pid_s * (TILES_PER_SPLIT * BLOCK_V)
    z_ptrs = Z + rows[:, None].to(tl.int64) * stride_z + (v0 + tl.arange(0, BLOCK_V))[None, :]
    for t in range(TILES_PER_SPLIT):
        cols = v0 + t * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        z = tl.load(z_ptrs, mask=row_ok[:, None] & (cols < VL)[None, :],
                    other=0.0).to(tl.float32)
        z = tl.where(col_ok[None, :], z, 0.0)  # padding columns: unwritten memory, any bits
        m, s, zt, sz = _lse_update(z, cols, col_ok, tgt, m, s, zt, sz, B, HAS_BIAS, SMOOTH)
        z_ptrs += BLOCK_V
    _lse_store(PM, PS, PZT, PSZ, pid_s * stride_p + rows, row_ok, m, s, zt, sz, SMOOTH)


@triton.jit
def _tc_grad_kernel(
    Z, B, T, STATS,     # Z (R, >= VL) logits -> d in place; STATS (2, R) fp32 (row max, log s)
    DB,                 # (V,) fp32 column sums of d, added over chunks (ACCUM_DB)
    R, V, VL, stride_z, ignore_index, eps_over_v, one_minus_eps,
    HAS_BIAS: tl.constexpr, ACCUM_DB: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    # One program per column stripe, looping over every row of the chunk: the stripe's db is
    # summed in registers and written once per chunk, with no atomics and no partial buffer.
    # Z is loaded and stored under a mask by VL (a multiple of 16), not V, for vector accesses
    # (see _tc_stats_kernel); the padding columns [V, VL) get d = 0.
    pid_v = tl.program_id(0)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < V
    bias = tl.zeros((BLOCK_V,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    colsum = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_ok = rows < R
        tgt = tl.load(T + rows, mask=row_ok, other=ignore_index).to(tl.int32)
        m = tl.load(STATS + rows, mask=row_ok, other=0.0)
        ls = tl.load(STATS + R + rows, mask=row_ok, other=0.0)
        ok = (row_ok & (tgt != ignore_index))[:, None] & col_ok[None, :]
        ptrs = Z + rows[:, None].to(tl.int64) * stride_z + cols[None, :]
        io = row_ok[:, None] & (cols < VL)[None, :]
        z = tl.load(ptrs, mask=io, other=0.0).to(tl.float32)
        z = tl.where(col_ok[None, :], z, 0.0)  # padding columns: unwritten memory, any bits
        d = _softmax_grad(z + bias[None, :], m, ls, cols, tgt, eps_over_v, one_minus_eps)
        d = tl.where(ok, d, 0.0)
        tl.store(ptrs, d.to(Z.dtype.element_ty), mask=io)
        colsum += tl.sum(d, axis=0)
    if HAS_BIAS:
        if ACCUM_DB:
            colsum += tl.load(DB + cols, mask=col_ok, other=0.0)
        tl.store(DB + cols, colsum, mask=col_ok)


# ----------------------------------------------------------------------------- configs
# Simple rules, no autotuning (autotune would sync and compile many variants in training).
# bench/bench_linear_cross_entropy.py --sweep times every entry of these lists on the device;
# set FWD_CONFIG / DLOGITS_CONFIG / MM_CONFIG (module globals) to the winner.
FWD_CONFIGS = [
    dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=64, num_warps=8, num_stages=3),
    dict(BLOCK_N=128, BLOCK_V=256, BLOCK_H=64, num_warps=8, num_stages=3),
    dict(BLOCK_N=64, BLOCK_V=256, BLOCK_H=64, num_warps=8, num_stages=3),
    dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=32, num_warps=4, num_stages=4),
    dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64, num_warps=4, num_stages=3),
]
MM_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_NN=128, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_NN=256, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_NN=128, BLOCK_K=32, num_warps=4, num_stages=4),
    dict(BLOCK_M=64, BLOCK_NN=128, BLOCK_K=64, num_warps=4, num_stages=3),
]
FWD_CONFIG = None       # None: the rule in _fwd_config(); set a dict to override (tuning)
DLOGITS_CONFIG = None   # same keys as FWD_CONFIGS
MM_CONFIG = None        # keys of MM_CONFIGS
# Forward programs per SM to aim for when choosing the number of vocab splits.
PROGRAMS_PER_SM = 8
# Backward chunk budget: bytes of the (N, C) d buffer (overridable per call).
CHUNK_BYTES = 128 * 2**20
# Who runs the backward's two GEMMs: "triton" (_mm_kernel) or "cublas" (torch.mm / addmm).
MM_BACKEND = "triton"
MM_BACKENDS = ("triton", "cublas")
# The flattened (tile, H step) loop of the forward and dlogits kernels (see _lse_update), off
# until a device run shows it faster; XLMR_FAST_LCE_FLAT=1/0 overrides. Each dlogits program
# then owns DLOGITS_TILES_PER_PROG vocab tiles (one otherwise).
FLAT = False
DLOGITS_TILES_PER_PROG = 4
# Measured choices by shape (16-bit, nested loops): (min rows N, H, FWD_CONFIGS index for the
# forward and dlogits kernels, MM_CONFIGS index); the first row with N >= min rows and this H
# wins, no row -> entry 0 of each list. Source: `bench_linear_cross_entropy --sweep` on an H100
# (triton 3.6), 2026-11-23, commit 0eaeddf, full fwd+bwd at N=8192 H=1024: entry 0 / 0 47.1
# ms; forward config 1 44.4 ms; GEMM config 1 42.6 ms (bench/results/NVIDIA_H100_80GB_HBM3.csv,
# ours-triton-fwdcfg* / -mmcfg*). Shapes not listed were not swept; FLAT keeps entry 0 (the
# flat dlogits kernel spills 264 bytes with forward config 1 on sm_90). Applies only on the
# architecture it was measured on (kernels/triton.TUNED_CAPABILITY, sm_90): forward config 1
# spills 464 bytes for sm_86, entry 0 none.
TUNED_BY_SHAPE: list[tuple[int, int, int, int]] = [(8192, 1024, 1, 1)]

# Token-chunk schedule (lce_fwdgrad): which schedule the op runs ("recompute": lce_forward +
# lce_backward, 8NHV; "tokenchunk": lce_fwdgrad, 6NHV), off until a device run shows it faster;
# XLMR_FAST_LCE_SCHEDULE overrides, and on a GPU so does a tuning file's choice (the op passes it
# to schedule(); `xlmr-fast tune`). TOKEN_CHUNK_BYTES bounds the (R, V_pad) logits buffer
# (512 MiB: R = 1024 rows at V = 250,002 in bf16).
SCHEDULE = "recompute"
SCHEDULES = ("recompute", "tokenchunk")
# lce_fwdgrad's phases per chunk, in order (its `phase` hook; bench --breakdown)
PHASES = ("logits GEMM", "stats", "combine", "grad", "dX GEMM", "dW GEMM")
TOKEN_CHUNK_BYTES = 512 * 2**20
TC_STATS_CONFIG = dict(BLOCK_R=32, BLOCK_V=256, num_warps=8, num_stages=3)
TC_GRAD_CONFIG = dict(BLOCK_R=32, BLOCK_V=128, num_warps=4, num_stages=3)
_INTERP_TC_STATS = dict(BLOCK_R=4, BLOCK_V=32, num_warps=4, num_stages=1)
_INTERP_TC_GRAD = dict(BLOCK_R=4, BLOCK_V=32, num_warps=4, num_stages=1)

_INTERP_FWD = dict(BLOCK_N=16, BLOCK_V=64, BLOCK_H=32, num_warps=4, num_stages=1)
_INTERP_MM = dict(BLOCK_M=32, BLOCK_NN=32, BLOCK_K=32, num_warps=4, num_stages=1)


def _interpret(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def _tuned(n: int, h: int, device: torch.device) -> tuple[int, int]:
    """(FWD_CONFIGS index, MM_CONFIGS index) for n rows of width h on device (see
    TUNED_BY_SHAPE; entry 0 of each list off the architecture it was measured on)."""
    if not tuned_here(device):
        return 0, 0
    for min_rows, width, fwd, mm in TUNED_BY_SHAPE:
        if n >= min_rows and h == width:
            return fwd, mm
    return 0, 0


def _fwd_config(x: torch.Tensor, n: int, override=None, flat: bool = False,
                smooth: bool = False) -> dict:
    if override is not None:  # first: the sweep's, and the tests' under the interpreter
        return dict(override)
    if _interpret(x):
        return dict(_INTERP_FWD)
    if x.dtype == torch.float32:
        # fp32 operands (exact "ieee" dots): double the bytes per element, halve the K step.
        return dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=32, num_warps=8, num_stages=2)
    if n <= 64:
        # Few rows: the kernel streams W once; smaller row tiles waste less of the MMA.
        return dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64, num_warps=4, num_stages=4)
    # TUNED_BY_SHAPE was swept without label smoothing; the forward's smoothing sum on its
    # 128 x 256 tile spills 540 bytes per thread for sm_90 (triton 3.6; 136 under 3.9), entry 0
    # none (bench/compile_report): smoothing keeps entry 0 until a sweep with it says otherwise.
    return dict(FWD_CONFIGS[0 if flat or smooth else _tuned(n, x.shape[1], x.device)[0]])


def _mm_config(x: torch.Tensor) -> dict:
    if MM_CONFIG is not None:
        return dict(MM_CONFIG)
    if _interpret(x):
        return dict(_INTERP_MM)
    if x.dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_NN=64, BLOCK_K=32, num_warps=4, num_stages=2)
    return dict(MM_CONFIGS[_tuned(*x.shape, x.device)[1]])


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def _dot_flags(x: torch.Tensor) -> dict:
    # IEEE: fp32 operands use exact fp32 dots (not TF32), matching torch's default matmul.
    # UPCAST: the interpreter (triton 3.9) multiplies bf16 operands as their raw uint16 bits;
    # products of 16-bit floats are exact in fp32, so upcasting first gives the same math.
    up = _interpret(x) and x.dtype != torch.float32
    return {"IEEE": x.dtype == torch.float32 or up, "UPCAST": up}


def flat_requested(override: bool | None = None) -> bool:
    """FLAT asked for: override, else XLMR_FAST_LCE_FLAT, else the module's FLAT."""
    if override is not None:
        return bool(override)
    env = os.environ.get("XLMR_FAST_LCE_FLAT", "").strip()
    if env not in ("", "0", "1"):
        raise ValueError(f"XLMR_FAST_LCE_FLAT={env!r}: expected 0 or 1")
    return FLAT if env == "" else env == "1"


def flat_loops(H: int, block_h: int, override: bool | None = None) -> bool:
    """Whether the forward / dlogits kernels run FLAT: requested (flat_requested) and BLOCK_H
    divides H (the flattened loop has no H mask)."""
    return flat_requested(override) and H % block_h == 0


def _launch_kw(cfg: dict) -> dict:
    return {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"], **LAUNCH}


# ----------------------------------------------------------------------------- host wrappers
def _check(x, w, b, t):
    assert x.dim() == 2 and w.dim() == 2 and x.shape[1] == w.shape[1], (x.shape, w.shape)
    assert x.stride(1) == 1 and w.stride(1) == 1, "last dim of hidden/weight must be contiguous"
    assert x.dtype == w.dtype, (x.dtype, w.dtype)
    assert t.dim() == 1 and t.shape[0] == x.shape[0]
    assert b is None or (b.dim() == 1 and b.shape[0] == w.shape[0] and b.stride(0) == 1)


def _split_partials(vtiles: int, row_blocks: int, rows: int, device, smooth: bool,
                    splits: int | None = None):
    """(splits, tiles per split, partial buffers) of a (row blocks, vocab splits) statistics
    grid: about PROGRAMS_PER_SM programs per SM unless splits is given, and every split owning
    at least one valid column (_lse_update relies on it). Buffers: (splits, rows) fp32 max,
    sum-exp, target logit, sum of logits (the last a dummy pointer without smoothing)."""
    if splits is None:
        splits = triton.cdiv(PROGRAMS_PER_SM * _num_sms(device), row_blocks)
    splits = max(1, min(int(splits), vtiles))
    tiles_per_split = triton.cdiv(vtiles, splits)
    splits = triton.cdiv(vtiles, tiles_per_split)
    f32 = dict(dtype=torch.float32, device=device)
    pm, ps, pzt = (torch.empty((splits, rows), **f32) for _ in range(3))
    psz = torch.empty((splits, rows), **f32) if smooth else pm
    return splits, tiles_per_split, (pm, ps, pzt, psz)


@on_input_device
def lce_forward(x, w, b, targets, ignore_index: int, label_smoothing: float, *,
                splits: int | None = None, config: dict | None = None, flat: bool | None = None):
    """Per-row loss (N,) fp32 (0 on ignored rows) and stats (2, N) fp32 (row max, log sum-exp).

    x (N, H) and w (V, H) share a dtype (bf16/fp16/fp32); b (V,) any float dtype or None.
    splits: number of vocab splits of the grid (default: about PROGRAMS_PER_SM programs per SM).
    flat: the flattened tile loop (default: flat_loops()).
    """
    _check(x, w, b, targets)
    N, H = x.shape
    V = w.shape[0]
    smooth = label_smoothing > 0.0
    cfg = _fwd_config(x, N, config if config is not None else FWD_CONFIG, flat_requested(flat),
                      smooth)
    BN, BV, BH = cfg["BLOCK_N"], cfg["BLOCK_V"], cfg["BLOCK_H"]
    row_blocks = triton.cdiv(N, BN)
    splits, tiles_per_split, (pm, ps, pzt, psz) = _split_partials(
        triton.cdiv(V, BV), row_blocks, N, x.device, smooth, splits)
    _lce_fwd_kernel[(row_blocks, splits)](
        x, w, b if b is not None else x, targets, pm, ps, pzt, psz,
        N, V, H, x.stride(0), w.stride(0), ignore_index,
        tiles_per_split, HAS_BIAS=b is not None, SMOOTH=smooth,
        BLOCK_N=BN, BLOCK_V=BV, BLOCK_H=BH, EVEN_H=H % BH == 0, FLAT=flat_loops(H, BH, flat),
        **_dot_flags(x), **_launch_kw(cfg))
    return lse_combine(pm, ps, pzt, psz if smooth else None, targets, ignore_index,
                       label_smoothing, V)


def lse_combine(pm, ps, pzt, psz, targets, ignore_index, label_smoothing, V):
    """Merge (splits, N) partials into per-row loss (N,) and stats (2, N) = (max, log sum-exp).

    loss = (m - (1 - eps) z_t - eps * mean_j z_j) + log s: the bracket is exact-ish when the
    target is near the max, so a tiny loss keeps its digits (lse - z_t would lose them).
    """
    mx = pm.amax(dim=0)
    logs = torch.log((ps * torch.exp(pm - mx)).sum(dim=0))
    zt = pzt.sum(dim=0)
    head = mx - (1.0 - label_smoothing) * zt
    if psz is not None:
        head = head - (label_smoothing / V) * psz.sum(dim=0)
    loss = torch.where(targets != ignore_index, head + logs, torch.zeros_like(head))
    return loss, torch.stack((mx, logs))


def chunk_columns(n_rows: int, V: int, elt_bytes: int, chunk: int | None = None,
                  multiple: int = 256) -> int:
    """Vocab columns per backward chunk: CHUNK_BYTES of d, a multiple of `multiple`, <= V."""
    if chunk is None or chunk <= 0:
        chunk = CHUNK_BYTES // max(1, n_rows * elt_bytes)
    chunk = max(multiple, (int(chunk) // multiple) * multiple)
    return min(chunk, triton.cdiv(V, multiple) * multiple)


def _mm(a, b, c, accum: bool, cfg: dict):
    M, K = a.shape
    Nn = b.shape[1]
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(Nn, cfg["BLOCK_NN"]),)
    _mm_kernel[grid](a, b, c, M, Nn, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                     c.stride(0), c.stride(1), ACCUM=accum, GROUP_M=8,
                     **_dot_flags(a), BLOCK_M=cfg["BLOCK_M"],
                     BLOCK_NN=cfg["BLOCK_NN"], BLOCK_K=cfg["BLOCK_K"], **_launch_kw(cfg))


_ADDMM_OUT_DTYPE = [True]  # False once torch.addmm(..., out_dtype=, out=) has failed here


def _gemm(a, b, out, accum: bool):
    """out (+)= a @ b through torch (cuBLAS on CUDA) with fp32 accumulation, written in out's
    dtype: a 16-bit product into an fp32 out uses the out_dtype overloads (one rounding, like
    _mm_kernel). The CPU has no such overload: there (tests) it is computed in fp32."""
    if out.dtype == a.dtype:
        if accum:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
    elif out.device.type == "cuda":
        if accum and _ADDMM_OUT_DTYPE[0]:
            try:
                torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
                return
            except (RuntimeError, TypeError) as e:  # a torch without this overload
                _ADDMM_OUT_DTYPE[0] = False
                warnings.warn(f"linear_cross_entropy: torch.addmm(out_dtype=, out=) failed "
                              f"({e}); accumulating through a temporary instead")
        if accum:
            out.add_(torch.mm(a, b, out_dtype=out.dtype))
        else:
            torch.mm(a, b, out_dtype=out.dtype, out=out)
    else:
        prod = a.float() @ b.float()
        if accum:
            out.add_(prod)
        else:
            out.copy_(prod)


def mm_backend(override: str | None = None) -> str:
    """The GEMM runner of lce_backward: override, else XLMR_FAST_LCE_MM, else MM_BACKEND."""
    name = override or os.environ.get("XLMR_FAST_LCE_MM") or MM_BACKEND
    if name not in MM_BACKENDS:
        raise ValueError(f"linear_cross_entropy: XLMR_FAST_LCE_MM / mm must be one of "
                         f"{MM_BACKENDS}, got {name!r}")
    return name


@on_input_device
def lce_backward(grad_rows, x, w, b, targets, stats, ignore_index: int, label_smoothing: float, *,
                 grad_weight_dtype=None, grad_bias_dtype=None, chunk: int | None = None,
                 config: dict | None = None, mm: str | None = None, dw_out=None,
                 flat: bool | None = None):
    """(dX, dW, db) for per-row upstream grads grad_rows (N,) fp32 (ignored rows are zeroed here).

    dX has x's dtype; dW is written once per chunk in grad_weight_dtype (default w's dtype)
    from fp32 accumulators; db (None when b is None) in grad_bias_dtype (default b's dtype).
    mm: "triton" | "cublas" for the two GEMMs per chunk (default: mm_backend()).
    flat: the flattened tile loop in the dlogits kernel (default: flat_loops()).
    dw_out: an existing contiguous (V, H) tensor (a tied weight's .grad) that dW is added into
    by the dW GEMM itself (read, add in fp32, write once): no V x H buffer is allocated, and
    the returned dW is dw_out.
    """
    _check(x, w, b, targets)
    use_cublas = mm_backend(mm) == "cublas"
    N, H = x.shape
    V = w.shape[0]
    cfg = _fwd_config(x, N, config if config is not None else DLOGITS_CONFIG,
                      flat_requested(flat))
    mcfg = _mm_config(x)
    BN, BV, BH = cfg["BLOCK_N"], cfg["BLOCK_V"], cfg["BLOCK_H"]
    C = chunk_columns(N, V, x.element_size(), chunk, multiple=BV)
    row_blocks = triton.cdiv(N, BN)
    is_flat = flat_loops(H, BH, flat)
    tpp = DLOGITS_TILES_PER_PROG if is_flat else 1
    dev = x.device
    d = torch.empty((N, C), dtype=x.dtype, device=dev)
    dbp = torch.empty((row_blocks, C), dtype=torch.float32, device=dev)
    dx_acc = torch.empty((N, H), dtype=torch.float32, device=dev)
    into = dw_out is not None
    if into:
        assert dw_out.shape == (V, H) and dw_out.is_contiguous(), (dw_out.shape, dw_out.stride())
        dw = dw_out
    else:
        dw = torch.empty((V, H), dtype=grad_weight_dtype or w.dtype, device=dev)
    db = None
    if b is not None:
        db = torch.empty((V,), dtype=grad_bias_dtype or b.dtype, device=dev)
    g = grad_rows.to(torch.float32).contiguous()
    eps = float(label_smoothing)
    for c0 in range(0, V, C):
        cs = min(C, V - c0)
        dc = d[:, :cs]
        _lce_dlogits_kernel[(row_blocks, triton.cdiv(triton.cdiv(cs, BV), tpp))](
            x, w, b if b is not None else x, targets, stats, g, dc, dbp,
            N, V, H, c0, cs, x.stride(0), w.stride(0), d.stride(0), ignore_index,
            eps / V, 1.0 - eps, tpp,
            HAS_BIAS=b is not None, BLOCK_N=BN, BLOCK_V=BV, BLOCK_H=BH, EVEN_H=H % BH == 0,
            FLAT=is_flat, **_dot_flags(x), **_launch_kw(cfg))
        if db is not None:
            # dbp rows were written with row stride cs (the chunk width), see DBP + pid_n * C.
            db[c0:c0 + cs] = dbp.view(-1)[:row_blocks * cs].view(row_blocks, cs).sum(dim=0)
        if use_cublas:
            _gemm(dc.t(), x, dw[c0:c0 + cs], into)
            _gemm(dc, w[c0:c0 + cs], dx_acc, c0 > 0)
        else:
            _mm(dc.t(), x, dw[c0:c0 + cs], into, mcfg)           # dW[chunk] (+)= d^T @ X, once
            _mm(dc, w[c0:c0 + cs], dx_acc, c0 > 0, mcfg)          # dX += d @ W[chunk]
    return dx_acc.to(x.dtype), dw, db


def schedule(override: str | None = None) -> str:
    """The op's schedule: override, else XLMR_FAST_LCE_SCHEDULE, else SCHEDULE."""
    name = override or os.environ.get("XLMR_FAST_LCE_SCHEDULE", "").strip() or SCHEDULE
    if name not in SCHEDULES:
        raise ValueError(f"linear_cross_entropy: XLMR_FAST_LCE_SCHEDULE must be one of "
                         f"{SCHEDULES}, got {name!r}")
    return name


def padded_vocab(V: int) -> int:
    """Row length of the logits buffer: V rounded up to 64 columns (128-byte rows in 16 bits)."""
    return triton.cdiv(V, 64) * 64


def token_chunk_rows(n_rows: int, V: int, elt_bytes: int, rows: int | None = None) -> int:
    """Rows per chunk of lce_fwdgrad: `rows`, else TOKEN_CHUNK_BYTES of padded logits (a
    multiple of 128 rows when that many fit, the GEMMs' M tile), at most n_rows."""
    if rows is None or rows <= 0:
        rows = max(1, TOKEN_CHUNK_BYTES // (padded_vocab(V) * elt_bytes))
        if rows >= 128:
            rows -= rows % 128
    return max(1, min(int(rows), n_rows))


@on_input_device
def lce_fwdgrad(x, w, b, targets, ignore_index: int, label_smoothing: float, *,
                rows: int | None = None, need_dx: bool = True, need_dw: bool = True,
                stats_config: dict | None = None, grad_config: dict | None = None,
                phase=None):
    """The token-chunk schedule: (loss_rows (N,) fp32, dX, dW, db) with the gradients of
    loss_rows.sum(): dX (N, H) in x's dtype (None unless need_dx), dW (V, H) fp32 (None unless
    need_dw), db (V,) fp32 (None when b is None). 6NHV FLOPs, no host sync.

    x (N, H) and w (V, H) share a dtype; b (V,) any float dtype or None.
    rows: rows per chunk (default token_chunk_rows()); the logits buffer is (rows, V_pad).
    phase: optional callable, called with each phase's name just before the phase is enqueued
    (PHASES, once per chunk) and with None after the last: bench_linear_cross_entropy
    --breakdown records a CUDA event at each call to time the phases on the device.
    """
    mark = phase or (lambda name: None)
    _check(x, w, b, targets)
    N, H = x.shape
    V = w.shape[0]
    dev = x.device
    R = token_chunk_rows(N, V, x.element_size(), rows)
    interp = _interpret(x)
    scfg = dict(stats_config or (_INTERP_TC_STATS if interp else TC_STATS_CONFIG))
    gcfg = dict(grad_config or (_INTERP_TC_GRAD if interp else TC_GRAD_CONFIG))
    VL = padded_vocab(V)  # the kernels read and write whole 16-column groups of buf's rows
    buf = torch.empty((R, VL), dtype=x.dtype, device=dev)
    f32 = dict(dtype=torch.float32, device=dev)
    loss = torch.empty((N,), **f32)
    dx = torch.empty_like(x) if need_dx else None
    dw = torch.empty((V, H), **f32) if need_dw else None
    db = torch.empty((V,), **f32) if b is not None else None
    smooth = label_smoothing > 0.0
    eps = float(label_smoothing)
    BR, BV = scfg["BLOCK_R"], scfg["BLOCK_V"]
    # splits sized for a full chunk; the buffers are reused by every chunk
    splits, tiles_per_split, (pm, ps, pzt, psz) = _split_partials(
        triton.cdiv(V, BV), triton.cdiv(R, BR), R, dev, smooth)
    wt = w.t()
    for r0 in range(0, N, R):
        r = min(R, N - r0)
        xr, tr = x[r0:r0 + r], targets[r0:r0 + r]
        z = buf[:r, :V]                      # row stride V_pad: aligned for cuBLAS
        mark("logits GEMM")
        _gemm(xr, wt, z, False)
        mark("stats")
        _tc_stats_kernel[(triton.cdiv(r, BR), splits)](
            z, b if b is not None else z, tr, pm, ps, pzt, psz, r, V, VL, z.stride(0), R,
            ignore_index, tiles_per_split, HAS_BIAS=b is not None, SMOOTH=smooth,
            BLOCK_R=BR, BLOCK_V=BV, **_launch_kw(scfg))
        mark("combine")
        part = (pm[:, :r], ps[:, :r], pzt[:, :r], psz[:, :r] if smooth else None)
        loss_r, stats = lse_combine(*part, tr, ignore_index, label_smoothing, V)
        loss[r0:r0 + r] = loss_r
        mark("grad")
        _tc_grad_kernel[(triton.cdiv(V, gcfg["BLOCK_V"]),)](
            z, b if b is not None else z, tr, stats, db if db is not None else loss,
            r, V, VL, z.stride(0), ignore_index, eps / V, 1.0 - eps,
            HAS_BIAS=b is not None, ACCUM_DB=r0 > 0, BLOCK_R=gcfg["BLOCK_R"],
            BLOCK_V=gcfg["BLOCK_V"], **_launch_kw(gcfg))
        if need_dx:
            mark("dX GEMM")
            _gemm(z, w, dx[r0:r0 + r], False)          # dX rows = d @ W
        if need_dw:
            mark("dW GEMM")
            _gemm(z.t(), xr, dw, accum=r0 > 0)       # dW (+)= d^T @ X rows, fp32
    mark(None)
    return loss, dx, dw, db

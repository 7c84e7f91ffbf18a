"""Textbook FlashAttention-2 in Triton, in the style of Triton's 06-fused-attention tutorial.

What: plain attention softmax(q k^T * scale) v over (B, H, T, D) bf16/fp16 tensors, forward
and backward, with no mask, no varlen, no dropout and no causal option. Any T >= 1 works
(tails are bounds-checked; when T is a multiple of the block sizes the checks compile away).

Why: a baseline for bench/bench_attention.py, NOT used by the xlmr_fast package. Our kernel
(kernels/triton/attention.py) adds a key-padding mask, varlen and dropout; timing it next to
this kernel on full-length (unpadded) inputs shows what those features cost or gain relative
to the textbook algorithm. Written for this project; the tutorial was read for ideas only.

How bench uses it:
    from bench.baselines.triton_tutorial_attention import tutorial_attention
    out = tutorial_attention(q, k, v)            # q, k, v: (B, H, T, D), autograd works
Block sizes live in FWD_CONFIG / BWD_CONFIG (plain dicts; a sweep may overwrite them).

Algorithm (FA2):
    forward   one program per (query block, batch*head); loops over key blocks with an
              online softmax in base 2 (exp2, scale folded into log2(e)); fp32 accumulators;
              stores O and the row log-sum-exp LSE (fp32, base-2 units, shape (B*H, T)).
    backward  deterministic, no atomics: (1) Delta = rowsum(dO * O); (2) one program per key
              block loops over query blocks -> dK, dV; (3) one program per query block loops
              over key blocks -> dQ. P is recomputed from Q, K and the LSE.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Hopper (H100), D = 64 defaults. The dK/dV kernel keeps a BLOCK_N1 key block resident and
# streams BLOCK_M1 query blocks; the dQ kernel keeps BLOCK_M2 queries and streams BLOCK_N2 keys.
FWD_CONFIG = dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
BWD_CONFIG = dict(BLOCK_M1=64, BLOCK_N1=64, BLOCK_M2=64, BLOCK_N2=64, num_warps=4, num_stages=2)
# The interpreter runs each block as numpy arrays: small blocks keep it fast and make the CPU
# tests cross several query/key blocks and their tails at T ~ 40.
_INTERP_FWD = dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=1)
_INTERP_BWD = dict(BLOCK_M1=16, BLOCK_N1=32, BLOCK_M2=32, BLOCK_N2=16, num_warps=4, num_stages=1)


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    # The interpreter (triton 3.9) mishandles bf16 tl.dot; bf16 x bf16 products are exact in
    # fp32, so upcasting gives the tensor-core result (as kernels/triton/attention.py does).
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _load_tile(base, rows, stride_t, T, HEAD_DIM: tl.constexpr, EVEN: tl.constexpr):
    """(len(rows), HEAD_DIM) tile; rows at or past T read as zeros (unchecked when EVEN)."""
    ptrs = base + rows[:, None] * stride_t + tl.arange(0, HEAD_DIM)[None, :]
    if EVEN:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=(rows < T)[:, None], other=0.0)
    return x


@triton.jit
def _store_tile(base, rows, stride_t, T, x, HEAD_DIM: tl.constexpr, EVEN: tl.constexpr):
    ptrs = base + rows[:, None] * stride_t + tl.arange(0, HEAD_DIM)[None, :]
    if EVEN:
        tl.store(ptrs, x.to(base.dtype.element_ty))
    else:
        tl.store(ptrs, x.to(base.dtype.element_ty), mask=(rows < T)[:, None])


@triton.jit
def _fwd(Q, K, V, Out, LSE, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
         so_b, so_h, so_t, H, T, qk_scale,
         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         EVEN: tl.constexpr, UPCAST: tl.constexpr):
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # int64 offsets: B*H*T*D may pass 2^31 at large batches
    h = (bh % H).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_tile(Q + b * sq_b + h * sq_h, rows, sq_t, T, HEAD_DIM, EVEN)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max (base-2 logits)
    l_i = tl.zeros([BLOCK_M], tl.float32)                 # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, T, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, cols, sk_t, T, HEAD_DIM, EVEN)
        s = _dot(q, tl.trans(k), UPCAST) * qk_scale       # log2(e) * scale * q k^T
        if not EVEN:
            # Zero-padded keys would score 0, not -inf: exclude them from the softmax.
            s = tl.where((cols < T)[None, :], s, float("-inf"))
        # Every block holds >= 1 real key, so m_new is finite and exp2(-inf) = 0 is safe.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)                      # rescales the old statistics
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(v_base, cols, sv_t, T, HEAD_DIM, EVEN)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST)
        m_i = m_new
    _store_tile(Out + b * so_b + h * so_h, rows, so_t, T, acc / l_i[:, None], HEAD_DIM, EVEN)
    tl.store(LSE + bh * T + rows, m_i + tl.log2(l_i), mask=rows < T)


@triton.jit
def _bwd_pre(Out, DO, DELTA, so_b, so_h, so_t, sd_b, sd_h, sd_t, H, T,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    # Delta_i = sum_j P_ij dP_ij = rowsum(dO * O): the softmax-Jacobian term of dS.
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    o = _load_tile(Out + b * so_b + h * so_h, rows, so_t, T, HEAD_DIM, False)
    do = _load_tile(DO + b * sd_b + h * sd_h, rows, sd_t, T, HEAD_DIM, False)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * T + rows, delta, mask=rows < T)


@triton.jit
def _bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
              sv_b, sv_h, sv_t, sd_b, sd_h, sd_t, H, T, qk_scale, sm_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              EVEN: tl.constexpr, UPCAST: tl.constexpr):
    # Key-major tiles (BLOCK_N, BLOCK_M), i.e. transposed P, so that dV = P^T dO and
    # dK = dS^T Q are plain dots without transposing the accumulated products.
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_tile(K + b * sk_b + h * sk_h, cols, sk_t, T, HEAD_DIM, EVEN)
    v = _load_tile(V + b * sv_b + h * sv_h, cols, sv_t, T, HEAD_DIM, EVEN)
    q_base = Q + b * sq_b + h * sq_h
    do_base = DO + b * sd_b + h * sd_h
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start_m in range(0, T, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(q_base, rows, sq_t, T, HEAD_DIM, EVEN)
        do = _load_tile(do_base, rows, sd_t, T, HEAD_DIM, EVEN)
        lse = tl.load(LSE + bh * T + rows, mask=rows < T, other=0.0)
        delta = tl.load(DELTA + bh * T + rows, mask=rows < T, other=0.0)
        # No masks needed on tails: query rows past T load q = dO = 0 (and lse = Delta = 0),
        # so their P = 1 meets dO = 0 in dV and dS = 0 in dK; key rows past T only produce
        # dk/dv rows that are never stored.
        pT = tl.exp2(_dot(k, tl.trans(q), UPCAST) * qk_scale - lse[None, :])
        dv += _dot(pT.to(do.dtype), do, UPCAST)
        dpT = _dot(v, tl.trans(do), UPCAST)               # (dO V^T)^T
        dsT = pT * (dpT - delta[None, :])
        dk += _dot(dsT.to(q.dtype), q, UPCAST)
    # s = sm_scale * q k^T, so the chain rule puts one sm_scale on dK (and on dQ below).
    _store_tile(DK + b * sk_b + h * sk_h, cols, sk_t, T, dk * sm_scale, HEAD_DIM, EVEN)
    _store_tile(DV + b * sv_b + h * sv_h, cols, sv_t, T, dv, HEAD_DIM, EVEN)


@triton.jit
def _bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
            sv_b, sv_h, sv_t, sd_b, sd_h, sd_t, H, T, qk_scale, sm_scale,
            HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            EVEN: tl.constexpr, UPCAST: tl.constexpr):
    # A second pass over all (query, key) tiles instead of atomically adding dQ in the dK/dV
    # kernel: more FLOPs, but deterministic.
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_tile(Q + b * sq_b + h * sq_h, rows, sq_t, T, HEAD_DIM, EVEN)
    do = _load_tile(DO + b * sd_b + h * sd_h, rows, sd_t, T, HEAD_DIM, EVEN)
    lse = tl.load(LSE + bh * T + rows, mask=rows < T, other=0.0)
    delta = tl.load(DELTA + bh * T + rows, mask=rows < T, other=0.0)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, T, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, cols, sk_t, T, HEAD_DIM, EVEN)
        v = _load_tile(v_base, cols, sv_t, T, HEAD_DIM, EVEN)
        # Keys past T load as k = v = 0: their (finite) P meets k = 0 in dS K, adding nothing.
        p = tl.exp2(_dot(q, tl.trans(k), UPCAST) * qk_scale - lse[:, None])
        dp = _dot(do, tl.trans(v), UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, UPCAST)
    _store_tile(DQ + b * sq_b + h * sq_h, rows, sq_t, T, dq * sm_scale, HEAD_DIM, EVEN)


def _kernel_layout(x):
    # The kernels take any (b, h, t) strides but need contiguous rows of D elements; and
    # dq/dk/dv reuse the input's strides, which must not overlap (no broadcast dims).
    ok = x.stride(-1) == 1 and all(st > 0 or n == 1 for n, st in zip(x.shape, x.stride()))
    return x if ok else x.contiguous()


def _s(x):
    return x.stride(0), x.stride(1), x.stride(2)


class _TutorialAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sm_scale):
        q, k, v = (_kernel_layout(x) for x in (q, k, v))
        B, H, T, D = q.shape
        cfg = _INTERP_FWD if _interpret() else FWD_CONFIG
        bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
        o = torch.empty_like(q)
        lse = torch.empty(B * H, T, device=q.device, dtype=torch.float32)
        _fwd[(triton.cdiv(T, bm), B * H)](
            q, k, v, o, lse, *_s(q), *_s(k), *_s(v), *_s(o), H, T, sm_scale * LOG2E,
            HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, EVEN=(T % bm == 0 and T % bn == 0),
            UPCAST=_upcast(q.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.sm_scale = sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        do = _kernel_layout(do)  # e.g. out.sum().backward() hands in an all-zero-stride dO
        B, H, T, D = q.shape
        cfg = _INTERP_BWD if _interpret() else BWD_CONFIG
        m1, n1, m2, n2 = (cfg[n] for n in ("BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2"))
        common = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        delta = torch.empty_like(lse)
        _bwd_pre[(triton.cdiv(T, m2), B * H)](o, do, delta, *_s(o), *_s(do), H, T,
                                              HEAD_DIM=D, BLOCK_M=m2)
        # dq/dk/dv take the strides of q/k/v, so the kernels address them with those strides.
        dq = torch.empty_strided(q.shape, q.stride(), dtype=q.dtype, device=q.device)
        dk = torch.empty_strided(k.shape, k.stride(), dtype=k.dtype, device=k.device)
        dv = torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device)
        args = (*_s(q), *_s(k), *_s(v), *_s(do), H, T, ctx.sm_scale * LOG2E, ctx.sm_scale)
        up = _upcast(q.dtype)
        _bwd_dkdv[(triton.cdiv(T, n1), B * H)](
            q, k, v, do, dk, dv, lse, delta, *args, HEAD_DIM=D, BLOCK_M=m1, BLOCK_N=n1,
            EVEN=(T % m1 == 0 and T % n1 == 0), UPCAST=up, **common)
        _bwd_dq[(triton.cdiv(T, m2), B * H)](
            q, k, v, do, dq, lse, delta, *args, HEAD_DIM=D, BLOCK_M=m2, BLOCK_N=n2,
            EVEN=(T % m2 == 0 and T % n2 == 0), UPCAST=up, **common)
        return dq, dk, dv, None


def _upcast(dtype):
    return _interpret() and dtype == torch.bfloat16


def tutorial_attention(q, k, v, softmax_scale=None):
    """softmax(q k^T * softmax_scale) v for q, k, v of shape (B, H, T, D), bf16 or fp16,
    D in {32, 64, 128}; softmax_scale defaults to D ** -0.5. Differentiable in q, k, v."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"{name} must be float16 or bfloat16, got {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be (B, H, T, D), got shape {tuple(x.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] not in (32, 64, 128):
        raise ValueError(f"head dim (q.shape[-1]) must be 32, 64 or 128, got {q.shape[-1]}")
    if q.shape[2] < 1 or q.shape[0] * q.shape[1] < 1:
        raise ValueError(f"q must have T >= 1 and B*H >= 1, got shape {tuple(q.shape)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not _interpret():
        raise ValueError(f"q is on {q.device}: the kernel needs CUDA (or TRITON_INTERPRET=1)")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    return _TutorialAttention.apply(q, k, v, scale)

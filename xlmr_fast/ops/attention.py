"""xf.ops.attention: non-causal multi-head attention with a key-padding mask or varlen packing.

Contract (stable):

    out = attention(q, k, v, *, key_padding_mask=None, cu_seqlens=None, max_seqlen=None,
                    dropout_p=0.0, softmax_scale=None, seed=None)

* padded:  q, k, v (B, H, T, D), any strides (e.g. a transpose of (B, T, H, D));
           key_padding_mask (B, T) bool, True where the KEY is padding (any pattern).
           Returns (B, H, T, D) (stored as (B, T, H, D) on the Triton path, so
           out.transpose(1, 2).reshape(B, T, H*D) is a free view).
* varlen:  q, k, v (total_tokens, H, D) packed; cu_seqlens int32 (B+1,) prefix sums from 0
           to total_tokens (zero-length sequences allowed); max_seqlen a Python int >= every
           length (no host sync is done to find it). Checked for CPU tensors only: on a GPU
           reading cu_seqlens would sync.
           Returns (total_tokens, H, D).
* Rows whose keys are all padding (and zero-length sequences) give zeros.
* softmax_scale defaults to D ** -0.5. Softmax statistics are fp32.
* dropout_p > 0 drops attention probabilities with a counter-based keep-mask, a pure
  function of (seed, b*H + h, query position, key position) within each sequence: see
  attention_dropout_mask(), which materialises it for tests. seed=None draws a seed from
  torch's default (CPU) generator, so torch.manual_seed makes runs repeatable; the draw
  stays on the host (no device sync).

Backends (attention_backend() returns the choice and the reason):
    triton  kernels/triton/attention.py (FlashAttention-2 style, deterministic backward),
            registered as torch.ops.xlmr_fast.attention_fwd/_bwd so torch.compile traces it;
            CUDA tensors, or CPU tensors under TRITON_INTERPRET=1; fp16/bf16 (fp32 only
            under the interpreter or when forced); head dim 32, 64 or 128.
    sdpa    torch.nn.functional.scaled_dot_product_attention with an additive mask (its
            dropout uses torch's RNG, not the keep-mask above); everything else, and on a GPU
            where `xlmr-fast tune` measured SDPA faster for this layout, length bucket
            (SEQLEN_BUCKETS), head count, dropout and dtype at head dim 64 (tuning knob
            attention.backend).
XLMR_FAST_BACKEND=triton|cuda forces the Triton kernel (there is no separate CUDA-extension
attention; an unsupported input then raises), =reference forces SDPA.
attention_reference() is the fp32 plain-torch math that every backend is tested against.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .. import tuning
from . import _backend

log = logging.getLogger(__name__)

M32 = 0xFFFFFFFF
SEED_XOR = 0x243F6A88
BH_MUL, ROW_MUL, COL_MUL = 0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35
TRITON_HEAD_DIMS = (32, 64, 128)


# ---------------------------------------------------------------- dropout keep-mask (shared spec)
def _mix32_int(x: int) -> int:
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def dropout_seed_key(seed: int) -> int:
    """The uint32 key of a 64-bit seed (host-side; the kernels take this key)."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"attention: seed must be >= 0, got {seed}")
    return _mix32_int(_mix32_int((seed & M32) ^ SEED_XOR) ^ ((seed >> 32) & M32))


def dropout_threshold(dropout_p: float) -> int:
    """Drop iff the uint32 draw is below this; in [0, 2^32 - 1]."""
    return min(int(round(dropout_p * 2**32)), M32)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2^32 for int64 tensors of uint32 values, without int64 overflow.
    lo = (x * (c & 0xFFFF)) & M32
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def attention_dropout_mask(seed: int, batch: int, heads: int, seqlen_q: int, seqlen_k: int,
                           dropout_p: float, device=None) -> torch.Tensor:
    """The keep-mask the kernels use, as bool (batch, heads, seqlen_q, seqlen_k), True = keep.

    Entry [b, h, i, j] depends only on (seed, b*heads + h, i, j), so a sequence of a packed
    (varlen) batch uses the top-left [:len, :len] corner of its padded mask.
    """
    key = dropout_seed_key(seed)
    bh = torch.arange(batch * heads, dtype=torch.int64, device=device)
    hb = _mix32(key ^ _mul32(bh, BH_MUL))                                     # (BH,)
    rows = _mul32(torch.arange(seqlen_q, dtype=torch.int64, device=device), ROW_MUL)
    hr = _mix32(hb[:, None] ^ rows[None, :])                                  # (BH, Tq)
    cols = _mul32(torch.arange(seqlen_k, dtype=torch.int64, device=device), COL_MUL)
    r = _mix32(hr[:, :, None] ^ cols[None, None, :])                          # (BH, Tq, Tk)
    return (r >= dropout_threshold(dropout_p)).view(batch, heads, seqlen_q, seqlen_k)


# ---------------------------------------------------------------- references
def attention_reference(q, k, v, *, key_padding_mask=None, cu_seqlens=None, softmax_scale=None,
                        dropout_mask=None, dropout_p=0.0):
    """Plain-torch fp32 attention; the ground truth for every backend (differentiable).

    dropout_mask: optional bool keep-mask (B, H, T, T) (e.g. attention_dropout_mask(...));
    kept probabilities are scaled by 1 / (1 - dropout_p). With cu_seqlens, q/k/v are packed
    (total, H, D) and each sequence b uses dropout_mask[b, :, :len, :len].
    """
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()  # host sync: fine for a reference
        outs = []
        for b in range(len(bounds) - 1):
            s, e = bounds[b], bounds[b + 1]
            if e == s:
                continue
            sl = lambda x: x[s:e].transpose(0, 1)[None]  # noqa: E731  (1, H, L, D)
            m = None if dropout_mask is None else dropout_mask[b:b + 1, :, :e - s, :e - s]
            o = attention_reference(sl(q), sl(k), sl(v), softmax_scale=softmax_scale,
                                    dropout_mask=m, dropout_p=dropout_p)
            outs.append(o[0].transpose(0, 1))
        return torch.cat(outs, 0) if outs else (q * 0).float().to(q.dtype)
    out_dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if key_padding_mask is not None:
        s = s.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    # Softmax written out so that all-padding rows give exactly 0 (and 0 gradients)
    # instead of NaN: their max is -inf, replaced by 0 so exp(-inf - 0) = 0.
    m = s.amax(dim=-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom == 0, torch.ones_like(denom), denom)
    if dropout_mask is not None:
        p = p * dropout_mask.to(p.dtype) / (1.0 - dropout_p)
    return torch.einsum("bhqk,bhkd->bhqd", p, v).to(out_dtype)


# ---------------------------------------------------------------- varlen <-> padded (no host sync)
def _varlen_index(cu_seqlens, total, max_seqlen):
    """(seq id, position) of each packed token, and the (B, max_seqlen) padding mask."""
    tok = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    seq = torch.searchsorted(cu_seqlens[1:].contiguous(), tok, right=True)
    pos = tok.long() - cu_seqlens.long()[seq]
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    pad = torch.arange(max_seqlen, device=cu_seqlens.device)[None, :] >= lens[:, None]
    return seq, pos, pad


def _sdpa(q, k, v, key_padding_mask, dropout_p, softmax_scale):
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=softmax_scale)
    # A sequence whose every key is padding attends to all its keys unmasked here, and its
    # output (and so its gradient) is zeroed below. Masked, its rows' logsumexp would be about
    # finfo.min, and cuDNN's backward (the default SDPA backend on H100/H200 since torch 2.11)
    # returns NaN dQ for such rows when T % 128 == 64 (pytorch#196678: exp(0 - lse) overflows
    # on the padded tail of its last key tile), which the Q projection would spread to every
    # weight.
    all_pad = key_padding_mask.all(dim=-1, keepdim=True)
    # Additive float mask: a bool mask was measured slower in SDPA (fairseq2 #438), and a
    # finite minimum (not -inf) keeps every row's softmax NaN-free in every backend.
    mask = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
    mask = mask.masked_fill(key_padding_mask & ~all_pad, torch.finfo(q.dtype).min)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :],
                                         dropout_p=dropout_p, scale=softmax_scale)
    return out.masked_fill(all_pad[:, :, None, None], 0.0)


def _sdpa_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p, softmax_scale):
    B = cu_seqlens.numel() - 1
    seq, pos, pad = _varlen_index(cu_seqlens, q.shape[0], max_seqlen)

    def to_padded(x):
        y = x.new_zeros((B, max_seqlen) + tuple(x.shape[1:]))
        y[seq, pos] = x
        return y.transpose(1, 2)  # (B, H, T, D)

    out = _sdpa(to_padded(q), to_padded(k), to_padded(v), pad, dropout_p, softmax_scale)
    return out.transpose(1, 2)[seq, pos]


# ---------------------------------------------------------------- backend choice
# Sequence-length buckets of the tuned choice (knob attention.backend): a batch whose (max)
# length is T uses the entry of the smallest bucket >= T; longer batches are not tuned.
SEQLEN_BUCKETS = (128, 256, 512)
TUNED_HEAD_DIM = 64  # XLM-R's: the head dim `xlmr-fast tune` times


def seqlen_bucket(T: int) -> int | None:
    """The tuning key's length for a batch of (max) length T, or None above SEQLEN_BUCKETS."""
    for b in SEQLEN_BUCKETS:
        if T <= b:
            return b
    return None


def _key_parts(layout: str, T: int, heads: int, dropout: bool, dtype) -> tuple | None:
    bucket = seqlen_bucket(T)
    if bucket is None:
        return None
    return layout, bucket, heads, "dropout" if dropout else "no-dropout", dtype


def attention_tuning_key(layout: str, T: int, heads: int, dropout: bool, dtype) -> str | None:
    """The attention.backend key of a batch (`xlmr-fast tune` writes it); None when its length
    is not tuned."""
    parts = _key_parts(layout, T, heads, dropout, dtype)
    return None if parts is None else tuning.key(*parts)


@torch.compiler.assume_constant_result
def _tuned_backend(dev_index, layout: str, T: int, heads: int, dropout: bool, dtype) -> str:
    # A pure function of the GPU, the tuning files and the key: torch.compile evaluates it once
    # while tracing instead of tracing the file lookup. "" when nothing is tuned.
    parts = _key_parts(layout, T, heads, dropout, dtype)
    if parts is None:
        return ""
    device = torch.device("cuda", dev_index) if dev_index is not None else torch.device("cuda")
    return tuning.choice("attention.backend", device, *parts) or ""


def attention_backend(q, k=None, v=None, *, key_padding_mask=None, cu_seqlens=None,
                      dropout_p=0.0, max_seqlen=None):
    """(backend, reason): which backend attention() uses for these inputs, and why."""
    f = _backend.forced()
    if f == "reference":
        return "sdpa", "XLMR_FAST_BACKEND=reference"
    why_not = _triton_refusal(q, forced=f in ("triton", "cuda"))
    if f in ("triton", "cuda"):
        if why_not:
            raise _backend.Unsupported(f"attention: XLMR_FAST_BACKEND={f} but the Triton "
                                       f"kernel cannot run this input: {why_not}")
        return "triton", f"XLMR_FAST_BACKEND={f}"
    if why_not:
        return "sdpa", why_not
    if q.device.type == "cuda" and q.shape[-1] == TUNED_HEAD_DIM:
        varlen = cu_seqlens is not None
        T = max_seqlen if varlen else q.shape[2]
        layout = "varlen" if varlen else "padded"
        if isinstance(T, int) and _tuned_backend(q.device.index, layout, T, q.shape[1],
                                                 dropout_p > 0.0, q.dtype) == "sdpa":
            return "sdpa", (f"tuning file: SDPA measured faster on this GPU ({layout}, "
                            f"max_seqlen <= {seqlen_bucket(T)}, {q.shape[1]} heads)")
    return "triton", "supported"


_TRITON_IMPORTABLE = []


def _triton_importable():
    # Cached in a plain list rather than through functools.lru_cache, which torch.compile
    # warns about when it traces the dispatch.
    if not _TRITON_IMPORTABLE:
        _TRITON_IMPORTABLE.append(_backend.triton_importable())
    return _TRITON_IMPORTABLE[0]


def _triton_refusal(q, forced=False):
    """None when the Triton kernel supports q's device/dtype/shape, else the reason."""
    if not _triton_importable():
        return "triton is not installed"
    if not (q.device.type == "cuda" or (q.device.type == "cpu" and _backend.interpret())):
        return f"{q.device.type} tensors need CUDA, or TRITON_INTERPRET=1 on the CPU"
    D = q.shape[-1]
    if D not in TRITON_HEAD_DIMS:
        return f"head dim {D} not in {TRITON_HEAD_DIMS}"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype} (kernel takes fp16/bf16/fp32)"
    if q.dtype == torch.float32 and q.device.type == "cuda" and not forced:
        return "fp32 on CUDA: the kernel's exact-fp32 dots are slower than SDPA"
    if q.numel() == 0:
        return "empty input"
    return None


# ---------------------------------------------------------------- the registered op (Triton)
def _kernels():
    from xlmr_fast.kernels.triton import attention as kern  # imports triton; lazy on purpose
    return kern


def _rng(dropout_p, seed):
    if dropout_p <= 0.0:
        return 0, 0
    return dropout_seed_key(int(seed.item())), dropout_threshold(dropout_p)  # CPU tensor: no sync


def _layout_like(x, varlen):
    if varlen:
        return x.new_empty(x.shape)
    B, H, T, D = x.shape
    return x.new_empty((B, T, H, D)).transpose(1, 2)


def _stats_shape(q, varlen):
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[1], q.shape[2])


@torch.library.custom_op("xlmr_fast::attention_fwd", mutates_args=())
def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   key_padding_mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                   max_seqlen: int, dropout_p: float, softmax_scale: float,
                   seed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Returns (out, lse, out_lo); out_lo is out's rounding residual for 16-bit inputs (the
    # backward needs O to ~fp32 precision, see kernels/triton/attention.py), else empty.
    key, thresh = _rng(dropout_p, seed)
    return _kernels().attention_fwd(q, k, v, key_padding_mask, cu_seqlens, max_seqlen,
                                    softmax_scale, dropout_p, key, thresh)


@_attention_fwd.register_fake
def _(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, dropout_p, softmax_scale, seed):
    varlen = cu_seqlens is not None
    return (_layout_like(q, varlen),
            q.new_empty(_stats_shape(q, varlen), dtype=torch.float32),
            _layout_like(q, varlen) if q.dtype != torch.float32 else q.new_empty(0))


@torch.library.custom_op("xlmr_fast::attention_bwd", mutates_args=())
def _attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   out: torch.Tensor, out_lo: torch.Tensor, lse: torch.Tensor,
                   key_padding_mask: torch.Tensor | None,
                   cu_seqlens: torch.Tensor | None, max_seqlen: int, dropout_p: float,
                   softmax_scale: float, seed: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key, thresh = _rng(dropout_p, seed)
    return _kernels().attention_bwd(grad_out, q, k, v, out, out_lo, lse, key_padding_mask,
                                    cu_seqlens,
                                    max_seqlen, softmax_scale, dropout_p, key, thresh)


@_attention_bwd.register_fake
def _(grad_out, q, k, v, out, out_lo, lse, key_padding_mask, cu_seqlens, max_seqlen, dropout_p,
      softmax_scale, seed):
    varlen = cu_seqlens is not None
    return _layout_like(q, varlen), _layout_like(k, varlen), _layout_like(v, varlen)


def _setup_context(ctx, inputs, output):
    q, k, v, kpm, cu, max_seqlen, dropout_p, scale, seed = inputs
    out, lse, out_lo = output
    ctx.save_for_backward(q, k, v, out, out_lo, lse, kpm, cu, seed)
    ctx.meta = (max_seqlen, dropout_p, scale)
    ctx.mark_non_differentiable(lse, out_lo)


def _backward(ctx, grad_out, grad_lse, grad_out_lo):
    q, k, v, out, out_lo, lse, kpm, cu, seed = ctx.saved_tensors
    max_seqlen, dropout_p, scale = ctx.meta
    dq, dk, dv = _attention_bwd(grad_out, q, k, v, out, out_lo, lse, kpm, cu, max_seqlen,
                                dropout_p, scale, seed)
    return dq, dk, dv, None, None, None, None, None, None


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same kernels as the custom op, for eager mode: torch.library.custom_op's Python
    dispatch (schema checks, default filling, autograd wrapper) costs ~0.2 ms per call, which
    an eager training step pays per layer and which showed as +0.9 ms on a 1 ms fwd+bwd in
    the H100 benchmark. torch.compile still sees the custom op."""

    @staticmethod
    def forward(ctx, q, k, v, kpm, cu, max_seqlen, dropout_p, scale, seed):
        key, thresh = _rng(dropout_p, seed)
        out, lse, out_lo = _kernels().attention_fwd(q, k, v, kpm, cu, max_seqlen, scale,
                                                    dropout_p, key, thresh)
        ctx.save_for_backward(q, k, v, out, out_lo, lse, kpm, cu)
        ctx.meta = (max_seqlen, dropout_p, scale, key, thresh)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, out_lo, lse, kpm, cu = ctx.saved_tensors
        max_seqlen, dropout_p, scale, key, thresh = ctx.meta
        dq, dk, dv = _kernels().attention_bwd(grad_out, q, k, v, out, out_lo, lse, kpm, cu,
                                              max_seqlen, scale, dropout_p, key, thresh)
        return dq, dk, dv, None, None, None, None, None, None


class _EagerAttentionPacked(torch.autograd.Function):
    """_EagerAttention on the three slices of one packed qkv tensor, whose gradient it returns
    as ONE tensor written by the backward kernels in place. Through q/k/v views taken by
    indexing (qkv[0], qkv[1], qkv[2], as the model did), autograd builds three zero-filled
    qkv-sized gradients (select's backward), copies each slice in and sums the three: ~11
    qkv-sized passes over HBM per layer, about 0.3 ms per layer of XLM-R base at 32 x 512 on an
    H100 (estimated from bytes, not measured); views from unbind() cost one stack (a qkv-sized
    copy) instead. Here: no extra pass."""

    @staticmethod
    def forward(ctx, qkv, kpm, cu, max_seqlen, dropout_p, scale, seed):
        q, k, v = _unpack(qkv, cu is not None)
        key, thresh = _rng(dropout_p, seed)
        out, lse, out_lo = _kernels().attention_fwd(q, k, v, kpm, cu, max_seqlen, scale,
                                                    dropout_p, key, thresh)
        ctx.save_for_backward(qkv, out, out_lo, lse, kpm, cu)
        ctx.meta = (max_seqlen, dropout_p, scale, key, thresh)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, out, out_lo, lse, kpm, cu = ctx.saved_tensors
        max_seqlen, dropout_p, scale, key, thresh = ctx.meta
        varlen = cu is not None
        dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
        dq, dk, dv = _unpack(dqkv, varlen)
        _kernels().attention_bwd(grad_out, *_unpack(qkv, varlen), out, out_lo, lse, kpm, cu,
                                 max_seqlen, scale, dropout_p, key, thresh, dq=dq, dk=dk, dv=dv)
        return dqkv, None, None, None, None, None, None


def _unpack(qkv, varlen):
    """q, k, v views of a packed tensor: (B, T, 3, H, D) -> three (B, H, T, D); varlen
    (total, 3, H, D) -> three (total, H, D)."""
    # unbind: one call for the three views (Python indexing costs ~5 us a slice, per layer)
    return qkv.unbind(1) if varlen else qkv.permute(2, 0, 3, 1, 4).unbind(0)


# ---------------------------------------------------------------- public entry point
def _validate(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, dropout_p, softmax_scale, seed):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"attention: q, k, v must have one shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"attention: q, k, v must have one dtype, got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, "
                         f"{k.device}, {v.device}")
    if cu_seqlens is None:
        if q.dim() != 4:
            raise ValueError(f"attention: q, k, v must be (B, H, T, D) (or packed (total, H, D) "
                             f"with cu_seqlens), got {tuple(q.shape)}")
        if max_seqlen is not None and max_seqlen != q.shape[2]:
            raise ValueError(f"attention: max_seqlen is for the packed layout (with cu_seqlens); "
                             f"got max_seqlen={max_seqlen} for padded T={q.shape[2]}")
        if key_padding_mask is not None:
            B, T = q.shape[0], q.shape[2]
            if key_padding_mask.shape != (B, T) or key_padding_mask.dtype != torch.bool:
                raise ValueError(f"attention: key_padding_mask must be bool (B, T) = ({B}, {T}), "
                                 f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
            if key_padding_mask.device != q.device:
                raise ValueError(f"attention: key_padding_mask is on {key_padding_mask.device}, "
                                 f"q on {q.device}")
    else:
        if key_padding_mask is not None:
            raise ValueError("attention: pass key_padding_mask (padded layout) or cu_seqlens "
                             "(packed layout), not both")
        if q.dim() != 3:
            raise ValueError(f"attention: with cu_seqlens, q, k, v must be packed (total, H, D), "
                             f"got {tuple(q.shape)}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.dtype != torch.int32:
            raise ValueError(f"attention: cu_seqlens must be a 1-D int32 tensor (batch + 1,), got "
                             f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
        if cu_seqlens.device != q.device:
            raise ValueError(f"attention: cu_seqlens is on {cu_seqlens.device}, q on {q.device}")
        if not isinstance(max_seqlen, int) or isinstance(max_seqlen, bool) or max_seqlen < 0:
            raise ValueError(f"attention: with cu_seqlens, max_seqlen must be a Python int >= "
                             f"the longest sequence (no host sync is done to find it), got "
                             f"{max_seqlen!r}")
        if cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_cu_seqlens(cu_seqlens, q.shape[0], max_seqlen)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if softmax_scale is not None and not softmax_scale > 0:
        raise ValueError(f"attention: softmax_scale must be > 0, got {softmax_scale}")
    if seed is not None and (not isinstance(seed, int) or seed < 0):
        raise ValueError(f"attention: seed must be a non-negative int or None, got {seed!r}")


def _check_cu_seqlens(cu_seqlens, total, max_seqlen):
    """The packed layout's promises, checked where reading cu_seqlens costs no device sync (a
    CPU tensor). On a GPU they are the caller's: a token past cu_seqlens[-1] belongs to no
    sequence and gets an unspecified output and gradient from the Triton kernel (pad a packed
    buffer by giving its padding tokens a sequence of their own), and a sequence longer than
    max_seqlen is cut short."""
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != total:
        raise ValueError(f"attention: cu_seqlens must run from 0 to the packed token count "
                         f"{total}, got {cu[0]} .. {cu[-1]}")
    lengths = [e - s for s, e in zip(cu, cu[1:])]
    if lengths and min(lengths) < 0:
        raise ValueError("attention: cu_seqlens must not decrease")
    if lengths and max(lengths) > max_seqlen:
        raise ValueError(f"attention: max_seqlen={max_seqlen} but a sequence in cu_seqlens has "
                         f"{max(lengths)} tokens")


def _kernel_args(q, cu_seqlens, max_seqlen, dropout_p, softmax_scale, seed):
    """(max_seqlen, dropout_p, scale, seed tensor) as the Triton op and Functions take them."""
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    seed_t = None
    if dropout_p > 0.0:
        # A CPU int64 tensor: drawn from torch's default generator without a device sync, and
        # traceable by torch.compile (a Python int drawn with .item() would break the graph).
        seed_t = (torch.randint(0, 2**62, (), dtype=torch.int64) if seed is None
                  else torch.tensor(seed, dtype=torch.int64))
    T = q.shape[2] if cu_seqlens is None else int(max_seqlen)
    return T, dropout_p, scale, seed_t


def attention(q, k, v, *, key_padding_mask=None, cu_seqlens=None, max_seqlen=None,
              dropout_p: float = 0.0, softmax_scale=None, seed=None):
    """Multi-head attention, non-causal. See the module docstring for the contract."""
    _validate(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, dropout_p, softmax_scale, seed)
    dropout_p = float(dropout_p)
    backend, reason = attention_backend(q, key_padding_mask=key_padding_mask,
                                        cu_seqlens=cu_seqlens, dropout_p=dropout_p,
                                        max_seqlen=max_seqlen)
    return _dispatch(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, dropout_p,
                     softmax_scale, seed, backend, reason)


def _dispatch(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, dropout_p, softmax_scale, seed,
              backend, reason):
    """attention() after validation and the backend choice: SDPA, the custom op under
    torch.compile, or the eager autograd.Function."""
    if backend == "sdpa":
        if not torch.compiler.is_compiling():  # logging is a graph break under compile
            log.debug("attention: SDPA backend (%s)", reason)
        if cu_seqlens is not None:
            return _sdpa_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p, softmax_scale)
        return _sdpa(q, k, v, key_padding_mask, dropout_p, softmax_scale)
    args = (q, k, v, key_padding_mask, cu_seqlens,
            *_kernel_args(q, cu_seqlens, max_seqlen, dropout_p, softmax_scale, seed))
    if torch.compiler.is_compiling():
        return _attention_fwd(*args)[0]
    return _EagerAttention.apply(*args)


def attention_qkvpacked(qkv, *, key_padding_mask=None, cu_seqlens=None, max_seqlen=None,
                        dropout_p: float = 0.0, softmax_scale=None, seed=None):
    """attention() of the three slices of one packed tensor, as a fused QKV projection makes
    them: padded qkv (B, T, 3, H, D) -> (B, H, T, D); with cu_seqlens, packed qkv
    (total, 3, H, D) -> (total, H, D). Same values, masks, dropout and gradients as
    attention(q, k, v) on those slices; on the eager Triton path the gradient of qkv is one
    tensor written in place by the kernels (see _EagerAttentionPacked)."""
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"attention_qkvpacked: qkv must be a torch.Tensor, got "
                        f"{type(qkv).__name__}")
    varlen = cu_seqlens is not None
    want = "(total, 3, H, D) with cu_seqlens" if varlen else "(B, T, 3, H, D)"
    if qkv.dim() != (4 if varlen else 5) or qkv.shape[-3] != 3:
        raise ValueError(f"attention_qkvpacked: qkv must be {want}, got {tuple(qkv.shape)}")
    q, k, v = _unpack(qkv, varlen)
    _validate(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, dropout_p, softmax_scale, seed)
    dropout_p = float(dropout_p)
    backend, reason = attention_backend(q, key_padding_mask=key_padding_mask,
                                        cu_seqlens=cu_seqlens, dropout_p=dropout_p,
                                        max_seqlen=max_seqlen)
    if backend != "triton" or torch.compiler.is_compiling():
        # SDPA, or torch.compile (which sees the custom op and handles the slices itself)
        return _dispatch(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, dropout_p,
                         softmax_scale, seed, backend, reason)
    return _EagerAttentionPacked.apply(
        qkv, key_padding_mask, cu_seqlens,
        *_kernel_args(q, cu_seqlens, max_seqlen, dropout_p, softmax_scale, seed))

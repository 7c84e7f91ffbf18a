"""xf.ops.add_dropout_layernorm: the post-LN residual join of XLM-R's Transformer layers.

Contract:
    y = add_dropout_layernorm(x, residual, weight, bias, *, dropout_p=0.0, eps=1e-5, seed=None)
      = LayerNorm(residual + dropout(x, dropout_p)) over the last dim, with weight and bias.
    x, residual: (..., N) of one shape; x fp32 / fp16 / bf16, residual x's dtype or fp32 (the
    post-LN residual stream under autocast: LayerNorm gives fp32, the sublayer's GEMM 16-bit);
    weight, bias: (N,) of one dtype (x's dtype or fp32). y has residual's dtype (what
    residual + x promotes to) and x's shape. Sums and statistics are fp32.
    Differentiable in x, residual, weight and bias; each gradient has its input's dtype.

Dropout mask (identical on every backend, a pure function of seed and element index):
    element e = flat row-major index into x (mod 2^32), (key1, key2) = dropout_keys(seed),
    kept iff mix32(mix32(e ^ key1) ^ key2) >= round(dropout_p * 2^32), kept values scaled by
    1 / (1 - dropout_p); mix32 = lowbias32, the hash of xf.ops.mlm_mask.
    dropout_keep_mask(seed, shape, dropout_p) materialises it (tests, references).
    seed=None draws one from torch's CPU generator (so torch.manual_seed governs it); under
    torch.compile pass seed explicitly (the draw calls .item(), a graph break). Use a different
    seed for every call site and step, or the masks repeat.

Backends: triton (CUDA, or the CPU interpreter with TRITON_INTERPRET=1) > reference (torch fp32
math, any device, same mask). XLMR_FAST_BACKEND=reference|triton forces one; a forced backend
that cannot run raises Unsupported. add_dropout_layernorm_reference() is the plain-torch fp32
ground truth (autograd through F.layer_norm) used by the tests.
The Triton kernels run one fixed block config, so results are bitwise equal in every process
(a resumed run, each rank); XLMR_FAST_AUTOTUNE=1 lets Triton's autotuner pick by timing instead
(kernels/triton.autotune_on: the pick, and so the rounding of the gradient sums, may then
differ between processes).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .. import tuning
from . import _backend
from .mlm_mask import M32, mix32, mix32_int

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_SEED_SALT = 0x6A09E667  # distinct from mlm_mask's salt so the two streams never coincide
_KEY2_SALT = 0xBB67AE85
_KEY_MASK = 0x7FFFFFFF  # 31-bit keys: always an int32 Triton argument (one compiled signature)


# ---- the dropout mask ------------------------------------------------------------------------
def dropout_keys(seed: int) -> tuple[int, int]:
    """(key1, key2): the two 31-bit hash keys of a 64-bit seed."""
    if not isinstance(seed, int) or seed < 0 or seed >= 2**64:
        raise ValueError(f"add_dropout_layernorm: seed must be an int in [0, 2^64), got {seed!r}")
    k = mix32_int((seed & M32) ^ _SEED_SALT)
    k = mix32_int(k ^ ((seed >> 32) & M32))
    return k & _KEY_MASK, mix32_int(k ^ _KEY2_SALT) & _KEY_MASK


def dropout_threshold(dropout_p: float) -> int:
    """Drop threshold on the uint32 hash: P(drop) = threshold / 2^32 ~= dropout_p."""
    return int(round(dropout_p * 2**32))


def dropout_keep_mask(seed: int, shape, dropout_p: float, device="cpu") -> torch.Tensor:
    """Bool keep-mask of the given shape, exactly the one the kernels use for this seed."""
    shape = torch.Size(shape)
    if dropout_p == 0.0:
        return torch.ones(shape, dtype=torch.bool, device=device)
    key1, key2 = dropout_keys(seed)
    e = torch.arange(shape.numel(), dtype=torch.int64, device=device) & M32
    h = mix32(mix32(e ^ key1) ^ key2)
    return (h >= dropout_threshold(dropout_p)).view(shape)


# ---- ground truth ----------------------------------------------------------------------------
def add_dropout_layernorm_reference(x, residual, weight, bias, *, dropout_p: float = 0.0,
                                    eps: float = 1e-5, seed=None, keep_mask=None):
    """Plain-torch fp32 LayerNorm(residual + dropout(x)); y in residual's dtype.

    The mask is keep_mask if given, else dropout_keep_mask(seed, ...) (seed required if p > 0).
    """
    s = x.float()
    if dropout_p > 0.0:
        if keep_mask is None:
            if seed is None:
                raise ValueError("add_dropout_layernorm_reference: dropout_p > 0 needs seed or keep_mask")
            keep_mask = dropout_keep_mask(seed, x.shape, dropout_p, x.device)
        s = s * keep_mask.float() / (1.0 - dropout_p)
    s = residual.float() + s
    y = F.layer_norm(s, (x.shape[-1],), weight.float(), bias.float(), eps)
    return y.to(residual.dtype)


# GPUs (device-name substrings) on which `python -m bench.bench_add_dropout_layernorm` measured
# this op faster, in device time ("(graph)" rows) at XLM-R's widths, fwd+bwd, than BOTH eager
# PyTorch and torch.compile of the same code (the rule). XLMRConfig.fused_layer_ops=None
# (auto) uses the op in the model only there. Empty until a device run shows a win.
FASTER_ON: list[str] = []


def faster_than_torch(device, width: int | None = None, dtype=None, residual_dtype=None) -> bool:
    """The model's auto rule: use this op on `device`? A tuning file's choice for this layer
    (xlmr_fast.tuning, `xlmr-fast tune`) when there is one, else FASTER_ON.
    width, dtype, residual_dtype: the layer's hidden size, x's dtype and the residual's."""
    if width is not None:
        tuned = tuning.choice("add_dropout_layernorm", device, width, dtype,
                              residual_dtype)
        if tuned is not None:
            return tuned == "fused"
    return _backend.device_listed(device, FASTER_ON)


# ---- input checks and backend choice ---------------------------------------------------------
def _check(x, residual, weight, bias, dropout_p, eps):
    name = "add_dropout_layernorm"
    for arg, t in (("x", x), ("residual", residual), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            raise ValueError(f"{name}: {arg} must be float32/float16/bfloat16, got {t.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{name}: x must be (..., N) with N > 0, got shape {tuple(x.shape)}")
    if residual.shape != x.shape:
        raise ValueError(f"{name}: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    if residual.dtype not in (x.dtype, torch.float32):
        raise ValueError(f"{name}: residual dtype {residual.dtype} must be x's ({x.dtype}) or "
                         f"float32")
    N = x.shape[-1]
    for arg, t in (("weight", weight), ("bias", bias)):
        if t.shape != (N,):
            raise ValueError(f"{name}: {arg} must have shape ({N},) (the last dim of x), "
                             f"got {tuple(t.shape)}")
        if t.dtype not in (x.dtype, torch.float32):
            raise ValueError(f"{name}: {arg} dtype must be x's ({x.dtype}) or float32, got {t.dtype}")
    if bias.dtype != weight.dtype:
        raise ValueError(f"{name}: bias dtype {bias.dtype} != weight dtype {weight.dtype}")
    for arg, t in (("residual", residual), ("weight", weight), ("bias", bias)):
        if t.device != x.device:
            raise ValueError(f"{name}: {arg} is on {t.device}, x on {x.device}")
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p < 1.0):
        raise ValueError(f"{name}: dropout_p must be in [0, 1), got {dropout_p!r}")
    if not (isinstance(eps, (int, float)) and eps > 0.0 and math.isfinite(eps)):
        raise ValueError(f"{name}: eps must be a positive finite float, got {eps!r}")


def _choose_backend(x) -> str:
    N = x.shape[-1]
    why = None
    if not _backend.triton_usable(x.device):
        why = f"triton cannot run on {x.device} (CUDA, or CPU with TRITON_INTERPRET=1)"
    elif N > 16384:
        why = f"N={N} > 16384 does not fit one row per program"
    f = _backend.forced()
    if f == "cuda":
        raise _backend.Unsupported("add_dropout_layernorm: no CUDA-extension backend; use triton or reference")
    if f == "triton" and why:
        raise _backend.Unsupported(f"add_dropout_layernorm: forced triton backend refused: {why}")
    if f == "reference" or why:
        return "reference"
    return "triton"


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _bwd_grid(M: int, device) -> tuple[int, int]:
    """(G, rows_per_prog): a fixed split of the rows, so the partial sums are deterministic."""
    target = 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    rows_per_prog = max(1, -(-M // target))
    return -(-M // rows_per_prog), rows_per_prog


# ---- backends ----------------------------------------------------------------------------------
def _fwd_reference(x2, r2, weight, bias, dropout_p, eps, seed):
    s = x2.float()
    if dropout_p > 0.0:
        s = s * dropout_keep_mask(seed, x2.shape, dropout_p, x2.device) / (1.0 - dropout_p)
    s = s + r2.float()
    mean = s.mean(dim=-1)
    d = s - mean[:, None]
    rstd = torch.rsqrt((d * d).mean(dim=-1) + eps)
    y = d * rstd[:, None] * weight.float() + bias.float()
    return y.to(r2.dtype), mean, rstd


def _bwd_reference(dy2, x2, r2, weight, mean, rstd, dropout_p, seed):
    N = x2.shape[-1]
    s = x2.float()
    keep = None
    if dropout_p > 0.0:
        keep = dropout_keep_mask(seed, x2.shape, dropout_p, x2.device)
        s = s * keep / (1.0 - dropout_p)
    xhat = (s + r2.float() - mean[:, None]) * rstd[:, None]
    dyf = dy2.float()
    g = dyf * weight.float()
    c1 = (xhat * g).sum(-1, keepdim=True) / N
    c2 = g.sum(-1, keepdim=True) / N
    ds = (g - xhat * c1 - c2) * rstd[:, None]
    # Without dropout dx == dresidual; clone so the two outputs never alias (custom-op rule).
    dx = ds * keep / (1.0 - dropout_p) if keep is not None else ds.clone()
    dw = (dyf * xhat).sum(0)
    db = dyf.sum(0)
    return dx.to(x2.dtype), ds.to(r2.dtype), dw.to(weight.dtype), db.to(weight.dtype)


def _fwd_triton(x2, r2, weight, bias, dropout_p, eps, seed):
    from xlmr_fast.kernels.triton import add_dropout_layernorm as _k

    M, N = x2.shape
    y = torch.empty_like(r2)  # residual's dtype (fp32 stream under autocast, or x's)
    mean = torch.empty(M, dtype=torch.float32, device=x2.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x2.device)
    if M == 0:
        return y, mean, rstd
    key1, key2 = dropout_keys(seed) if dropout_p > 0.0 else (0, 0)
    _k.forward(x2, r2, weight.contiguous(), bias.contiguous(), y, mean, rstd, key1, key2,
               dropout_threshold(dropout_p), 1.0 / (1.0 - dropout_p), float(eps), dropout_p > 0.0)
    return y, mean, rstd


def _bwd_triton(dy2, x2, r2, weight, mean, rstd, dropout_p, seed):
    from xlmr_fast.kernels.triton import add_dropout_layernorm as _k

    M, N = x2.shape
    dx = torch.empty_like(x2)
    dr = torch.empty_like(r2)
    if M == 0:
        z = torch.zeros_like(weight)
        return dx, dr, z, z.clone()
    G, rows_per_prog = _bwd_grid(M, x2.device)
    dw_part = torch.empty((G, N), dtype=torch.float32, device=x2.device)
    db_part = torch.empty((G, N), dtype=torch.float32, device=x2.device)
    key1, key2 = dropout_keys(seed) if dropout_p > 0.0 else (0, 0)
    _k.backward(dy2, x2, r2, weight.contiguous(), mean, rstd, dx, dr, dw_part, db_part, rows_per_prog,
                key1, key2, dropout_threshold(dropout_p), 1.0 / (1.0 - dropout_p), dropout_p > 0.0)
    # Fixed-order reduction over G partial rows: deterministic weight/bias gradients.
    return dx, dr, dw_part.sum(0).to(weight.dtype), db_part.sum(0).to(weight.dtype)


def _fwd(x, residual, weight, bias, dropout_p, eps, seed, backend):
    """(y, mean, rstd) on any (..., N) shape: the body of both the custom op and the eager
    Function."""
    N = x.shape[-1]
    x2 = x.reshape(-1, N).contiguous()
    r2 = residual.reshape(-1, N).contiguous()
    impl = _fwd_triton if backend == "triton" else _fwd_reference
    y, mean, rstd = impl(x2, r2, weight, bias, dropout_p, eps, seed)
    return y.view(x.shape), mean, rstd


def _bwd(dy, x, residual, weight, mean, rstd, dropout_p, seed, backend):
    """(dx, dresidual, dweight, dbias): the backward of _fwd."""
    N = x.shape[-1]
    dy2 = dy.reshape(-1, N).contiguous()
    x2 = x.reshape(-1, N).contiguous()
    r2 = residual.reshape(-1, N).contiguous()
    impl = _bwd_triton if backend == "triton" else _bwd_reference
    dx, dr, dw, db = impl(dy2, x2, r2, weight, mean, rstd, dropout_p, seed)
    return dx.view(x.shape), dr.view(x.shape), dw, db


# ---- registered ops (what torch.compile sees) ---------------------------------------------------
@torch.library.custom_op("xlmr_fast::add_dropout_layernorm_fwd", mutates_args=())
def _op_fwd(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            dropout_p: float, eps: float, seed: int, backend: str
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd(x, residual, weight, bias, dropout_p, eps, seed, backend)


@_op_fwd.register_fake
def _(x, residual, weight, bias, dropout_p, eps, seed, backend):
    M = x.numel() // x.shape[-1]
    return (residual.new_empty(x.shape), x.new_empty((M,), dtype=torch.float32),
            x.new_empty((M,), dtype=torch.float32))


@torch.library.custom_op("xlmr_fast::add_dropout_layernorm_bwd", mutates_args=())
def _op_bwd(dy: torch.Tensor, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
            mean: torch.Tensor, rstd: torch.Tensor, dropout_p: float, seed: int, backend: str
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd(dy, x, residual, weight, mean, rstd, dropout_p, seed, backend)


@_op_bwd.register_fake
def _(dy, x, residual, weight, mean, rstd, dropout_p, seed, backend):
    return (x.new_empty(x.shape), residual.new_empty(x.shape), weight.new_empty(weight.shape),
            weight.new_empty(weight.shape))


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, dropout_p, eps, seed, backend = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, residual, weight, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)
    ctx.dropout_p, ctx.seed, ctx.backend = dropout_p, seed, backend


def _backward(ctx, dy, dmean, drstd):
    x, residual, weight, mean, rstd = ctx.saved_tensors
    dx, dr, dw, db = torch.ops.xlmr_fast.add_dropout_layernorm_bwd(
        dy, x, residual, weight, mean, rstd, ctx.dropout_p, ctx.seed, ctx.backend)
    return dx, dr, dw, db, None, None, None, None


torch.library.register_autograd("xlmr_fast::add_dropout_layernorm_fwd", _backward,
                                setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The same _fwd / _bwd as the custom op, for eager mode. The custom op's Python dispatch
    (schema check, autograd wrapper, then the backward op's own dispatch) costs host time: a
    fwd+bwd with the math stubbed out took 260 us through the custom op and 160 us through this
    Function on the 2-core CI CPU, and the model calls this op twice per layer and step.
    torch.compile still sees the custom op."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, dropout_p, eps, seed, backend):
        y, mean, rstd = _fwd(x, residual, weight, bias, dropout_p, eps, seed, backend)
        ctx.save_for_backward(x, residual, weight, mean, rstd)
        ctx.meta = (dropout_p, seed, backend)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, residual, weight, mean, rstd = ctx.saved_tensors
        dx, dr, dw, db = _bwd(dy, x, residual, weight, mean, rstd, *ctx.meta)
        return dx, dr, dw, db, None, None, None, None


# ---- public API --------------------------------------------------------------------------------
def add_dropout_layernorm(x, residual, weight, bias, *, dropout_p: float = 0.0, eps: float = 1e-5,
                          seed=None):
    """LayerNorm(residual + dropout(x)) over the last dim; see the module docstring."""
    _check(x, residual, weight, bias, dropout_p, eps)
    dropout_p = float(dropout_p)
    if dropout_p == 0.0:
        seed = 0
    elif seed is None:
        # CPU generator: no device sync, and torch.manual_seed makes runs reproducible.
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
    elif not isinstance(seed, torch.SymInt):  # a traced seed stays symbolic (no recompiles)
        dropout_keys(seed)  # validates
    args = (x, residual, weight, bias, dropout_p, float(eps), seed, _choose_backend(x))
    if torch.compiler.is_compiling():
        return torch.ops.xlmr_fast.add_dropout_layernorm_fwd(*args)[0]
    return _Eager.apply(*args)

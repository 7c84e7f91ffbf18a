"""xf.ops.bias_gelu: the FFN up-projection epilogue of XLM-R, y = gelu(x + bias).

Contract:
    y = bias_gelu(x, bias)
    x: (..., F) fp32 / fp16 / bf16; bias: (F,) of x's dtype or fp32. y has x's dtype and shape.
    GELU is the exact erf form (fairseq "gelu", HF "gelu"), NOT the tanh approximation that
    cuBLASLt's GELU epilogue and flash-attn's bias_gelu use. z = x + bias is formed in fp32.
    Differentiable in x and bias; the bias gradient is a deterministic fixed-order sum.

Backends: triton (CUDA, or the CPU interpreter with TRITON_INTERPRET=1) > reference (torch fp32
math). XLMR_FAST_BACKEND=reference|triton forces one; a forced backend that cannot run raises
Unsupported. bias_gelu_reference() is the plain-torch fp32 ground truth used by the tests.
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

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def bias_gelu_reference(x, bias):
    """Plain-torch fp32 erf-GELU(x + bias), returned in x's dtype."""
    return F.gelu(x.float() + bias.float(), approximate="none").to(x.dtype)


# GPUs (device-name substrings) on which `python -m bench.bench_bias_gelu` measured
# this op faster, in device time ("(graph)" rows) at XLM-R's widths, fwd+bwd, than BOTH eager
# PyTorch and torch.compile of the same code (the rule). XLMRConfig.fused_layer_ops=None
# (auto) uses the op in the model only there. Read the in-context ("ctx") rows: in the model the
# bias leaves cuBLAS's GEMM epilogue for this kernel. Empty until a device run shows a win.
FASTER_ON: list[str] = []


def faster_than_torch(device, width: int | None = None, dtype=None) -> bool:
    """The model's auto rule: use this op on `device`? A tuning file's choice for this layer
    (xlmr_fast.tuning, `xlmr-fast tune`) when there is one, else FASTER_ON.
    width, dtype: the layer's hidden size (the FFN is 4x wider) and the fc1 GEMM's dtype."""
    if width is not None:
        tuned = tuning.choice("bias_gelu", device, width, dtype)
        if tuned is not None:
            return tuned == "fused"
    return _backend.device_listed(device, FASTER_ON)


def _check(x, bias):
    for arg, t in (("x", x), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"bias_gelu: {arg} must be a tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            raise ValueError(f"bias_gelu: {arg} must be float32/float16/bfloat16, got {t.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"bias_gelu: x must be (..., F) with F > 0, got shape {tuple(x.shape)}")
    if bias.shape != (x.shape[-1],):
        raise ValueError(f"bias_gelu: bias must have shape ({x.shape[-1]},) (the last dim of x), "
                         f"got {tuple(bias.shape)}")
    if bias.dtype not in (x.dtype, torch.float32):
        raise ValueError(f"bias_gelu: bias dtype must be x's ({x.dtype}) or float32, got {bias.dtype}")
    if bias.device != x.device:
        raise ValueError(f"bias_gelu: bias is on {bias.device}, x on {x.device}")


def _choose_backend(x) -> str:
    f = _backend.forced()
    usable = _backend.triton_usable(x.device)
    if f == "cuda":
        raise _backend.Unsupported("bias_gelu: no CUDA-extension backend; use triton or reference")
    if f == "triton" and not usable:
        raise _backend.Unsupported(f"bias_gelu: forced triton backend refused: triton cannot run on "
                                   f"{x.device} (CUDA, or CPU with TRITON_INTERPRET=1)")
    if f == "reference" or not usable:
        return "reference"
    return "triton"


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _bwd_grid(M: int, device) -> tuple[int, int]:
    """(G, rows_per_prog): a fixed row split (deterministic partial sums), ~2 slabs per SM."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        rows_per_prog = max(64, -(-M // (2 * _sm_count(idx))))
    else:
        rows_per_prog = max(1, -(-M // 3))  # interpreter: a few slabs, to exercise the reduction
    return -(-M // rows_per_prog), rows_per_prog


# ---- backends ----------------------------------------------------------------------------------
_RSQRT2 = 1.0 / math.sqrt(2.0)
_RSQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _bwd_reference(dy2, x2, bias):
    z = x2.float() + bias.float()
    dz = dy2.float() * (0.5 * (1.0 + torch.erf(z * _RSQRT2)) + z * torch.exp(-0.5 * z * z) * _RSQRT2PI)
    return dz.to(x2.dtype), dz.sum(0).to(bias.dtype)


def _fwd_triton(x2, bias):
    from xlmr_fast.kernels.triton import bias_gelu as _k

    y = torch.empty_like(x2)
    if x2.shape[0] > 0:
        _k.forward(x2, bias.contiguous(), y)
    return y


def _bwd_triton(dy2, x2, bias):
    from xlmr_fast.kernels.triton import bias_gelu as _k

    M, Fd = x2.shape
    dx = torch.empty_like(x2)
    if M == 0:
        return dx, torch.zeros_like(bias)
    G, rows_per_prog = _bwd_grid(M, x2.device)
    db_part = torch.empty((G, Fd), dtype=torch.float32, device=x2.device)
    _k.backward(dy2, x2, bias.contiguous(), dx, db_part, rows_per_prog)
    return dx, db_part.sum(0).to(bias.dtype)  # fixed-order reduction: deterministic


def _fwd(x, bias, backend):
    """y on any (..., F) shape: the body of both the custom op and the eager Function."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    if backend == "triton":
        y = _fwd_triton(x2, bias)
    else:
        y = bias_gelu_reference(x2, bias)
    return y.view(x.shape)


def _bwd(dy, x, bias, backend):
    """(dx, dbias): the backward of _fwd."""
    Fd = x.shape[-1]
    dy2 = dy.reshape(-1, Fd).contiguous()
    x2 = x.reshape(-1, Fd).contiguous()
    impl = _bwd_triton if backend == "triton" else _bwd_reference
    dx, db = impl(dy2, x2, bias)
    return dx.view(x.shape), db


# ---- registered ops (what torch.compile sees) ---------------------------------------------------
@torch.library.custom_op("xlmr_fast::bias_gelu_fwd", mutates_args=())
def _op_fwd(x: torch.Tensor, bias: torch.Tensor, backend: str) -> torch.Tensor:
    return _fwd(x, bias, backend)


@_op_fwd.register_fake
def _(x, bias, backend):
    return x.new_empty(x.shape)


@torch.library.custom_op("xlmr_fast::bias_gelu_bwd", mutates_args=())
def _op_bwd(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, backend: str
            ) -> tuple[torch.Tensor, torch.Tensor]:
    return _bwd(dy, x, bias, backend)


@_op_bwd.register_fake
def _(dy, x, bias, backend):
    return x.new_empty(x.shape), bias.new_empty(bias.shape)


def _setup_context(ctx, inputs, output):
    x, bias, backend = inputs
    ctx.save_for_backward(x, bias)
    ctx.backend = backend


def _backward(ctx, dy):
    x, bias = ctx.saved_tensors
    dx, db = torch.ops.xlmr_fast.bias_gelu_bwd(dy, x, bias, ctx.backend)
    return dx, db, None


torch.library.register_autograd("xlmr_fast::bias_gelu_fwd", _backward, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The same _fwd / _bwd as the custom op, for eager mode, without the custom op's Python
    dispatch cost (see add_dropout_layernorm._Eager; here 190 us against 125 us per fwd+bwd with
    the math stubbed out, on the 2-core CI CPU). torch.compile still sees the custom op."""

    @staticmethod
    def forward(ctx, x, bias, backend):
        ctx.save_for_backward(x, bias)
        ctx.backend = backend
        return _fwd(x, bias, backend)

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dx, db = _bwd(dy, x, bias, ctx.backend)
        return dx, db, None


def bias_gelu(x, bias):
    """Exact (erf) GELU of x + bias; see the module docstring."""
    _check(x, bias)
    if torch.compiler.is_compiling():
        return torch.ops.xlmr_fast.bias_gelu_fwd(x, bias, _choose_backend(x))
    return _Eager.apply(x, bias, _choose_backend(x))

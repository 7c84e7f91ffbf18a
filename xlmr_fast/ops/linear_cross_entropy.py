"""xf.ops.linear_cross_entropy: loss of softmax(hidden @ weight.T + bias) against targets.

Contract (stable):

    loss = linear_cross_entropy(hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) int,
                                ignore_index=-100, reduction="mean"|"sum"|"none",
                                label_smoothing=0.0, accumulate_weight_grad=False)

* "mean" divides by the number of non-ignored rows (0 rows -> loss 0 and zero grads, not NaN);
  "none" returns (N,) with 0 on ignored rows. The loss is float32 whatever the input dtype.
* label_smoothing eps as torch's F.cross_entropy defines it:
  loss_row = (1 - eps) * (lse - z_t) + eps / V * sum_j (lse - z_j).
* Fused paths never materialise the (N, V) logits; they keep fp32 softmax statistics and fp32
  accumulation. Gradients: hidden's grad in hidden's dtype; weight's and bias's grads in their
  own dtypes, computed from fp32 accumulators (each weight-grad row written once).
* dtypes: float32, bfloat16 or float16. The compute dtype is hidden's; a float32 weight/bias
  with 16-bit hidden (autocast-style master weights) is cast inside the op and gets an fp32
  grad. A float32 hidden with a 16-bit weight computes in the weight's dtype.
* accumulate_weight_grad=True (eager, fused backends, weight a leaf that requires grad): the
  backward adds the weight's gradient straight into weight.grad (setting it when None; the
  Triton dW GEMM reads and writes .grad in place) and gives autograd no weight gradient. For a
  tied weight whose other use adds its rows into .grad too (XLMRForMaskedLM's token lookup),
  .grad is then the only V x H gradient buffer, instead of autograd's sum of two dense ones.
  .grad must be contiguous and of the weight's dtype and shape to be added into in place (else
  it is replaced by .grad + dW). Ignored (ordinary autograd) under torch.compile, with the
  reference backend or when weight is not a leaf; the C++ backend adds its dW buffer into
  .grad (one transient V x H). Under torch.autograd.grad (which returns gradients and leaves
  .grad alone) the backward sees that .grad is not being accumulated and returns dW as usual.
* targets are NOT range-checked on the device (that would need a host sync): a target outside
  [0, V) that is not ignore_index gives a wrong loss instead of an error.
* No host syncs in forward or backward (CUDA-graph and torch.compile friendly).

Backends (linear_cross_entropy_backend() returns the choice and the reason):
    cuda       xlmr_fast._C (csrc/linear_cross_entropy.cpp + kernels/cuda/linear_cross_entropy.cu):
               cuBLAS GEMMs over vocabulary chunks + a CUDA kernel for the per-chunk softmax/CE
               statistics and gradient. Its CPU twin (plain at:: ops, same chunk loop) runs
               only when forced (XLMR_FAST_BACKEND=cuda) on CPU tensors, for tests.
    triton     kernels/triton/linear_cross_entropy.py: fused forward (online LSE over vocab
               tiles, vocab-split grid), backward in vocab chunks (recomputed logits -> d,
               dW = d^T X written once, dX accumulated in fp32). CUDA tensors, or CPU under
               TRITON_INTERPRET=1.
    reference  linear_cross_entropy_reference (plain torch, fp32 math, materialises logits).
Order: cuda > triton > reference by availability; on a GPU where both fused paths run, a tuning
file's choice for (H, dtype) (xlmr_fast.tuning, written by `xlmr-fast tune` on that GPU) or else
the PREFERENCE table below picks the faster one. XLMR_FAST_BACKEND=reference|triton|cuda forces one
(an input the forced backend cannot run raises); XLMR_FAST_LCE_BACKEND does the same for this
op alone and wins over XLMR_FAST_BACKEND. XLMR_FAST_LCE_CHUNK=<columns> sets the
vocabulary chunk width of the chunked passes (0 or unset: each backend's default).
Triton variants (kernels/triton/linear_cross_entropy.py; defaults there, set from device
measurements): XLMR_FAST_LCE_MM=triton|cublas runs the backward's two GEMMs in Triton or on
cuBLAS; XLMR_FAST_LCE_FLAT=1|0 turns the flattened tile loops of the forward and dlogits
kernels on or off; XLMR_FAST_LCE_SCHEDULE=recompute|tokenchunk picks the schedule (else a
tuning file's choice for (H, dtype) on a GPU, else the kernels' SCHEDULE).
"tokenchunk" (Triton backend, reduction "mean" or "sum", under autograd with an input that
requires grad; else "recompute" runs): the loss and the gradients of the summed loss are
computed in the forward, R rows at a time (cuBLAS logits into an aligned buffer, Triton
softmax statistics and d in place, cuBLAS dX and fp32 dW), 6NHV FLOPs instead of 8NHV; the
backward only scales them by the upstream gradient. It holds dW in fp32 (V x H) from forward to
backward (with accumulate_weight_grad and no .grad yet, that buffer becomes .grad; with a .grad
it is added in place and dropped: one transient V x H the recompute schedule does not need), and
runs the gradient work even if backward is never called.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from .. import _ext, tuning
from . import _backend

log = logging.getLogger(__name__)

REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Which fused path to use on a GPU when both are available: first matching row wins.
# (device-name substring, H or None for any, dtype or None for any, "triton" | "cuda").
# Edit after running `python -m bench.bench_linear_cross_entropy` on the device.
PREFERENCE: list[tuple[str, int | None, torch.dtype | None, str]] = [
    # ("H100", 768, torch.bfloat16, "cuda"),
]
DEFAULT_GPU_BACKEND = "triton"


# ---------------------------------------------------------------- reference
def linear_cross_entropy_reference(hidden, weight, bias, targets, ignore_index=-100,
                                   reduction="mean", label_smoothing=0.0):
    logits = hidden.float() @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    loss = F.cross_entropy(logits, targets.long(), ignore_index=ignore_index, reduction="none",
                           label_smoothing=label_smoothing)
    valid = targets != ignore_index
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / valid.sum().clamp(min=1)
    raise ValueError(f"linear_cross_entropy: reduction must be 'mean', 'sum' or 'none', "
                     f"got {reduction!r}")


# ---------------------------------------------------------------- backend choice
def preferred_gpu_backend(device: torch.device, H: int, dtype: torch.dtype) -> str:
    """The faster fused path on this GPU for (H, dtype): a tuning file's choice
    (xlmr_fast.tuning, `xlmr-fast tune`), else PREFERENCE, else DEFAULT_GPU_BACKEND."""
    tuned = tuning.choice("linear_cross_entropy.backend", device, H, dtype)
    if tuned is not None:
        return tuned
    name = _backend._cuda_device_name(device.index if device.index is not None
                                      else torch.cuda.current_device())
    for sub, h, dt, backend in PREFERENCE:
        if sub in name and (h is None or h == H) and (dt is None or dt == dtype):
            return backend
    return DEFAULT_GPU_BACKEND


def _cuda_refusal(device: torch.device, forced: bool) -> str | None:
    dev = device.type
    if dev == "cuda":
        if not _ext.has_kernel("linear_cross_entropy_fwd", "CUDA"):
            return "the extension xlmr_fast._C has no CUDA kernels (not built with CUDA)"
        return None
    if dev == "cpu" and forced:
        if not _ext.has_kernel("linear_cross_entropy_fwd", "CPU"):
            return "the extension xlmr_fast._C is not built"
        return None
    return f"{dev} tensors (the extension's fused path runs on CUDA)"


def _triton_refusal(device: torch.device) -> str | None:
    if not _backend.triton_importable():
        return "triton is not installed"
    if not _backend.triton_usable(device):
        return f"{device.type} tensors need CUDA, or TRITON_INTERPRET=1 on the CPU"
    return None


def linear_cross_entropy_backend(hidden: torch.Tensor, weight: torch.Tensor | None = None):
    """(backend, reason): 'cuda', 'triton' or 'reference' for these inputs, and why."""
    if hidden.numel() == 0:
        return "reference", "empty input (nothing to fuse)"
    wdt = weight.dtype if weight is not None else hidden.dtype
    dev = hidden.device
    return _choose_backend(dev.type, dev.index, hidden.shape[-1], hidden.dtype, wdt)


def _forced() -> str | None:
    """XLMR_FAST_LCE_BACKEND (this op only: e.g. the C++ path's CPU twin under a model whose
    attention runs on the CPU) over XLMR_FAST_BACKEND (every op)."""
    own = os.environ.get("XLMR_FAST_LCE_BACKEND", "").strip().lower()
    if own and own not in _backend.BACKENDS:
        raise ValueError(f"XLMR_FAST_LCE_BACKEND={own!r}: expected one of "
                         f"{', '.join(_backend.BACKENDS)}")
    return own or _backend.forced()


@torch.compiler.assume_constant_result
def _choose_backend(dev_type: str, dev_index, H: int, h_dtype, w_dtype):
    # Pure function of static facts (device, width, dtypes, environment): torch.compile calls it
    # once while tracing and keeps the answer, instead of breaking the graph on the queries of
    # the dispatcher and the environment.
    f = _forced()
    if f == "reference":
        return "reference", "XLMR_FAST_BACKEND=reference"
    device = torch.device(dev_type, dev_index) if dev_index is not None else torch.device(dev_type)
    no_cuda = _cuda_refusal(device, forced=f == "cuda")
    no_triton = _triton_refusal(device)
    if f == "cuda":
        if no_cuda:
            raise _backend.Unsupported(f"linear_cross_entropy: XLMR_FAST_BACKEND=cuda but "
                                       f"{no_cuda}")
        return "cuda", "XLMR_FAST_BACKEND=cuda"
    if f == "triton":
        if no_triton:
            raise _backend.Unsupported(f"linear_cross_entropy: XLMR_FAST_BACKEND=triton but "
                                       f"{no_triton}")
        return "triton", "XLMR_FAST_BACKEND=triton"
    if not no_cuda and not no_triton:
        return (preferred_gpu_backend(device, H, _compute_dtype(h_dtype, w_dtype)),
                "tuning file or PREFERENCE")
    if not no_cuda:
        return "cuda", f"triton unavailable: {no_triton}"
    if not no_triton:
        return "triton", f"cuda extension unavailable: {no_cuda}"
    return "reference", f"cuda: {no_cuda}; triton: {no_triton}"


@torch.compiler.assume_constant_result
def _chunk() -> int:
    v = os.environ.get("XLMR_FAST_LCE_CHUNK", "").strip()
    if not v:
        return 0
    try:
        c = int(v)
    except ValueError:
        raise ValueError(f"XLMR_FAST_LCE_CHUNK={v!r}: expected an integer number of vocabulary "
                         f"columns") from None
    if c < 0:
        raise ValueError(f"XLMR_FAST_LCE_CHUNK={c}: must be >= 0")
    return c


def _compute_dtype(h: torch.dtype, w: torch.dtype) -> torch.dtype:
    if h == w or w == torch.float32:
        return h
    if h == torch.float32:
        return w
    raise ValueError(f"linear_cross_entropy: hidden is {h} and weight is {w}; use one 16-bit dtype "
                     f"(a float32 weight with 16-bit hidden is fine)")


# ---------------------------------------------------------------- the registered op
def _kernels():
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern  # imports triton: lazy
    return kern


@torch.library.custom_op("xlmr_fast::linear_cross_entropy_fwd", mutates_args=())
def _lce_fwd(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             targets: torch.Tensor, ignore_index: int, label_smoothing: float, backend: str,
             chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_rows (N,) fp32, 0 on ignored rows; stats (2, N) fp32 = (row max, log sum-exp))."""
    if backend == "cuda":
        op = _ext.require("linear_cross_entropy_fwd", "CUDA" if hidden.is_cuda else "CPU")
        loss, stats = op(hidden, weight, bias, targets, ignore_index, label_smoothing, chunk)
        return loss, stats
    x = hidden.contiguous()
    w = weight.to(x.dtype).contiguous()
    b = bias.contiguous() if bias is not None else None
    return _kernels().lce_forward(x, w, b, targets.contiguous(), ignore_index, label_smoothing)


@_lce_fwd.register_fake
def _(hidden, weight, bias, targets, ignore_index, label_smoothing, backend, chunk):
    n = hidden.shape[0]
    return (hidden.new_empty((n,), dtype=torch.float32),
            hidden.new_empty((2, n), dtype=torch.float32))


@torch.library.custom_op("xlmr_fast::linear_cross_entropy_bwd", mutates_args=())
def _lce_bwd(grad_rows: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None, targets: torch.Tensor, stats: torch.Tensor,
             ignore_index: int, label_smoothing: float, backend: str, chunk: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dX like hidden, dW like weight, db like bias or an empty (0,) fp32 tensor)."""
    g = grad_rows.to(torch.float32).contiguous()
    if backend == "cuda":
        op = _ext.require("linear_cross_entropy_bwd", "CUDA" if hidden.is_cuda else "CPU")
        dx, dw, db = op(g, hidden, weight, bias, targets, stats, ignore_index, label_smoothing,
                        chunk)
        return dx, dw, db
    dx, dw, db = _triton_bwd(g, hidden, weight, bias, targets, stats, ignore_index,
                             label_smoothing, chunk)
    if db is None:
        db = hidden.new_empty((0,), dtype=torch.float32)
    return dx, dw, db


def _triton_bwd(g, hidden, weight, bias, targets, stats, ignore_index, label_smoothing, chunk,
                dw_out=None):
    """The Triton backward on the op's arguments: (dX, dW in weight's dtype, db or None).
    dw_out: a (V, H) tensor dW is added into (see kernels' lce_backward)."""
    x = hidden.contiguous()
    return _kernels().lce_backward(g, x, weight.to(x.dtype).contiguous(),
                                   bias.contiguous() if bias is not None else None,
                                   targets.contiguous(), stats.contiguous(), ignore_index,
                                   label_smoothing, grad_weight_dtype=weight.dtype,
                                   chunk=chunk or None, dw_out=dw_out)


@_lce_bwd.register_fake
def _(grad_rows, hidden, weight, bias, targets, stats, ignore_index, label_smoothing, backend,
      chunk):
    # new_empty, not empty_like: both backends return contiguous gradients, also for a
    # transposed weight or a strided hidden (empty_like would keep their strides)
    db = (bias.new_empty(bias.shape) if bias is not None
          else hidden.new_empty((0,), dtype=torch.float32))
    return hidden.new_empty(hidden.shape), weight.new_empty(weight.shape), db


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, ignore_index, label_smoothing, backend, chunk = inputs
    _, stats = output
    ctx.save_for_backward(hidden, weight, bias, targets, stats)
    ctx.meta = (ignore_index, label_smoothing, backend, chunk)
    ctx.mark_non_differentiable(stats)


def _backward(ctx, grad_loss, grad_stats):
    hidden, weight, bias, targets, stats = ctx.saved_tensors
    ignore_index, label_smoothing, backend, chunk = ctx.meta
    dx, dw, db = _lce_bwd(grad_loss, hidden, weight, bias, targets, stats, ignore_index,
                          label_smoothing, backend, chunk)
    return dx, dw, (db if bias is not None else None), None, None, None, None, None


_lce_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- token-chunk schedule
@torch.library.custom_op("xlmr_fast::linear_cross_entropy_fwdgrad", mutates_args=())
def _lce_fwdgrad(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 targets: torch.Tensor, ignore_index: int, label_smoothing: float, need_dx: bool,
                 need_dw: bool, rows: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss_sum () fp32, dX like hidden, dW (V, H) fp32, db (V,) fp32): the gradients of
    loss_sum, computed in the forward (Triton backend's token-chunk schedule). A gradient not
    asked for (need_dx / need_dw False, no bias) is an empty (0,) tensor."""
    x = hidden.contiguous()
    w = weight.to(x.dtype).contiguous()
    b = bias.contiguous() if bias is not None else None
    loss, dx, dw, db = _kernels().lce_fwdgrad(x, w, b, targets.contiguous(), ignore_index,
                                              label_smoothing, rows=rows or None,
                                              need_dx=need_dx, need_dw=need_dw)

    def empty(dtype=torch.float32):  # a fresh one each: outputs may not alias each other
        return hidden.new_empty((0,), dtype=dtype)
    return (loss.sum(), dx if dx is not None else empty(hidden.dtype),
            dw if dw is not None else empty(), db if db is not None else empty())


@_lce_fwdgrad.register_fake
def _(hidden, weight, bias, targets, ignore_index, label_smoothing, need_dx, need_dw, rows):
    f32 = dict(dtype=torch.float32)
    V, H = weight.shape
    return (hidden.new_empty((), **f32),
            hidden.new_empty(hidden.shape if need_dx else (0,)),
            hidden.new_empty((V, H) if need_dw else (0,), **f32),
            hidden.new_empty((V,) if bias is not None else (0,), **f32))


def _fwdgrad_setup_context(ctx, inputs, output):
    hidden, weight, bias, _, _, _, need_dx, need_dw, _ = inputs
    _, dx, dw, db = output
    ctx.save_for_backward(dx, dw, db)
    ctx.meta = (need_dx, need_dw, weight.dtype, bias.dtype if bias is not None else None)
    ctx.mark_non_differentiable(dx, dw, db)


def _times(t, g, dtype):
    """t * g written in dtype in one pass (no t-sized fp32 temporary for a 16-bit result)."""
    return torch.mul(t, g, out=torch.empty_like(t, dtype=dtype))


def _scaled(grads, g, need_dx, need_dw, wdtype, bdtype):
    """The saved gradients of the summed loss times the upstream scalar g (device tensor)."""
    dx, dw, db = grads
    return (dx * g if need_dx else None, _times(dw, g, wdtype) if need_dw else None,
            _times(db, g, bdtype) if bdtype is not None else None)


def _fwdgrad_backward(ctx, grad_loss, *_):
    gx, gw, gb = _scaled(ctx.saved_tensors, grad_loss, *ctx.meta)
    return gx, gw, gb, None, None, None, None, None, None


_lce_fwdgrad.register_autograd(_fwdgrad_backward, setup_context=_fwdgrad_setup_context)


class _TokenChunkIntoGrad(torch.autograd.Function):
    """accumulate_weight_grad=True with the token-chunk schedule, eager: the backward adds
    g * dW into weight.grad in place (or hands the saved fp32 dW over as .grad) and gives
    autograd no weight gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, label_smoothing, need_dx):
        total, dx, dw, db = _lce_fwdgrad(hidden, weight, bias, targets, ignore_index,
                                         label_smoothing, need_dx, True, 0)
        ctx.save_for_backward(dx, dw, db)
        ctx.weight = weight
        ctx.meta = (need_dx, True, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        dx, dw, db = ctx.saved_tensors
        weight = ctx.weight
        need_dx, _, wdtype, bdtype = ctx.meta
        gx, _, gb = _scaled((dx, dw, db), grad_loss, need_dx, False, wdtype, bdtype)
        if not _engine_accumulates(weight):  # torch.autograd.grad: return dW as usual
            return gx, _times(dw, grad_loss, wdtype), gb, None, None, None, None
        grad = weight.grad
        if (grad is not None and grad.shape == weight.shape and grad.is_contiguous()
                and grad.layout == torch.strided):
            grad.addcmul_(dw, grad_loss)   # one pass, no V x H temporary
        elif grad is None:
            # Scaling the saved dW in place bumps its version: a second backward through a
            # retained graph then raises instead of reusing a scaled dW.
            weight.grad = dw.mul_(grad_loss).to(wdtype)
        else:
            weight.grad = grad + _times(dw, grad_loss, wdtype)
        return gx, None, gb, None, None, None, None


@torch.compiler.assume_constant_result
def _schedule(dev_type: str, dev_index, H: int, dtype) -> str:
    """XLMR_FAST_LCE_SCHEDULE, else a tuning file's choice for (H, dtype) on this GPU, else the
    kernels' SCHEDULE."""
    kern = _kernels()
    if dev_type != "cuda" or os.environ.get("XLMR_FAST_LCE_SCHEDULE", "").strip():
        return kern.schedule()
    device = torch.device(dev_type, dev_index) if dev_index is not None else torch.device(dev_type)
    return kern.schedule(tuning.choice("linear_cross_entropy.schedule", device, H, dtype))


def _engine_accumulates(weight: torch.Tensor) -> bool:
    """True when the running backward will accumulate into weight.grad (loss.backward()),
    False under torch.autograd.grad, which returns gradients instead of writing .grad.
    torch._C._will_engine_execute_node is what FSDP asks the same question with."""
    try:
        node = torch.autograd.graph.get_gradient_edge(weight).node
        return bool(torch._C._will_engine_execute_node(node))
    except Exception:  # an older torch without these: the plain path is always correct
        return False


class _WeightGradIntoGrad(torch.autograd.Function):
    """accumulate_weight_grad=True, eager: the fused forward, and a backward that adds dW into
    the weight's .grad itself and returns None for it (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, label_smoothing, backend,
                chunk):
        loss, stats = _lce_fwd(hidden, weight, bias, targets, ignore_index, label_smoothing,
                               backend, chunk)
        ctx.save_for_backward(hidden, bias, targets, stats)
        ctx.weight = weight  # the leaf itself: its .grad is written in the backward
        ctx.meta = (ignore_index, label_smoothing, backend, chunk)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, bias, targets, stats = ctx.saved_tensors
        weight = ctx.weight
        ignore_index, label_smoothing, backend, chunk = ctx.meta
        if not _engine_accumulates(weight):
            # torch.autograd.grad(..., weight) (or backward(inputs=...) without it): .grad is
            # not this graph task's destination; return dW through autograd as usual.
            dx, dw, db = _lce_bwd(grad_loss, hidden, weight, bias, targets, stats,
                                  ignore_index, label_smoothing, backend, chunk)
            return dx, dw, (db if bias is not None else None), None, None, None, None, None
        grad = weight.grad
        fits = (grad is not None and grad.dtype == weight.dtype and grad.shape == weight.shape
                and grad.is_contiguous() and grad.layout == torch.strided)
        g = grad_loss.to(torch.float32).contiguous()
        if backend == "triton":
            dx, dw, db = _triton_bwd(g, hidden, weight, bias, targets, stats, ignore_index,
                                     label_smoothing, chunk, dw_out=grad if fits else None)
            added = fits
        else:
            dx, dw, db = _lce_bwd(g, hidden, weight, bias, targets, stats, ignore_index,
                                  label_smoothing, backend, chunk)
            added = False
        if not added:
            if grad is None:
                weight.grad = dw
            elif fits:
                grad.add_(dw)
            else:
                weight.grad = grad + dw
        return dx, None, (db if bias is not None else None), None, None, None, None, None


# ---------------------------------------------------------------- public entry point
def _validate(hidden, weight, bias, targets, ignore_index, reduction, label_smoothing):
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"linear_cross_entropy: {name} must be a torch.Tensor, got "
                            f"{type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"linear_cross_entropy: bias must be a torch.Tensor or None, got "
                        f"{type(bias).__name__}")
    if hidden.dim() != 2:
        raise ValueError(f"linear_cross_entropy: hidden must be 2-D (N, H), got shape "
                         f"{tuple(hidden.shape)} (flatten the batch and gather the rows first)")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"linear_cross_entropy: weight must be (V, H) with H = {hidden.shape[1]}, "
                         f"got {tuple(weight.shape)}")
    if weight.shape[0] == 0:
        raise ValueError("linear_cross_entropy: weight has no rows (V = 0)")
    V = weight.shape[0]
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != V):
        raise ValueError(f"linear_cross_entropy: bias must be (V,) = ({V},), got "
                         f"{tuple(bias.shape)}")
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"linear_cross_entropy: targets must be (N,) = ({hidden.shape[0]},), got "
                         f"{tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"linear_cross_entropy: targets must be an integer tensor, got "
                         f"{targets.dtype}")
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"linear_cross_entropy: {name} must be float32, bfloat16 or float16, "
                             f"got {t.dtype}")
    for name, t in (("weight", weight), ("bias", bias), ("targets", targets)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"linear_cross_entropy: {name} is on {t.device}, hidden on "
                             f"{hidden.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"linear_cross_entropy: reduction must be 'mean', 'sum' or 'none', got "
                         f"{reduction!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"linear_cross_entropy: label_smoothing must be in [0, 1], got "
                         f"{label_smoothing}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"linear_cross_entropy: ignore_index must be an int, got {ignore_index!r}")


def linear_cross_entropy(hidden, weight, bias, targets, ignore_index=-100, reduction="mean",
                         label_smoothing=0.0, accumulate_weight_grad=False):
    """Cross-entropy of softmax(hidden @ weight.T + bias) against targets; see the module doc."""
    _validate(hidden, weight, bias, targets, ignore_index, reduction, label_smoothing)
    backend, reason = linear_cross_entropy_backend(hidden, weight)
    if backend == "reference":
        if not torch.compiler.is_compiling():  # logging is a graph break under compile
            log.debug("linear_cross_entropy: reference backend (%s)", reason)
        return linear_cross_entropy_reference(hidden, weight, bias, targets, ignore_index,
                                              reduction, label_smoothing)
    cdt = _compute_dtype(hidden.dtype, weight.dtype)
    if hidden.dtype != cdt:  # fp32 hidden with a 16-bit weight: compute in the weight's dtype
        hidden = hidden.to(cdt)
    t = targets.long()
    into_grad = (accumulate_weight_grad and weight.is_leaf and weight.requires_grad
                 and torch.is_grad_enabled() and not torch.compiler.is_compiling())
    need_dx = hidden.requires_grad
    need_dw = weight.requires_grad
    need_any = need_dx or need_dw or (bias is not None and bias.requires_grad)
    if (backend == "triton" and reduction != "none" and torch.is_grad_enabled() and need_any
            and _schedule(hidden.device.type, hidden.device.index, hidden.shape[-1],
                          cdt) == "tokenchunk"):
        if into_grad:
            total = _TokenChunkIntoGrad.apply(hidden, weight, bias, t, int(ignore_index),
                                              float(label_smoothing), need_dx)
        else:
            total = _lce_fwdgrad(hidden, weight, bias, t, int(ignore_index),
                                 float(label_smoothing), need_dx, need_dw, 0)[0]
        if reduction == "sum":
            return total
        return total / (t != ignore_index).sum().clamp(min=1)
    if into_grad:
        loss_rows = _WeightGradIntoGrad.apply(hidden, weight, bias, t, int(ignore_index),
                                              float(label_smoothing), backend, _chunk())
    else:
        loss_rows, _ = _lce_fwd(hidden, weight, bias, t, int(ignore_index),
                                float(label_smoothing), backend, _chunk())
    if reduction == "none":
        return loss_rows
    total = loss_rows.sum()
    if reduction == "sum":
        return total
    # Divide on the device: no .item(), so no host sync; 0 valid rows -> 0 / 1 = 0.
    return total / (t != ignore_index).sum().clamp(min=1)

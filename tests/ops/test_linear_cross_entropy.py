"""xf.ops.linear_cross_entropy: every backend vs the fp32 plain-torch reference, forward and the
gradients of hidden, weight and bias, on fresh random inputs.

Backends exercised here:
* "cuda" CPU twin: the extension's chunk orchestration with at:: ops (forced with
  XLMR_FAST_BACKEND=cuda on CPU tensors; skipped when xlmr_fast._C is not built).
* Triton under the interpreter (@pytest.mark.interpret, run with TRITON_INTERPRET=1).
* Both fused paths on a GPU (@pytest.mark.gpu), including the XLM-R shape.
Tolerance: 16-bit results must be within 2x the error of the same math in plain torch at
that precision (max-abs over the tensor) plus a small floor; fp32 within a tight floor.
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch
import torch.nn.functional as F

from xlmr_fast import _ext
from xlmr_fast.ops import _backend
from xlmr_fast.ops.linear_cross_entropy import (linear_cross_entropy,
                                                linear_cross_entropy_backend,
                                                linear_cross_entropy_reference)

# The module (xlmr_fast.ops re-exports the function under the same name).
lce_mod = importlib.import_module("xlmr_fast.ops.linear_cross_entropy")
HAS_CPU_TWIN = _ext.has_kernel("linear_cross_entropy_fwd", "CPU")
HAS_CUDA_EXT = _ext.has_kernel("linear_cross_entropy_fwd", "CUDA")
needs_twin = pytest.mark.skipif(not HAS_CPU_TWIN, reason="xlmr_fast._C not built")


# ---------------------------------------------------------------- helpers
def make_inputs(N, H, V, dtype=torch.float32, *, bias=True, ignore_frac=0.25, device="cpu",
                seed=0, ignore_index=-100):
    """Random inputs whose softmax is far from uniform (logit std ~ 3) with ignored rows."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g)
    w = torch.randn(V, H, generator=g) * (3.0 / H ** 0.5)
    b = torch.randn(V, generator=g) * 0.5 if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    t[torch.rand(N, generator=g) < ignore_frac] = ignore_index
    # Make some targets likely (the hidden row aligned with its target's weight row), so the
    # one-hot term and large probabilities are exercised, as in CCE's tests.
    sel = (torch.rand(N, generator=g) < 0.3) & (t != ignore_index)
    h[sel] += w[t[sel]] * 2.0
    cast = lambda x: None if x is None else x.to(device=device, dtype=dtype)  # noqa: E731
    return cast(h), cast(w), cast(b), t.to(device)


def run(fn, h, w, b, t, reduction, eps, ignore_index=-100, seed=1):
    """loss (fp32) and grads of (h, w, b) for a random upstream gradient."""
    h = h.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_() if b is not None else None
    loss = fn(h, w, b, t, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)
    g = torch.Generator().manual_seed(seed)
    up = (torch.rand(loss.shape, generator=g) + 0.5).to(loss.device)
    (loss.float() * up).sum().backward()
    return loss.detach().float(), h.grad, w.grad, (b.grad if b is not None else None)


def reference64(h, w, b, t, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """The reference in float64: the truth that fp32 results (ours and torch's) are judged by."""
    logits = h.double() @ w.double().t()
    if b is not None:
        logits = logits + b.double()
    loss = F.cross_entropy(logits, t.long(), ignore_index=ignore_index, reduction="none",
                           label_smoothing=label_smoothing)
    valid = t != ignore_index
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp(min=1)


def torch_lowp(h, w, b, t, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Plain torch in the inputs' own precision (the error budget for 16-bit results)."""
    logits = F.linear(h, w, b)
    loss = F.cross_entropy(logits, t, ignore_index=ignore_index, reduction="none",
                           label_smoothing=label_smoothing).float()
    valid = t != ignore_index
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp(min=1)


def check(name, ours, ref, lowp, dtype):
    assert ours is not None and ref is not None, name
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    ours, ref = ours.float(), ref.float()
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    err = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    # fp32: ref is the fp64 reference and lowp the fp32 one; 16-bit: ref is the fp32 reference
    # and lowp plain torch in 16 bits. Floor: a few ulps of the tensor's scale (fp32: 32 ulps of
    # the largest entry) plus an absolute 1e-6 for results that are small differences of O(1)
    # terms (a loss when the target is the max; d = p_t - 1 when p_t ~ 1, as at N = 1).
    if dtype == torch.float32:
        floor = 4e-6 * scale + 1e-6
    else:
        floor = 1e-3 * scale + 1e-7
    tol = 2 * (lowp.float() - ref).abs().max().item() + floor
    assert err <= tol, f"{name}: max err {err:.3e} > tol {tol:.3e} (ref max {scale:.3e})"


def compare(h, w, b, t, reduction, eps, dtype, ignore_index=-100):
    ours = run(linear_cross_entropy, h, w, b, t, reduction, eps, ignore_index)
    ref = run(linear_cross_entropy_reference, h.float(), w.float(),
              None if b is None else b.float(), t, reduction, eps, ignore_index)
    if dtype == torch.float32:
        ref, lowp = run(reference64, h, w, b, t, reduction, eps, ignore_index), ref
    else:
        lowp = run(torch_lowp, h, w, b, t, reduction, eps, ignore_index)
    assert ours[1].dtype == h.dtype and ours[2].dtype == w.dtype
    if b is not None:
        assert ours[3].dtype == b.dtype
    for name, o, r, lp in zip(("loss", "d_hidden", "d_weight", "d_bias"), ours, ref, lowp):
        if r is None:
            assert o is None
            continue
        check(name, o, r.to(o.device), lp, dtype)
    return ours


@pytest.fixture
def backend(monkeypatch):
    def set_(name, chunk=None):
        monkeypatch.setenv("XLMR_FAST_BACKEND", name)
        if chunk is not None:
            monkeypatch.setenv("XLMR_FAST_LCE_CHUNK", str(chunk))
        else:
            monkeypatch.delenv("XLMR_FAST_LCE_CHUNK", raising=False)
    return set_


# ---------------------------------------------------------------- reference semantics
def test_reference_matches_torch_cross_entropy():
    h, w, b, t = make_inputs(33, 64, 1003, seed=3)
    logits = h @ w.t() + b
    for red in ("mean", "sum"):
        for eps in (0.0, 0.1):
            ref = linear_cross_entropy_reference(h, w, b, t, reduction=red, label_smoothing=eps)
            torch.testing.assert_close(ref, F.cross_entropy(logits, t, reduction=red,
                                                            label_smoothing=eps))


def test_reference_all_ignored_is_zero():
    h, w, b, t = make_inputs(5, 64, 100)
    t[:] = -100
    h.requires_grad_()
    loss = linear_cross_entropy_reference(h, w, b, t)
    loss.backward()
    assert loss.item() == 0.0 and not h.grad.any()


# ---------------------------------------------------------------- the extension's CPU twin
SHAPES = [(1, 64, 1000), (7, 96, 1003), (333, 64, 4099)]


@needs_twin
@pytest.mark.parametrize("N,H,V", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cpu_twin_fp32(backend, N, H, V, reduction, eps):
    backend("cuda", chunk=256)  # several chunks and a ragged last one
    h, w, b, t = make_inputs(N, H, V, seed=N + V)
    compare(h, w, b, t, reduction, eps, torch.float32)


@needs_twin
@pytest.mark.parametrize("bias", [True, False])
def test_cpu_twin_bf16_and_default_chunk(backend, bias):
    backend("cuda")
    h, w, b, t = make_inputs(333, 96, 4099, torch.bfloat16, bias=bias, seed=11)
    compare(h, w, b, t, "mean", 0.1, torch.bfloat16)


@needs_twin
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cpu_twin_all_ignored(backend, reduction):
    backend("cuda", chunk=256)
    h, w, b, t = make_inputs(7, 64, 1003)
    t[:] = -100
    loss, dh, dw, db = run(linear_cross_entropy, h, w, b, t, reduction, 0.1)
    assert not loss.any() and not dh.any() and not dw.any() and not db.any()


@needs_twin
def test_cpu_twin_custom_ignore_index_and_int32_targets(backend):
    backend("cuda", chunk=256)
    h, w, b, t = make_inputs(50, 64, 1000, ignore_index=7, seed=5)
    compare(h, w, b, t.int(), "mean", 0.0, torch.float32, ignore_index=7)


@needs_twin
def test_cpu_twin_fp32_master_weight(backend):
    # 16-bit hidden with fp32 weight/bias (autocast-style): computes in bf16, fp32 weight grads.
    backend("cuda", chunk=512)
    h, w, b, t = make_inputs(64, 64, 1003, seed=9)
    hb = h.bfloat16()
    loss, dh, dw, db = run(linear_cross_entropy, hb, w, b, t, "mean", 0.0)
    assert dh.dtype == torch.bfloat16 and dw.dtype == torch.float32 and db.dtype == torch.float32
    ref = run(linear_cross_entropy_reference, hb.float(), w.bfloat16().float(), b, t, "mean", 0.0)
    for o, r in zip((loss, dh, dw, db), ref):
        assert (o.float() - r).abs().max() <= 1e-2 * r.abs().max() + 1e-6


@pytest.mark.parametrize("which", [pytest.param("cuda", marks=needs_twin),
                                   pytest.param("triton", marks=pytest.mark.interpret)])
def test_fp32_hidden_with_16bit_weight(backend, which):
    # The module's contract: "a float32 hidden with a 16-bit weight computes in the weight's
    # dtype" (an LM head on an fp32 residual stream with bf16 weights). No other test passes
    # that combination: grads keep each input's dtype and match the reference on the hidden
    # rounded to the weight's dtype.
    backend(which, chunk=256)
    h, w, b, t = make_inputs(21, 64, 1003, seed=14)
    wb, bb = w.bfloat16(), b.bfloat16()
    loss, dh, dw, db = run(linear_cross_entropy, h, wb, bb, t, "mean", 0.1)
    assert dh.dtype == torch.float32 and dw.dtype == torch.bfloat16 and db.dtype == torch.bfloat16
    ref = run(linear_cross_entropy_reference, h.bfloat16().float(), wb.float(), bb.float(), t,
              "mean", 0.1)
    for o, r in zip((loss, dh, dw, db), ref):
        assert (o.float() - r).abs().max() <= 1e-2 * r.abs().max() + 1e-6


def minus_inf_bias_inputs(dtype=torch.float32, device="cpu"):
    """A bias of -inf on columns 0-255 and 300-302 (e.g. ids masked out of the head), no target
    on them; the loss is finite. With chunk=256 a row's whole first chunk is -inf; with
    chunk=1024 each of the CUDA stats kernel's 256 threads starts its online max/sum-exp on a
    -inf logit of chunk 0 and then meets finite ones."""
    h, w, b, t = make_inputs(40, 64, 1003, seed=17)
    b[:256] = float("-inf")
    b[300:303] = float("-inf")
    t = torch.where((t != -100) & (t < 303), t + 303, t)
    cast = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731
    return cast(h), cast(w), cast(b), t.to(device)


@needs_twin
def test_cpu_twin_minus_inf_bias(backend):
    backend("cuda", chunk=256)
    compare(*minus_inf_bias_inputs(), "mean", 0.0, torch.float32)


@needs_twin
def test_cpp_backward_checks_grad_rows_and_stats():
    # The C++ backward reads grad_rows[row] for every row: a (1,) tensor was broadcast by the
    # CPU twin (and read out of bounds by the CUDA kernel); now it is an error that names it.
    fwd = _ext.require("linear_cross_entropy_fwd", "CPU")
    bwd = _ext.require("linear_cross_entropy_bwd", "CPU")
    h, w, b, t = make_inputs(5, 16, 50)
    _, stats = fwd(h, w, b, t, -100, 0.0, 0)
    bwd(torch.ones(5), h, w, b, t, stats, -100, 0.0, 0)  # the right shapes run
    for g in (torch.ones(1), torch.ones(6), torch.ones(5, 1), torch.ones(5, dtype=torch.long)):
        with pytest.raises(RuntimeError, match="grad_rows must be"):
            bwd(g, h, w, b, t, stats, -100, 0.0, 0)
    for st in (stats[:1], stats.t(), stats.long()):
        with pytest.raises(RuntimeError, match="stats must be"):
            bwd(torch.ones(5), h, w, b, t, st, -100, 0.0, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_EXT, reason="extension built without CUDA")
def test_gpu_cpp_checks_devices_of_grad_rows_and_stats():
    # a CPU grad_rows / stats with CUDA inputs was a host pointer handed to a kernel
    fwd = _ext.require("linear_cross_entropy_fwd", "CUDA")
    bwd = _ext.require("linear_cross_entropy_bwd", "CUDA")
    h, w, b, t = make_inputs(5, 16, 50, device="cuda")
    _, stats = fwd(h, w, b, t, -100, 0.0, 0)
    g = torch.ones(5, device="cuda")
    with pytest.raises(RuntimeError, match="grad_rows is on cpu"):
        bwd(g.cpu(), h, w, b, t, stats, -100, 0.0, 0)
    with pytest.raises(RuntimeError, match="stats on cpu"):
        bwd(g, h, w, b, t, stats.cpu(), -100, 0.0, 0)
    torch.cuda.synchronize()  # and nothing was launched with a bad pointer
    bwd(g, h, w, b, t, stats, -100, 0.0, 0)
    torch.cuda.synchronize()


def _into_grad_case(dtype, wdtype, existing, device="cpu", N=21, H=64, V=1003):
    """weight.grad after loss.backward() with accumulate_weight_grad True vs False."""
    h, w, b, t = make_inputs(N, H, V, seed=13, device=device)
    h = h.to(dtype)
    out = {}
    for into in (False, True):
        hh = h.detach().clone().requires_grad_()
        ww = w.to(wdtype).detach().clone().requires_grad_()
        bb = b.detach().clone().requires_grad_()
        if existing:
            ww.grad = torch.full_like(ww, 0.25)
        grad_before = ww.grad
        loss = linear_cross_entropy(hh, ww, bb, t, accumulate_weight_grad=into)
        (loss * 3.0).backward()
        out[into] = (ww.grad, hh.grad, bb.grad)
        if into and existing:
            assert ww.grad is grad_before  # added into in place, not replaced
    for a, c in zip(out[False], out[True]):
        assert a.dtype == c.dtype
        if c.dtype == torch.bfloat16:
            # a bf16 .grad: the plain path rounds g * dW, then the sum with the old .grad (0.25);
            # in place rounds once: one ulp of the terms' magnitude apart
            bound = (a.float().abs() + (0.25 if existing else 0.0)) * 2 ** -7 + 1e-6
            assert ((c.float() - a.float()).abs() <= bound).all()
        else:
            torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)


@needs_twin
@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("dtype,wdtype", [(torch.float32, torch.float32),
                                          (torch.bfloat16, torch.float32)])
def test_cpu_twin_accumulate_weight_grad(backend, dtype, wdtype, existing):
    backend("cuda", chunk=512)
    _into_grad_case(dtype, wdtype, existing)


@needs_twin
def test_accumulate_weight_grad_under_autograd_grad(backend):
    # torch.autograd.grad returns gradients and must leave .grad alone: the op notices that
    # the engine will not accumulate into .grad and returns dW as usual
    backend("cuda", chunk=512)
    h, w, b, t = make_inputs(21, 64, 1003, seed=4)
    w.requires_grad_()
    got = torch.autograd.grad(linear_cross_entropy(h, w, b, t, accumulate_weight_grad=True), w)
    want = torch.autograd.grad(linear_cross_entropy(h, w, b, t), w)
    assert w.grad is None
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)


def test_accumulate_weight_grad_is_plain_autograd_where_it_cannot_apply(backend):
    # reference backend, or a weight that is not a leaf: ordinary autograd, grads flow back
    backend("reference")
    h, w, b, t = make_inputs(7, 32, 101, seed=2)
    w0 = w.clone().requires_grad_()
    ww = w0 * 1.0  # not a leaf
    linear_cross_entropy(h, ww, b, t, accumulate_weight_grad=True).backward()
    assert w0.grad is not None and w0.grad.abs().sum() > 0


@needs_twin
def test_opcheck_cpu_twin():
    h, w, b, t = make_inputs(9, 32, 300, seed=2)
    for bias in (b, None):
        args = (h.requires_grad_(), w.requires_grad_(), bias, t, -100, 0.1, "cuda", 128)
        torch.library.opcheck(lce_mod._lce_fwd, args)
    # a transposed weight and a strided hidden: the backward's fake gradients are contiguous,
    # as the real ones are (empty_like kept the inputs' strides: opcheck's stride mismatch)
    wt = w.detach().t().contiguous().t()
    hs = torch.cat([h.detach(), h.detach()], 1)[:, ::2]
    _, stats = lce_mod._lce_fwd(hs, wt, b, t, -100, 0.1, "cuda", 128)
    torch.library.opcheck(lce_mod._lce_bwd, (torch.ones(9), hs, wt, b, t, stats, -100, 0.1,
                                             "cuda", 128))


@needs_twin
def test_torch_compile_traces_the_op(backend):
    backend("cuda", chunk=256)
    h, w, b, t = make_inputs(20, 64, 700, seed=4)
    eager = run(linear_cross_entropy, h, w, b, t, "mean", 0.1)
    fn = torch.compile(linear_cross_entropy, backend="aot_eager", fullgraph=True)
    compiled = run(fn, h, w, b, t, "mean", 0.1)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)


# ---------------------------------------------------------------- input checks and dispatch
def test_clear_errors():
    h, w, b, t = make_inputs(4, 16, 50)
    with pytest.raises(ValueError, match="hidden must be 2-D"):
        linear_cross_entropy(h[None], w, b, t)
    with pytest.raises(ValueError, match="weight must be"):
        linear_cross_entropy(h, w[:, :8], b, t)
    with pytest.raises(ValueError, match="bias must be"):
        linear_cross_entropy(h, w, b[:-1], t)
    with pytest.raises(ValueError, match="targets must be"):
        linear_cross_entropy(h, w, b, t[:-1])
    with pytest.raises(ValueError, match="targets must be an integer"):
        linear_cross_entropy(h, w, b, t.float())
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, b, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        linear_cross_entropy(h, w, b, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="hidden must be float32"):
        linear_cross_entropy(h.double(), w, b, t)


def test_dispatch(backend):
    h, w, b, t = make_inputs(4, 16, 50)
    backend("reference")
    assert linear_cross_entropy_backend(h, w)[0] == "reference"
    backend("triton")
    if _backend.interpret() and _backend.triton_importable():
        assert linear_cross_entropy_backend(h, w)[0] == "triton"
    else:
        with pytest.raises(_backend.Unsupported, match="XLMR_FAST_BACKEND=triton"):
            linear_cross_entropy(h, w, b, t)
    backend("cuda")
    if HAS_CPU_TWIN:
        assert linear_cross_entropy_backend(h, w)[0] == "cuda"
    else:
        with pytest.raises(_backend.Unsupported, match="XLMR_FAST_BACKEND=cuda"):
            linear_cross_entropy(h, w, b, t)


def test_lce_backend_variable_wins_over_the_global_one(monkeypatch):
    # XLMR_FAST_LCE_BACKEND forces this op alone and wins over XLMR_FAST_BACKEND (the documented
    # order; a model whose attention runs on the CPU forces the LM head separately). Reversed,
    # the global triton forcing would win and raise on these CPU tensors.
    h, w, b, t = make_inputs(4, 16, 50)
    monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")
    monkeypatch.setenv("XLMR_FAST_LCE_BACKEND", "Reference")
    assert linear_cross_entropy_backend(h, w)[0] == "reference"
    torch.testing.assert_close(linear_cross_entropy(h, w, b, t),
                               linear_cross_entropy_reference(h, w, b, t))
    monkeypatch.setenv("XLMR_FAST_LCE_BACKEND", "fused")  # a typo raises, not ignored
    with pytest.raises(ValueError, match="XLMR_FAST_LCE_BACKEND='fused'"):
        linear_cross_entropy_backend(h, w)


def test_default_backend_on_cpu_is_reference_or_interpreter(monkeypatch):
    monkeypatch.delenv("XLMR_FAST_BACKEND", raising=False)
    h, w, b, t = make_inputs(4, 16, 50)
    want = "triton" if (_backend.interpret() and _backend.triton_importable()) else "reference"
    assert linear_cross_entropy_backend(h, w)[0] == want


def test_preference_table(monkeypatch):
    monkeypatch.setattr(_backend, "_cuda_device_name", lambda i: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(lce_mod, "PREFERENCE", [("H100", 768, torch.bfloat16, "cuda"),
                                                ("H100", None, None, "triton")])
    dev = torch.device("cuda", 0)
    assert lce_mod.preferred_gpu_backend(dev, 768, torch.bfloat16) == "cuda"
    assert lce_mod.preferred_gpu_backend(dev, 1024, torch.bfloat16) == "triton"
    monkeypatch.setattr(_backend, "_cuda_device_name", lambda i: "NVIDIA H200")
    assert lce_mod.preferred_gpu_backend(dev, 768, torch.bfloat16) == lce_mod.DEFAULT_GPU_BACKEND


# ---------------------------------------------------------------- Triton under the interpreter
# Each case costs a few seconds in the interpreter: small shapes, few cases (< 60 s in all).
INTERP_CASES = [
    # N, H, V, dtype, bias, reduction, eps, chunk
    (7, 64, 1003, torch.float32, True, "mean", 0.1, 512),
    (20, 96, 1000, torch.bfloat16, False, "none", 0.0, 256),
    (1, 64, 300, torch.float32, True, "sum", 0.0, None),
    (33, 64, 257, torch.float16, True, "mean", 0.2, 128),
    (9, 40, 301, torch.bfloat16, True, "mean", 0.0, 128),  # H % BLOCK_H != 0: masked K-loop
]


@pytest.mark.interpret
@pytest.mark.parametrize("N,H,V,dtype,bias,reduction,eps,chunk", INTERP_CASES)
def test_triton_interpreter(backend, N, H, V, dtype, bias, reduction, eps, chunk):
    backend("triton", chunk=chunk)
    h, w, b, t = make_inputs(N, H, V, dtype, bias=bias, seed=N * 7 + V)
    compare(h, w, b, t, reduction, eps, dtype)


@pytest.mark.interpret
@pytest.mark.parametrize("N,H,V,dtype,bias,reduction,eps,chunk", [INTERP_CASES[1], INTERP_CASES[3]])
def test_triton_interpreter_gemms_through_torch(backend, monkeypatch, N, H, V, dtype, bias,
                                                reduction, eps, chunk):
    # MM_BACKEND "cublas": the fused dlogits kernel, then dW / dX through torch.mm / addmm
    # (cuBLAS on a GPU); the chunk loop, the partial last chunk and accumulation are the same.
    backend("triton", chunk=chunk)
    monkeypatch.setenv("XLMR_FAST_LCE_MM", "cublas")
    h, w, b, t = make_inputs(N, H, V, dtype, bias=bias, seed=N * 7 + V)
    compare(h, w, b, t, reduction, eps, dtype)


@pytest.mark.interpret
def test_triton_interpreter_gemms_through_torch_fp32_master_weight(backend, monkeypatch):
    # bf16 compute, fp32 weight: dW is produced in fp32 from the 16-bit d and x (the mixed
    # dtype GEMM), and equals the Triton GEMM's result to fp32 accumulation-order noise.
    backend("triton", chunk=128)
    h, w, b, t = make_inputs(9, 64, 301, torch.bfloat16, bias=True, seed=5)
    w32, b32 = w.float(), b.float()
    grads = {}
    for mm in ("triton", "cublas"):
        monkeypatch.setenv("XLMR_FAST_LCE_MM", mm)
        grads[mm] = run(linear_cross_entropy, h, w32, b32, t, "mean", 0.0)
    for a, c in zip(grads["triton"], grads["cublas"]):
        assert a.dtype == c.dtype
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    assert grads["cublas"][2].dtype == torch.float32


@pytest.mark.interpret
@pytest.mark.parametrize("case", [0, 1, 3, 4])
def test_triton_interpreter_flat_loops(backend, monkeypatch, case):
    # XLMR_FAST_LCE_FLAT=1: one (vocab tile, H step) loop per program in the forward and
    # dlogits kernels, 4 vocab tiles per dlogits program: chunks whose tile count is not a
    # multiple of 4 (masked tail tiles), tail columns of V, splits of the forward. Case 4
    # (H % BLOCK_H != 0) falls back to the nested loops.
    N, H, V, dtype, bias, reduction, eps, chunk = INTERP_CASES[case]
    backend("triton", chunk=chunk)
    monkeypatch.setenv("XLMR_FAST_LCE_FLAT", "1")
    h, w, b, t = make_inputs(N, H, V, dtype, bias=bias, seed=N * 7 + V + 1)
    compare(h, w, b, t, reduction, eps, dtype)


@pytest.mark.interpret
@pytest.mark.parametrize("schedule", ["recompute", "flat", "tokenchunk"])
def test_triton_interpreter_minus_inf_bias(backend, monkeypatch, schedule):
    # A vocab tile whose every logit is -inf (a -inf bias on ids masked out of the head): the
    # online sum-exp computed exp(-inf - -inf) = NaN for its rows, and every loss was NaN.
    backend("triton", chunk=256)
    monkeypatch.setenv("XLMR_FAST_LCE_FLAT", "1" if schedule == "flat" else "0")
    monkeypatch.setenv("XLMR_FAST_LCE_SCHEDULE",
                       "tokenchunk" if schedule == "tokenchunk" else "recompute")
    compare(*minus_inf_bias_inputs(), "mean", 0.0, torch.float32)


@pytest.mark.interpret
@pytest.mark.parametrize("which,i", [("fwd", i) for i in range(5)] + [("mm", j) for j in range(4)])
def test_triton_interpreter_every_config(backend, monkeypatch, which, i):
    # Every entry the sweep (and TUNED_BY_SHAPE) may pick computes the same thing: forward and
    # dlogits configs (both kernels), then the backward GEMM configs; V with a tail tile.
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    backend("triton", chunk=512)
    if which == "fwd":
        monkeypatch.setattr(kern, "FWD_CONFIG", kern.FWD_CONFIGS[i])
        monkeypatch.setattr(kern, "DLOGITS_CONFIG", kern.FWD_CONFIGS[i])
    else:
        monkeypatch.setattr(kern, "MM_CONFIG", kern.MM_CONFIGS[i])
    h, w, b, t = make_inputs(150, 64, 1003, torch.float16, bias=True, seed=i)
    compare(h, w, b, t, "mean", 0.1, torch.float16)


def test_flat_loops_choice(monkeypatch):
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    monkeypatch.delenv("XLMR_FAST_LCE_FLAT", raising=False)
    assert kern.flat_loops(768, 64) == kern.FLAT
    monkeypatch.setenv("XLMR_FAST_LCE_FLAT", "1")
    assert kern.flat_loops(768, 64) and not kern.flat_loops(40, 32)  # H must be even in BLOCK_H
    assert not kern.flat_loops(768, 64, override=False)
    monkeypatch.setenv("XLMR_FAST_LCE_FLAT", "0")
    assert not kern.flat_loops(768, 64) and kern.flat_loops(768, 64, override=True)
    monkeypatch.setenv("XLMR_FAST_LCE_FLAT", "yes")
    with pytest.raises(ValueError, match="XLMR_FAST_LCE_FLAT"):
        kern.flat_loops(768, 64)


def test_tuned_configs_only_on_the_measured_architecture(monkeypatch):
    # TUNED_BY_SHAPE was timed on sm_90; on an A100 / L4 (sm_80 / sm_89) or a Blackwell card the
    # untuned entry 0 runs (config 1 spills 464 bytes for sm_86: test_compile_report).
    import xlmr_fast.kernels.triton as kt
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    monkeypatch.setattr(kern, "_interpret", lambda t: False)
    x = torch.empty(8192, 1024, dtype=torch.bfloat16, device="meta")
    for cap in ((8, 0), (8, 6), (8, 9), (10, 0)):
        monkeypatch.setattr(kt, "CPU_STANDS_FOR", cap)
        assert kern._tuned(8192, 1024, x.device) == (0, 0), cap
        assert kern._fwd_config(x, 8192) == kern.FWD_CONFIGS[0]
        assert kern._mm_config(x) == kern.MM_CONFIGS[0]
    monkeypatch.setattr(kt, "CPU_STANDS_FOR", (9, 0))
    assert kern._fwd_config(x, 8192) == kern.FWD_CONFIGS[1]
    # swept without label smoothing: with it the forward's 128 x 256 tile spills 540 bytes for
    # sm_90 (triton 3.6), so smoothing keeps entry 0 there
    assert kern._fwd_config(x, 8192, smooth=True) == kern.FWD_CONFIGS[0]
    # a CUDA device reports its own capability (cached per index), whatever CPU_STANDS_FOR says
    monkeypatch.setattr(kt, "_CAPABILITIES", {3: (8, 6)})
    assert kt.capability(torch.device("cuda", 3)) == (8, 6)
    assert not kt.tuned_here(torch.device("cuda", 3))


def test_tuned_configs_by_shape(monkeypatch):
    # The measured sweep winners apply at their shape (N >= 8192, H = 1024, 16-bit, nested
    # loops); elsewhere entry 0; explicit overrides, fp32 and FLAT keep their own rules.
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    monkeypatch.setattr(kern, "_interpret", lambda t: False)

    def x(n, h, dtype=torch.bfloat16):
        return torch.empty(n, h, dtype=dtype, device="meta")
    dev = torch.device("meta")  # stands for an sm_90 GPU (kernels/triton.CPU_STANDS_FOR)
    assert kern._tuned(8192, 1024, dev) == (1, 1) and kern._tuned(20000, 1024, dev) == (1, 1)
    assert kern._tuned(4915, 1024, dev) == (0, 0) and kern._tuned(8192, 768, dev) == (0, 0)
    assert kern._fwd_config(x(8192, 1024), 8192) == kern.FWD_CONFIGS[1]
    assert kern._mm_config(x(8192, 1024)) == kern.MM_CONFIGS[1]
    assert kern._fwd_config(x(4915, 768), 4915) == kern.FWD_CONFIGS[0]
    assert kern._mm_config(x(4915, 768)) == kern.MM_CONFIGS[0]
    assert kern._fwd_config(x(8192, 1024), 8192, flat=True) == kern.FWD_CONFIGS[0]
    assert kern._fwd_config(x(8192, 1024), 8192, override=kern.FWD_CONFIGS[3]) == \
        kern.FWD_CONFIGS[3]
    assert kern._fwd_config(x(8192, 1024, torch.float32), 8192)["BLOCK_H"] == 32
    monkeypatch.setattr(kern, "MM_CONFIG", kern.MM_CONFIGS[2])
    assert kern._mm_config(x(8192, 1024)) == kern.MM_CONFIGS[2]


def test_mm_backend_choice(monkeypatch):
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    monkeypatch.delenv("XLMR_FAST_LCE_MM", raising=False)
    assert kern.mm_backend() == kern.MM_BACKEND
    monkeypatch.setenv("XLMR_FAST_LCE_MM", "cublas")
    assert kern.mm_backend() == "cublas" and kern.mm_backend("triton") == "triton"
    monkeypatch.setenv("XLMR_FAST_LCE_MM", "cutlass")
    with pytest.raises(ValueError, match="XLMR_FAST_LCE_MM"):
        kern.mm_backend()


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["triton", "triton-cublasmm", "triton-tokenchunk", "cuda"])
@pytest.mark.parametrize("existing", [False, True])
def test_gpu_accumulate_weight_grad(backend, monkeypatch, which, existing):
    if which == "cuda" and not lce_mod._ext.has_kernel("linear_cross_entropy_fwd", "CUDA"):
        pytest.skip("extension built without CUDA")
    backend(which.split("-")[0], chunk=4096)
    monkeypatch.setenv("XLMR_FAST_LCE_MM", "cublas" if "cublas" in which else "triton")
    monkeypatch.setenv("XLMR_FAST_LCE_SCHEDULE",
                       "tokenchunk" if "tokenchunk" in which else "recompute")
    _into_grad_case(torch.bfloat16, torch.float32, existing, "cuda", N=333, H=256, V=20011)


@pytest.mark.interpret
@pytest.mark.parametrize("existing", [False, True])
def test_triton_interpreter_accumulate_weight_grad(backend, existing):
    # existing .grad: the dW GEMM reads and writes it in place (ACCUM), chunk by chunk
    backend("triton", chunk=256)
    _into_grad_case(torch.bfloat16, torch.float32, existing)


@pytest.mark.interpret
def test_triton_interpreter_all_ignored(backend):
    backend("triton", chunk=128)
    h, w, b, t = make_inputs(5, 32, 200)
    t[:] = -100
    loss, dh, dw, db = run(linear_cross_entropy, h, w, b, t, "mean", 0.1)
    assert loss.item() == 0.0 and not dh.any() and not dw.any() and not db.any()


@pytest.mark.interpret
@pytest.mark.parametrize("schedule", ["recompute", "flat", "tokenchunk"])
def test_triton_interpreter_custom_ignore_index_and_int32_targets(backend, monkeypatch,
                                                                  schedule):
    # Every other Triton case ignores -100, so a kernel that took "target < 0" for "ignored"
    # passed them all; a non-negative ignore_index (a pad id) tells the two apart. (The CPU
    # twin's test_cpu_twin_custom_ignore_index_and_int32_targets, for the Triton kernels.)
    backend("triton", chunk=256)
    monkeypatch.setenv("XLMR_FAST_LCE_FLAT", "1" if schedule == "flat" else "0")
    monkeypatch.setenv("XLMR_FAST_LCE_SCHEDULE",
                       "tokenchunk" if schedule == "tokenchunk" else "recompute")
    h, w, b, t = make_inputs(50, 64, 1000, ignore_index=7, seed=5)
    compare(h, w, b, t.int(), "mean", 0.1, torch.float32, ignore_index=7)


@pytest.mark.interpret
def test_triton_interpreter_opcheck():
    h, w, b, t = make_inputs(3, 32, 70, seed=8)
    args = (h.requires_grad_(), w.requires_grad_(), b.requires_grad_(), t, -100, 0.1, "triton", 64)
    torch.library.opcheck(lce_mod._lce_fwd, args)


# ---------------------------------------------------------------- token-chunk schedule
@pytest.fixture
def tokenchunk(backend, monkeypatch):
    """The Triton backend with XLMR_FAST_LCE_SCHEDULE=tokenchunk; `rows` sets the rows per
    chunk through TOKEN_CHUNK_BYTES. Returns the kernels' call counts (fwdgrad, backward)."""
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    calls = {"fwdgrad": 0, "backward": 0}

    def spy(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(kern, "lce_fwdgrad", spy("fwdgrad", kern.lce_fwdgrad))
    monkeypatch.setattr(kern, "lce_backward", spy("backward", kern.lce_backward))

    def set_(rows=None):
        backend("triton")
        monkeypatch.setenv("XLMR_FAST_LCE_SCHEDULE", "tokenchunk")
        if rows is not None:  # bytes of `rows` padded rows of the widest dtype used (fp32)
            monkeypatch.setattr(kern, "TOKEN_CHUNK_BYTES", rows * 4 * kern.padded_vocab(V_TC))
        return calls
    return set_


V_TC = 1003
TC_CASES = [
    # N, H, dtype, bias, reduction, eps, rows per chunk (fp32; twice as many in 16 bits)
    (13, 64, torch.float32, True, "mean", 0.0, 5),     # 3 chunks, ragged last one
    (33, 96, torch.bfloat16, False, "sum", 0.1, 8),
    (20, 64, torch.float16, True, "mean", 0.2, 4),
    (1, 40, torch.float32, True, "sum", 0.1, None),     # one row, H not a multiple of 32
]


@pytest.mark.interpret
@pytest.mark.parametrize("N,H,dtype,bias,reduction,eps,rows", TC_CASES)
def test_triton_interpreter_token_chunk(tokenchunk, N, H, dtype, bias, reduction, eps, rows):
    calls = tokenchunk(rows)
    h, w, b, t = make_inputs(N, H, V_TC, dtype, bias=bias, seed=N + H)
    compare(h, w, b, t, reduction, eps, dtype)
    assert calls == {"fwdgrad": 1, "backward": 0}  # compare's reference runs do not count


@pytest.mark.interpret
def test_triton_interpreter_token_chunk_only_where_it_applies(tokenchunk):
    # reduction "none" (per-row upstream grads), no_grad and inputs without grad run the
    # recompute schedule (its fused forward); the gradients are right either way.
    calls = tokenchunk(4)
    h, w, b, t = make_inputs(9, 64, V_TC, seed=3)
    compare(h, w, b, t, "none", 0.0, torch.float32)
    assert calls == {"fwdgrad": 0, "backward": 1}
    with torch.no_grad():
        a = linear_cross_entropy(h, w, b, t)
    c = linear_cross_entropy(h, w, b, t)   # nothing requires grad
    assert calls["fwdgrad"] == 0
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(a, linear_cross_entropy_reference(h, w, b, t))


@pytest.mark.interpret
def test_triton_interpreter_token_chunk_partial_grads(tokenchunk, monkeypatch):
    # Only hidden, or only the weight, requires grad: the other product is not computed, and
    # the one asked for equals the reference's.
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    tokenchunk(4)
    h, w, b, t = make_inputs(11, 64, V_TC, seed=6)
    seen = []
    real = kern.lce_fwdgrad
    monkeypatch.setattr(kern, "lce_fwdgrad", lambda *a, **k: seen.append(k) or real(*a, **k))
    for i, fn in enumerate((linear_cross_entropy, linear_cross_entropy_reference)):
        hh = h.clone().requires_grad_()
        fn(hh, w, b, t, label_smoothing=0.1).mul(1.5).backward()
        ww = w.clone().requires_grad_()
        fn(h, ww, b, t, label_smoothing=0.1).mul(1.5).backward()
        if i == 0:
            ours = (hh.grad, ww.grad)
            assert [(k["need_dx"], k["need_dw"]) for k in seen] == [(True, False),
                                                                    (False, True)]
    for o, r in zip(ours, (hh.grad, ww.grad)):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-6)


@pytest.mark.interpret
@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("dtype,wdtype", [(torch.float32, torch.float32),
                                          (torch.bfloat16, torch.float32),
                                          (torch.bfloat16, torch.bfloat16)])
def test_triton_interpreter_token_chunk_accumulate_weight_grad(tokenchunk, dtype, wdtype,
                                                               existing):
    # .grad existing: g * dW is added into it in place; None: the saved fp32 dW becomes it.
    calls = tokenchunk(6)
    _into_grad_case(dtype, wdtype, existing)
    assert calls["fwdgrad"] == 2 and calls["backward"] == 0


@pytest.mark.interpret
def test_triton_interpreter_token_chunk_autograd_grad_and_retain_graph(tokenchunk):
    tokenchunk(6)
    h, w, b, t = make_inputs(15, 64, V_TC, seed=12)
    w.requires_grad_()
    # torch.autograd.grad leaves .grad alone and returns dW (accumulate_weight_grad or not)
    got = torch.autograd.grad(linear_cross_entropy(h, w, b, t, accumulate_weight_grad=True), w)
    want = torch.autograd.grad(linear_cross_entropy_reference(h, w, b, t), w)
    assert w.grad is None
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-6)
    # A retained graph: the saved gradients are scaled out of place, so a second backward
    # gives the same again (the plain op), or adds again into an existing .grad.
    for into in (False, True):
        w.grad = torch.zeros_like(w) if into else None
        loss = linear_cross_entropy(h, w, b, t, accumulate_weight_grad=into)
        loss.backward(retain_graph=True)
        first = w.grad.clone()
        loss.backward()
        torch.testing.assert_close(w.grad, 2 * first)
    # into .grad with no .grad yet: the saved dW is scaled in place and handed over, so a
    # second backward through the retained graph must fail loudly, not reuse it.
    w.grad = None
    loss = linear_cross_entropy(h, w, b, t, accumulate_weight_grad=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.interpret
def test_triton_interpreter_token_chunk_all_ignored(tokenchunk):
    tokenchunk(3)
    h, w, b, t = make_inputs(7, 32, V_TC)
    t[:] = -100
    loss, dh, dw, db = run(linear_cross_entropy, h, w, b, t, "mean", 0.1)
    assert loss.item() == 0.0 and not dh.any() and not dw.any() and not db.any()


@pytest.mark.interpret
@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on the planted NaN/inf: intended
def test_triton_interpreter_token_chunk_padding_columns_never_leak(monkeypatch, fill):
    # The stats and grad kernels read and write the logits buffer's padding columns [V, V_pad)
    # (whole 16-column groups, for vector accesses): what those columns hold, never written
    # by the logits GEMM, must not reach the loss or any gradient. Every torch.empty of the
    # call (the buffer included) is pre-filled with NaN or +inf; results stay bit-identical.
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    V = 70                                  # V_pad 128: 58 padding columns
    assert kern.padded_vocab(V) > V
    h, w, b, t = make_inputs(9, 32, V, torch.float16, seed=21)
    args = (h, w, b, t, -100, 0.1)
    clean = kern.lce_fwdgrad(*args, rows=4)
    real_empty = torch.empty

    def dirty_empty(*a, **k):
        x = real_empty(*a, **k)
        return x.fill_(fill) if x.is_floating_point() else x

    monkeypatch.setattr(torch, "empty", dirty_empty)
    dirty = kern.lce_fwdgrad(*args, rows=4)
    monkeypatch.undo()
    for name, c, d in zip(("loss", "dx", "dw", "db"), clean, dirty):
        assert torch.isfinite(c).all(), name
        assert torch.equal(c, d), name


@pytest.mark.interpret
def test_triton_interpreter_token_chunk_phase_hook():
    # The breakdown hook sees every phase of every chunk in order, then None; it changes
    # nothing in the results.
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    h, w, b, t = make_inputs(9, 32, 70, seed=5)
    seen = []
    hooked = kern.lce_fwdgrad(h, w, b, t, -100, 0.1, rows=4, phase=seen.append)
    plain = kern.lce_fwdgrad(h, w, b, t, -100, 0.1, rows=4)
    assert seen == list(kern.PHASES) * 3 + [None]                  # chunks of 4, 4, 1 rows
    for x, y in zip(hooked, plain):
        assert torch.equal(x, y)
    seen.clear()
    kern.lce_fwdgrad(h, w, b, t, -100, 0.0, rows=9, need_dx=False, phase=seen.append)
    assert seen == [p for p in kern.PHASES if p != "dX GEMM"] + [None]


@pytest.mark.interpret
def test_triton_interpreter_token_chunk_opcheck():
    for bias, need in ((True, (True, True)), (False, (False, True)), (True, (True, False))):
        h, w, b, t = make_inputs(6, 32, 70, seed=8, bias=bias)
        args = (h.requires_grad_(), w.requires_grad_(), b.requires_grad_() if bias else None,
                t, -100, 0.1, *need, 4)
        torch.library.opcheck(lce_mod._lce_fwdgrad, args)


@pytest.mark.interpret
def test_triton_interpreter_token_chunk_under_compile(tokenchunk):
    tokenchunk(5)
    h, w, b, t = make_inputs(12, 64, V_TC, seed=4)
    eager = run(linear_cross_entropy, h, w, b, t, "mean", 0.1)
    fn = torch.compile(linear_cross_entropy, backend="aot_eager", fullgraph=True)
    compiled = run(fn, h, w, b, t, "mean", 0.1)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)


def test_token_chunk_sizes_and_schedule_choice(monkeypatch):
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    assert kern.padded_vocab(250002) == 250048 and kern.padded_vocab(64) == 64
    # default budget at XLM-R's vocabulary: 1024 bf16 rows of 250,048 columns
    assert kern.token_chunk_rows(8192, 250002, 2) == 1024
    assert kern.token_chunk_rows(500, 250002, 2) == 500          # never more than N
    assert kern.token_chunk_rows(8192, 250002, 2, rows=300) == 300
    monkeypatch.setattr(kern, "TOKEN_CHUNK_BYTES", 10 * 2 * 250048)
    assert kern.token_chunk_rows(8192, 250002, 2) == 10          # < 128: not rounded
    monkeypatch.setattr(kern, "TOKEN_CHUNK_BYTES", 1)
    assert kern.token_chunk_rows(8192, 250002, 2) == 1
    monkeypatch.delenv("XLMR_FAST_LCE_SCHEDULE", raising=False)
    assert kern.schedule() == kern.SCHEDULE
    monkeypatch.setenv("XLMR_FAST_LCE_SCHEDULE", "tokenchunk")
    assert kern.schedule() == "tokenchunk" and kern.schedule("recompute") == "recompute"
    monkeypatch.setenv("XLMR_FAST_LCE_SCHEDULE", "6nhv")
    with pytest.raises(ValueError, match="XLMR_FAST_LCE_SCHEDULE"):
        kern.schedule()


# ---------------------------------------------------------------- GPU: both fused paths
def gpu_backends():
    out = ["triton", "triton-flat", "triton-tokenchunk"]
    if HAS_CUDA_EXT:
        out.append("cuda")
    return out


def use_gpu_path(which, backend, monkeypatch, chunk=None):
    """which: "triton", "triton-flat" (XLMR_FAST_LCE_FLAT=1), "triton-tokenchunk"
    (XLMR_FAST_LCE_SCHEDULE=tokenchunk: the 6NHV schedule where it applies) or "cuda"."""
    if which not in gpu_backends():
        pytest.skip("xlmr_fast._C has no CUDA kernels")
    backend(which.split("-")[0], chunk=chunk)
    monkeypatch.setenv("XLMR_FAST_LCE_FLAT", "1" if which == "triton-flat" else "0")
    monkeypatch.setenv("XLMR_FAST_LCE_SCHEDULE",
                       "tokenchunk" if which == "triton-tokenchunk" else "recompute")


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["triton", "triton-flat", "triton-tokenchunk", "cuda"])
@pytest.mark.parametrize("N,H,V", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("reduction,eps,bias", [("mean", 0.0, True), ("none", 0.1, False),
                                                ("sum", 0.1, True)])
def test_gpu_small(backend, monkeypatch, which, N, H, V, dtype, reduction, eps, bias):
    use_gpu_path(which, backend, monkeypatch, chunk=1024)
    h, w, b, t = make_inputs(N, H, V, dtype, bias=bias, device="cuda", seed=N + H + V)
    compare(h, w, b, t, reduction, eps, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["triton", "triton-flat", "triton-tokenchunk", "cuda"])
def test_gpu_all_ignored_and_deterministic(backend, monkeypatch, which):
    use_gpu_path(which, backend, monkeypatch)
    h, w, b, t = make_inputs(300, 64, 4099, torch.bfloat16, device="cuda")
    a = run(linear_cross_entropy, h, w, b, t, "mean", 0.1)
    for trial in range(1, 50):  # bit-exact over many trials, not just two
        c = run(linear_cross_entropy, h, w, b, t, "mean", 0.1)
        for x, y in zip(a, c):
            assert torch.equal(x, y), f"not bitwise deterministic (trial {trial})"
    t[:] = -100
    loss, dh, dw, db = run(linear_cross_entropy, h, w, b, t, "mean", 0.1)
    assert loss.item() == 0.0 and not dh.any() and not dw.any() and not db.any()


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["triton", "triton-flat", "triton-tokenchunk", "cuda"])
def test_gpu_no_host_sync(backend, monkeypatch, which):
    use_gpu_path(which, backend, monkeypatch)
    h, w, b, t = make_inputs(300, 64, 4099, torch.bfloat16, device="cuda")
    run(linear_cross_entropy, h, w, b, t, "mean", 0.1)  # compile / warm up first
    h.requires_grad_()
    w.requires_grad_()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = linear_cross_entropy(h, w, b, t)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_EXT, reason="extension built without CUDA")
def test_gpu_cpp_ops_capture_in_a_cuda_graph():
    # Every launch of the C++ path (cuBLAS GEMMs, the .cu kernels, allocations) goes to the
    # current stream with no host sync: a default-stream launch or a sync breaks the capture.
    fwd = _ext.require("linear_cross_entropy_fwd", "CUDA")
    bwd = _ext.require("linear_cross_entropy_bwd", "CUDA")
    h, w, b, t = make_inputs(300, 64, 4099, torch.bfloat16, device="cuda")
    g = torch.rand(300, device="cuda") + 0.5
    want_loss, want_stats = fwd(h, w, b, t, -100, 0.1, 1024)  # also warms cuBLAS up
    want = bwd(g, h, w, b, t, want_stats, -100, 0.1, 1024)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, stats = fwd(h, w, b, t, -100, 0.1, 1024)
        got = bwd(g, h, w, b, t, stats, -100, 0.1, 1024)
    graph.replay()
    torch.cuda.synchronize()
    for x, y in zip((loss, stats, *got), (want_loss, want_stats, *want)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.skipif(not HAS_CUDA_EXT, reason="extension built without CUDA")
def test_gpu_cpp_ops_on_a_device_that_is_not_current(backend):
    # inputs on cuda:1 while cuda:0 is current: the C++ path's device guard
    backend("cuda", chunk=1024)
    h, w, b, t = make_inputs(50, 64, 4099, torch.float32, device="cuda:1", seed=6)
    with torch.cuda.device(0):
        ours = run(linear_cross_entropy, h, w, b, t, "mean", 0.1)
    ref = run(linear_cross_entropy_reference, h.cpu(), w.cpu(), b.cpu(), t.cpu(), "mean", 0.1)
    for o, r in zip(ours, ref):
        assert o.device == torch.device("cuda:1")
        torch.testing.assert_close(o.cpu(), r, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [256, 1024])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_cuda_minus_inf_bias(backend, monkeypatch, dtype, chunk):
    # The CUDA stats kernel gave NaN when a thread's first logit of a chunk was -inf and a
    # finite one followed (-inf - (-inf) in its online sum-exp): chunk=1024 here.
    use_gpu_path("cuda", backend, monkeypatch, chunk=chunk)
    compare(*minus_inf_bias_inputs(dtype, "cuda"), "mean", 0.0, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["triton", "triton-flat", "triton-tokenchunk", "cuda"])
@pytest.mark.parametrize("H", [768, 1024])
def test_gpu_xlmr_shape(backend, monkeypatch, which, H):
    """N = 4,915 masked rows, V = 250,002, bf16: the LM head of one XLM-R micro-batch."""
    if H == 1024 and os.environ.get("XLMR_FAST_SLOW") != "1":
        pytest.skip("set XLMR_FAST_SLOW=1 for the large shape")
    use_gpu_path(which, backend, monkeypatch)
    h, w, b, t = make_inputs(4915, H, 250002, torch.bfloat16, device="cuda", ignore_frac=0.05)
    compare(h, w, b, t, "mean", 0.0, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["triton", "triton-flat", "triton-tokenchunk"])
def test_gpu_tuned_shape(backend, monkeypatch, which):
    """N = 8192, H = 1024 takes the TUNED_BY_SHAPE configs on sm_90 (BLOCK_V 256 forward/
    dlogits, 128 x 256 GEMM tiles; FLAT keeps entry 0; entry 0 on other GPUs); a small V keeps
    the reference cheap."""
    use_gpu_path(which, backend, monkeypatch, chunk=4096)
    h, w, b, t = make_inputs(8192, 1024, 20011, torch.bfloat16, device="cuda", ignore_frac=0.05)
    compare(h, w, b, t, "mean", 0.0, torch.bfloat16)


# Label smoothing's uniform term eps / V is ~1e-4 of a logit's gradient at the vocabularies
# above (V ~ 1000) and, summed into a mean-reduced gradient, below the fp32 tolerance: a wrong
# weight (eps / (V - 1)) in the recompute backward passed every case (in the token-chunk
# kernels, the forward's combine and the CPU twin only the N = 1 cases caught it, by < 3x).
# At a small V with a large eps and a summed loss it is ~1e-2 per logit and shows in the loss,
# dX, dW and db.
@pytest.mark.parametrize("schedule", [pytest.param("twin", marks=needs_twin)] + [
    pytest.param(s, marks=pytest.mark.interpret) for s in ("recompute", "flat", "tokenchunk")])
def test_label_smoothing_small_vocab(backend, monkeypatch, schedule):
    backend("cuda" if schedule == "twin" else "triton", chunk=64)  # 2 chunks, the last partial
    if schedule != "twin":
        from xlmr_fast.kernels.triton import linear_cross_entropy as kern
        monkeypatch.setenv("XLMR_FAST_LCE_FLAT", "1" if schedule == "flat" else "0")
        monkeypatch.setenv("XLMR_FAST_LCE_SCHEDULE",
                           "tokenchunk" if schedule == "tokenchunk" else "recompute")
        monkeypatch.setattr(kern, "TOKEN_CHUNK_BYTES", 10 * 4 * kern.padded_vocab(101))
    h, w, b, t = make_inputs(24, 32, 101, seed=23)
    for reduction in ("sum", "mean"):
        compare(h, w, b, t, reduction, 0.3, torch.float32)

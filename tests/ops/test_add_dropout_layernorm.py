"""xf.ops.add_dropout_layernorm vs the plain-torch fp32 reference: forward, all four gradients,
the dropout mask (bit-exact vs dropout_keep_mask, statistics, seeding), determinism, opcheck.

Backends: `reference` everywhere; `triton` on the CPU interpreter (marker interpret, small
shapes) and on CUDA (marker gpu, incl. XLM-R shapes (32768, 768/1024)).
Low precision: error vs fp32 <= 2 x the error of plain torch at the same precision + a tiny floor.
"""

import pytest
import torch
import torch.nn.functional as F

from _tolerance import INTERP, assert_2x as _assert_2x, config_cases, run_grads as _run
from _tolerance import with_forced_config
from xlmr_fast.kernels.triton import add_dropout_layernorm as _kern
from xlmr_fast.ops import _backend
from xlmr_fast.ops.add_dropout_layernorm import (
    add_dropout_layernorm,
    add_dropout_layernorm_reference,
    dropout_keep_mask,
    dropout_keys,
    dropout_threshold,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEED = 2**40 + 987654321  # > 2^32: exercises the high seed bits


def _inputs(M, N, dtype, device, wdtype=None, lead=None, rdtype=None):
    g = torch.Generator(device="cpu").manual_seed(torch.randint(0, 2**31, ()).item())
    shape = (*lead, N) if lead else (M, N)

    def rnd(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g) * scale + shift)

    wdtype = wdtype or dtype
    x = rnd(*shape, scale=2.0).to(device=device, dtype=dtype)
    r = rnd(*shape, scale=1.0, shift=0.3).to(device=device, dtype=rdtype or dtype)
    w = rnd(N, scale=0.5, shift=1.0).to(device=device, dtype=wdtype)
    b = rnd(N, scale=0.5).to(device=device, dtype=wdtype)
    return x, r, w, b


def _torch_same_precision(x, r, w, b, p, keep, eps=1e-5):
    """The plain composition in the inputs' own precision (what the model would do unfused; with
    a fp32 residual, what autocast does: the add promotes to fp32, LayerNorm runs in fp32)."""
    if p > 0:
        x = x * keep.to(x.dtype) * (1.0 / (1.0 - p))
    dt = torch.promote_types(x.dtype, r.dtype)
    return F.layer_norm(r + x, (x.shape[-1],), w.to(dt), b.to(dt), eps)


def _compare(M, N, dtype, device, p, wdtype=None, lead=None, eps=1e-5, rdtype=None):
    x, r, w, b = _inputs(M, N, dtype, device, wdtype, lead, rdtype)
    keep = dropout_keep_mask(SEED, x.shape, p, device)
    dy = torch.randn(x.shape, device=device)
    y, g = _run(lambda *t: add_dropout_layernorm(*t, dropout_p=p, eps=eps, seed=SEED), (x, r, w, b), dy)
    y_ref, g_ref = _run(lambda *t: add_dropout_layernorm_reference(*t, dropout_p=p, eps=eps,
                                                                   keep_mask=keep),
                        [t.float() for t in (x, r, w, b)], dy)
    y_lp, g_lp = _run(lambda *t: _torch_same_precision(*t, p, keep, eps), (x, r, w, b), dy)
    assert y.dtype == r.dtype and y.shape == x.shape
    assert [t.dtype for t in g] == [x.dtype, r.dtype, w.dtype, b.dtype]
    _assert_2x("y", y, y_lp, y_ref, dtype)
    for name, a, lp, rf in zip(("dx", "dresidual", "dweight", "dbias"), g, g_lp, g_ref):
        _assert_2x(name, a, lp, rf, dtype)
    if p > 0:
        # The kernel's mask is exactly dropout_keep_mask: dx vanishes exactly where dropped.
        assert torch.equal(g[0] == 0, ~keep), "dropout mask differs from dropout_keep_mask"
    return y, g


@pytest.fixture
def backend(monkeypatch, request):
    monkeypatch.setenv("XLMR_FAST_BACKEND", request.param)
    return request.param


# ---- reference backend (CPU, every shape) ---------------------------------------------------
@pytest.mark.parametrize("backend", ["reference"], indirect=True)
@pytest.mark.parametrize("M", [1, 7, 333])
@pytest.mark.parametrize("N", [64, 96, 768])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_reference_backend(backend, M, N, dtype, p):
    if INTERP:
        pytest.skip("covered by the non-interpreter pass")
    _compare(M, N, dtype, "cpu", p)


# ---- triton on the CPU interpreter (small shapes) -------------------------------------------
@pytest.mark.interpret
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
@pytest.mark.parametrize("M,N", [(1, 64), (7, 96), (13, 768)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_triton_interpret(backend, M, N, dtype, p):
    _compare(M, N, dtype, "cpu", p)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
def test_triton_interpret_mixed_and_3d(backend):
    _compare(None, 96, torch.bfloat16, "cpu", 0.1, wdtype=torch.float32, lead=(3, 5))
    _compare(5, 33, torch.float32, "cpu", 0.5, eps=1e-3)  # odd N, high p, other eps


# A fp32 residual stream with 16-bit sublayer outputs (the model under autocast): y and
# dresidual in fp32, dx in x's dtype.
def _fp32_residual(dtype, p):
    _compare(7, 96, dtype, "cpu", p, wdtype=torch.float32, rdtype=torch.float32)
    _compare(None, 64, dtype, "cpu", p, rdtype=torch.float32, lead=(2, 9))


@pytest.mark.parametrize("backend", ["reference"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_fp32_residual_reference(backend, dtype, p):
    if INTERP:
        pytest.skip("covered by the non-interpreter pass")
    _fp32_residual(dtype, p)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_fp32_residual_triton_interpret(backend, dtype, p):
    _fp32_residual(dtype, p)


# ---- triton on CUDA -------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
@pytest.mark.parametrize("M", [1, 7, 333])
@pytest.mark.parametrize("N", [64, 96, 768, 1024, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_triton_gpu(backend, M, N, dtype, p):
    _compare(M, N, dtype, "cuda", p)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
@pytest.mark.parametrize("N", [768, 1024])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_triton_gpu_xlmr_shapes(backend, N, p):
    _compare(None, N, torch.bfloat16, "cuda", p, lead=(64, 512))  # T = 32768 rows
    _compare(None, N, torch.bfloat16, "cuda", p, wdtype=torch.float32, lead=(64, 512))
    _compare(None, N, torch.bfloat16, "cuda", p, wdtype=torch.float32, lead=(64, 512),
             rdtype=torch.float32)


# ---- every autotuner config -----------------------------------------------------------------
# On a GPU the autotuner may pick any entry of FWD_CONFIGS / BWD_CONFIGS (per width, dtypes and
# dropout, timed on the card at hand), and the other tests see only the one it picked; so each
# entry is forced in turn (set_configs) and checked against the reference. M is chosen so that
# the backward's row slabs are not a multiple of BLOCK_M 4 or 8: 23 rows -> slabs of 6 on the
# CPU; 3001 rows -> slabs of 6 on a 132-SM GPU (4 slabs per SM), the last one of 1 row.
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
@pytest.mark.parametrize("device,i", config_cases(_kern))
def test_triton_every_config(backend, device, i, monkeypatch):
    M = 23 if device == "cpu" else 3001

    def check():
        _compare(M, 96, torch.bfloat16, device, 0.1, wdtype=torch.float32, rdtype=torch.float32)
        _compare(M, 1000, torch.float32, device, 0.0)

    with_forced_config(_kern, i, "_adln_fwd_kernel", "_adln_bwd_kernel", check, monkeypatch)


# ---- dropout mask ---------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_statistics(p):
    M, N = 1000, 1024
    keep = dropout_keep_mask(SEED, (M, N), p)
    n = M * N
    frac = keep.float().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(frac - (1 - p)) < 5 * sigma, f"kept fraction {frac} vs {1 - p}"
    # No structure along rows or columns: per-column kept counts stay within 6 sigma.
    col = keep.float().mean(0)
    assert (col - (1 - p)).abs().max().item() < 6 * (p * (1 - p) / M) ** 0.5
    row = keep.float().mean(1)
    assert (row - (1 - p)).abs().max().item() < 6 * (p * (1 - p) / N) ** 0.5
    # Neighbouring elements independent: P(keep_i and keep_{i+1}) ~ (1-p)^2.
    flat = keep.view(-1)
    pair = (flat[:-1] & flat[1:]).float().mean().item()
    assert abs(pair - (1 - p) ** 2) < 6 * ((1 - p) ** 2 / n) ** 0.5


def test_keep_mask_seeds():
    a = dropout_keep_mask(SEED, (64, 512), 0.3)
    assert torch.equal(a, dropout_keep_mask(SEED, (64, 512), 0.3))
    for other in (SEED + 1, SEED % 2**32, SEED ^ (1 << 50)):
        b = dropout_keep_mask(other, (64, 512), 0.3)
        agree = (a == b).float().mean().item()
        assert abs(agree - (0.3**2 + 0.7**2)) < 0.02, f"seed {other}: masks correlated ({agree})"
    assert dropout_keys(5) != dropout_keys(6)
    assert dropout_threshold(0.0) == 0 and dropout_threshold(0.5) == 2**31
    assert dropout_keep_mask(SEED, (3, 4), 0.0).all()


def _same_seed(device):
    x, r, w, b = _inputs(37, 96, torch.float32, device)
    dy = torch.randn(x.shape, device=device)
    f = lambda s: _run(lambda *t: add_dropout_layernorm(*t, dropout_p=0.2, seed=s), (x, r, w, b), dy)  # noqa: E731
    (y1, g1), (y2, g2), (y3, _) = f(11), f(11), f(12)
    assert torch.equal(y1, y2) and all(torch.equal(a, b_) for a, b_ in zip(g1, g2))
    assert not torch.equal(y1, y3)
    # seed=None draws from torch's generator: reproducible under torch.manual_seed.
    torch.manual_seed(3)
    ya = add_dropout_layernorm(x, r, w, b, dropout_p=0.2)
    torch.manual_seed(3)
    yb = add_dropout_layernorm(x, r, w, b, dropout_p=0.2)
    assert torch.equal(ya, yb) and not torch.equal(ya, add_dropout_layernorm(x, r, w, b, dropout_p=0.2))


@pytest.mark.parametrize("backend", ["reference"], indirect=True)
def test_same_seed_reference(backend):
    _same_seed("cpu")


@pytest.mark.interpret
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
def test_same_seed_triton_interpret(backend):
    _same_seed("cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
def test_same_seed_and_determinism_gpu(backend):
    _same_seed("cuda")
    # Bitwise-identical weight/bias gradients over repeated runs (no atomics).
    x, r, w, b = _inputs(32768, 1024, torch.bfloat16, "cuda")
    dy = torch.randn(x.shape, device="cuda")
    f = lambda: _run(lambda *t: add_dropout_layernorm(*t, dropout_p=0.1, seed=7), (x, r, w, b), dy)  # noqa: E731
    _, g0 = f()
    for _ in range(20):
        _, g = f()
        assert all(torch.equal(a, b_) for a, b_ in zip(g0, g))


# ---- registration ---------------------------------------------------------------------------
def _opcheck(device, backend_name, M=5, N=24):
    # fp32, and a bf16 sublayer output on a fp32 residual stream (the autocast case)
    for dtype, rdtype in ((torch.float32, None), (torch.bfloat16, torch.float32)):
        x, r, w, b = _inputs(M, N, dtype, device, wdtype=torch.float32, rdtype=rdtype)
        for p, seed in ((0.0, 0), (0.25, 1234)):
            args = [t.requires_grad_() for t in (x.clone(), r.clone(), w.clone(), b.clone())]
            torch.library.opcheck(torch.ops.xlmr_fast.add_dropout_layernorm_fwd.default,
                                  (*args, p, 1e-5, seed, backend_name))


def test_opcheck_reference():
    if INTERP:
        pytest.skip("covered by the non-interpreter pass")
    _opcheck("cpu", "reference")


@pytest.mark.interpret
def test_opcheck_triton_interpret():
    _opcheck("cpu", "triton")


@pytest.mark.gpu
def test_opcheck_triton_gpu():
    _opcheck("cuda", "triton", M=33, N=768)


def test_compile_traces_whole_graph(monkeypatch):
    """torch.compile sees one opaque op (fullgraph, seed passed as an int argument)."""
    if INTERP:
        pytest.skip("covered by the non-interpreter pass")
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    x, r, w, b = _inputs(6, 32, torch.float32, "cpu")

    def f(x, r, w, b, seed):
        return add_dropout_layernorm(x, r, w, b, dropout_p=0.1, seed=seed) * 2

    cf = torch.compile(f, backend="aot_eager", fullgraph=True)
    for seed in (1, 2, 3):
        leaves = [t.clone().requires_grad_() for t in (x, r, w, b)]
        y = cf(*leaves, seed)
        y.sum().backward()
        leaves2 = [t.clone().requires_grad_() for t in (x, r, w, b)]
        y2 = f(*leaves2, seed)
        y2.sum().backward()
        assert torch.equal(y, y2)
        assert all(torch.allclose(a.grad, c.grad) for a, c in zip(leaves, leaves2))


@pytest.mark.parametrize(
    "backend", ["reference", pytest.param("triton", marks=pytest.mark.interpret)], indirect=True)
def test_eager_path_equals_custom_op(backend):
    if (backend == "triton") != INTERP:
        pytest.skip("runs in the other pass")
    # Eager calls take the autograd.Function (no custom-op dispatch cost); it must give the
    # custom op's bits, forward and all four gradients (fp32 and the autocast mix).
    for dtype, rdtype in ((torch.float32, None), (torch.bfloat16, torch.float32)):
        x, r, w, b = _inputs(9, 40, dtype, "cpu", wdtype=torch.float32, rdtype=rdtype)
        for p, seed in ((0.0, 0), (0.2, SEED)):
            dy = torch.randn(x.shape)
            a = [t.clone().requires_grad_() for t in (x, r, w, b)]
            y = add_dropout_layernorm(*a, dropout_p=p, seed=seed)
            assert type(y.grad_fn).__name__ == "_EagerBackward"
            y.backward(dy)
            c = [t.clone().requires_grad_() for t in (x, r, w, b)]
            y2 = torch.ops.xlmr_fast.add_dropout_layernorm_fwd(*c, p, 1e-5, seed, backend)[0]
            y2.backward(dy)
            assert torch.equal(y, y2)
            for t1, t2 in zip(a, c):
                assert torch.equal(t1.grad, t2.grad)


def test_input_errors():
    x, r, w, b = _inputs(4, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match="residual shape"):
        add_dropout_layernorm(x, r[:, :4], w, b)
    with pytest.raises(ValueError, match="residual dtype"):
        add_dropout_layernorm(x, r.half(), w, b)
    with pytest.raises(ValueError, match="residual dtype"):
        add_dropout_layernorm(x.half(), r.bfloat16(), w.half(), b.half())
    with pytest.raises(ValueError, match="weight must have shape"):
        add_dropout_layernorm(x, r, w[:4], b)
    with pytest.raises(ValueError, match="bias must have shape"):
        add_dropout_layernorm(x, r, w, b[None])
    with pytest.raises(ValueError, match="weight dtype"):
        add_dropout_layernorm(x.half(), r.half(), w.bfloat16(), b.bfloat16())
    with pytest.raises(ValueError, match="bias dtype"):
        add_dropout_layernorm(x, r, w, b.half())
    with pytest.raises(ValueError, match="x must be float32"):
        add_dropout_layernorm(x.long(), r.long(), w, b)
    with pytest.raises(ValueError, match="dropout_p"):
        add_dropout_layernorm(x, r, w, b, dropout_p=1.0)
    with pytest.raises(ValueError, match="eps"):
        add_dropout_layernorm(x, r, w, b, eps=0.0)
    with pytest.raises(ValueError, match="seed"):
        add_dropout_layernorm(x, r, w, b, dropout_p=0.1, seed=-1)
    with pytest.raises(TypeError, match="weight must be a tensor"):
        add_dropout_layernorm(x, r, None, b)


def test_forced_backend_refusals(monkeypatch):
    x, r, w, b = _inputs(4, 8, torch.float32, "cpu")
    monkeypatch.setenv("XLMR_FAST_BACKEND", "cuda")
    with pytest.raises(_backend.Unsupported, match="no CUDA-extension backend"):
        add_dropout_layernorm(x, r, w, b)
    if not INTERP:
        monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")
        with pytest.raises(_backend.Unsupported, match="triton cannot run"):
            add_dropout_layernorm(x, r, w, b)

"""bench/baselines/triton_tutorial_attention.py (the textbook FA2 benchmark baseline) against
the fp32 plain-torch reference: forward and dq/dk/dv.

Tolerance rule (tests/ops/_tolerance.py, as flash-attention's tests): |ours - ref32| <= 2x
|torch_lowp - ref32| for the output and 3x for gradients, plus a fraction-of-an-ulp floor;
torch_lowp is the same math in plain torch at the input precision. Triton on the CPU runs
under TRITON_INTERPRET=1 (marker `interpret`, small shapes and blocks); the full-size shape
runs on a GPU (marker `gpu`).
"""
import pytest
import torch

pytest.importorskip("triton")

from _tolerance import INTERP, floor, run_grads  # noqa: E402
from bench.baselines.triton_tutorial_attention import tutorial_attention  # noqa: E402


def reference(q, k, v):
    """softmax(q k^T / sqrt(D)) v, in the inputs' precision (fp32 for the reference)."""
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    return p @ v


def make_qkv(B, H, T, D, dtype, device):
    # The model's layout: (B, T, H, D) storage viewed as (B, H, T, D), so the kernels' stride
    # handling is exercised, not just contiguous tensors.
    return [torch.randn(B, T, H, D, device=device).to(dtype).transpose(1, 2) for _ in range(3)]


def assert_rule(name, ours, lowp, ref, dtype, factor):
    assert ours.shape == ref.shape and ours.dtype == dtype, f"{name}: {ours.shape} {ours.dtype}"
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    e_ours = (ours.float() - ref.float()).abs().max().item()
    e_torch = (lowp.float() - ref.float()).abs().max().item()
    bound = factor * e_torch + floor(dtype, ref)
    assert e_ours <= bound, (f"{name}: error {e_ours:.3g} > {factor} x torch {e_torch:.3g} "
                             f"+ floor ({bound:.3g})")


def check(B, H, T, D, dtype, device):
    q, k, v = make_qkv(B, H, T, D, dtype, device)
    dy = torch.randn(B, H, T, D, device=device)
    out, g = run_grads(tutorial_attention, (q, k, v), dy)
    lowp, g_lowp = run_grads(reference, (q, k, v), dy)
    ref, g_ref = run_grads(reference, [x.float() for x in (q, k, v)], dy)
    # Not vacuous: the output and the gradients carry signal (at T = 1 the softmax is the
    # constant 1, so dq = dk = 0 exactly and only out = v and dv = dO are informative).
    informative = [ref, g_ref[2]] + (g_ref[:2] if T > 1 else [])
    assert all(x.abs().max() > 0.1 for x in informative)
    assert_rule("out", out, lowp, ref, dtype, 2)
    for n, a, b, c in zip("qkv", g, g_lowp, g_ref):
        assert_rule(f"d{n}", a, b, c, dtype, 3)


CPU_CASES = [(1, 1, 1, 32), (2, 3, 17, 64), (1, 2, 45, 32), (1, 1, 64, 32), (2, 1, 40, 128)]


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B,H,T,D", CPU_CASES)
def test_interp_forward_backward(B, H, T, D, dtype):
    # T = 64 is a multiple of every interpreter block (the unmasked EVEN path); the others
    # leave tails in the query and key blocks of every kernel.
    check(B, H, T, D, dtype, "cpu")


@pytest.mark.interpret
def test_interp_sum_backward_and_scale():
    # out.sum().backward() hands the kernel an all-zero-stride dO; a custom softmax_scale.
    q, k, v = (x.detach().requires_grad_() for x in make_qkv(1, 2, 20, 32, torch.float16, "cpu"))
    out = tutorial_attention(q, k, v, softmax_scale=0.3)
    out.float().sum().backward()
    qr, kr, vr = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = torch.softmax(qr @ kr.transpose(-1, -2) * 0.3, -1) @ vr
    ref.sum().backward()
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=0)
    for a, b in ((q, qr), (k, kr), (v, vr)):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=1e-2, rtol=0)
    assert qr.grad.abs().max() > 0.05  # not vacuous


def test_validation_errors():
    q = torch.randn(1, 2, 8, 32, dtype=torch.float16)
    cases = [((q.float(), q, q), "q must be float16 or bfloat16"),
             ((q[..., :16], q[..., :16], q[..., :16]), "head dim"),
             ((q, q[0], q), r"k must be \(B, H, T, D\)"),
             ((q, q, q[:, :, :4]), "shapes differ"),
             ((q, q.bfloat16(), q), "dtypes differ")]
    if not INTERP and not torch.cuda.is_available():
        cases.append(((q, q, q), "needs CUDA"))
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            tutorial_attention(*args)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [333, 512])
def test_gpu_forward_backward(T):
    # 333 leaves tails in every block (masked path); 512 is the benchmark's full-length shape,
    # a multiple of every block (the unmasked EVEN path that the benchmark times).
    check(2, 4, T, 64, torch.bfloat16, "cuda")

"""xf.ops.attention against the fp32 plain-torch reference: forward, dq/dk/dv, masks, varlen,
dropout (same keep-mask as attention_dropout_mask), opcheck.

Tolerance rule (as flash-attention's tests): |ours - ref32| <= 2x |torch_lowp - ref32| for the
output and 3x for gradients, plus a tiny floor; torch_lowp is the same math in plain torch at
the input precision. Triton on the CPU runs under TRITON_INTERPRET=1 (marker `interpret`, small
shapes); full shapes run on a GPU (marker `gpu`).
"""
import math
import os

import pytest
import torch

import xlmr_fast as xf
from xlmr_fast.ops import _backend
from xlmr_fast.ops.attention import (attention_backend, attention_dropout_mask,
                                     attention_reference)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------ helpers
def make_qkv(B, H, T, D, dtype, device, seed=0):
    """q, k, v as the model makes them: (B, T, H, D) storage viewed as (B, H, T, D)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=g).to(device=device, dtype=dtype)
            .transpose(1, 2).requires_grad_() for _ in range(3)]


def make_mask(B, T, device, seed=0, frac=0.3):
    """Random (arbitrary, not right-aligned) key padding with an all-padding row, a row with a
    single valid key and (B > 2) a row with no padding."""
    g = torch.Generator().manual_seed(seed + 1)
    m = torch.rand(B, T, generator=g) < frac
    if B > 1:
        m[1] = True
    if B > 2:
        m[2] = True
        m[2, torch.randint(T, (1,), generator=g)] = False
    if B > 3:
        m[3] = False
    return m.to(device)


def torch_lowp(q, k, v, key_padding_mask=None, dropout_mask=None, dropout_p=0.0,
               softmax_scale=None):
    """The same math in plain torch at the input precision (the error yardstick)."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if key_padding_mask is not None:
        s = s.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    p = torch.softmax(s.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
    if dropout_mask is not None:
        p = p * dropout_mask.to(p.dtype) / (1.0 - dropout_p)
    return torch.einsum("bhqk,bhkd->bhqd", p, v)


def grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


def assert_close_rule(name, ours, ref, pt, factor):
    ours, ref, pt = ours.float(), ref.float(), pt.float()
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    err = (ours - ref).abs().max().item()
    err_pt = (pt - ref).abs().max().item()
    floor = 1e-5 + 1e-6 * ref.abs().max().item()
    assert err <= factor * err_pt + floor, (
        f"{name}: max error {err:.3g} > {factor} x torch-lowp error {err_pt:.3g} + {floor:.1g}")


def check_against_reference(q, k, v, kpm=None, dropout_p=0.0, seed=None, softmax_scale=None):
    """Run xf.ops.attention + backward; compare with fp32 reference and low-precision torch."""
    B, H, T, D = q.shape
    keep = attention_dropout_mask(seed, B, H, T, T, dropout_p, q.device) if dropout_p else None
    out = xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=dropout_p, seed=seed,
                           softmax_scale=softmax_scale)
    dout = torch.randn_like(out)
    g = grads(out, (q, k, v), dout)
    ref_in = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref = attention_reference(*ref_in, key_padding_mask=kpm, dropout_mask=keep, dropout_p=dropout_p,
                              softmax_scale=softmax_scale)
    g_ref = grads(ref, ref_in, dout.float())
    if q.dtype == torch.float32:
        tol = dict(atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(out, ref, **tol)
        for n, a, b in zip("qkv", g, g_ref):
            torch.testing.assert_close(a, b, **tol, msg=lambda m, n=n: f"d{n}: {m}")
        return out, g
    pt_in = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    pt = torch_lowp(*pt_in, key_padding_mask=kpm, dropout_mask=keep, dropout_p=dropout_p,
                    softmax_scale=softmax_scale)
    g_pt = grads(pt, pt_in, dout)
    assert_close_rule("out", out, ref, pt, 2)
    for n, a, b, c in zip("qkv", g, g_ref, g_pt):
        assert_close_rule(f"d{n}", a, b, c, 3)
    return out, g


def pack(x, lengths):
    """(B, H, T, D) right-padded -> packed (total, H, D)."""
    return torch.cat([x[b, :, :n].transpose(0, 1) for b, n in enumerate(lengths)], 0)


def cu_from(lengths, device):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32,
                        device=device)


@pytest.fixture
def force_triton(monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")


# ------------------------------------------------------------------ always (CPU, no Triton)
def test_reference_matches_naive_softmax():
    q, k, v = make_qkv(3, 2, 9, 8, torch.float64, "cpu")
    kpm = make_mask(3, 9, "cpu")
    out = attention_reference(q, k, v, key_padding_mask=kpm)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    s = s.masked_fill(kpm[:, None, None], float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    torch.testing.assert_close(out, (p @ v).to(out.dtype), atol=1e-5, rtol=1e-5)  # fp32 math
    assert (out[1] == 0).all()  # all-padding row
    g = grads(out, (q, k, v), torch.randn_like(out))
    assert all(torch.isfinite(x).all() for x in g)


def test_sdpa_backend_matches_reference(monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    q, k, v = make_qkv(4, 3, 13, 16, torch.float32, "cpu")
    kpm = make_mask(4, 13, "cpu")
    assert attention_backend(q)[0] == "sdpa"
    check_against_reference(q, k, v, kpm)


def test_sdpa_leaves_no_row_fully_masked(monkeypatch):
    """The SDPA path never hands SDPA a row whose every key is masked: cuDNN's backward returns
    NaN dQ for such rows (logsumexp ~ finfo.min) at T % 128 == 64 on H100/H200
    (pytorch#196678). An all-padding sequence attends unmasked instead and its output and
    gradients are zeroed, as the contract says."""
    import torch.nn.functional as F
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kw):
        seen.append(attn_mask)
        return sdpa(*args, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v = make_qkv(4, 3, 13, 16, torch.float32, "cpu")
    kpm = make_mask(4, 13, "cpu")  # row 1: all padding
    out = xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=0.2, seed=1)
    assert seen and all((m > torch.finfo(m.dtype).min).any(-1).all() for m in seen)
    assert (seen[0][0, 0, 0] < 0).equal(kpm[0])  # ordinary rows keep their mask
    assert (out[1] == 0).all()
    g = grads(out, (q, k, v), torch.randn_like(out))
    assert all(torch.isfinite(x).all() and (x[1] == 0).all() for x in g)
    lengths = [5, 0, 11]  # varlen: a zero-length sequence becomes an all-padding row
    qp, kp, vp = (torch.randn(sum(lengths), 2, 16, requires_grad=True) for _ in range(3))
    seen.clear()
    xf.ops.attention(qp, kp, vp, cu_seqlens=cu_from(lengths, "cpu"), max_seqlen=11)
    assert all((m > torch.finfo(m.dtype).min).any(-1).all() for m in seen)


def test_sdpa_varlen_matches_reference(monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    lengths = [5, 1, 0, 11]
    cu = cu_from(lengths, "cpu")
    q, k, v = (torch.randn(sum(lengths), 2, 16, requires_grad=True) for _ in range(3))
    out = xf.ops.attention(q, k, v, cu_seqlens=cu, max_seqlen=11)
    ref = attention_reference(q, k, v, cu_seqlens=cu)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_sdpa_softmax_scale_is_used(monkeypatch):
    # An explicit softmax_scale must reach SDPA on the padded and the packed path: dropping it
    # (passing None) silently falls back to D ** -0.5 = 0.25 here, not 0.3.
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    q, k, v = make_qkv(4, 3, 13, 16, torch.float32, "cpu")
    check_against_reference(q, k, v, make_mask(4, 13, "cpu"), softmax_scale=0.3)
    lengths = [5, 0, 11]
    cu = cu_from(lengths, "cpu")
    qp, kp, vp = (torch.randn(sum(lengths), 2, 16) for _ in range(3))
    out = xf.ops.attention(qp, kp, vp, cu_seqlens=cu, max_seqlen=11, softmax_scale=0.3)
    ref = attention_reference(qp, kp, vp, cu_seqlens=cu, softmax_scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_backend_reasons(monkeypatch):
    monkeypatch.delenv("XLMR_FAST_BACKEND", raising=False)
    q = torch.randn(1, 1, 4, 48)
    backend, reason = attention_backend(q)
    assert backend == "sdpa" and reason
    if not _backend.interpret():
        assert attention_backend(torch.randn(1, 1, 4, 64))[0] == "sdpa"
        monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")
        with pytest.raises(_backend.Unsupported, match="Triton kernel cannot run"):
            xf.ops.attention(q, q, q)


def test_triton_support_rules(monkeypatch):
    """What the Triton kernel is given (the choice only, no kernel runs): head dims 32, 64, 128
    (a 96-wide head falls back, it never reaches the kernel), fp16/bf16/fp32 (fp32 on CUDA only
    when forced: SDPA is faster), no empty input; XLMR_FAST_BACKEND=reference forces SDPA.
    TRITON_INTERPRET=1 makes CPU tensors Triton-capable, so each rule is what decides."""
    from types import SimpleNamespace
    pytest.importorskip("triton")
    monkeypatch.delenv("XLMR_FAST_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    bf = torch.bfloat16
    for D in (32, 64, 128):
        assert attention_backend(torch.randn(1, 2, 4, D, dtype=bf)) == ("triton", "supported")
    for D in (16, 48, 96, 256):
        backend, why = attention_backend(torch.randn(1, 2, 4, D, dtype=bf))
        assert backend == "sdpa" and f"head dim {D}" in why, (D, backend, why)
    assert attention_backend(torch.randn(1, 2, 4, 64, dtype=torch.float64))[0] == "sdpa"
    assert attention_backend(torch.randn(0, 2, 4, 64, dtype=bf)) == ("sdpa", "empty input")
    assert attention_backend(torch.randn(1, 2, 4, 64))[0] == "triton"  # fp32 on the CPU
    # fp32 on CUDA (what attention_backend reads of a CUDA tensor; the refusal comes before
    # any tuning-file lookup)
    cuda32 = SimpleNamespace(device=torch.device("cuda", 0), shape=(1, 2, 4, 64),
                             dtype=torch.float32, numel=lambda: 512)
    backend, why = attention_backend(cuda32)
    assert backend == "sdpa" and "fp32" in why
    monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")
    assert attention_backend(cuda32) == ("triton", "XLMR_FAST_BACKEND=triton")
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    assert attention_backend(torch.randn(1, 2, 4, 64, dtype=bf)) == (
        "sdpa", "XLMR_FAST_BACKEND=reference")


@pytest.mark.parametrize("kwargs, match", [
    (dict(key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)), "key_padding_mask"),
    (dict(key_padding_mask=torch.zeros(2, 4)), "key_padding_mask"),
    (dict(dropout_p=1.0), "dropout_p"),
    (dict(dropout_p=-0.1), "dropout_p"),  # a negative rate would scale kept values below 1
    (dict(max_seqlen=5), "max_seqlen"),   # max_seqlen on the padded layout must equal T
    (dict(softmax_scale=-1.0), "softmax_scale"),
    (dict(seed=-3), "seed"),
    (dict(cu_seqlens=torch.tensor([0, 4], dtype=torch.int32), max_seqlen=4), "packed"),
])
def test_validation_errors(kwargs, match):
    q = torch.randn(2, 3, 4, 8)
    with pytest.raises(ValueError, match=match):
        xf.ops.attention(q, q, q, **kwargs)


def test_validation_varlen_errors():
    q = torch.randn(6, 2, 8)
    with pytest.raises(ValueError, match="int32"):
        xf.ops.attention(q, q, q, cu_seqlens=torch.tensor([0, 6]), max_seqlen=6)
    with pytest.raises(ValueError, match="max_seqlen"):
        xf.ops.attention(q, q, q, cu_seqlens=torch.tensor([0, 6], dtype=torch.int32))
    with pytest.raises(ValueError, match="shape"):
        xf.ops.attention(q, q, q[:, :1])
    # cu_seqlens' promises (checked on CPU, where reading it costs no device sync), whichever
    # backend would run: tokens past the last sequence, a decreasing entry, a sequence longer
    # than max_seqlen
    for cu, max_seqlen, match in (([0, 2, 5], 3, "0 to the packed token count 6"),
                                  ([1, 6], 6, "0 to the packed"),
                                  ([0, 4, 3, 6], 4, "decrease"),
                                  ([0, 1, 6], 4, "max_seqlen=4 but a sequence .* 5 tokens")):
        with pytest.raises(ValueError, match=match):
            xf.ops.attention(q, q, q, cu_seqlens=torch.tensor(cu, dtype=torch.int32),
                             max_seqlen=max_seqlen)
    xf.ops.attention(q, q, q, cu_seqlens=torch.tensor([0, 0, 6, 6], dtype=torch.int32),
                     max_seqlen=6)


def test_dropout_mask_statistics_and_determinism():
    p = 0.1
    m = attention_dropout_mask(1234, 4, 3, 64, 64, p)
    assert m.dtype == torch.bool and m.shape == (4, 3, 64, 64)
    n = m.numel()
    frac = m.float().mean().item()
    assert abs(frac - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    # per-row and per-column fractions are not skewed (the hash mixes row and column)
    rows = m.float().mean(dim=(0, 1, 3))
    cols = m.float().mean(dim=(0, 1, 2))
    sd = math.sqrt(p * (1 - p) / (4 * 3 * 64))
    assert (rows - (1 - p)).abs().max() < 6 * sd and (cols - (1 - p)).abs().max() < 6 * sd
    assert torch.equal(m, attention_dropout_mask(1234, 4, 3, 64, 64, p))
    other = attention_dropout_mask(1235, 4, 3, 64, 64, p)
    assert (m != other).float().mean() > 0.1
    # a sequence's mask is the corner of a larger one (varlen and padded agree)
    assert torch.equal(attention_dropout_mask(1234, 4, 3, 20, 20, p), m[:, :, :20, :20])
    assert attention_dropout_mask(5, 1, 1, 8, 8, 0.0).all()


# ------------------------------------------------------------------ Triton under the interpreter
INTERP_CASES = [  # (B, H, T, D, dtype)
    (3, 2, 1, 32, torch.bfloat16),
    (4, 2, 17, 64, torch.float16),
    (4, 2, 40, 32, torch.bfloat16),
    (3, 1, 40, 64, torch.float32),
]


@pytest.mark.interpret
@pytest.mark.parametrize("B,H,T,D,dtype", INTERP_CASES)
def test_triton_interp_forward_backward(B, H, T, D, dtype, force_triton):
    q, k, v = make_qkv(B, H, T, D, dtype, "cpu", seed=T)
    assert attention_backend(q)[0] == "triton"
    kpm = make_mask(B, T, "cpu", seed=T)
    out, g = check_against_reference(q, k, v, kpm)
    assert (out[1] == 0).all() and all((x[1] == 0).all() for x in (g[0],))
    if T > 1:  # no mask at all
        check_against_reference(q, k, v, None)


@pytest.mark.interpret
def test_triton_interp_softmax_scale(force_triton):
    # An explicit softmax_scale reaches the kernels, forward and backward (a dropped argument
    # gives D ** -0.5 = 0.177 here, not 0.3).
    q, k, v = make_qkv(3, 2, 17, 32, torch.float32, "cpu", seed=13)
    check_against_reference(q, k, v, make_mask(3, 17, "cpu", seed=13), softmax_scale=0.3)


@pytest.mark.interpret
def test_triton_interp_varlen_equals_padded(force_triton):
    lengths, H, D, T = [17, 1, 0, 40], 2, 32, 40
    B = len(lengths)
    q, k, v = make_qkv(B, H, T, D, torch.bfloat16, "cpu", seed=7)
    kpm = torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]
    cu = cu_from(lengths, "cpu")
    for p, seed in ((0.0, None), (0.25, 99)):
        out = xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=p, seed=seed)
        # padded query rows do not exist in the packed layout: give them no gradient
        dout = torch.randn_like(out) * (~kpm)[:, None, :, None]
        g = grads(out, (q, k, v), dout)
        qp, kp, vp = (pack(x.detach(), lengths).requires_grad_() for x in (q, k, v))
        outp = xf.ops.attention(qp, kp, vp, cu_seqlens=cu, max_seqlen=T, dropout_p=p, seed=seed)
        assert outp.shape == qp.shape
        gp = grads(outp, (qp, kp, vp), pack(dout, lengths))
        torch.testing.assert_close(outp, pack(out.detach(), lengths), atol=0, rtol=0)
        for a, b in zip(gp, g):
            torch.testing.assert_close(a, pack(b, lengths), atol=0, rtol=0)
        # and against the varlen reference
        keep = attention_dropout_mask(seed, B, H, T, T, p) if p else None
        ref = attention_reference(qp.detach().float(), kp.detach().float(), vp.detach().float(),
                                  cu_seqlens=cu, dropout_mask=keep, dropout_p=p)
        assert (outp.float() - ref).abs().max() < 2e-2


@pytest.mark.interpret
def test_triton_interp_dropout_mask_is_the_documented_one(force_triton):
    # q = k = 0 gives uniform probabilities 1/L; v = identity reads P back: out[i, j] equals
    # keep[i, j] / (L (1 - p)) exactly, so every bit of the kernel's keep-mask is checked.
    B, H, T, p, seed = 2, 2, 32, 0.3, 2**40 + 17
    q = torch.zeros(B, H, T, 32)
    v = torch.eye(T, 32).expand(B, H, T, 32).contiguous()
    out = xf.ops.attention(q, q, v, dropout_p=p, seed=seed)
    keep = attention_dropout_mask(seed, B, H, T, T, p)
    torch.testing.assert_close(out, keep.float() / (T * (1 - p)), atol=1e-6, rtol=0)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_interp_dropout(dtype, force_triton):
    B, H, T, D, p = 3, 2, 33, 32, 0.2
    q, k, v = make_qkv(B, H, T, D, dtype, "cpu", seed=3)
    kpm = make_mask(B, T, "cpu", seed=3)
    out, g = check_against_reference(q, k, v, kpm, dropout_p=p, seed=4242)
    out2 = xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=p, seed=4242)
    assert torch.equal(out, out2)  # same seed, same result
    out3 = xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=p, seed=4243)
    assert not torch.equal(out, out3)
    torch.manual_seed(0)
    a = xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=p)  # seed from torch's RNG
    torch.manual_seed(0)
    b = xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=p)
    assert torch.equal(a, b) and not torch.equal(a, out)


@pytest.mark.interpret
@pytest.mark.parametrize("layout", ["padded", "varlen"])
def test_triton_interp_backward_is_the_forwards_derivative(layout, force_triton):
    # gradcheck's question, asked of the kernels themselves: along a random direction u of
    # each input, <dout, (f(x + eps u) - f(x - eps u)) / 2 eps> from the forward must equal
    # <grad_x, u> from the backward, dropout included (same seed, same mask). The kernels keep
    # fp32 statistics, so fp64 inputs would not make them exact: fp32 inputs (exact-fp32
    # dots), where the central difference agrees to ~3e-4; a gradient 2% off fails.
    # (torch.autograd.gradcheck's fast mode normalises u and its tolerances then miss a 2%
    # error in dK; its slow mode needs thousands of forwards under the interpreter.)
    B, H, T, D, eps = 3, 2, 13, 32, 1e-3
    g = torch.Generator().manual_seed(11)
    if layout == "padded":
        q, k, v = (torch.randn(B, H, T, D, generator=g).requires_grad_() for _ in range(3))
        kw = dict(key_padding_mask=make_mask(B, T, "cpu", seed=11))
    else:
        lengths = [13, 1, 6]
        q, k, v = (torch.randn(sum(lengths), H, D, generator=g).requires_grad_()
                   for _ in range(3))
        kw = dict(cu_seqlens=cu_from(lengths, "cpu"), max_seqlen=T)
    assert attention_backend(q, key_padding_mask=kw.get("key_padding_mask"),
                             cu_seqlens=kw.get("cu_seqlens"))[0] == "triton"
    for p, seed in ((0.0, None), (0.2, 77)):
        def f(*x):
            return xf.ops.attention(*x, dropout_p=p, seed=seed, **kw)
        qkv = (q, k, v)
        out = f(*qkv)
        dout = torch.randn(out.shape, generator=g)
        grad = grads(out, qkv, dout)
        for i, name in enumerate("qkv"):
            u = torch.randn(qkv[i].shape, generator=g)
            with torch.no_grad():
                plus = [x.detach() + eps * u if j == i else x.detach() for j, x in enumerate(qkv)]
                minus = [x.detach() - eps * u if j == i else x.detach()
                         for j, x in enumerate(qkv)]
                numeric = ((f(*plus) - f(*minus)) * dout).sum().item() / (2 * eps)
            analytic = (grad[i] * u).sum().item()
            assert abs(numeric - analytic) <= 2e-3 * abs(analytic) + 1e-3, (
                f"p={p} d{name}: backward gives {analytic:.6g}, the forward's central "
                f"difference {numeric:.6g}")


@pytest.mark.interpret
@pytest.mark.parametrize("kv_scan", [512, 16])
def test_triton_interp_trailing_padding_blocks_are_skipped(kv_scan, force_triton, monkeypatch):
    # Right padding: the key blocks past a row's last valid key are never read (NaN there
    # leaves every output bit as with clean inputs, where the old kernels computed 0 * NaN),
    # their dK / dV are written as zeros (buffers pre-filled with NaN), and the results
    # match the reference. kv_scan=16 scans the mask in several loads (T > KV_SCAN).
    from xlmr_fast.kernels.triton import attention as kern
    monkeypatch.setattr(kern, "KV_SCAN", kv_scan)
    lengths, H, T, D = [5, 33, 70, 0, 64], 2, 70, 32
    B = len(lengths)
    q, k, v = make_qkv(B, H, T, D, torch.float16, "cpu", seed=31)
    kpm = torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]
    check_against_reference(q, k, v, kpm, dropout_p=0.1, seed=8)
    # keys at or past the next multiple of 32 (every kernel's key tile here divides 32)
    beyond = torch.arange(T)[None, :] >= (torch.tensor(lengths)[:, None] + 31) // 32 * 32
    assert beyond[0].sum() == 38 and beyond[1].sum() == 6 and beyond[3].all()
    nan_kv = [x.detach().transpose(1, 2).masked_fill(beyond[:, :, None, None], float("nan"))
              .transpose(1, 2) for x in (k, v)]
    q0, k0, v0 = (x.detach() for x in (q, k, v))
    scale, p, key, thresh = D ** -0.5, 0.1, 12345, int(0.1 * 2**32)
    dout = torch.randn_like(q0)
    results = []
    for kk, vv in ((k0, v0), nan_kv):
        out, lse, out_lo = kern.attention_fwd(q0, kk, vv, kpm, None, T, scale, p, key, thresh)
        dq, dk, dv = (torch.full_like(q0, float("nan")) for _ in range(3))
        kern.attention_bwd(dout, q0, kk, vv, out, out_lo, lse, kpm, None, T, scale, p, key,
                           thresh, dq=dq, dk=dk, dv=dv)
        results.append((out, lse, dq, dk, dv))
    for name, clean, nan in zip(("out", "lse", "dq", "dk", "dv"), *results):
        assert torch.equal(clean, nan), f"{name}: a skipped key block was read"
    for g in results[0][3:]:  # dK, dV of padding keys: exactly zero, never left unwritten
        assert (g.transpose(1, 2)[kpm] == 0).all()


@pytest.mark.interpret
def test_triton_interp_every_block_config(force_triton):
    # Every entry the tuning sweep (and TUNED_BY_SEQLEN) may pick computes the same thing:
    # mask with padding, dropout and tails shorter than every tile, forward and gradients.
    # fp16: the interpreter (triton 3.9) casts fp32 to bf16 by truncation, not to nearest, so
    # a bf16 gradient summed over many rows (a one-key row's dV) can miss the 2x-of-torch rule
    # by up to one bf16 ulp there; fp16 casts round to nearest. GPU casts round to nearest.
    from xlmr_fast.kernels.triton import attention as kern
    q, k, v = make_qkv(3, 1, 40, 32, torch.float16, "cpu", seed=21)
    kpm = make_mask(3, 40, "cpu", seed=21)
    try:
        for kind, configs in (("fwd", kern.FWD_CONFIGS), ("bwd", kern.BWD_CONFIGS)):
            for i in range(len(configs)):
                kern.set_configs(**{kind: i})
                check_against_reference(q, k, v, kpm, dropout_p=0.1, seed=5)
    finally:
        kern.set_configs()


def test_block_config_by_seqlen(monkeypatch):
    from xlmr_fast.kernels.triton import attention as kern
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kern, "TUNED_BY_SEQLEN", [(128, 5, 4), (256, 4, 3)])
    bf, dev = torch.bfloat16, torch.device("cpu")  # a CPU device stands for sm_90 here
    assert kern.fwd_config(64, 100, bf, dev) == kern.FWD_CONFIGS[5]
    assert kern.bwd_config(64, 128, bf, dev) == kern.BWD_CONFIGS[4]
    assert kern.fwd_config(64, 129, bf, dev) == kern.FWD_CONFIGS[4]
    assert kern.bwd_config(64, 256, bf, dev) == kern.BWD_CONFIGS[3]
    assert kern.fwd_config(64, 512, bf, dev) == kern.FWD_CONFIGS[kern.DEFAULT_FWD]
    assert kern.bwd_config(64, 512, bf, dev) == kern.BWD_CONFIGS[kern.DEFAULT_BWD]
    # the table was timed on sm_90: other architectures keep the defaults
    import xlmr_fast.kernels.triton as kt
    monkeypatch.setattr(kt, "CPU_STANDS_FOR", (8, 9))
    assert kern.fwd_config(64, 100, bf, dev) == kern.FWD_CONFIGS[kern.DEFAULT_FWD]
    assert kern.bwd_config(64, 128, bf, dev) == kern.BWD_CONFIGS[kern.DEFAULT_BWD]
    for bound, f, b in kern.TUNED_BY_SEQLEN:  # the committed table points at real entries
        assert 0 <= f < len(kern.FWD_CONFIGS) and 0 <= b < len(kern.BWD_CONFIGS)


@pytest.mark.interpret
def test_triton_interp_opcheck(force_triton):
    from xlmr_fast.ops.attention import _attention_fwd
    q, k, v = (x.detach().requires_grad_() for x in make_qkv(2, 2, 17, 32, torch.float32, "cpu"))
    kpm = make_mask(2, 17, "cpu")
    torch.library.opcheck(_attention_fwd, (q, k, v, kpm, None, 17, 0.0, 32 ** -0.5, None))
    torch.library.opcheck(_attention_fwd, (q, k, v, kpm, None, 17, 0.1, 0.2,
                                           torch.tensor(5, dtype=torch.int64)))
    lengths = [3, 0, 14]
    qp, kp, vp = (torch.randn(17, 2, 32, requires_grad=True) for _ in range(3))
    torch.library.opcheck(_attention_fwd, (qp, kp, vp, None, cu_from(lengths, "cpu"), 14, 0.0,
                                           0.2, None))


@pytest.mark.interpret
def test_triton_interp_compile_fullgraph(force_triton):
    # aot_eager traces through the custom op (fake impl + registered autograd) without
    # inductor's C++ codegen, which would dominate the CPU time.
    q, k, v = make_qkv(2, 2, 17, 32, torch.float32, "cpu", seed=5)
    kpm = make_mask(2, 17, "cpu")

    def f(q, k, v, kpm):
        return xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=0.1, seed=9)

    torch._dynamo.reset()
    out = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v, kpm)
    dout = torch.randn_like(out)
    g = grads(out, (q, k, v), dout)
    out_e = f(q, k, v, kpm)
    g_e = grads(out_e, (q, k, v), dout)
    assert torch.equal(out, out_e) and all(torch.equal(a, b) for a, b in zip(g, g_e))


# ------------------------------------------------------------------ GPU, full shapes
GPU_CASES = ([(8, 12, T, 64, torch.bfloat16) for T in (1, 17, 128, 333, 512)]
             + [(8, 12, T, 64, torch.float16) for T in (17, 333, 512)]
             + [(8, 12, 333, 32, torch.bfloat16), (4, 12, 256, 128, torch.bfloat16),
                (32, 12, 512, 64, torch.bfloat16)])


# ------------------------------------------------------------------ attention_qkvpacked
def _packed_vs_slices(layout, dtype, dropout_p, device):
    """attention_qkvpacked(qkv) == attention(q, k, v) on its slices: output and the gradient
    of qkv (which autograd assembles from the three slice gradients on the slice path);
    bit-identical, as both run the same kernels on the same strided views."""
    from xlmr_fast.ops.attention import _unpack
    B, T, H, D = 4, 37, 2, 32
    g = torch.Generator().manual_seed(11)
    lengths = [37, 1, 20, 0]
    if layout == "padded":
        qkv = torch.randn(B, T, 3, H, D, generator=g)
        kw = dict(key_padding_mask=make_mask(B, T, device, seed=3))
    else:
        qkv = torch.randn(sum(lengths), 3, H, D, generator=g)
        kw = dict(cu_seqlens=cu_from(lengths, device), max_seqlen=T)
    qkv = qkv.to(device=device, dtype=dtype)
    a_in, b_in = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
    out_a = xf.ops.attention_qkvpacked(a_in, dropout_p=dropout_p, seed=5, **kw)
    out_b = xf.ops.attention(*_unpack(b_in, layout == "varlen"), dropout_p=dropout_p, seed=5,
                             **kw)
    dout = torch.randn(out_a.shape, generator=g).to(device=device, dtype=dtype)
    (ga,), (gb,) = grads(out_a, (a_in,), dout), grads(out_b, (b_in,), dout)
    assert out_a.shape == out_b.shape and ga.shape == qkv.shape
    torch.testing.assert_close(out_a, out_b, atol=0, rtol=0)
    torch.testing.assert_close(ga, gb, atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["padded", "varlen"])
def test_qkvpacked_equals_slices_sdpa(layout, monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    _packed_vs_slices(layout, torch.float32, 0.0, "cpu")


@pytest.mark.interpret
@pytest.mark.parametrize("layout", ["padded", "varlen"])
@pytest.mark.parametrize("dtype,dropout_p", [(torch.float32, 0.0), (torch.float16, 0.2)])
def test_triton_interp_qkvpacked_equals_slices(layout, dtype, dropout_p, force_triton):
    _packed_vs_slices(layout, dtype, dropout_p, "cpu")


@pytest.mark.interpret
def test_triton_interp_qkvpacked_gradient_is_one_tensor(force_triton):
    """The packed path's backward allocates one qkv-sized gradient and writes it in place:
    no zero-filled per-slice gradients (select_backward) and no sums of them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    qkv = torch.randn(2, 9, 3, 2, 32).requires_grad_()
    out = xf.ops.attention_qkvpacked(qkv)
    with Ops() as m:
        out.backward(torch.ones_like(out))
    assert "select_backward" not in m.names and "add" not in m.names, m.names
    base = torch.randn(2, 9, 3, 2, 32).requires_grad_()
    view = base.permute(2, 0, 3, 1, 4)
    out = xf.ops.attention(view[0], view[1], view[2])
    with Ops() as m:
        out.backward(torch.ones_like(out))
    assert "select_backward" in m.names  # what the slice path pays (the test's yardstick)


@pytest.mark.interpret
def test_triton_interp_qkvpacked_compile_fullgraph(force_triton):
    # under torch.compile the packed entry point traces to the custom op on the slices
    qkv = torch.randn(2, 17, 3, 2, 32).requires_grad_()
    kpm = make_mask(2, 17, "cpu")

    def f(qkv, kpm):
        return xf.ops.attention_qkvpacked(qkv, key_padding_mask=kpm, dropout_p=0.1, seed=9)

    torch._dynamo.reset()
    out = torch.compile(f, backend="aot_eager", fullgraph=True)(qkv, kpm)
    dout = torch.randn_like(out)
    (g,) = grads(out, (qkv,), dout)
    out_e = f(qkv, kpm)
    (g_e,) = grads(out_e, (qkv,), dout)
    assert torch.equal(out, out_e) and torch.equal(g, g_e)


def test_qkvpacked_validation():
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, D\)"):
        xf.ops.attention_qkvpacked(torch.zeros(2, 4, 2, 2, 32))
    with pytest.raises(ValueError, match="cu_seqlens"):
        xf.ops.attention_qkvpacked(torch.zeros(2, 4, 3, 2, 32),
                                   cu_seqlens=torch.tensor([0, 2], dtype=torch.int32),
                                   max_seqlen=2)
    with pytest.raises(TypeError, match="qkv"):
        xf.ops.attention_qkvpacked([1, 2, 3])


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["padded", "varlen"])
def test_gpu_qkvpacked_equals_slices(layout, force_triton):
    _packed_vs_slices(layout, torch.bfloat16, 0.1, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("B,H,T,D,dtype", GPU_CASES)
def test_gpu_forward_backward(B, H, T, D, dtype, monkeypatch):
    monkeypatch.delenv("XLMR_FAST_BACKEND", raising=False)
    q, k, v = make_qkv(B, H, T, D, dtype, "cuda", seed=T + D)
    assert attention_backend(q) == ("triton", "supported")
    kpm = make_mask(B, T, "cuda", seed=T)
    check_against_reference(q, k, v, kpm)


@pytest.mark.gpu
def test_gpu_varlen_and_dropout(force_triton):
    lengths = [512, 1, 0, 300, 17, 511, 128, 64]
    B, H, T, D = len(lengths), 12, 512, 64
    q, k, v = make_qkv(B, H, T, D, torch.bfloat16, "cuda", seed=11)
    kpm = (torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]).cuda()
    cu = cu_from(lengths, "cuda")
    for p, seed in ((0.0, None), (0.1, 1234)):
        out = xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=p, seed=seed)
        # padded query rows do not exist in the packed layout: give them no gradient
        dout = torch.randn_like(out) * (~kpm)[:, None, :, None]
        g = grads(out, (q, k, v), dout)
        qp, kp, vp = (pack(x.detach(), lengths).requires_grad_() for x in (q, k, v))
        outp = xf.ops.attention(qp, kp, vp, cu_seqlens=cu, max_seqlen=T, dropout_p=p, seed=seed)
        gp = grads(outp, (qp, kp, vp), pack(dout, lengths))
        torch.testing.assert_close(outp, pack(out.detach(), lengths), atol=0, rtol=0)
        for a, b in zip(gp, g):
            torch.testing.assert_close(a, pack(b, lengths), atol=0, rtol=0)
    kpm = make_mask(B, T, "cuda", seed=5)
    check_against_reference(q, k, v, kpm, dropout_p=0.1, seed=77)
    keep = attention_dropout_mask(77, B, H, T, T, 0.1, "cuda")
    frac = keep.float().mean().item()
    assert abs(frac - 0.9) < 5 * math.sqrt(0.09 / keep.numel())


@pytest.mark.gpu
def test_gpu_backward_is_deterministic(force_triton):
    q, k, v = make_qkv(16, 12, 512, 64, torch.bfloat16, "cuda", seed=1)
    kpm = make_mask(16, 512, "cuda")
    dout = torch.randn(16, 12, 512, 64, device="cuda", dtype=torch.bfloat16)
    first = None
    for trial in range(100):  # bit-exact over many trials, as FA3's determinism test (1,000)
        out = xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=0.1, seed=3)
        run = [out] + list(grads(out, (q, k, v), dout))
        if first is None:
            first = run
        assert all(torch.equal(a, b) for a, b in zip(first, run)), f"trial {trial} differs"


@pytest.mark.gpu
def test_gpu_opcheck_and_compile(force_triton):
    from xlmr_fast.ops.attention import _attention_fwd
    q, k, v = make_qkv(2, 4, 77, 64, torch.bfloat16, "cuda")
    kpm = make_mask(2, 77, "cuda")
    torch.library.opcheck(_attention_fwd, (q, k, v, kpm, None, 77, 0.1, 0.125,
                                           torch.tensor(5, dtype=torch.int64)))

    def f(q, k, v, kpm):
        return xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=0.1)

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(q, k, v, kpm)
    out.float().sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.gpu
@pytest.mark.parametrize("T", [64, 192])
def test_gpu_sdpa_all_padding_rows_at_cudnn_nan_lengths(T, monkeypatch):
    """SDPA (the fallback, and the backend a tuning file may pick for short padded batches)
    with an all-padding sequence at T % 128 == 64, where cuDNN's backward returned NaN dQ on
    H100/H200 for fully masked rows (pytorch#196678)."""
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    q, k, v = make_qkv(4, 12, T, 64, torch.bfloat16, "cuda", seed=T)
    check_against_reference(q, k, v, make_mask(4, T, "cuda", seed=T))


@pytest.mark.gpu
def test_gpu_fp32_falls_back_to_sdpa(monkeypatch):
    monkeypatch.delenv("XLMR_FAST_BACKEND", raising=False)
    q = torch.randn(2, 2, 8, 64, device="cuda")
    backend, reason = attention_backend(q)
    assert backend == "sdpa" and "fp32" in reason
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert attention_backend(q.half())[0] == "triton"


# CUDA limits a grid's y and z dimensions to 65,535 programs (x to 2^31 - 1). A (blocks, B * H)
# grid failed to launch past B * H = 65,535: 5,462 sequences with 12 heads, an inference batch.
BIG_BH = (5462, 12)


def _grid_dims(grid):
    g = tuple(grid) + (1,) * (3 - len(grid))
    return g[0] <= 2 ** 31 - 1 and g[1] <= 65535 and g[2] <= 65535


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="records compiled-kernel launches (JITFunction), not the interpreter")
@pytest.mark.parametrize("layout", ["padded", "varlen"])
def test_launch_grids_fit_cuda_limits_at_large_batch(layout):
    pytest.importorskip("triton")
    from bench import compile_report
    from xlmr_fast.kernels.triton import attention as kern
    (B, H), T, D = BIG_BH, 3, 64
    if layout == "padded":
        ins = [torch.empty(B, T, H, D, dtype=torch.bfloat16).transpose(1, 2) for _ in range(3)]
        kpm, cu = torch.zeros(B, T, dtype=torch.bool), None
    else:
        ins = [torch.empty(B * T, H, D, dtype=torch.bfloat16) for _ in range(3)]
        kpm, cu = None, torch.arange(B + 1, dtype=torch.int32) * T
    with compile_report._no_interpret(), compile_report.recording() as rec:
        out, lse, out_lo = kern.attention_fwd(*ins, kpm, cu, T, D ** -0.5, 0.1, 1, 2)
        kern.attention_bwd(torch.empty_like(out), *ins, out, out_lo, lse, kpm, cu, T, D ** -0.5,
                           0.1, 1, 2)
    names = [fn.__name__ for fn, _, _ in rec]
    assert names == ["_attn_fwd", "_attn_bwd_pre", "_attn_bwd_dkdv", "_attn_bwd_dq"]
    for name, grid in zip(names, rec.grids):
        assert _grid_dims(grid), f"{name}: grid {grid} exceeds CUDA's limits"
        assert math.prod(grid) >= B * H, f"{name}: grid {grid} misses some (batch, head)"


def test_token_offsets_fit_the_kernels_32_bit_index_math():
    # The kernels multiply a position by the token stride in 32 bits. A padded view of a
    # sequence-first (T, B, H, D) buffer has token stride B*H*D: at T 4,096 x B 1,024 x 16 x 64
    # that product passes 2^31, and such inputs are copied to (B, T, H, D) storage first.
    # Meta tensors: the shapes without the memory.
    kern = pytest.importorskip("xlmr_fast.kernels.triton.attention")
    T, B, H, D = 4096, 1024, 16, 64
    seq_first = torch.empty(T, B, H, D, device="meta", dtype=torch.bfloat16).permute(1, 2, 0, 3)
    safe = kern._kernel_strides_ok(seq_first, False, T)
    assert safe.shape == seq_first.shape and safe.stride() == (T * H * D, D, H * D, 1)
    # B 16: the largest offset is (T - 1) * 16*H*D, well inside
    small = torch.empty(T, 16, H, D, device="meta", dtype=torch.bfloat16).permute(1, 2, 0, 3)
    assert kern._kernel_strides_ok(small, False, T) is small
    model = torch.empty(B, T, 3, H, D, device="meta").permute(2, 0, 3, 1, 4)[0]  # qkv slices
    assert kern._kernel_strides_ok(model, False, T) is model
    # packed: max_seqlen 512 x token stride; 511 x 2.56M fits, 511 x 4.48M does not
    packed = torch.empty(B * T, 40000, D, device="meta")[:, :H]
    assert kern._kernel_strides_ok(packed, True, 512) is packed
    wide = torch.empty(B * T, 70000, D, device="meta")[:, :H]
    assert kern._kernel_strides_ok(wide, True, 512).stride() == (H * D, D, 1)


@pytest.mark.gpu
def test_gpu_more_than_65535_batch_heads(force_triton):
    B, H = BIG_BH
    q, k, v = make_qkv(B, H, 5, 64, torch.bfloat16, "cuda", seed=9)
    check_against_reference(q, k, v, make_mask(B, 5, "cuda", seed=9), dropout_p=0.1, seed=4)


@pytest.mark.gpu
def test_gpu_token_stride_past_32_bit_offsets(force_triton):
    # q, k, v of one sequence of 2,048 tokens whose token stride is 1.1M elements (slices of a
    # 4.5 GB buffer): position x stride passes 2^31, the kernels' 32-bit offset math.
    T, D, S = 2048, 64, 17200
    buf = torch.empty(T, S, D, device="cuda", dtype=torch.bfloat16)
    q, k, v = (buf[:, i][None, None] for i in range(3))  # (1, 1, T, D), token stride S * D
    assert (T - 1) * q.stride(2) > 2**31
    for x in (q, k, v):
        x.copy_(torch.randn(x.shape, device="cuda"))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    check_against_reference(q, k, v, make_mask(1, T, "cuda"))
    del buf


@pytest.mark.gpu
def test_gpu_no_host_sync(force_triton):
    """Neither layout makes the host wait for the device, forward or backward, with dropout
    (issue 5: max_seqlen comes from the caller so that varlen forces no sync)."""
    lengths = [40, 1, 64, 17]
    B, H, T, D = len(lengths), 4, 64, 64
    q, k, v = make_qkv(B, H, T, D, torch.bfloat16, "cuda", seed=2)
    kpm = (torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]).cuda()
    qp, kp, vp = (pack(x.detach(), lengths).requires_grad_() for x in (q, k, v))
    cu = cu_from(lengths, "cuda")
    for _ in range(2):  # the first call compiles; both must be sync-free
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=0.1)
            out.backward(torch.ones_like(out))
            outp = xf.ops.attention(qp, kp, vp, cu_seqlens=cu, max_seqlen=T, dropout_p=0.1)
            outp.backward(torch.ones_like(outp))
        finally:
            torch.cuda.set_sync_debug_mode("default")

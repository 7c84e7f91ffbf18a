"""The model on the fused kernels: Triton on the CPU (interpreter) and on a GPU.

CPU:  TRITON_INTERPRET=1 pytest -m interpret tests/model/test_model_kernels.py
GPU:  pytest -m gpu tests/model/test_model_kernels.py
"""
import pytest
import torch

import xlmr_fast as xf
from xlmr_fast.ops.attention import attention_backend
from xlmr_fast.ops.linear_cross_entropy import linear_cross_entropy_backend

from xlmr_testutil import batch, max_diff, mlm_labels  # noqa: E402


def _reference_run(model, ids, labels, monkeypatch):
    """The same model on the plain-torch references (XLMR_FAST_BACKEND=reference)."""
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    try:
        out = model(ids, labels=labels, return_logits=True)
        grads = torch.autograd.grad(out.loss, [model.encoder.embed_tokens.weight,
                                               model.encoder.layers[0].qkv.weight])
    finally:
        monkeypatch.delenv("XLMR_FAST_BACKEND")
    return out, grads


@pytest.mark.interpret
def test_model_on_triton_interpreter_matches_reference(monkeypatch):
    # head dim 32 so the Triton attention kernel takes it; dropout off so the paths compare.
    torch.manual_seed(0)
    cfg = xf.XLMRConfig.tiny(vocab_size=300, hidden_size=64, num_heads=2, num_layers=1,
                             hidden_dropout=0.0, attention_dropout=0.0)
    m = xf.XLMRForMaskedLM(cfg).train()
    ids, _ = batch((9, 5), seed=1, vocab=300)
    labels = mlm_labels(ids, seed=2)
    q = torch.empty(2, 2, 9, 32)
    assert attention_backend(q)[0] == "triton"
    assert linear_cross_entropy_backend(torch.empty(3, 64))[0] in ("triton", "cuda")
    out = m(ids, labels=labels, return_logits=True)
    g = torch.autograd.grad(out.loss, [m.encoder.embed_tokens.weight,
                                       m.encoder.layers[0].qkv.weight])
    ref, g_ref = _reference_run(m, ids, labels, monkeypatch)
    assert abs(out.loss.item() - ref.loss.item()) < 1e-4
    assert max_diff(out.logits, ref.logits) < 1e-4
    for a, b in zip(g, g_ref):
        assert max_diff(a, b) < 1e-5


@pytest.mark.gpu
def test_gpu_fp32_matches_reference_and_bf16_close(monkeypatch):
    torch.manual_seed(0)
    cfg = xf.XLMRConfig.small(vocab_size=32000, num_layers=2, hidden_dropout=0.0,
                              attention_dropout=0.0)
    m = xf.XLMRForMaskedLM(cfg).cuda().train()
    ids, _ = batch((256, 200, 77, 3), seed=3, vocab=32000)
    ids = ids.cuda()
    labels = mlm_labels(ids.cpu(), seed=4, p=0.15).cuda()
    ref, g_ref = _reference_run(m, ids, labels, monkeypatch)
    out = m(ids, labels=labels, return_logits=True)
    g = torch.autograd.grad(out.loss, [m.encoder.embed_tokens.weight,
                                       m.encoder.layers[0].qkv.weight])
    assert abs(out.loss.item() - ref.loss.item()) < 1e-3
    for a, b in zip(g, g_ref):
        assert max_diff(a, b) < 1e-3 * b.abs().max().item() + 1e-6
    # bf16 autocast: the Triton attention and fused CE paths; loss within bf16 noise of fp32.
    assert attention_backend(torch.empty(1, 8, 16, 64, device="cuda",
                                         dtype=torch.bfloat16))[0] == "triton"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out16 = m(ids, labels=labels)
    out16.loss.backward()
    assert torch.isfinite(out16.loss)
    assert abs(out16.loss.item() - ref.loss.item()) < 2e-2 * ref.loss.item()
    assert torch.isfinite(m.encoder.embed_tokens.weight.grad).all()


@pytest.mark.gpu
def test_gpu_torch_compile_training_step():
    torch.manual_seed(0)
    cfg = xf.XLMRConfig.small(vocab_size=32000, num_layers=2)
    m = xf.XLMRForMaskedLM(cfg).cuda().train()
    ids, _ = batch((128, 100, 50), seed=5, vocab=32000)
    ids = ids.cuda()
    labels = mlm_labels(ids.cpu(), seed=6, p=0.15).cuda()
    pos = torch.nonzero(labels.view(-1) != -100).squeeze(1)
    c = torch.compile(m)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = c(ids, labels=labels, masked_positions=pos).loss
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(m.lm_head.dense.weight.grad).all()

"""config.fused_layer_ops: the layers' residual + dropout + LayerNorm and bias + GELU through the
fused ops equal the plain torch layers.

Without dropout the two paths compute the same function: features, every hidden state, the loss
and every parameter gradient must agree (padded and unpadded encoders). With dropout the masks
come from the ops' hash instead of torch's generator, so the checks there are reproducibility
(same torch seed, same result) and activation checkpointing (the recompute regenerates the
forward's masks). Under bf16 autocast the fused path keeps the plain path's fp32 residual
stream: its error against the fp32 model stays within 2x the plain path's.

CPU: the ops' reference backend (plain pass) and Triton (TRITON_INTERPRET=1 -m interpret).
GPU: pytest -m gpu tests/model/test_fused_layer_ops.py
"""
import dataclasses
import importlib

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import xlmr_fast as xf
from xlmr_fast.model import xlmr as xlmr_module
from xlmr_fast.ops import _backend

from xlmr_testutil import batch, mlm_labels  # noqa: E402

INTERP = _backend.interpret()


def _pair(cfg, seed=0):
    """(plain, fused) models with the same weights (non-trivial LayerNorm and bias values)."""
    torch.manual_seed(seed)
    a = xf.XLMRForMaskedLM(dataclasses.replace(cfg, fused_layer_ops=False))
    with torch.no_grad():
        for name, p in a.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    b = xf.XLMRForMaskedLM(dataclasses.replace(cfg, fused_layer_ops=True))
    b.load_state_dict(a.state_dict())
    return a, b


def _run(model, ids, labels, seed=0):
    torch.manual_seed(seed)
    out = model(ids, labels=labels, output_hidden_states=True)
    grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    return out, grads


def _assert_same(a, b, ids, labels, atol, rtol=1e-4):
    keep = ids != 1
    oa, ga = _run(a, ids, labels)
    ob, gb = _run(b, ids, labels)
    for la, lb in zip(oa.hidden_states, ob.hidden_states):
        torch.testing.assert_close(lb[keep], la[keep], atol=atol, rtol=rtol)
    torch.testing.assert_close(ob.loss, oa.loss, atol=atol, rtol=rtol)
    for (name, _), x, y in zip(a.named_parameters(), ga, gb):
        if x is None:
            assert y is None or not y.any(), name
            continue
        torch.testing.assert_close(y, x, atol=atol, rtol=1e-3,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


def _count_calls(monkeypatch):
    """Count the model's calls of the two fused ops (the layers call them through xf.ops)."""
    calls = {"add_dropout_layernorm": 0, "bias_gelu": 0}
    for name in calls:
        real = getattr(xf.ops, name)

        def spy(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(xf.ops, name, spy)
    return calls


@pytest.mark.parametrize("unpad", [False, True])
def test_fused_equals_plain_reference_backend(unpad, monkeypatch):
    if INTERP:
        pytest.skip("covered by the non-interpreter pass")
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    cfg = xf.XLMRConfig.tiny(vocab_size=300, hidden_dropout=0.0, attention_dropout=0.0,
                             unpad=unpad)
    a, b = _pair(cfg)
    ids, _ = batch((13, 5, 1 + 2, 9), seed=1, vocab=300)
    calls = _count_calls(monkeypatch)
    _assert_same(a.train(), b.train(), ids, mlm_labels(ids, seed=2), atol=2e-5)
    layers = cfg.num_layers
    assert calls == {"add_dropout_layernorm": 2 * layers, "bias_gelu": layers}  # fused run only


@pytest.mark.interpret
@pytest.mark.parametrize("unpad", [False, True])
def test_fused_equals_plain_triton_interp(unpad, monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")
    # head_dim 32: the Triton attention kernel runs as well (tiny's 16 falls back to SDPA)
    cfg = xf.XLMRConfig.tiny(vocab_size=300, hidden_size=64, num_heads=2, num_layers=1,
                             hidden_dropout=0.0, attention_dropout=0.0, unpad=unpad)
    a, b = _pair(cfg)
    ids, _ = batch((9, 4, 1 + 2), seed=3, vocab=300)
    _assert_same(a.train(), b.train(), ids, mlm_labels(ids, seed=4), atol=5e-5)


def _dropout_checks(cfg, ids, labels, device):
    _, model = _pair(cfg)
    model = model.to(device).train()
    o1, g1 = _run(model, ids, labels, seed=5)
    o2, g2 = _run(model, ids, labels, seed=5)
    assert torch.equal(o1.loss, o2.loss)
    assert all(torch.equal(x, y) for x, y in zip(g1, g2) if x is not None)
    o3, _ = _run(model, ids, labels, seed=6)
    assert not torch.equal(o1.loss, o3.loss), "another seed must give other dropout masks"
    # Recomputing each layer in the backward regenerates the forward's masks (the op's seed is
    # drawn from the CPU generator, whose state checkpoint replays): same gradients.
    for layer in model.encoder.layers:
        layer.forward = lambda *a, _f=layer.forward, **k: checkpoint(_f, *a, use_reentrant=False,
                                                                     **k)
    o4, g4 = _run(model, ids, labels, seed=5)
    torch.testing.assert_close(o4.loss, o1.loss, atol=0, rtol=0)
    for x, y in zip(g1, g4):
        if x is not None:
            torch.testing.assert_close(y, x, atol=1e-6, rtol=1e-5)


def test_dropout_reproducible_and_checkpointed(monkeypatch):
    if INTERP:
        pytest.skip("covered by the non-interpreter pass")
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    cfg = xf.XLMRConfig.tiny(vocab_size=300, hidden_dropout=0.3, attention_dropout=0.0)
    ids, _ = batch((13, 5, 9), seed=7, vocab=300)
    _dropout_checks(cfg, ids, mlm_labels(ids, seed=8), "cpu")


def test_autocast_bf16_within_2x_of_plain(monkeypatch):
    """bf16 autocast on the CPU: the fused path's error against the fp32 model is at most 2x the
    plain path's (features at non-pad positions, loss, every gradient)."""
    if INTERP:
        pytest.skip("covered by the non-interpreter pass")
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    cfg = xf.XLMRConfig.tiny(vocab_size=300, hidden_size=128, num_heads=4, num_layers=3,
                             ffn_size=256, hidden_dropout=0.0, attention_dropout=0.0)
    plain, fused = _pair(cfg)
    ids, _ = batch((33, 17, 4, 25), seed=9, vocab=300)
    labels = mlm_labels(ids, seed=10)
    ref, g_ref = _run(plain.train(), ids, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lo, g_lo = _run(plain, ids, labels)
        fu, g_fu = _run(fused.train(), ids, labels)
    assert fu.last_hidden_state.dtype == lo.last_hidden_state.dtype == torch.float32
    keep = ids != 1
    floor = 0.25 * torch.finfo(torch.bfloat16).eps

    def check(name, ours, low, want):
        e_ours = (ours.float() - want).abs().max().item()
        e_low = (low.float() - want).abs().max().item()
        scale = max(1.0, want.abs().max().item())
        assert e_ours <= 2 * e_low + floor * scale, f"{name}: {e_ours:.3g} vs torch {e_low:.3g}"

    check("features", fu.last_hidden_state[keep], lo.last_hidden_state[keep],
          ref.last_hidden_state[keep])
    check("loss", fu.loss, lo.loss, ref.loss)
    for (name, _), a, b, c in zip(plain.named_parameters(), g_fu, g_lo, g_ref):
        if c is not None:
            check(f"grad {name}", a, b, c)


def test_auto_rule(monkeypatch):
    """fused_layer_ops=None uses an op only on a GPU its FASTER_ON table lists; never on the CPU
    and never under torch.compile."""
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    monkeypatch.setattr(_backend, "_cuda_device_name", lambda index: "NVIDIA H100 80GB HBM3")
    gpu = torch.device("cuda", 0)
    assert _backend.device_listed(gpu, ["H100"])
    assert not _backend.device_listed(gpu, ["A100"])
    assert not _backend.device_listed(gpu, [])
    assert not _backend.device_listed(torch.device("cpu"), ["H100"])

    cfg = xf.XLMRConfig.tiny(vocab_size=300)
    assert cfg.fused_layer_ops is None  # auto is the default
    torch.manual_seed(0)
    model = xf.XLMRForMaskedLM(cfg).train()
    ids, _ = batch((9, 5), seed=11, vocab=300)
    calls = _count_calls(monkeypatch)
    model(ids, labels=mlm_labels(ids, seed=12))
    assert calls == {"add_dropout_layernorm": 0, "bias_gelu": 0}
    # The rule itself, as a layer applies it to a (pretend) GPU tensor.
    layer = model.encoder.layers[0]
    adln = importlib.import_module("xlmr_fast.ops.add_dropout_layernorm")
    monkeypatch.setattr(adln, "FASTER_ON", ["H100"])
    assert layer._fused(xlmr_module._adln_faster, gpu, 768, torch.bfloat16, torch.float32)
    assert not layer._fused(xlmr_module._bias_gelu_faster, gpu, 768, torch.bfloat16)  # empty
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not layer._fused(xlmr_module._adln_faster, gpu, 768, torch.bfloat16, torch.float32)


def test_auto_rule_tuning_file(monkeypatch, tmp_path):
    """A tuning file's choice for the layer's (width, dtypes) wins over FASTER_ON; other widths
    keep the table's answer; the model asks with its own width and dtypes."""
    from xlmr_fast import tuning
    name = "NVIDIA H100 80GB HBM3"
    monkeypatch.setattr(_backend, "_cuda_device_name", lambda index: name)
    path = tmp_path / "t.json"
    tuning.write({"format": 1, "device": name, "choices": {
        "add_dropout_layernorm": {"768,bfloat16,float32": "fused",
                                  "1024,bfloat16,float32": "torch"},
        "bias_gelu": {"768,bfloat16": "fused"}}}, path)
    monkeypatch.setenv("XLMR_FAST_TUNING", str(path))
    tuning.clear_cache()
    adln = importlib.import_module("xlmr_fast.ops.add_dropout_layernorm")
    monkeypatch.setattr(adln, "FASTER_ON", ["H100"])
    gpu = torch.device("cuda", 0)
    f = xlmr_module._adln_faster
    assert f(gpu, 768, torch.bfloat16, torch.float32)
    assert not f(gpu, 1024, torch.bfloat16, torch.float32)      # tuned: torch
    assert f(gpu, 1024, torch.bfloat16, torch.bfloat16)         # not tuned: FASTER_ON
    assert xlmr_module._bias_gelu_faster(gpu, 768, torch.bfloat16)
    assert not xlmr_module._bias_gelu_faster(gpu, 1024, torch.bfloat16)
    assert not f(torch.device("cpu"), 768, torch.bfloat16, torch.float32)
    # What a layer asks: spy on the rule while a CPU model runs with the rule patched in.
    seen = []
    monkeypatch.setattr(xlmr_module, "_adln_faster", lambda *a: seen.append(("adln", a)) or False)
    monkeypatch.setattr(xlmr_module, "_bias_gelu_faster",
                        lambda *a: seen.append(("gelu", a)) or False)
    cfg = xf.XLMRConfig.tiny(vocab_size=300)
    model = xf.XLMRForMaskedLM(cfg).train()
    ids, _ = batch((3, 5), seed=1, vocab=300)
    model(ids)
    H = cfg.hidden_size
    assert ("adln", (torch.device("cpu"), H, torch.float32, torch.float32)) in seen
    assert ("gelu", (torch.device("cpu"), H, torch.float32)) in seen
    tuning.clear_cache()


def test_config():
    with pytest.raises(ValueError, match="fused_layer_ops"):
        xf.XLMRConfig.tiny(fused_layer_ops=1)
    # an execution choice, not written to the HF config
    assert "fused_layer_ops" not in xf.XLMRConfig.tiny(fused_layer_ops=True).to_hf_dict()


@pytest.mark.gpu
def test_fused_gpu_bf16_and_dropout():
    cfg = xf.XLMRConfig.tiny(vocab_size=1000, hidden_size=256, num_heads=4, num_layers=2,
                             ffn_size=1024, hidden_dropout=0.0, attention_dropout=0.0)
    plain, fused = _pair(cfg)
    plain, fused = plain.cuda().train(), fused.cuda().train()
    ids, _ = batch((128, 77, 3, 100), seed=13, vocab=1000)
    ids = ids.cuda()
    labels = mlm_labels(ids.cpu(), seed=14).cuda()
    _assert_same(plain, fused, ids, labels, atol=2e-4, rtol=1e-3)  # fp32
    ref, g_ref = _run(plain, ids, labels)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        lo, g_lo = _run(plain, ids, labels)
        fu, g_fu = _run(fused, ids, labels)
    keep = ids != 1
    for name, a, b, c in [("features", fu.last_hidden_state[keep], lo.last_hidden_state[keep],
                           ref.last_hidden_state[keep]), ("loss", fu.loss, lo.loss, ref.loss)] + \
            [(n, a, b, c) for (n, _), a, b, c in zip(plain.named_parameters(), g_fu, g_lo, g_ref)
             if c is not None]:
        e_ours, e_low = (a.float() - c).abs().max().item(), (b.float() - c).abs().max().item()
        bound = 2 * e_low + 0.25 * torch.finfo(torch.bfloat16).eps * max(1.0, c.abs().max().item())
        assert e_ours <= bound, f"{name}: {e_ours:.3g} vs torch {e_low:.3g}"
    _dropout_checks(dataclasses.replace(cfg, hidden_dropout=0.1), ids, labels, "cuda")

"""config.unpad: the encoder on packed non-pad tokens equals the padded encoder.

Compared at every non-pad position (pad positions are 0 in the packed path), for features,
every hidden state, the MLM loss and every parameter gradient; eval mode (dropout masks are
drawn per layout, so training-mode outputs differ by construction)."""
import dataclasses

import pytest
import torch

import xlmr_fast as xf


def _batch(B, T, V, seed=0, left=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V - 1, (B, T), generator=g)
    lengths = [T, 1, T // 2, 3] + [int(torch.randint(1, T + 1, (1,), generator=g))
                                    for _ in range(B - 4)]
    for b, n in enumerate(lengths[:B]):
        if left:
            ids[b, : T - n] = 1
        else:
            ids[b, n:] = 1
    labels = torch.full_like(ids, -100)
    sel = (torch.rand(B, T, generator=g) < 0.3) & (ids != 1)
    labels[sel] = ids[sel]
    return ids, labels


def _pair(cfg):
    torch.manual_seed(0)
    a = xf.XLMRForMaskedLM(cfg).eval()
    b = xf.XLMRForMaskedLM(dataclasses.replace(cfg, unpad=True)).eval()
    b.load_state_dict(a.state_dict())
    return a, b


def _check(a, b, ids, labels, atol):
    keep = ids != 1
    oa = a(ids, labels=labels, output_hidden_states=True)
    ob = b(ids, labels=labels, output_hidden_states=True)
    for ha, hb in zip(oa.hidden_states, ob.hidden_states):
        torch.testing.assert_close(hb[keep], ha[keep], atol=atol, rtol=1e-4)
        assert (hb[~keep] == 0).all()
    torch.testing.assert_close(ob.loss, oa.loss, atol=atol, rtol=1e-4)
    oa.loss.backward()
    ob.loss.backward()
    gb = dict(b.named_parameters())
    for name, p in a.named_parameters():
        if p.grad is None:
            assert gb[name].grad is None or (gb[name].grad == 0).all(), name
            continue
        torch.testing.assert_close(gb[name].grad, p.grad, atol=atol, rtol=1e-3,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.fixture
def force_triton(monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")


@pytest.mark.parametrize("left", [False, True])
def test_unpad_equals_padded_cpu(left):
    cfg = xf.XLMRConfig.tiny()
    a, b = _pair(cfg)
    ids, labels = _batch(6, 19, cfg.vocab_size, seed=1, left=left)
    _check(a, b, ids, labels, atol=2e-5)


def test_unpad_no_padding_and_all_pad_row():
    cfg = xf.XLMRConfig.tiny()
    a, b = _pair(cfg)
    ids, labels = _batch(5, 8, cfg.vocab_size, seed=2)
    ids[4] = 1  # an all-padding row: nothing to pack
    labels[4] = -100
    _check(a, b, ids, labels, atol=2e-5)


def test_unpad_heads_for_finetuning():
    """Which fine-tuning heads may run unpadded (finetune.run._unpad): the token and sentence
    classification losses read no pad position, so they equal the padded path's; QA's is a
    softmax over every position, pads included (as HF's), and unpadded the pads' hidden states
    are 0, so its loss differs: finetune keeps QA padded."""
    from xlmr_fast.finetune.run import _unpad
    cfg = xf.XLMRConfig.tiny()
    ids, _ = _batch(6, 19, cfg.vocab_size, seed=3)
    keep = ids != 1
    tags = torch.where(keep, ids % 3, torch.full_like(ids, -100))
    pos = keep.sum(1) - 1  # the last real token of each row
    cases = {"xnli": (xf.XLMRForSequenceClassification, dict(labels=ids[:, 1] % 3)),
             "ner": (xf.XLMRForTokenClassification, dict(labels=tags)),
             "qa": (xf.XLMRForQuestionAnswering, dict(start_positions=pos, end_positions=pos))}
    for task, (cls, kw) in cases.items():
        torch.manual_seed(0)
        a = cls(dataclasses.replace(cfg, num_labels=3)).eval()
        b = cls(dataclasses.replace(cfg, num_labels=3, unpad=True)).eval()
        b.load_state_dict(a.state_dict())
        la, lb = a(ids, **kw).loss, b(ids, **kw).loss
        same = torch.allclose(la, lb, atol=2e-5, rtol=1e-4)
        assert same == (task != "qa"), (task, la, lb)
        assert _unpad(task, torch.device("cuda")) == same
        assert not _unpad(task, torch.device("cpu"))


def test_unpad_config_validation():
    with pytest.raises(ValueError, match="unpad"):
        xf.XLMRConfig.tiny(unpad=1)
    # an execution choice, not written to the HF config
    assert "unpad" not in xf.XLMRConfig.tiny(unpad=True).to_hf_dict()


@pytest.mark.interpret
def test_unpad_triton_varlen_interp(force_triton):
    # head_dim 32: the Triton kernel runs (tiny's head_dim 16 falls back to SDPA)
    cfg = xf.XLMRConfig.tiny(hidden_size=64, num_heads=2, num_layers=1)
    a, b = _pair(cfg)
    ids, labels = _batch(4, 11, cfg.vocab_size, seed=3)
    _check(a, b, ids, labels, atol=5e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unpad_gpu(dtype):
    cfg = xf.XLMRConfig.tiny(hidden_size=256, num_heads=4, num_layers=2)
    a, b = _pair(cfg)
    a, b = a.cuda(), b.cuda()
    ids, labels = _batch(8, 128, cfg.vocab_size, seed=4)
    ids, labels = ids.cuda(), labels.cuda()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        _check(a, b, ids, labels, atol=2e-4 if dtype == torch.float32 else 3e-2)

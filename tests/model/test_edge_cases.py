"""Edge cases of the model classes a pretraining / fine-tuning run meets: no targets at all,
int32 labels, all-padding rows, attention_mask dtypes, activation checkpointing with dropout."""
import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import xlmr_fast as xf


def _ids(B=3, T=7, V=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, T), generator=g)
    ids[:, 0] = 0
    ids[1, 4:] = 1   # right padding
    ids[2, 1:] = 1   # a row of <s> and padding
    return ids


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cls", ["XLMRForTokenClassification", "XLMRForSequenceClassification"])
def test_no_labelled_rows_give_zero_loss_not_nan(cls):
    """Every label -100: the loss is 0 (HF and F.cross_entropy give NaN) and every gradient 0,
    as for the MLM loss; with labels, the HF mean over the labelled rows is unchanged."""
    cfg = xf.XLMRConfig.tiny(vocab_size=97, num_labels=3)
    torch.manual_seed(0)
    model = getattr(xf, cls)(cfg).train()
    ids = _ids()
    shape = ids.shape if cls == "XLMRForTokenClassification" else ids.shape[:1]
    out = model(ids, labels=torch.full(shape, -100))
    assert torch.isfinite(out.loss) and out.loss.item() == 0.0
    out.loss.backward()
    assert all(not g.any() for g in _grads(model).values())

    model.eval()
    labels = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(1))
    labels.view(-1)[0] = -100
    out = model(ids, labels=labels)
    want = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 3), labels.view(-1))
    torch.testing.assert_close(out.loss, want)


def test_int32_labels_equal_int64():
    """int32 labels / positions (what a uint32 / int32 pipeline hands over) are read as int64:
    F.cross_entropy alone refuses them."""
    cfg = xf.XLMRConfig.tiny(vocab_size=97, num_labels=3)
    ids = _ids()
    g = torch.Generator().manual_seed(2)
    cases = {
        "XLMRForSequenceClassification": dict(labels=torch.randint(0, 3, (3,), generator=g)),
        "XLMRForTokenClassification": dict(labels=torch.randint(0, 3, ids.shape, generator=g)),
        "XLMRForQuestionAnswering": dict(start_positions=torch.tensor([1, 2, 40]),
                                         end_positions=torch.tensor([3, 2, 0])),
    }
    for cls, kw in cases.items():
        torch.manual_seed(0)
        model = getattr(xf, cls)(cfg).eval()
        want = model(ids, **kw).loss
        got = model(ids, **{k: v.int() for k, v in kw.items()}).loss
        torch.testing.assert_close(got, want, msg=cls)


@pytest.mark.parametrize("unpad", [False, True])
def test_mlm_edge_inputs(unpad):
    """All-padding rows, a length-1 batch and no targets in training mode: finite features,
    loss 0 and zero gradients without targets, finite gradients with one; attention_mask as
    bool / int / float gives the same logits as the mask inferred from the pad ids."""
    cfg = xf.XLMRConfig.tiny(vocab_size=97, unpad=unpad)
    torch.manual_seed(0)
    model = xf.XLMRForMaskedLM(cfg).train()
    ids = _ids()
    ids[2] = 1  # an all-padding row
    labels = torch.full_like(ids, -100)
    out = model(ids, labels=labels)
    assert out.loss.item() == 0.0 and torch.isfinite(out.last_hidden_state).all()
    out.loss.backward()
    assert all(not g.any() for g in _grads(model).values())
    model.zero_grad(set_to_none=True)
    labels[0, 2] = ids[0, 2]
    out = model(ids, labels=labels)
    out.loss.backward()
    assert all(torch.isfinite(g).all() for g in _grads(model).values())
    one = model(torch.tensor([[0]]), labels=torch.tensor([[0]]))
    assert torch.isfinite(one.loss)

    model.eval()
    with torch.no_grad():
        ref = model(ids).logits
        keep = ids != 1
        for mask in (keep, keep.long(), keep.int(), keep.float()):
            torch.testing.assert_close(model(ids, attention_mask=mask).logits[keep], ref[keep],
                                       atol=0, rtol=0, msg=str(mask.dtype))


@pytest.mark.parametrize("unpad", [False, True])
def test_checkpointed_layers_replay_plain_dropout(unpad):
    """torch dropout (hidden and attention probabilities) under non-reentrant activation
    checkpointing, as the trainer wraps the layers: same loss and gradients as without."""
    cfg = xf.XLMRConfig.tiny(vocab_size=97, hidden_dropout=0.2, attention_dropout=0.2,
                             fused_layer_ops=False, unpad=unpad)
    torch.manual_seed(0)
    model = xf.XLMRForMaskedLM(cfg).train()
    ckpt = copy.deepcopy(model)
    for layer in ckpt.encoder.layers:
        layer.forward = lambda *a, _f=layer.forward, **k: checkpoint(_f, *a, use_reentrant=False,
                                                                     **k)
    ids = _ids()
    labels = torch.where(ids > 3, ids, torch.full_like(ids, -100))

    def run(m):
        torch.manual_seed(3)
        loss = m(ids, labels=labels).loss
        return loss, torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)

    (la, ga), (lb, gb) = run(model), run(ckpt)
    torch.testing.assert_close(lb, la, atol=0, rtol=0)
    for a, b in zip(ga, gb):
        if a is not None:
            torch.testing.assert_close(b, a, atol=0, rtol=0)
    # and dropout is on: another seed, another loss
    torch.manual_seed(4)
    assert model(ids, labels=labels).loss != la


def test_output_indexed_by_name_not_position():
    out = xf.XLMRForMaskedLM(xf.XLMRConfig.tiny()).eval()(torch.tensor([[0, 5, 2]]))
    assert out["logits"] is out.logits
    with pytest.raises(TypeError, match=r"by field name .*'loss'"):
        out[0]

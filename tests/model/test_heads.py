"""The five model classes against their transformers counterparts: outputs and losses."""
import dataclasses
import logging

import pytest
import torch

import xlmr_fast as xf

transformers = pytest.importorskip("transformers")
from xlmr_testutil import TOL, batch, hf_model, max_diff, mlm_labels, ours_config  # noqa: E402

C = 3  # labels


def pair(ours_cls, hf_cls, seed, **cfg_kw):
    hf = hf_model(hf_cls, seed=seed, **cfg_kw)
    cfg = xf.XLMRConfig.from_hf_dict(hf.config.to_dict())
    return hf, getattr(xf, ours_cls).from_state_dict(hf.state_dict(), cfg).eval()


@pytest.fixture(scope="module")
def inputs():
    return batch((12, 8, 5, 3), seed=31)


def test_base_model(inputs):
    hf, ours = pair("XLMRModel", "XLMRobertaModel", 32)
    ids, am = inputs
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, output_hidden_states=True)
        out = ours(ids, output_hidden_states=True)
    assert max_diff(out.last_hidden_state, ref.last_hidden_state) < TOL
    assert all(max_diff(a, b) < TOL for a, b in zip(out.hidden_states, ref.hidden_states))


def test_masked_lm(inputs):
    hf, ours = pair("XLMRForMaskedLM", "XLMRobertaForMaskedLM", 33)
    ids, am = inputs
    labels = mlm_labels(ids, seed=34)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, labels=labels)
        out = ours(ids, labels=labels, return_logits=True)
    assert max_diff(out.logits, ref.logits) < TOL and abs(out.loss - ref.loss) < TOL


@pytest.mark.parametrize("problem", ["single_label_classification", "regression",
                                     "multi_label_classification", "regression-1"])
def test_sequence_classification(inputs, problem):
    n = 1 if problem == "regression-1" else C
    hf, ours = pair("XLMRForSequenceClassification", "XLMRobertaForSequenceClassification", 35,
                    num_labels=n)
    ids, am = inputs
    g = torch.Generator().manual_seed(36)
    B = ids.shape[0]
    if problem == "single_label_classification":
        labels = torch.randint(0, C, (B,), generator=g)
    elif problem == "multi_label_classification":
        labels = (torch.rand(B, C, generator=g) > 0.5).float()
    else:
        labels = torch.randn(B, n, generator=g)
    if problem == "regression":  # 3 float targets: set explicitly, as HF would infer BCE
        hf.config.problem_type = "regression"
        ours.config = dataclasses.replace(ours.config, problem_type="regression")
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, labels=labels)
        out = ours(ids, labels=labels)
    assert out.logits.shape == (B, n)
    assert max_diff(out.logits, ref.logits) < TOL
    assert abs(out.loss.item() - ref.loss.item()) < TOL and out.loss.item() > 0


def test_token_classification(inputs):
    hf, ours = pair("XLMRForTokenClassification", "XLMRobertaForTokenClassification", 37,
                    num_labels=C)
    ids, am = inputs
    labels = torch.randint(0, C, ids.shape, generator=torch.Generator().manual_seed(38))
    labels[ids == 1] = -100
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, labels=labels)
        out = ours(ids, labels=labels)
    assert out.logits.shape == (*ids.shape, C)
    assert max_diff(out.logits, ref.logits) < TOL
    assert abs(out.loss.item() - ref.loss.item()) < TOL


def test_question_answering(inputs):
    hf, ours = pair("XLMRForQuestionAnswering", "XLMRobertaForQuestionAnswering", 39)
    ids, am = inputs
    start = torch.tensor([1, 3, 40, 0])  # 40 is past the input: clamped to T and ignored
    end = torch.tensor([4, 5, 2, 99])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, start_positions=start, end_positions=end)
        out = ours(ids, start_positions=start, end_positions=end)
    assert max_diff(out.start_logits, ref.start_logits) < TOL
    assert max_diff(out.end_logits, ref.end_logits) < TOL
    assert abs(out.loss.item() - ref.loss.item()) < TOL


def test_heads_train_mode_dropout_matches_hf_rule():
    cfg = ours_config(hidden_dropout=0.2)
    assert xf.XLMRForSequenceClassification(cfg).classifier.dropout == 0.2  # None -> hidden
    cfg = dataclasses.replace(cfg, classifier_dropout=0.0)
    assert xf.XLMRForSequenceClassification(cfg).classifier.dropout == 0.0


def test_mlm_checkpoint_into_classifier(tmp_path, inputs, caplog):
    """Fine-tuning start: encoder weights load, the new head is initialised (warned), the
    LM head is dropped (noted)."""
    hf = hf_model("XLMRobertaForMaskedLM", seed=40)
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="xlmr_fast"):
        m = xf.XLMRForSequenceClassification.from_pretrained(tmp_path, num_labels=C).eval()
    assert "newly initialised" in caplog.text and "classifier.out_proj.weight" in caplog.text
    assert "not used by XLMRForSequenceClassification: lm_head" in caplog.text
    w = m.classifier.out_proj.weight
    assert w.shape == (C, 64) and abs(w.std().item() - 0.02) < 0.01
    assert m.classifier.out_proj.bias.abs().max() == 0
    ids, am = inputs
    with torch.no_grad():
        ref = hf.roberta(input_ids=ids, attention_mask=am).last_hidden_state
        assert max_diff(m(ids).last_hidden_state, ref) < TOL

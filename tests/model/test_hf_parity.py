"""XLMRForMaskedLM / XLMRModel against transformers' XLM-RoBERTa (fp32, CPU, tiny random models)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import xlmr_fast as xf
from xlmr_fast.model.xlmr import make_positions

pytest.importorskip("transformers")
from xlmr_testutil import TOL, batch, hf_model, max_diff, mlm_labels, ours_config  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    hf = hf_model("XLMRobertaForMaskedLM", seed=1)
    ours = xf.XLMRForMaskedLM.from_state_dict(hf.state_dict(), ours_config()).eval()
    return hf, ours


@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
@pytest.mark.parametrize("pass_mask", [False, True], ids=["mask-inferred", "mask-given"])
def test_logits_and_hidden_states_match_hf(pair, left, pass_mask):
    hf, ours = pair
    ids, am = batch((13, 9, 5, 2), seed=2, left=left)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, output_hidden_states=True)
        out = ours(ids, attention_mask=am if pass_mask else None, output_hidden_states=True)
    assert out.logits.shape == ref.logits.shape == (4, 13, 97)
    assert out.logits.abs().max() > 1.0  # non-trivial outputs
    # Every position, pads included (both sides mask pads only as keys).
    assert max_diff(out.logits, ref.logits) < TOL
    assert len(out.hidden_states) == len(ref.hidden_states) == 3  # embeddings + 2 layers
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert max_diff(a, b) < TOL
    assert max_diff(out.last_hidden_state, ref.hidden_states[-1]) < TOL


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_attention_mask_hiding_real_tokens_matches_hf(unpad):
    """An attention_mask that also hides real (non-pad) tokens as keys: our non-hidden outputs
    equal HF's with the same mask. Every other test passes a mask equal to (ids != pad), so a
    forward that ignores the given mask and re-derives it from the pad ids went unnoticed."""
    hf = hf_model("XLMRobertaForMaskedLM", seed=1)
    ours = xf.XLMRForMaskedLM.from_state_dict(hf.state_dict(), ours_config(unpad=unpad)).eval()
    ids, am = batch((13, 9, 5, 2), seed=2)
    am = am.clone()
    am[0, 5:9] = 0  # real tokens the caller excludes
    am[1, 2] = 0
    keep = am.bool()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am).logits
        out = ours(ids, attention_mask=am).logits
        unmasked = ours(ids).logits
    assert max_diff(out, ref, keep) < TOL
    assert max_diff(out, unmasked, keep) > 1e-3  # the hidden tokens do change the outputs


def test_eager_hf_attention_too():
    hf = hf_model("XLMRobertaForMaskedLM", seed=3, attn_implementation="eager")
    ours = xf.XLMRForMaskedLM.from_state_dict(hf.state_dict(), ours_config()).eval()
    ids, am = batch((8, 3, 6), seed=4)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am).logits
        out = ours(ids).logits
    assert max_diff(out, ref, am) < TOL


def test_loss_matches_hf_and_full_logits_ce(pair):
    hf, ours = pair
    ids, am = batch((12, 10, 3), seed=5)
    labels = mlm_labels(ids, seed=6)
    assert (labels != -100).sum() >= 3
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, labels=labels)
        out = ours(ids, labels=labels)
        full = ours(ids, labels=labels, return_logits=True)
    assert out.logits is None  # labels given: no (B, T, V) logits unless asked
    assert abs(out.loss.item() - ref.loss.item()) < TOL
    # The gathered-rows path equals cross-entropy over the full logits.
    ce = F.cross_entropy(full.logits.view(-1, 97), labels.view(-1), ignore_index=-100)
    assert abs(out.loss.item() - ce.item()) < TOL
    assert abs(full.loss.item() - out.loss.item()) < 1e-6
    assert max_diff(full.logits, ref.logits) < TOL


def test_masked_positions_path_equals_labels_path(pair):
    _, ours = pair
    ids, _ = batch((12, 10, 3), seed=7)
    labels = mlm_labels(ids, seed=8)
    pos = torch.nonzero(labels.view(-1) != -100).squeeze(1)
    with torch.no_grad():
        a = ours(ids, labels=labels).loss
        b = ours(ids, labels=labels, masked_positions=pos).loss
    assert torch.equal(a, b)


def test_static_positions_with_unused_slots(pair):
    """mlm_mask_static pads its positions buffer with -1: those slots are ignored rows, and the
    reductions agree with the exact-length positions."""
    _, ours = pair
    ids, _ = batch((12, 10, 3), seed=9)
    labels = mlm_labels(ids, seed=10)
    pos = torch.nonzero(labels.view(-1) != -100).squeeze(1)
    padded = torch.cat([pos, torch.full((7,), -1, dtype=pos.dtype)])
    with torch.no_grad():
        a = ours(ids, labels=labels, masked_positions=pos).loss
        rows = ours(ids, labels=labels, masked_positions=padded, reduction="none").loss
        total = ours(ids, labels=labels, masked_positions=padded, reduction="sum").loss
        mean = ours(ids, labels=labels, masked_positions=padded).loss
    assert rows.shape == (pos.numel() + 7,)
    assert torch.all(rows[pos.numel():] == 0) and torch.all(rows[:pos.numel()] > 0)
    torch.testing.assert_close(mean, a)
    torch.testing.assert_close(total, rows.sum())
    torch.testing.assert_close(total / pos.numel(), a)


def test_no_targets_gives_zero_loss(pair):
    _, ours = pair
    ids, _ = batch((6, 4), seed=9)
    with torch.no_grad():
        out = ours(ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0 and torch.isfinite(out.loss)


def test_gradients_match_hf():
    """Training-mode gradients (dropout off) through the fused-CE path equal HF's, including the
    tied token table that gets gradient from both the embedding and the decoder."""
    hf = hf_model("XLMRobertaForMaskedLM", seed=10, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0).train()
    ours = xf.XLMRForMaskedLM.from_state_dict(
        hf.state_dict(), ours_config(hidden_dropout=0.0, attention_dropout=0.0)).train()
    ids, am = batch((11, 8, 5), seed=11)
    labels = mlm_labels(ids, seed=12)
    hf(input_ids=ids, attention_mask=am, labels=labels).loss.backward()
    ours(ids, labels=labels).loss.backward()
    r = hf.roberta
    pairs = [
        (ours.encoder.embed_tokens.weight.grad, r.embeddings.word_embeddings.weight.grad),
        (ours.encoder.embed_positions.weight.grad, r.embeddings.position_embeddings.weight.grad),
        (ours.lm_head.bias.grad, hf.lm_head.bias.grad),
        (ours.lm_head.dense.weight.grad, hf.lm_head.dense.weight.grad),
        (ours.encoder.embed_ln.weight.grad, r.embeddings.LayerNorm.weight.grad),
    ]
    for i in range(2):
        s, o = r.encoder.layer[i].attention.self, ours.encoder.layers[i]
        pairs.append((o.qkv.weight.grad, torch.cat([s.query.weight.grad, s.key.weight.grad,
                                                    s.value.weight.grad])))
        pairs.append((o.fc2.bias.grad, r.encoder.layer[i].output.dense.bias.grad))
    for a, b in pairs:
        assert b.abs().max() > 0
        assert max_diff(a, b) < 1e-5 * max(1.0, b.abs().max().item()) + 1e-6


def test_positions_rule():
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [1, 1, 0, 7, 2, 1]])
    assert make_positions(ids, 1).tolist() == [[2, 3, 4, 5, 1, 1], [1, 1, 2, 3, 4, 1]]


def test_too_long_is_an_error(pair):
    _, ours = pair
    ids = torch.full((1, 39), 5)  # 40 position rows -> 38 tokens at most
    with pytest.raises(ValueError, match="exceeds the position table"):
        ours(ids)


def test_dropout_active_only_in_training():
    torch.manual_seed(0)
    m = xf.XLMRForMaskedLM(xf.XLMRConfig.tiny())
    ids, _ = batch((9, 6), seed=13, vocab=1000)
    m.eval()
    with torch.no_grad():
        a, b = m(ids).logits, m(ids).logits
    assert torch.equal(a, b)
    m.train()
    with torch.no_grad():
        c = m(ids).logits
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_embedding_dropout_in_training(unpad):
    """spec 1.2 step 6: dropout(hidden_dropout) right after the embedding LayerNorm. In training
    hidden_states[0] is the eval embedding with about p of its features zeroed and the rest
    scaled by 1/(1-p). test_dropout_active_only_in_training cannot see a missing embedding
    dropout: the layers' own dropout already changes the logits."""
    torch.manual_seed(0)
    m = xf.XLMRModel(xf.XLMRConfig.tiny(hidden_dropout=0.5, unpad=unpad))
    ids, am = batch((9, 6), seed=13, vocab=1000)
    keep = am.bool()
    with torch.no_grad():
        ref = m.eval()(ids, output_hidden_states=True).hidden_states[0][keep]
        torch.manual_seed(1)
        got = m.train()(ids, output_hidden_states=True).hidden_states[0][keep]
    kept = got != 0
    assert 0.35 < kept.float().mean().item() < 0.65
    torch.testing.assert_close(got[kept], 2 * ref[kept])


def test_init_follows_fairseq_bert_init():
    torch.manual_seed(0)
    cfg = xf.XLMRConfig.tiny(vocab_size=5000, hidden_size=128, ffn_size=256)
    m = xf.XLMRForMaskedLM(cfg)
    e = m.encoder
    for w in (e.embed_tokens.weight, e.layers[0].qkv.weight, e.layers[1].fc2.weight,
              m.lm_head.dense.weight):
        assert abs(w.std().item() - 0.02) < 0.002
    assert e.embed_tokens.weight[1].abs().sum() == 0
    assert e.embed_positions.weight[1].abs().sum() == 0
    assert e.layers[0].qkv.bias.abs().sum() == 0 and m.lm_head.bias.abs().sum() == 0
    assert torch.all(e.layers[0].attn_ln.weight == 1) and torch.all(e.embed_ln.bias == 0)


def test_torch_compile_runs_on_cpu(pair):
    """Inductor (the real compiler: C++ on the CPU) on the eval forward."""
    _, ours = pair
    ids, am = batch((10, 6, 3), seed=14)
    with torch.no_grad():
        eager = ours(ids).logits
        compiled = torch.compile(ours, backend="inductor", dynamic=False)
        got = compiled(ids).logits
    assert max_diff(got, eager) < TOL


def test_torch_compile_training_step_with_masked_positions():
    """A compiled training step (traced through the custom ops' fake kernels and autograd)
    gives the eager loss and gradients; aot_eager keeps it quick (no C++ compile)."""
    torch.manual_seed(0)
    cfg = xf.XLMRConfig.tiny(hidden_dropout=0.0, attention_dropout=0.0)
    m = xf.XLMRForMaskedLM(cfg).train()
    ids, _ = batch((10, 6, 3), seed=15, vocab=1000)
    labels = mlm_labels(ids, seed=16)
    pos = torch.nonzero(labels.view(-1) != -100).squeeze(1)
    loss = m(ids, labels=labels, masked_positions=pos).loss
    g_eager = torch.autograd.grad(loss, m.encoder.embed_tokens.weight)[0]
    c = torch.compile(m, backend="aot_eager", dynamic=False)
    loss_c = c(ids, labels=labels, masked_positions=pos).loss
    g_c = torch.autograd.grad(loss_c, m.encoder.embed_tokens.weight)[0]
    assert abs(loss.item() - loss_c.item()) < 1e-5
    assert max_diff(g_eager, g_c) < 1e-6


# ------------------------------------------------------------------------ config
def test_config_presets_and_hf_roundtrip():
    from transformers import XLMRobertaConfig
    b = xf.XLMRConfig.base()
    assert (b.vocab_size, b.hidden_size, b.num_layers, b.num_heads, b.ffn_size) == \
        (250002, 768, 12, 12, 3072)
    assert (b.max_position_embeddings, b.pad_token_id, b.bos_token_id, b.eos_token_id,
            b.mask_token_id, b.layer_norm_eps) == (514, 1, 0, 2, 250001, 1e-5)
    assert (b.hidden_dropout, b.attention_dropout, b.activation_dropout, b.classifier_dropout,
            b.num_labels, b.max_tokens, b.head_dim) == (0.1, 0.1, 0.0, None, 2, 512, 64)
    lg = xf.XLMRConfig.large()
    assert (lg.hidden_size, lg.num_layers, lg.num_heads, lg.ffn_size) == (1024, 24, 16, 4096)
    t = xf.XLMRConfig.tiny()
    assert t.hidden_size == 64 and t.mask_token_id == t.vocab_size - 1
    xf.XLMRConfig.small()
    for cfg in (b, lg, t, dataclasses.replace(t, num_labels=5, problem_type="regression")):
        d = cfg.to_hf_dict()
        assert d["architectures"] == ["XLMRobertaForMaskedLM"]
        assert d["model_type"] == "xlm-roberta" and d["type_vocab_size"] == 1
        hc = XLMRobertaConfig.from_dict(d)
        assert (hc.vocab_size, hc.hidden_size, hc.num_hidden_layers, hc.num_attention_heads,
                hc.intermediate_size, hc.layer_norm_eps, hc.num_labels) == \
            (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.ffn_size,
             cfg.layer_norm_eps, cfg.num_labels)
        assert xf.XLMRConfig.from_hf_dict(d) == cfg
        assert xf.XLMRConfig.from_hf_dict(hc.to_dict()) == cfg


def test_config_validation_errors():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        xf.XLMRConfig(hidden_size=100, num_heads=12)
    with pytest.raises(ValueError, match="hidden_dropout"):
        xf.XLMRConfig(hidden_dropout=1.5)
    with pytest.raises(ValueError, match="mask_token_id"):
        xf.XLMRConfig(vocab_size=10, mask_token_id=10)
    with pytest.raises(ValueError, match="num_layers"):
        xf.XLMRConfig(num_layers=0)
    with pytest.raises(ValueError, match="problem_type"):
        xf.XLMRConfig(problem_type="ranking")
    with pytest.raises(ValueError, match="hidden_act"):
        xf.XLMRConfig.from_hf_dict({"model_type": "xlm-roberta", "hidden_act": "gelu_new"})
    with pytest.raises(ValueError, match="model_type"):
        xf.XLMRConfig.from_hf_dict({"model_type": "bert"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        xf.XLMRConfig().hidden_size = 5


def test_hf_missing_keys_mean_hf_defaults():
    # A config.json without layer_norm_eps means transformers' 1e-12 (not XLM-R's 1e-5).
    cfg = xf.XLMRConfig.from_hf_dict({"model_type": "xlm-roberta", "vocab_size": 250002,
                                      "max_position_embeddings": 514})
    assert cfg.layer_norm_eps == 1e-12

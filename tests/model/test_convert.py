"""Checkpoint interchange: ours <-> Hugging Face directories <-> fairseq model.pt files."""
import argparse
import json
import logging
import os

import pytest
import torch

import xlmr_fast as xf
from xlmr_fast import cli
from xlmr_fast.model import convert
from xlmr_fast.model.convert import CheckpointError

transformers = pytest.importorskip("transformers")
from xlmr_testutil import A, F, H, L, P, TOL, batch, hf_model, max_diff, ours_config  # noqa: E402


@pytest.fixture(scope="module")
def hf_mlm():
    return hf_model("XLMRobertaForMaskedLM", seed=21)


@pytest.fixture(scope="module")
def inputs():
    return batch((12, 9, 4, 2), seed=22)


def hf_logits(hf, ids, am):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=am).logits


def ours_logits(m, ids):
    with torch.no_grad():
        return m.eval()(ids).logits


# ------------------------------------------------------------------ fairseq layouts from the spec
def fairseq_from_hf(hf_sd, release=True, in_proj=False, lm_weight=True, version=False):
    """docs/xlmr-spec.md 3.2, written out independently of the converter."""
    pre = "decoder." if release else "encoder."
    se = pre + "sentence_encoder."
    out = {se + "embed_tokens.weight": hf_sd["roberta.embeddings.word_embeddings.weight"],
           se + "embed_positions.weight": hf_sd["roberta.embeddings.position_embeddings.weight"]}
    emb_ln = "emb_layer_norm" if release else "layernorm_embedding"
    for s in ("weight", "bias"):
        out[f"{se}{emb_ln}.{s}"] = hf_sd[f"roberta.embeddings.LayerNorm.{s}"]
        for i in range(L):
            h, f = f"roberta.encoder.layer.{i}.", f"{se}layers.{i}."
            q, k, v = (hf_sd[f"{h}attention.self.{n}.{s}"] for n in ("query", "key", "value"))
            if in_proj:
                out[f"{f}self_attn.in_proj_{s}"] = torch.cat([q, k, v])
            else:
                out[f"{f}self_attn.q_proj.{s}"] = q
                out[f"{f}self_attn.k_proj.{s}"] = k
                out[f"{f}self_attn.v_proj.{s}"] = v
            out[f"{f}self_attn.out_proj.{s}"] = hf_sd[f"{h}attention.output.dense.{s}"]
            out[f"{f}self_attn_layer_norm.{s}"] = hf_sd[f"{h}attention.output.LayerNorm.{s}"]
            out[f"{f}fc1.{s}"] = hf_sd[f"{h}intermediate.dense.{s}"]
            out[f"{f}fc2.{s}"] = hf_sd[f"{h}output.dense.{s}"]
            out[f"{f}final_layer_norm.{s}"] = hf_sd[f"{h}output.LayerNorm.{s}"]
        out[f"{pre}lm_head.dense.{s}"] = hf_sd[f"lm_head.dense.{s}"]
        out[f"{pre}lm_head.layer_norm.{s}"] = hf_sd[f"lm_head.layer_norm.{s}"]
    if lm_weight:
        out[pre + "lm_head.weight"] = out[se + "embed_tokens.weight"]
    out[pre + "lm_head.bias"] = hf_sd["lm_head.bias"]
    if version:
        out[se + "version"] = torch.tensor([2.0])
    return out


def fairseq_args(**kw):
    a = dict(arch="roberta_base", encoder_layers=L, encoder_embed_dim=H, encoder_ffn_embed_dim=F,
             encoder_attention_heads=A, max_positions=P - 2, activation_fn="gelu", dropout=0.1,
             attention_dropout=0.1, activation_dropout=0.0, pooler_dropout=0.0)
    a.update(kw)
    return argparse.Namespace(**a)


def save_fairseq_file(path, sd, args=True):
    ckpt = {"model": sd, "optimizer_history": [], "extra_state": {}}
    if args:
        ckpt["args"] = fairseq_args()
    torch.save(ckpt, path)
    return str(path)


# ------------------------------------------------------------------ ours -> HF
@pytest.mark.parametrize("ours_cls,hf_cls", [
    ("XLMRForMaskedLM", "XLMRobertaForMaskedLM"),
    ("XLMRModel", "XLMRobertaModel"),
    ("XLMRForSequenceClassification", "XLMRobertaForSequenceClassification"),
    ("XLMRForTokenClassification", "XLMRobertaForTokenClassification"),
    ("XLMRForQuestionAnswering", "XLMRobertaForQuestionAnswering"),
])
def test_save_pretrained_loads_in_transformers_unchanged(tmp_path, inputs, ours_cls, hf_cls):
    from xlmr_testutil import randomize_
    torch.manual_seed(23)
    ours = randomize_(getattr(xf, ours_cls)(ours_config(num_labels=3)), seed=23).eval()
    ours.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temp files
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == [hf_cls] and cfg["model_type"] == "xlm-roberta"
    assert cfg["layer_norm_eps"] == 1e-5 and cfg["type_vocab_size"] == 1
    hf, info = getattr(transformers, hf_cls).from_pretrained(tmp_path, output_loading_info=True)
    missing = set(info["missing_keys"])
    if hf_cls == "XLMRobertaModel":
        missing -= {"pooler.dense.weight", "pooler.dense.bias"}  # HF's untrained pooler
    assert not missing and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    ids, am = inputs
    with torch.no_grad():
        ref, out = hf(input_ids=ids, attention_mask=am), ours(ids)
    if hf_cls == "XLMRobertaModel":
        assert max_diff(out.last_hidden_state, ref.last_hidden_state) < TOL
    elif hf_cls == "XLMRobertaForQuestionAnswering":
        assert max_diff(out.start_logits, ref.start_logits) < TOL
        assert max_diff(out.end_logits, ref.end_logits) < TOL
    else:
        assert max_diff(out.logits, ref.logits) < TOL
    # ... and back again: ours -> HF dir -> ours is exact.
    back = getattr(xf, ours_cls).from_pretrained(tmp_path)
    for (k, a), (k2, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


# ------------------------------------------------------------------ HF -> ours
def test_hf_safetensors_dir_to_ours(tmp_path, hf_mlm, inputs):
    hf_mlm.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    m = xf.XLMRForMaskedLM.from_pretrained(tmp_path)
    assert m.config == ours_config()
    ids, am = inputs
    assert max_diff(ours_logits(m, ids), hf_logits(hf_mlm, ids, am)) < TOL


def test_hf_pytorch_bin_with_old_buffers_to_ours(tmp_path, hf_mlm, inputs):
    """An old-style pytorch_model.bin: tied duplicates present, position_ids persisted."""
    sd = dict(hf_mlm.state_dict())
    sd["roberta.embeddings.position_ids"] = torch.arange(P)[None]
    assert "lm_head.decoder.weight" in sd and "lm_head.decoder.bias" in sd
    torch.save(sd, tmp_path / "pytorch_model.bin")
    hf_mlm.config.save_pretrained(tmp_path)
    m = xf.XLMRForMaskedLM.from_pretrained(tmp_path)
    ids, am = inputs
    assert max_diff(ours_logits(m, ids), hf_logits(hf_mlm, ids, am)) < TOL
    # the weights file alone (config.json beside it)
    m2 = xf.XLMRForMaskedLM.from_pretrained(tmp_path / "pytorch_model.bin")
    assert torch.equal(m2.lm_head.bias, m.lm_head.bias)


def test_hf_state_dict_with_only_the_tied_decoder_bias(hf_mlm, inputs):
    """HF ties lm_head.bias and lm_head.decoder.bias; an export that keeps only the decoder's
    name (tied duplicates are dropped by safetensors-based savers, and which name survives
    depends on the tool) must give our LM-head bias, not a freshly zeroed one."""
    sd = dict(hf_mlm.state_dict())
    bias = sd.pop("lm_head.bias").clone()
    sd["lm_head.decoder.bias"] = bias
    assert bias.abs().max() > 0
    m = xf.XLMRForMaskedLM.from_state_dict(sd, ours_config())
    assert torch.equal(m.lm_head.bias, bias)
    ids, am = inputs
    assert max_diff(ours_logits(m, ids), hf_logits(hf_mlm, ids, am)) < TOL


def test_hf_base_model_with_pooler(tmp_path, inputs, caplog):
    hf = hf_model("XLMRobertaModel", seed=24)
    assert hf.pooler is not None
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="xlmr_fast"):
        m = xf.XLMRModel.from_pretrained(tmp_path)
    assert "pooler" in caplog.text  # dropped, with a note
    ids, am = inputs
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am).last_hidden_state
        out = m.eval()(ids).last_hidden_state
    assert max_diff(out, ref) < TOL
    # The encoder-only checkpoint into an MLM model: head newly initialised, with a warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xlmr_fast"):
        mlm = xf.XLMRForMaskedLM.from_pretrained(tmp_path)
    assert "newly initialised" in caplog.text and "lm_head.dense.weight" in caplog.text
    assert max_diff(mlm.eval()(ids, output_hidden_states=True).last_hidden_state, ref) < TOL


def test_nonzero_token_type_row_is_folded(tmp_path, inputs):
    hf = hf_model("XLMRobertaForMaskedLM", seed=25, token_type=True)
    tt = hf.roberta.embeddings.token_type_embeddings.weight
    assert tt.abs().min() > 0
    hf.save_pretrained(tmp_path / "hf")
    m = xf.XLMRForMaskedLM.from_pretrained(tmp_path / "hf")
    ids, am = inputs
    ref = hf_logits(hf, ids, am)
    assert max_diff(ours_logits(m, ids), ref) < TOL
    # Saved back: a zero token-type row, the same logits in transformers.
    m.save_pretrained(tmp_path / "ours")
    hf2 = transformers.XLMRobertaForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    assert hf2.roberta.embeddings.token_type_embeddings.weight.abs().max() == 0
    assert max_diff(hf_logits(hf2, ids, am), ref) < TOL


def test_token_type_row_is_folded_in_fp32_from_a_half_precision_checkpoint():
    # A bf16 / fp16 file: the fold must not round position + token-type to 16 bits (HF adds the
    # two rows in its fp32 model). Was off by up to 3.9e-3 in the table, 5e-2 in the output.
    hf = hf_model("XLMRobertaForMaskedLM", seed=25, token_type=True)
    sd = {k: v.to(torch.bfloat16) for k, v in hf.state_dict().items()}
    ours = convert.hf_to_ours(sd)
    pos = sd["roberta.embeddings.position_embeddings.weight"].float()
    tt = sd["roberta.embeddings.token_type_embeddings.weight"][0].float()
    assert torch.equal(ours["encoder.embed_positions.weight"], pos + tt)


# ------------------------------------------------------------------ fairseq -> ours
@pytest.mark.parametrize("release", [True, False], ids=["release", "current"])
@pytest.mark.parametrize("in_proj", [False, True], ids=["qkv", "in_proj"])
@pytest.mark.parametrize("lm_weight", [True, False], ids=["tied-key", "no-tied-key"])
def test_fairseq_layouts_load_to_identical_outputs(tmp_path, hf_mlm, inputs, release, in_proj,
                                                   lm_weight, caplog):
    sd = fairseq_from_hf(hf_mlm.state_dict(), release, in_proj, lm_weight, version=not release)
    path = save_fairseq_file(tmp_path / "model.pt", sd)
    with caplog.at_level(logging.WARNING, logger="xlmr_fast"):
        m = xf.XLMRForMaskedLM.from_pretrained(path)
    assert caplog.text == ""  # heads from args: no guess, nothing newly initialised
    assert (m.config.num_heads, m.config.num_layers, m.config.ffn_size) == (A, L, F)
    ids, am = inputs
    assert max_diff(ours_logits(m, ids), hf_logits(hf_mlm, ids, am)) < TOL


def test_fairseq_without_args_infers_heads_with_warning(tmp_path, hf_mlm, inputs, caplog):
    path = save_fairseq_file(tmp_path / "model.pt", fairseq_from_hf(hf_mlm.state_dict()),
                             args=False)
    with caplog.at_level(logging.WARNING, logger="xlmr_fast"):
        m = xf.XLMRForMaskedLM.from_pretrained(path)
    assert "head dim 64" in caplog.text and m.config.num_heads == H // 64
    m = xf.XLMRForMaskedLM.from_pretrained(path, num_heads=A)
    ids, am = inputs
    assert max_diff(ours_logits(m, ids), hf_logits(hf_mlm, ids, am)) < TOL


def test_fairseq_dir_and_cfg_dict(tmp_path, hf_mlm, inputs):
    """A directory holding model.pt; metadata as a cfg['model'] dict (current fairseq)."""
    ckpt = {"model": fairseq_from_hf(hf_mlm.state_dict(), release=False),
            "cfg": {"model": vars(fairseq_args())}}
    torch.save(ckpt, tmp_path / "model.pt")
    m = xf.XLMRModel.from_pretrained(tmp_path)
    assert m.config.num_heads == A
    ids, am = inputs
    with torch.no_grad():
        ref = hf_mlm.roberta(input_ids=ids, attention_mask=am).last_hidden_state
    assert max_diff(m.eval()(ids).last_hidden_state, ref) < TOL


@pytest.mark.parametrize("prefix", ["decoder", "encoder"])
def test_save_fairseq_roundtrip_and_spec_keys(tmp_path, hf_mlm, inputs, prefix):
    m = xf.XLMRForMaskedLM.from_state_dict(hf_mlm.state_dict(), ours_config())
    path = tmp_path / "model.pt"
    convert.save_fairseq(m, path, prefix=prefix)
    ck = torch.load(path, weights_only=False)
    expect = fairseq_from_hf(hf_mlm.state_dict(), release=prefix == "decoder")
    assert set(ck["model"]) == set(expect)
    for k, v in expect.items():
        assert torch.equal(ck["model"][k], v), k
    m2 = xf.XLMRForMaskedLM.from_pretrained(path)
    ids, am = inputs
    assert max_diff(ours_logits(m2, ids), hf_logits(hf_mlm, ids, am)) < TOL


def test_fairseq_classification_head(tmp_path, hf_mlm, inputs):
    sd = fairseq_from_hf(hf_mlm.state_dict())
    g = torch.Generator().manual_seed(26)
    for name, c in (("xnli", 3), ("other", 5)):
        sd[f"classification_heads.{name}.dense.weight"] = torch.randn(H, H, generator=g) * 0.1
        sd[f"classification_heads.{name}.dense.bias"] = torch.randn(H, generator=g)
        sd[f"classification_heads.{name}.out_proj.weight"] = torch.randn(c, H, generator=g)
        sd[f"classification_heads.{name}.out_proj.bias"] = torch.randn(c, generator=g)
    path = save_fairseq_file(tmp_path / "model.pt", sd)
    with pytest.raises(CheckpointError, match=r"several classification heads \['other', 'xnli'\]"):
        xf.XLMRForSequenceClassification.from_pretrained(path)
    m = xf.XLMRForSequenceClassification.from_pretrained(path, head_name="xnli").eval()
    assert m.config.num_labels == 3 and m.config.classifier_dropout == 0.0  # fairseq pooler_dropout
    ids, am = inputs
    with torch.no_grad():
        feats = hf_mlm.roberta(input_ids=ids, attention_mask=am).last_hidden_state[:, 0]
        ref = torch.tanh(feats @ sd["classification_heads.xnli.dense.weight"].T
                         + sd["classification_heads.xnli.dense.bias"])
        ref = ref @ sd["classification_heads.xnli.out_proj.weight"].T \
            + sd["classification_heads.xnli.out_proj.bias"]
        assert max_diff(m(ids).logits, ref) < TOL


# ------------------------------------------------------------------ errors
def _hf_sd(hf_mlm):
    return dict(hf_mlm.state_dict())


def test_error_missing_keys(hf_mlm):
    sd = _hf_sd(hf_mlm)
    del sd["roberta.encoder.layer.1.output.dense.weight"]
    with pytest.raises(CheckpointError,
                       match=r"missing keys \(1\): encoder\.layers\.1\.fc2\.weight"):
        xf.XLMRForMaskedLM.from_state_dict(sd, ours_config())
    sd = _hf_sd(hf_mlm)
    del sd["roberta.encoder.layer.0.attention.self.key.bias"]
    with pytest.raises(CheckpointError, match=r"layer\.0\.attention\.self\.key\.bias"):
        xf.XLMRForMaskedLM.from_state_dict(sd, ours_config())


def test_error_unexpected_keys(hf_mlm):
    sd = _hf_sd(hf_mlm)
    sd["roberta.encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): roberta\.encoder\.layer\.0"
                                              r"\.attention\.self\.rotary\.weight"):
        xf.XLMRForMaskedLM.from_state_dict(sd, ours_config())
    with pytest.raises(CheckpointError, match="not an XLM-R checkpoint"):
        xf.XLMRForMaskedLM.from_state_dict({"bert.foo.weight": torch.zeros(2)})


def test_error_shapes_and_config(hf_mlm):
    with pytest.raises(CheckpointError, match=r"fc1 has 96 rows vs config ffn_size=128"):
        xf.XLMRForMaskedLM.from_state_dict(_hf_sd(hf_mlm), ours_config(ffn_size=128))
    with pytest.raises(CheckpointError, match=r"token table \(97, 64\) vs config"):
        xf.XLMRForMaskedLM.from_state_dict(_hf_sd(hf_mlm), ours_config(vocab_size=100))
    sd = _hf_sd(hf_mlm)
    sd["roberta.encoder.layer.1.intermediate.dense.bias"] = torch.zeros(50)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): encoder\.layers\.1\.fc1"
                                              r"\.bias: checkpoint \(50,\) vs model \(96,\)"):
        xf.XLMRForMaskedLM.from_state_dict(sd, ours_config())


def test_error_untied_decoder(hf_mlm):
    sd = _hf_sd(hf_mlm)
    sd["lm_head.decoder.weight"] = sd["lm_head.decoder.weight"].clone() + 1
    with pytest.raises(CheckpointError, match="untied LM head"):
        xf.XLMRForMaskedLM.from_state_dict(sd, ours_config())


def test_error_pre_ln_fairseq_and_heads_ambiguity(hf_mlm):
    sd = fairseq_from_hf(hf_mlm.state_dict(), release=False)
    sd["encoder.sentence_encoder.layer_norm.weight"] = torch.ones(H)
    with pytest.raises(CheckpointError, match="pre-LN"):
        xf.XLMRForMaskedLM.from_state_dict(sd)
    torch.manual_seed(0)
    odd = xf.XLMRForMaskedLM(xf.XLMRConfig.tiny(hidden_size=48, num_heads=4))
    with pytest.raises(CheckpointError, match=r"number of attention heads.*num_heads="):
        xf.XLMRForMaskedLM.from_state_dict(odd.state_dict())
    m = xf.XLMRForMaskedLM.from_state_dict(odd.state_dict(), num_heads=4)
    assert m.config.hidden_size == 48


class NotAllowed:  # stands in for fairseq/omegaconf objects a safe load refuses
    pass


def test_error_unsafe_pickle_needs_opt_in(tmp_path, hf_mlm):
    ckpt = {"model": fairseq_from_hf(hf_mlm.state_dict()), "args": fairseq_args(),
            "extra_state": NotAllowed()}
    torch.save(ckpt, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="unsafe_load=True"):
        xf.XLMRForMaskedLM.from_pretrained(tmp_path / "model.pt")
    m = xf.XLMRForMaskedLM.from_pretrained(tmp_path / "model.pt", unsafe_load=True)
    assert m.config.num_heads == A


def test_error_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        xf.XLMRForMaskedLM.from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights found"):
        xf.XLMRForMaskedLM.from_pretrained(tmp_path)


# ------------------------------------------------------------------ CLI
def test_cli_convert_hf_and_fairseq(tmp_path, hf_mlm, inputs, capsys):
    ids, am = inputs
    ref = hf_logits(hf_mlm, ids, am)
    src = save_fairseq_file(tmp_path / "model.pt", fairseq_from_hf(hf_mlm.state_dict(),
                                                                    in_proj=True))
    assert cli.main(["convert", src, str(tmp_path / "from_fs")]) == 0
    assert "XLMRForMaskedLM" in capsys.readouterr().out
    hf2 = transformers.XLMRobertaForMaskedLM.from_pretrained(tmp_path / "from_fs").eval()
    assert max_diff(hf_logits(hf2, ids, am), ref) < TOL
    # HF dir -> HF dir, and HF dir -> fairseq (current prefix)
    assert cli.main(["convert", str(tmp_path / "from_fs"), str(tmp_path / "again")]) == 0
    assert cli.main(["convert", str(tmp_path / "again"), str(tmp_path / "fs.pt"), "--to",
                     "fairseq", "--fairseq-prefix", "encoder"]) == 0
    m = xf.XLMRForMaskedLM.from_pretrained(tmp_path / "fs.pt")
    assert max_diff(ours_logits(m, ids), ref) < TOL
    assert cli.main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err

"""Checkpoint interchange: Hugging Face <-> xlmr_fast <-> fairseq state dicts, and the files.

Three key spaces (docs/xlmr-spec.md 3.2 is the table):

  fairseq   decoder.sentence_encoder.*  (release model.pt: the encoder sat in a LanguageModel's
            `decoder`, embedding LN `emb_layer_norm`) or encoder.sentence_encoder.* (current
            fairseq, `layernorm_embedding`); q/k/v_proj or fused in_proj_*; lm_head.weight tied
            to embed_tokens; classification_heads.<name>.*
  HF        roberta.embeddings.*, roberta.encoder.layer.{i}.*, lm_head.*, classifier.*,
            qa_outputs.* (XLMRobertaModel: the same without "roberta.", plus an untrained pooler)
  ours      encoder.embed_tokens / embed_positions / embed_ln, encoder.layers.{i}.qkv (fused
            [q; k; v] rows) / attn_out / attn_ln / fc1 / fc2 / ffn_ln, lm_head.dense /
            layer_norm / bias (decoder = the token table), classifier.*, qa_outputs.*

fairseq is converted through the HF space (fairseq_to_hf, hf_to_fairseq) and HF to ours
(hf_to_ours, ours_to_hf). Every tensor is copied as is (all Linear weights are [out, in] on
every side: no transposes). Two things need care:

* HF adds token_type_embeddings[0] to every position (token_type_ids default to zeros). We have
  no token-type table, so a non-zero row is added to every row of the position table on load
  (pads index a position row too, so their outputs match as well) and a zero row is written on
  save: logits are unchanged both ways.
* The LM decoder is tied to the token table. A checkpoint whose decoder weight differs (fairseq
  --untie-weights-roberta) cannot be represented and is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pickle
import re
import tempfile

import torch

from ..config import HF_ARCHITECTURES, XLMRConfig

log = logging.getLogger(__name__)

HEAD_MODULES = ("lm_head", "classifier", "qa_outputs")  # top-level task heads (ours and HF)
DEFAULT_HEAD_DIM = 64  # XLM-R base and large; used only when nothing states the head count
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
FAIRSEQ_PREFIXES = ("decoder.sentence_encoder.", "encoder.sentence_encoder.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as an XLM-R model; the message says what is wrong."""


def _listing(title: str, keys, limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{title} ({len(keys)}): " + ", ".join(keys[:limit]) + more


# ================================================================ format detection
def detect_format(sd: dict) -> str:
    """'fairseq', 'hf' or 'ours' from the key names of a state dict."""
    keys = list(sd)
    if any(k.startswith(FAIRSEQ_PREFIXES) for k in keys):
        return "fairseq"
    if any(".word_embeddings." in k or k.startswith("embeddings.") for k in keys):
        return "hf"
    if any(k.startswith(("encoder.embed_tokens.", "embed_tokens.")) for k in keys):
        return "ours"
    raise CheckpointError("not an XLM-R checkpoint: found neither fairseq "
                          "(*.sentence_encoder.embed_tokens), Hugging Face (*.word_embeddings) nor "
                          "xlmr_fast (encoder.embed_tokens) token-embedding keys; "
                          + _listing("keys", keys, 10))


# ================================================================ fairseq <-> HF
_FS_LAYER = {  # fairseq layer sub-key -> HF layer sub-key
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "output.LayerNorm",
}
_FS_TOP = {  # fairseq key (current prefix) -> HF key
    "encoder.sentence_encoder.embed_tokens.weight": "roberta.embeddings.word_embeddings.weight",
    "encoder.sentence_encoder.embed_positions.weight":
        "roberta.embeddings.position_embeddings.weight",
    "encoder.sentence_encoder.layernorm_embedding.weight": "roberta.embeddings.LayerNorm.weight",
    "encoder.sentence_encoder.layernorm_embedding.bias": "roberta.embeddings.LayerNorm.bias",
    "encoder.lm_head.dense.weight": "lm_head.dense.weight",
    "encoder.lm_head.dense.bias": "lm_head.dense.bias",
    "encoder.lm_head.layer_norm.weight": "lm_head.layer_norm.weight",
    "encoder.lm_head.layer_norm.bias": "lm_head.layer_norm.bias",
    "encoder.lm_head.weight": "lm_head.decoder.weight",
    "encoder.lm_head.bias": "lm_head.bias",
}
_FS_LAYER_RE = re.compile(r"encoder\.sentence_encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_FS_INPROJ_RE = re.compile(r"encoder\.sentence_encoder\.layers\.(\d+)\.self_attn\.in_proj_"
                           r"(weight|bias)$")
_FS_CLS_RE = re.compile(r"classification_heads\.([^.]+)\.(dense|out_proj)\.(weight|bias)$")


def fairseq_to_hf(sd: dict, head_name: str | None = None, notes: list | None = None) -> dict:
    """A fairseq RoBERTa/XLM-R state dict (release or current key names) in HF
    XLMRobertaForMaskedLM names. head_name picks one of several classification_heads."""
    notes = notes if notes is not None else []
    # Release -> current names, as fairseq's own upgrade_state_dict_named does.
    norm = {}
    for k, v in sd.items():
        if k.startswith("decoder."):
            k = "encoder." + k[len("decoder."):]
        norm[k.replace(".emb_layer_norm.", ".layernorm_embedding.")] = v
    out, unknown = {}, []
    heads = sorted({m.group(1) for k in norm if (m := _FS_CLS_RE.match(k))})
    if len(heads) > 1 and head_name is None:
        raise CheckpointError(f"fairseq checkpoint has several classification heads {heads}; "
                              f"choose one with head_name=")
    if head_name is not None and head_name not in heads:
        raise CheckpointError(f"fairseq checkpoint has no classification head {head_name!r} "
                              f"(it has {heads or 'none'})")
    for k, v in norm.items():
        if k in _FS_TOP:
            out[_FS_TOP[k]] = v
        elif "embed_positions._float_tensor" in k:
            raise CheckpointError("fairseq checkpoint uses sinusoidal positions "
                                  "(embed_positions._float_tensor); XLM-R learns them")
        elif k.endswith((".version", "._float_tensor")):
            continue  # fairseq bookkeeping buffers
        elif k.startswith("encoder.sentence_encoder.layer_norm."):
            raise CheckpointError("fairseq checkpoint has a final encoder LayerNorm "
                                  f"({k}): a pre-LN model (XLM-R XL/XXL), not supported; "
                                  "XLM-R base/large are post-LN")
        elif m := _FS_INPROJ_RE.match(k):
            # Older fairseq fused q, k, v into in_proj: rows [0:H] q, [H:2H] k, [2H:3H] v.
            i, kind = m.groups()
            if v.shape[0] % 3:
                raise CheckpointError(f"{k}: shape {tuple(v.shape)} has no [3H] leading dim")
            for part, t in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                out[f"roberta.encoder.layer.{i}.attention.self.{part}.{kind}"] = t
        elif m := _FS_LAYER_RE.match(k):
            i, sub, kind = m.groups()
            if sub not in _FS_LAYER:
                unknown.append(k)
                continue
            out[f"roberta.encoder.layer.{i}.{_FS_LAYER[sub]}.{kind}"] = v
        elif m := _FS_CLS_RE.match(k):
            if m.group(1) == (head_name or heads[0]):
                out[f"classifier.{m.group(2)}.{m.group(3)}"] = v
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError("fairseq checkpoint has keys with no XLM-R meaning: "
                              + _listing("unexpected keys", unknown))
    return out


def hf_to_fairseq(hf: dict, prefix: str = "decoder") -> dict:
    """HF XLMRobertaForMaskedLM-named tensors to fairseq names: prefix 'decoder' gives the
    release layout (emb_layer_norm), 'encoder' the current one (layernorm_embedding). The tied
    lm_head.weight is written (the same tensor as embed_tokens), as fairseq itself saves it."""
    if prefix not in ("decoder", "encoder"):
        raise ValueError(f"hf_to_fairseq: prefix must be 'decoder' or 'encoder', got {prefix!r}")
    inv_top = {v: k for k, v in _FS_TOP.items()}
    inv_layer = {v: k for k, v in _FS_LAYER.items()}
    out = {}
    for k, v in hf.items():
        if k in inv_top:
            fk = inv_top[k]
        elif m := re.match(r"roberta\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", k):
            i, sub, kind = m.groups()
            fk = f"encoder.sentence_encoder.layers.{i}.{inv_layer[sub]}.{kind}"
        elif m := re.match(r"classifier\.(dense|out_proj)\.(weight|bias)$", k):
            fk = f"classification_heads.sentence_classification_head.{m.group(1)}.{m.group(2)}"
        elif k in ("lm_head.decoder.bias", "roberta.embeddings.token_type_embeddings.weight"):
            continue  # tied / zero in HF only
        else:
            raise CheckpointError(f"hf_to_fairseq: {k} has no fairseq counterpart")
        out[fk] = v
    out.setdefault("encoder.lm_head.weight",
                   out.get("encoder.sentence_encoder.embed_tokens.weight"))
    if out["encoder.lm_head.weight"] is None:
        del out["encoder.lm_head.weight"]
    if prefix == "decoder":
        out = {("decoder." + k[len("encoder."):] if k.startswith("encoder.") else k)
               .replace(".layernorm_embedding.", ".emb_layer_norm."): v for k, v in out.items()}
    return out


# ================================================================ HF <-> ours
_HF_LAYER = {  # HF layer sub-module -> ours (q/k/v are joined into qkv separately)
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_ln",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "ffn_ln",
}
_HF_TOP = {
    "roberta.embeddings.word_embeddings.weight": "encoder.embed_tokens.weight",
    "roberta.embeddings.position_embeddings.weight": "encoder.embed_positions.weight",
    "roberta.embeddings.LayerNorm.weight": "encoder.embed_ln.weight",
    "roberta.embeddings.LayerNorm.bias": "encoder.embed_ln.bias",
}
_HF_HEAD_RE = re.compile(r"(lm_head\.(dense|layer_norm)\.(weight|bias)|lm_head\.bias|"
                         r"classifier\.(dense|out_proj)\.(weight|bias)|classifier\.(weight|bias)|"
                         r"qa_outputs\.(weight|bias))$")
_HF_LAYER_RE = re.compile(r"roberta\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_HF_BASE_PREFIXES = ("embeddings.", "encoder.layer.", "pooler.")


def _hf_add_prefix(hf: dict) -> dict:
    """XLMRobertaModel keys (no 'roberta.' prefix) -> the prefixed task-model names."""
    return {("roberta." + k if k.startswith(_HF_BASE_PREFIXES) else k): v for k, v in hf.items()}


def hf_to_ours(hf: dict, notes: list | None = None) -> dict:
    """HF XLMRoberta* state dict (any task class, prefixed or not) to xlmr_fast names."""
    notes = notes if notes is not None else []
    hf = _hf_add_prefix(hf)
    # Very old HF files call LayerNorm parameters gamma/beta.
    hf = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight",
                 re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v for k, v in hf.items()}
    out, unknown, qkv = {}, [], {}
    for k, v in hf.items():
        if k in _HF_TOP:
            out[_HF_TOP[k]] = v
        elif _HF_HEAD_RE.match(k):
            out[k] = v
        elif m := _HF_LAYER_RE.match(k):
            i, sub, kind = m.groups()
            if sub in _HF_LAYER:
                out[f"encoder.layers.{i}.{_HF_LAYER[sub]}.{kind}"] = v
            elif sub in ("attention.self.query", "attention.self.key", "attention.self.value"):
                qkv[(int(i), kind, sub.rsplit(".", 1)[1])] = (k, v)
            else:
                unknown.append(k)
        elif k in ("roberta.embeddings.position_ids", "roberta.embeddings.token_type_ids"):
            continue  # index buffers (old files persisted them); recomputed, never learned
        elif k in ("roberta.embeddings.token_type_embeddings.weight", "lm_head.decoder.weight",
                   "lm_head.decoder.bias"):
            continue  # handled below
        elif k.startswith("roberta.pooler."):
            if k.endswith("dense.weight"):
                notes.append("dropped roberta.pooler.* (HF's pooler is not trained by MLM and is "
                             "used by no XLM-R head)")
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError("Hugging Face checkpoint has keys with no XLM-R meaning: "
                              + _listing("unexpected keys", unknown))

    # q, k, v -> one [3H, H] weight and [3H] bias per layer (rows in q, k, v order).
    missing = []
    for i in sorted({i for i, _, _ in qkv}):
        for kind in ("weight", "bias"):
            parts = [qkv.get((i, kind, p)) for p in ("query", "key", "value")]
            if any(p is None for p in parts):
                missing += [f"roberta.encoder.layer.{i}.attention.self.{p}.{kind}"
                            for p, t in zip(("query", "key", "value"), parts) if t is None]
                continue
            shapes = {tuple(t.shape) for _, t in parts}
            if len(shapes) != 1:
                raise CheckpointError(f"layer {i}: query/key/value {kind} shapes differ: "
                                      f"{[tuple(t.shape) for _, t in parts]}")
            out[f"encoder.layers.{i}.qkv.{kind}"] = torch.cat([t for _, t in parts], dim=0)
    if missing:
        raise CheckpointError("Hugging Face checkpoint is incomplete: "
                              + _listing("missing keys", missing))

    # Token type: HF adds row 0 to every token; fold it into every position row.
    tt = hf.get("roberta.embeddings.token_type_embeddings.weight")
    pos_key = "encoder.embed_positions.weight"
    if tt is not None:
        if tt.dim() != 2 or tt.shape[0] < 1:
            raise CheckpointError(f"token_type_embeddings has shape {tuple(tt.shape)}, expected "
                                  f"[type_vocab_size, H]")
        if tt.shape[0] > 1:
            notes.append(f"token_type_embeddings has {tt.shape[0]} rows; only row 0 is used "
                         f"(token_type_ids other than 0 are not supported)")
        if torch.any(tt[0] != 0):
            if pos_key not in out:
                raise CheckpointError("token_type_embeddings is non-zero but there is no "
                                      "position table to fold it into")
            if out[pos_key].shape[-1] != tt.shape[-1]:
                raise CheckpointError(f"token_type_embeddings width {tt.shape[-1]} != position "
                                      f"table width {out[pos_key].shape[-1]}")
            # in fp32: a half-precision checkpoint's sum rounded to 16 bits is not the
            # embedding HF computes (it adds the two rows in the model's fp32)
            out[pos_key] = out[pos_key].float() + tt[0].float()
            notes.append("folded the non-zero token_type_embeddings[0] into the position table "
                         "(HF adds it to every token)")

    # Tied decoder: must equal the token table; its bias must equal lm_head.bias.
    dec_w = hf.get("lm_head.decoder.weight")
    emb = out.get("encoder.embed_tokens.weight")
    if dec_w is not None and emb is not None and dec_w is not emb:
        if dec_w.shape != emb.shape or not torch.equal(dec_w, emb):
            raise CheckpointError("lm_head.decoder.weight differs from the token embedding: an "
                                  "untied LM head (fairseq --untie-weights-roberta) is not "
                                  "supported; xlmr_fast ties the decoder to the token table")
    dec_b = hf.get("lm_head.decoder.bias")
    if dec_b is not None:
        if "lm_head.bias" not in out:
            out["lm_head.bias"] = dec_b
        elif dec_b is not out["lm_head.bias"] and (dec_b.shape != out["lm_head.bias"].shape
                                                   or not torch.equal(dec_b, out["lm_head.bias"])):
            raise CheckpointError("lm_head.decoder.bias differs from lm_head.bias (HF ties them)")
    return out


def ours_to_hf(ours: dict, base_model: bool = False, tied_copies: bool = False) -> dict:
    """xlmr_fast names (with the 'encoder.' prefix) to HF names. base_model=True gives
    XLMRobertaModel names (no 'roberta.' prefix). A zero [1, H] token-type row is added.
    tied_copies=True also writes lm_head.decoder.weight/bias as separate copies (transformers
    ties them on load, so by default they are left out, as its own save_pretrained does)."""
    inv_top = {v: k for k, v in _HF_TOP.items()}
    inv_layer = {v: k for k, v in _HF_LAYER.items()}
    out = {}
    for k, v in ours.items():
        if k in inv_top:
            out[inv_top[k]] = v
        elif m := re.match(r"encoder\.layers\.(\d+)\.(\w+)\.(weight|bias)$", k):
            i, sub, kind = m.groups()
            pre = f"roberta.encoder.layer.{i}."
            if sub == "qkv":
                q, kk, vv = v.chunk(3, dim=0)
                out[pre + f"attention.self.query.{kind}"] = q
                out[pre + f"attention.self.key.{kind}"] = kk
                out[pre + f"attention.self.value.{kind}"] = vv
            elif sub in inv_layer:
                out[pre + f"{inv_layer[sub]}.{kind}"] = v
            else:
                raise CheckpointError(f"ours_to_hf: unknown key {k}")
        elif _HF_HEAD_RE.match(k):
            out[k] = v
        else:
            raise CheckpointError(f"ours_to_hf: unknown key {k}")
    emb = ours.get("encoder.embed_tokens.weight")
    if emb is not None:
        out["roberta.embeddings.token_type_embeddings.weight"] = emb.new_zeros(1, emb.shape[1])
    if tied_copies and "lm_head.bias" in ours:
        out["lm_head.decoder.weight"] = emb.clone()
        out["lm_head.decoder.bias"] = ours["lm_head.bias"].clone()
    if base_model:
        out = {k[len("roberta."):]: v for k, v in out.items() if k.startswith("roberta.")}
    return out


def to_ours(sd: dict, head_name: str | None = None, notes: list | None = None) -> dict:
    """Any supported state dict -> xlmr_fast names (with the 'encoder.' prefix)."""
    fmt = detect_format(sd)
    if fmt == "fairseq":
        return hf_to_ours(fairseq_to_hf(sd, head_name, notes), notes)
    if fmt == "hf":
        return hf_to_ours(sd, notes)
    if any(k.startswith("embed_tokens.") for k in sd):  # an XLMRModel's own state dict
        sd = {"encoder." + k: v for k, v in sd.items()}
    return dict(sd)


# ================================================================ config from shapes
def infer_config(ours: dict, num_heads: int | None = None, **kw) -> XLMRConfig:
    """Sizes read off the tensors. The head count is not in any shape: num_heads, else
    hidden / 64 (XLM-R's head dim) with a warning, else an error."""
    try:
        V, H = ours["encoder.embed_tokens.weight"].shape
        P = ours["encoder.embed_positions.weight"].shape[0]
        F = ours["encoder.layers.0.fc1.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"cannot infer the model size: checkpoint lacks {e.args[0]}") \
            from None
    layers = sorted({int(m.group(1)) for k in ours
                     if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    if layers != list(range(len(layers))):
        raise CheckpointError(f"layer indices are not 0..L-1: {layers}")
    if num_heads is None:
        if H % DEFAULT_HEAD_DIM:
            raise CheckpointError(f"cannot infer the number of attention heads: hidden size {H} "
                                  f"is not a multiple of {DEFAULT_HEAD_DIM}; pass num_heads=... "
                                  f"(or a config)")
        num_heads = H // DEFAULT_HEAD_DIM
        log.warning("xlmr_fast: the checkpoint states no head count; assuming head dim %d -> "
                    "%d heads (pass num_heads=... to override)", DEFAULT_HEAD_DIM, num_heads)
    if "classifier.out_proj.weight" in ours:
        kw.setdefault("num_labels", ours["classifier.out_proj.weight"].shape[0])
    elif "classifier.weight" in ours:
        kw.setdefault("num_labels", ours["classifier.weight"].shape[0])
    return XLMRConfig(vocab_size=V, hidden_size=H, num_layers=len(layers), num_heads=num_heads,
                      ffn_size=F, max_position_embeddings=P, **kw)


def check_config(cfg: XLMRConfig, ours: dict) -> None:
    """The config's sizes against the tensors': a mismatch is an error naming both."""
    probs = []
    shape = lambda k: tuple(ours[k].shape) if k in ours else None  # noqa: E731
    emb, pos, fc1 = (shape("encoder.embed_tokens.weight"), shape("encoder.embed_positions.weight"),
                     shape("encoder.layers.0.fc1.weight"))
    if emb and emb != (cfg.vocab_size, cfg.hidden_size):
        probs.append(f"token table {emb} vs config (vocab_size={cfg.vocab_size}, "
                     f"hidden_size={cfg.hidden_size})")
    if pos and pos[0] != cfg.max_position_embeddings:
        probs.append(f"position table has {pos[0]} rows vs config max_position_embeddings="
                     f"{cfg.max_position_embeddings}")
    if fc1 and fc1[0] != cfg.ffn_size:
        probs.append(f"fc1 has {fc1[0]} rows vs config ffn_size={cfg.ffn_size}")
    n = len({int(m.group(1)) for k in ours if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    if n and n != cfg.num_layers:
        probs.append(f"checkpoint has {n} layers vs config num_layers={cfg.num_layers}")
    if probs:
        raise CheckpointError("config does not match the checkpoint: " + "; ".join(probs))


# ================================================================ loading into a model
def _model_keys(model) -> tuple[dict, str]:
    prefix = "encoder." if model.encoder_prefix == "" else ""
    return {prefix + k: v for k, v in model.state_dict().items()}, prefix


def load_converted(model, ours: dict, notes: list | None = None) -> None:
    """Copy xlmr_fast-named tensors into model. Missing encoder tensors, keys with no place and
    shape mismatches are errors; a missing task head stays freshly initialised (warning), and
    other classes' heads are dropped (info), as HF's from_pretrained does."""
    notes = notes if notes is not None else []
    expected, prefix = _model_keys(model)
    head = lambda k: k.split(".", 1)[0] in HEAD_MODULES  # noqa: E731
    missing = [k for k in expected if k not in ours]
    unexpected = [k for k in ours if k not in expected]
    enc_missing = [k for k in missing if not head(k)]
    bad_unexpected = [k for k in unexpected if not head(k)]
    mismatched = [f"{k}: checkpoint {tuple(ours[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in ours and ours[k].shape != expected[k].shape]
    errs = []
    if enc_missing:
        errs.append(_listing("missing keys", enc_missing))
    if bad_unexpected:
        errs.append(_listing("unexpected keys", bad_unexpected))
    if mismatched:
        errs.append(_listing("shape mismatches", mismatched, 10))
    if errs:
        raise CheckpointError(f"cannot load into {type(model).__name__}: " + "; ".join(errs))
    if missing:
        log.warning("xlmr_fast: %s: newly initialised (not in the checkpoint): %s",
                    type(model).__name__, ", ".join(sorted(missing)))
    if unexpected:
        notes.append(f"not used by {type(model).__name__}: " + ", ".join(sorted(unexpected)))
    state = {k[len(prefix):]: ours[k] for k in expected if k in ours}
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    for n in notes:
        log.info("xlmr_fast: %s", n)


def from_state_dict(cls, sd: dict, config: XLMRConfig | None = None, *,
                    head_name: str | None = None, **overrides):
    """Build cls from an HF, fairseq or xlmr_fast state dict (sizes inferred if no config)."""
    notes = []
    return _build(cls, to_ours(sd, head_name, notes), config, None, notes, overrides)


def _build(cls, ours: dict, config, file_config, notes: list, overrides: dict):
    """config (given) > file_config (config.json / fairseq args) > shapes; then overrides."""
    if config is None:
        config = file_config
    if config is None:
        config = infer_config(ours, **overrides)
    else:
        config = dataclasses.replace(config, **overrides) if overrides else config
    check_config(config, ours)
    model = cls(config)
    load_converted(model, ours, notes)
    return model


# ================================================================ files
def _unreadable(path: str, e: BaseException) -> CheckpointError:
    """What torch.load / safetensors / json raise on an empty, truncated or foreign file
    (EOFError, KeyError: 101, a zip RuntimeError, ...) does not name the file: this does."""
    why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return CheckpointError(f"{path}: not a readable checkpoint (truncated, corrupt or not a "
                           f"model file? {why})")


def _torch_load(path: str, unsafe_load: bool):
    """torch.load without executing arbitrary pickles: tensors, containers and
    argparse.Namespace (fairseq's `args`) only, unless unsafe_load=True."""
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        torch.serialization.add_safe_globals([argparse.Namespace])
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, KeyError, RuntimeError) as e:
        raise _unreadable(path, e) from e
    except pickle.UnpicklingError as e:
        if not unsafe_load:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"{path}: needs a full pickle load (it stores objects other than tensors and "
                f"argparse.Namespace, e.g. an omegaconf config: {first}). If you trust the file, "
                f"pass unsafe_load=True (CLI: --unsafe-load)") from None
        log.warning("xlmr_fast: %s: full pickle load (unsafe_load=True)", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def _load_weights_file(path: str, unsafe_load: bool = False) -> dict:
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except SafetensorError as e:
            raise _unreadable(path, e) from e
    if path.endswith(".index.json"):
        try:
            with open(path) as f:
                wmap = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise _unreadable(path, e) from e
        d = os.path.dirname(path)
        sd = {}
        for shard in sorted(set(wmap.values())):
            sd.update(_load_weights_file(os.path.join(d, shard), unsafe_load))
        return sd
    obj = _torch_load(path, unsafe_load)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def _fairseq_config(args, ours: dict) -> XLMRConfig | None:
    """XLMRConfig from fairseq's args (argparse.Namespace) or cfg['model'] (dict-like)."""
    if args is None:
        return None
    get = (lambda k, d=None: args.get(k, d)) if isinstance(args, dict) else \
        (lambda k, d=None: getattr(args, k, d))
    act = get("activation_fn", "gelu")
    if act != "gelu":
        raise CheckpointError(f"fairseq activation_fn={act!r} is not supported (XLM-R uses the "
                              f"exact 'gelu')")
    heads = get("encoder_attention_heads")
    if heads is None:
        return None
    cfg = infer_config(ours, num_heads=int(heads))
    kw = {}
    for ours_name, fs_name in (("hidden_dropout", "dropout"),
                               ("attention_dropout", "attention_dropout"),
                               ("activation_dropout", "activation_dropout")):
        if get(fs_name) is not None:
            kw[ours_name] = float(get(fs_name))
    if "classifier.out_proj.weight" in ours and get("pooler_dropout") is not None:
        kw["classifier_dropout"] = float(get("pooler_dropout"))  # fairseq's head dropout
    return dataclasses.replace(cfg, **kw)


def read_checkpoint(path, unsafe_load: bool = False) -> tuple[dict, str, object]:
    """(state dict, kind, config source) for an HF dir/file or a fairseq model.pt.
    kind is 'hf' (source: the config.json dict or None) or 'fairseq' (source: its args)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    cfg_json = None
    if os.path.isdir(path):
        wfile = next((os.path.join(path, f) for f in HF_WEIGHT_FILES
                      if os.path.isfile(os.path.join(path, f))), None)
        if wfile is None and os.path.isfile(os.path.join(path, "model.pt")):
            return read_checkpoint(os.path.join(path, "model.pt"), unsafe_load)
        if wfile is None:
            raise CheckpointError(f"{path}: no weights found (looked for "
                                  f"{', '.join(HF_WEIGHT_FILES)} and model.pt)")
        cfg_path = os.path.join(path, "config.json")
    else:
        wfile = path
        cfg_path = os.path.join(os.path.dirname(path) or ".", "config.json")
    if os.path.isfile(cfg_path) and not wfile.endswith(".pt"):
        try:
            with open(cfg_path) as f:
                cfg_json = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    obj = _load_weights_file(wfile, unsafe_load)
    if "model" in obj and isinstance(obj["model"], dict):  # a fairseq checkpoint
        args = obj.get("args")
        if args is None and isinstance(obj.get("cfg"), dict):
            args = obj["cfg"].get("model")
        return obj["model"], "fairseq", args
    return obj, detect_format(obj), cfg_json


def load_pretrained(cls, path, config: XLMRConfig | None = None, *, unsafe_load: bool = False,
                    head_name: str | None = None, **overrides):
    sd, kind, source = read_checkpoint(path, unsafe_load)
    notes = []
    ours = to_ours(sd, head_name, notes)
    file_config = None
    if config is None:
        if kind == "fairseq":
            file_config = _fairseq_config(source, ours)
        elif isinstance(source, dict):
            file_config = XLMRConfig.from_hf_dict(source)
    return _build(cls, ours, config, file_config, notes, overrides)


def _atomic_write(path: str, write) -> None:
    """write(tmp_path), then rename over path: a crash never leaves a half-written file."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def model_state_ours(model) -> dict:
    sd, prefix = _model_keys(model)
    return sd


def save_pretrained(model, save_directory, tied_copies: bool = False) -> None:
    """config.json + model.safetensors that transformers' XLMRoberta* classes load unchanged."""
    from safetensors.torch import save_file
    save_directory = os.fspath(save_directory)
    os.makedirs(save_directory, exist_ok=True)
    arch = HF_ARCHITECTURES[type(model).__name__]
    hf = ours_to_hf(model_state_ours(model), base_model=arch == "XLMRobertaModel",
                    tied_copies=tied_copies)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in hf.items()}
    config = model.config
    if arch == "XLMRobertaForQuestionAnswering" and config.num_labels != 2:
        # HF sizes qa_outputs by num_labels; ours is always (start, end).
        config = dataclasses.replace(config, num_labels=2)
    cfg = config.to_hf_dict(architecture=arch)
    cfg["dtype"] = str(next(iter(tensors.values())).dtype).replace("torch.", "")

    def write_cfg(tmp):
        with open(tmp, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic_write(os.path.join(save_directory, "model.safetensors"),
                  lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(os.path.join(save_directory, "config.json"), write_cfg)


def save_fairseq(model, path, prefix: str = "decoder") -> None:
    """A fairseq-style model.pt ({'args', 'model'}) with release ('decoder') or current
    ('encoder') key names; args carry the sizes fairseq's roberta architecture reads."""
    cfg = model.config
    sd = hf_to_fairseq(ours_to_hf(model_state_ours(model)), prefix=prefix)
    sd = {k: v.detach().to("cpu") for k, v in sd.items()}
    args = argparse.Namespace(
        arch="roberta_large" if cfg.num_layers == 24 else "roberta_base",
        encoder_layers=cfg.num_layers, encoder_embed_dim=cfg.hidden_size,
        encoder_ffn_embed_dim=cfg.ffn_size, encoder_attention_heads=cfg.num_heads,
        max_positions=cfg.max_tokens, activation_fn="gelu", dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
        pooler_dropout=cfg.effective_classifier_dropout)
    _atomic_write(os.fspath(path), lambda tmp: torch.save({"args": args, "model": sd}, tmp))


def auto_class(path, unsafe_load: bool = False, head_name: str | None = None):
    """The xlmr_fast class whose heads a checkpoint carries (used by `xlmr-fast convert`)."""
    from . import xlmr
    sd, kind, _ = read_checkpoint(path, unsafe_load)
    ours = to_ours(sd, head_name)
    if "classifier.out_proj.weight" in ours:
        return xlmr.XLMRForSequenceClassification
    if "classifier.weight" in ours:
        return xlmr.XLMRForTokenClassification
    if "qa_outputs.weight" in ours:
        return xlmr.XLMRForQuestionAnswering
    if "lm_head.dense.weight" in ours:
        return xlmr.XLMRForMaskedLM
    return xlmr.XLMRModel

"""Shared builders for the model tests: tiny random HF XLM-R models and padded batches."""
from __future__ import annotations

import torch

import xlmr_fast as xf

V, H, L, A, F, P = 97, 64, 2, 4, 96, 40  # vocab, hidden, layers, heads, ffn, position rows
PAD, BOS, EOS = 1, 0, 2
TOL = 1e-4


def hf_config(**kw):
    from transformers import XLMRobertaConfig
    base = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=A,
                intermediate_size=F, max_position_embeddings=P, type_vocab_size=1,
                layer_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                hidden_act="gelu")
    base.update(kw)
    return XLMRobertaConfig(**base)


def randomize_(model, seed=0, token_type=False):
    """Non-trivial LayerNorm weights/biases and Linear biases (HF inits them to 1/0, which would
    hide a swapped or missing one); the token-type row stays zero unless token_type=True."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "token_type_embeddings" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 if token_type else 0 * p)
            elif name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                center = 1.0 if name.endswith("weight") else 0.0
                p.copy_(center + 0.3 * torch.randn(p.shape, generator=g))
    return model


def hf_model(cls_name="XLMRobertaForMaskedLM", seed=0, token_type=False, **cfg_kw):
    import transformers
    torch.manual_seed(seed)
    m = getattr(transformers, cls_name)(hf_config(**cfg_kw))
    return randomize_(m, seed, token_type).eval()


def batch(lengths=(11, 7, 4, 1 + 2), T=None, seed=0, vocab=V, left=False):
    """<s> ... </s> rows of the given lengths, padded with <pad> to T (right, or left)."""
    g = torch.Generator().manual_seed(seed)
    T = T or max(lengths)
    ids = torch.full((len(lengths), T), PAD, dtype=torch.long)
    for b, n in enumerate(lengths):
        row = torch.randint(3, vocab, (n,), generator=g)
        row[0], row[-1] = BOS, EOS
        if left:
            ids[b, T - n:] = row
        else:
            ids[b, :n] = row
    return ids, (ids != PAD).long()


def mlm_labels(ids, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.where(torch.rand(ids.shape, generator=g) < p, ids, torch.full_like(ids, -100))
    labels[ids == PAD] = -100
    labels[0, 1] = ids[0, 1]  # at least one target
    return labels


def ours_config(**kw):
    return xf.XLMRConfig.from_hf_dict(hf_config().to_dict(), **kw)


def max_diff(a, b, mask=None):
    d = (a.float() - b.float()).abs()
    if mask is not None:
        d = d[mask.bool()]
    return d.max().item()

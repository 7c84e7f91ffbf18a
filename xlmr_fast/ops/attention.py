"""xf.ops.attention: non-causal multi-head attention with a key-padding mask.

Contract (stable; the fused kernels of later issues plug in behind it):
    attention(q, k, v, *, key_padding_mask=None, dropout_p=0.0, softmax_scale=None, seed=None)
    q, k, v: (B, H, T, D); key_padding_mask: (B, T) bool, True where the KEY is padding.
    Returns (B, H, T, D). Rows whose keys are all padding return zeros.

Backends: torch SDPA (this file). attention_reference() is the fp32 plain-torch math.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_reference(q, k, v, *, key_padding_mask=None, softmax_scale=None):
    """Plain-torch fp32 attention (no dropout); the ground truth for every backend."""
    out_dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if key_padding_mask is not None:
        s = s.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # all-padding rows: softmax of all -inf is NaN; define as 0
    return torch.einsum("bhqk,bhkd->bhqd", p, v).to(out_dtype)


def _sdpa(q, k, v, key_padding_mask, dropout_p, softmax_scale):
    mask = None
    if key_padding_mask is not None:
        # Additive float mask: a bool mask was measured slower in SDPA (fairseq2 #438), and
        # a finite minimum (not -inf) keeps all-padding rows NaN-free in every backend.
        mask = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(key_padding_mask, torch.finfo(q.dtype).min)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=softmax_scale)
    if key_padding_mask is not None:
        # Zero the rows whose every key is padding (SDPA would average V uniformly there).
        all_pad = key_padding_mask.all(dim=-1)[:, None, None, None]
        out = out.masked_fill(all_pad, 0.0)
    return out


def attention(q, k, v, *, key_padding_mask=None, dropout_p: float = 0.0, softmax_scale=None, seed=None):
    """Multi-head attention, non-causal. See the module docstring for the contract."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"attention: q, k, v must all be (B, H, T, D) of one shape, got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if key_padding_mask is not None:
        B, _, T, _ = q.shape
        if key_padding_mask.shape != (B, T) or key_padding_mask.dtype != torch.bool:
            raise ValueError(
                f"attention: key_padding_mask must be bool (B, T) = ({B}, {T}), got "
                f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    return _sdpa(q, k, v, key_padding_mask, dropout_p, softmax_scale)

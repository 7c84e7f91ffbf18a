"""xf.ops.linear_cross_entropy: loss of softmax(hidden @ weight.T + bias) against targets.

Contract (stable):
    linear_cross_entropy(hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) int,
                         ignore_index=-100, reduction="mean"|"sum"|"none", label_smoothing=0.0)
"mean" divides by the number of non-ignored rows (0 rows -> 0 loss, not NaN).
This first version is the plain-torch reference (fp32 math); fused backends come with
the kernel issue.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_reference(hidden, weight, bias, targets, ignore_index=-100,
                                   reduction="mean", label_smoothing=0.0):
    logits = hidden.float() @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    loss = F.cross_entropy(logits, targets.long(), ignore_index=ignore_index, reduction="none",
                           label_smoothing=label_smoothing)
    valid = targets != ignore_index
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / valid.sum().clamp(min=1)
    raise ValueError(f"linear_cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def linear_cross_entropy(hidden, weight, bias, targets, ignore_index=-100, reduction="mean",
                         label_smoothing=0.0):
    return linear_cross_entropy_reference(hidden, weight, bias, targets, ignore_index, reduction,
                                          label_smoothing)

"""Optimizer and learning-rate schedule of the RoBERTa/XLM-R recipe (spec §4.3).

AdamW with betas (0.9, 0.98), eps 1e-6, weight decay 0.01 on the weight matrices only (not on
LayerNorm weights, biases or, following fairseq/HF practice, nothing else); torch's fused
implementation on CUDA (one kernel for all parameters instead of a loop of small ones).
Schedule: linear warmup from 0 to lr over warmup_steps, then linear decay to 0 at max_steps
(fairseq `polynomial_decay` with power 1).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import OptimSection


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (decayed) and LayerNorm weights + biases (not decayed). Embedding
    tables are matrices and are decayed, as in fairseq and HF's Trainer."""
    decay, no_decay = [], []
    norm_params = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm)
                   for p in m.parameters(recurse=False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in norm_params else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: OptimSection, device: torch.device
                   ) -> torch.optim.AdamW:
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based: the first update uses
    step 0, so warmup starts at 1/warmup_steps rather than a wasted update at lr 0)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if max_steps <= warmup_steps:
        return 1.0
    return max(0.0, (max_steps - step) / (max_steps - warmup_steps))


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimSection
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps))

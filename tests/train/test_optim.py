"""xlmr_fast.train.optim: which parameters get weight decay, and the warmup + linear-decay
schedule, step by step. The pretraining runs only check that the loss falls, which a decayed
LayerNorm or a schedule one step off does not change."""
import pytest
import torch

import xlmr_fast as xf
from xlmr_fast.train.config import OptimSection
from xlmr_fast.train.optim import lr_factor, make_optimizer, make_scheduler, param_groups


def test_no_weight_decay_on_layernorm_and_biases():
    # Catches decay applied to LayerNorm weights (e.g. a name-based "bias only" rule) or to
    # biases, and matrices (incl. the tied token table) left undecayed.
    m = xf.XLMRForMaskedLM(xf.XLMRConfig.tiny())
    decay, no_decay = param_groups(m, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.named_parameters()}
    got_decay = {names[id(p)] for p in decay["params"]}
    got_no_decay = {names[id(p)] for p in no_decay["params"]}
    want_no_decay = {n for n, p in m.named_parameters()
                     if n.endswith(".bias") or n == "lm_head.bias"
                     or any(s in n for s in ("_ln.", "layer_norm."))}
    assert got_no_decay == want_no_decay
    assert got_decay == set(names.values()) - want_no_decay
    assert {"encoder.embed_tokens.weight", "encoder.embed_positions.weight",
            "encoder.layers.0.qkv.weight", "lm_head.dense.weight"} <= got_decay
    assert {"encoder.embed_ln.weight", "encoder.layers.0.attn_ln.weight",
            "encoder.layers.1.ffn_ln.weight", "lm_head.layer_norm.weight"} <= got_no_decay


def test_lr_factor_warmup_and_linear_decay():
    # Catches an off-by-one at either end: the first update at lr 0 (a wasted step), the
    # peak missed at step warmup_steps, or the decay reaching 0 one update early.
    assert [lr_factor(s, 4, 10) for s in range(11)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0])
    assert lr_factor(12, 4, 10) == 0.0  # past max_steps: stays 0, never negative
    assert [lr_factor(s, 0, 4) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert lr_factor(7, 8, 8) == 1.0 and lr_factor(9, 8, 8) == 1.0  # no decay phase


def test_scheduler_lr_seen_by_each_update():
    cfg = OptimSection(lr=1e-3, warmup_steps=2, max_steps=5, fused=False)
    w = torch.nn.Parameter(torch.ones(2, 2))
    model = torch.nn.Linear(2, 2)
    model.weight = w
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    sched = make_scheduler(opt, cfg)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([5e-4, 1e-3, 1e-3, 2e-3 / 3, 1e-3 / 3])
    assert opt.param_groups[0]["betas"] == (0.9, 0.98) and opt.param_groups[0]["eps"] == 1e-6

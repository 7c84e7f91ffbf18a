"""TrainConfig: presets, files, dotted overrides, and the errors for bad ones."""
import json

import pytest

from xlmr_fast.train.config import ConfigError, TrainConfig, load_config, save_config


def test_presets_follow_the_recipe():
    for name in ("tiny", "small", "base", "large"):
        cfg = TrainConfig.preset(name)
        assert cfg.model.preset == name
        assert cfg.optim.betas == (0.9, 0.98) and cfg.optim.eps == 1e-6
        assert cfg.optim.weight_decay == 0.01 and cfg.data.alpha == 0.3
    base = TrainConfig.preset("base")
    # XLM-R's 8192-sequence batch on one GPU: micro-batch x accumulation
    assert base.data.micro_batch * base.optim.grad_accum == 8192
    assert base.data.seq_len == 512
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        TrainConfig.preset("huge")


def test_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: small\noptim:\n  lr: 1.0e-4\n  betas: [0.9, 0.95]\nrun:\n  seed: 7\n")
    cfg = load_config(f, ["optim.lr=3e-4", "run.out_dir=/tmp/x", "model.hidden_dropout=null",
                          "data.cross_documents=false"])
    assert cfg.model.preset == "small"
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.run.seed == 7 and cfg.run.out_dir == "/tmp/x"
    assert cfg.data.cross_documents is False and cfg.model.hidden_dropout is None
    # the resolved config round-trips through the saved file
    saved = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(saved) == cfg
    j = tmp_path / "c.json"
    j.write_text(json.dumps(cfg.to_dict()))
    assert load_config(j) == cfg


@pytest.mark.parametrize("override, match", [
    ("optim.lrr=1", "unknown key optim.lrr; optim has: lr, betas"),
    ("optimizer.lr=1", "unknown section 'optimizer'"),
    ("optim.lr=fast", r"optim.lr = 'fast' is invalid|optim.lr = 'fast' must be a number"),
    ("optim.lr=-1", r"optim.lr = -1.0 is invalid: > 0"),
    ("optim.max_steps=2.5", "optim.max_steps = 2.5 must be an integer"),
    ("data.seq_len=1024", r"data.seq_len = 1024 is invalid: 2..512"),
    ("optim.betas=[0.9]", "optim.betas = \\[0.9\\] must be a list of 2 values"),
    ("run.precision=fp8", "run.precision = 'fp8' is invalid: auto, bf16 or fp32"),
    ("data.alpha", "must look like section.field=value"),
    ("lr=1", "the key must be section.field"),
    ("optim.warmup_steps=5000", r"optim.warmup_steps = 5000 is invalid: in \[0, optim.max_steps"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match=f"config file {bad}: not valid yaml"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    bad.write_text("optim:\n  lr: 0\n")
    with pytest.raises(ConfigError, match=f"optim.lr = 0.0 is invalid: > 0 \\(in {bad}\\)"):
        load_config(bad)

"""Tiny pretrained models for the fine-tuning tests (a few CPU steps on the shared corpus)."""
import json

import pytest

from xlmr_fast.train.config import load_config
from xlmr_fast.train.pretrain import pretrain


def _tiny_pretrained(prepared, tmp_path_factory, steps: int):
    shards, tok = prepared
    out = tmp_path_factory.mktemp("pre") / "run"
    pretrain(load_config(None, [
        f"data.data_dir={shards}", f"data.tokenizer={tok}", f"run.out_dir={out}",
        "data.seq_len=64", "data.micro_batch=4", f"optim.max_steps={steps}",
        "optim.warmup_steps=1", "run.eval_every=0", "run.progress=false",
        "run.tensorboard=false"]))
    return out / "final"


@pytest.fixture(scope="module")
def pretrained(prepared, tmp_path_factory):
    """A model that a short pretraining run saved with save_pretrained."""
    return _tiny_pretrained(prepared, tmp_path_factory, 3)


@pytest.fixture(scope="module")
def no_dropout_model(prepared, tmp_path_factory):
    """The same with every dropout 0 in config.json: runs then differ only in float order."""
    model = _tiny_pretrained(prepared, tmp_path_factory, 2)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (model / "config.json").write_text(json.dumps(cfg))
    return model

"""Continued pretraining: model.init_from / `xlmr-fast pretrain --init-from` start from a saved
model (HF dir or fairseq model.pt: e.g. xlm-roberta-base) instead of a fresh init, with checks
that its vocabulary is the shards'."""
import os
import shutil
from pathlib import Path

import pytest
import torch

from xlmr_fast import cli
from xlmr_fast.model.xlmr import XLMRForMaskedLM
from xlmr_fast.train.config import load_config
from xlmr_fast.train.pretrain import Trainer, pretrain


def _cfg(prepared, out, *over):
    shards, tok = prepared
    return load_config(None, [
        f"data.data_dir={shards}", f"data.tokenizer={tok}", f"run.out_dir={out}",
        "data.seq_len=64", "data.micro_batch=4", "optim.max_steps=2", "optim.warmup_steps=1",
        "run.eval_every=0", "run.progress=false", "run.tensorboard=false", *over])


@pytest.fixture(scope="module")
def saved(prepared, tmp_path_factory):
    """A model pretrained for 3 steps and exported (final/: HF layout + tokenizer files)."""
    out = tmp_path_factory.mktemp("a") / "run"
    pretrain(_cfg(prepared, out, "optim.max_steps=3"))
    return out / "final"


def _same_weights(model, ref):
    a, b = model.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_starts_from_the_saved_weights(prepared, saved, tmp_path):
    ref = XLMRForMaskedLM.from_pretrained(saved)
    # a different preset's architecture is ignored: the checkpoint's is used
    t = Trainer(_cfg(prepared, tmp_path / "b", f"model.init_from={saved}", "model.preset=small",
                     "model.hidden_dropout=0.0"))
    assert t.model_cfg.hidden_size == ref.config.hidden_size
    assert t.model_cfg.hidden_dropout == 0.0  # the model section's overrides still apply
    _same_weights(t.raw, ref)
    # a fairseq model.pt of the same weights (tokenizer beside it) loads the same
    fs = tmp_path / "fs"
    fs.mkdir()
    assert cli.main(["convert", str(saved), str(fs / "model.pt"), "--to", "fairseq"]) == 0
    t = Trainer(_cfg(prepared, tmp_path / "c", f"model.init_from={fs / 'model.pt'}"))
    _same_weights(t.raw, ref)


def test_vocabulary_and_tokenizer_must_be_the_shards(prepared, saved, tmp_path):
    from xlmr_fast.config import XLMRConfig
    other = tmp_path / "other"
    cfg = XLMRConfig.tiny(vocab_size=XLMRForMaskedLM.from_pretrained(saved).config.vocab_size
                          + 7)
    XLMRForMaskedLM(cfg).save_pretrained(other)
    with pytest.raises(ValueError, match=r"has a vocabulary of \d+ ids, the shards \d+: "
                                         r"preprocess the corpus with the checkpoint's"):
        Trainer(_cfg(prepared, tmp_path / "b", f"model.init_from={other}"))
    # same size, another sentencepiece model beside it: the ids would mean other pieces
    wrong = tmp_path / "wrong"
    shutil.copytree(saved, wrong)
    (wrong / "sentencepiece.bpe.model").write_bytes(b"not the shards' tokenizer")
    with pytest.raises(ValueError, match=r"is not the tokenizer the shards were made with"):
        Trainer(_cfg(prepared, tmp_path / "c", f"model.init_from={wrong}"))
    with pytest.raises(ValueError, match=r"model.init_from \S+nowhere does not exist"):
        Trainer(_cfg(prepared, tmp_path / "d", f"model.init_from={tmp_path / 'nowhere'}"))


def test_resume_of_a_continued_run(prepared, saved, tmp_path):
    """A run that continued from model.init_from resumes with it; resumed without it (so with
    the preset's architecture, as `--resume --out RUN` alone gives) it is a one-line error
    naming the init model, not a size mismatch from deep inside torch's set_state_dict."""
    from xlmr_fast.train.checkpoint import CheckpointError
    out = tmp_path / "run"
    init = (f"model.init_from={saved}", "model.preset=small")
    pretrain(_cfg(prepared, out, *init))
    with pytest.raises(CheckpointError, match=r"holds another model than this run builds .*"
                                              r"continued from model.init_from \S+; resume with "
                                              r"the run's own config: `xlmr-fast pretrain "
                                              r"--resume --out \S+` reads \S+config.yaml"):
        Trainer(_cfg(prepared, out, "model.preset=small"), resume=True)
    t = Trainer(_cfg(prepared, out, *init), resume=True)
    assert t.step == 2 and t.model_cfg.hidden_size == XLMRForMaskedLM.from_pretrained(
        saved).config.hidden_size


def test_cli_init_from_with_a_corpus_uses_the_models_tokenizer(saved, shared_data, tmp_path,
                                                               monkeypatch, capsys):
    """`pretrain --init-from M --corpus DIR`: DIR is encoded with M's sentencepiece model (no
    tokenizer is trained), and the run continues from M."""
    from xlmr_fast.data.corpus import iter_lines, list_languages
    from xlmr_fast.data.shards import file_sha256, read_meta
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    files = list_languages(Path(shared_data) / "cc100-mini")
    for lang in ("en", "sw"):  # 300 lines each, one document per line
        lines = [x for _, x in zip(range(300), iter_lines(files[lang]))]
        (corpus / f"{lang}.txt").write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("XLMR_FAST_CACHE", str(tmp_path / "cache"))
    rc = cli.main(["pretrain", "--init-from", str(saved), "--corpus", str(corpus),
                   "--prepared", str(tmp_path / "prep"), "--out", str(tmp_path / "run"),
                   "--workers", "1", "data.seq_len=32", "data.micro_batch=2",
                   "optim.max_steps=2", "optim.warmup_steps=1", "run.eval_every=0",
                   "run.progress=false", "run.tensorboard=false"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "training a" not in out  # no tokenizer trained
    meta = read_meta(tmp_path / "prep" / "shards")
    assert meta["tokenizer"]["sha256"] == file_sha256(saved / "sentencepiece.bpe.model")
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert os.path.getsize(tmp_path / "run" / "final" / "model.safetensors") == \
        os.path.getsize(saved / "model.safetensors")
    # --data shards made with the model's tokenizer: --tokenizer defaults to the model's dir
    capsys.readouterr()
    rc = cli.main(["pretrain", "--init-from", str(saved), "--data", str(tmp_path / "prep" /
                   "shards"), "--out", str(tmp_path / "run2"), "data.seq_len=32",
                   "data.micro_batch=2", "optim.max_steps=1", "optim.warmup_steps=0",
                   "run.eval_every=0", "run.progress=false", "run.tensorboard=false"])
    assert rc == 0, capsys.readouterr().out
    assert (tmp_path / "run2" / "final" / "sentencepiece.bpe.model").read_bytes() == \
        (saved / "sentencepiece.bpe.model").read_bytes()


def test_cli_resume_reads_the_runs_config(saved, prepared, tmp_path, monkeypatch, capsys):
    """`xlmr-fast pretrain --resume --out RUN` (the hint a stopped run prints) continues RUN's
    own config: before, it rebuilt the default preset on the demo corpus, so a continued or
    non-default run could not be resumed by that command. Relative paths given to the first
    command are kept absolute (the resume may run elsewhere), and a resume that fails does not
    replace RUN/config.yaml (the hint would then fail again)."""
    shards, tok = prepared
    out = tmp_path / "run"
    common = ["run.eval_every=0", "run.progress=false", "run.tensorboard=false"]
    monkeypatch.chdir(shards.parent)
    assert cli.main(["pretrain", "--init-from", os.path.relpath(saved), "--data", shards.name,
                     "--tokenizer", os.path.relpath(tok), "--out", str(out), "data.seq_len=32",
                     "data.micro_batch=2", "optim.max_steps=2", "optim.warmup_steps=1",
                     "run.save_every=1", *common]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["pretrain", "--resume", "--out", str(out), "optim.max_steps=3"]) == 0
    from xlmr_fast.train.checkpoint import CheckpointManager
    from xlmr_fast.train.config import load_config
    assert CheckpointManager(out).load()["step"] == 3
    cfg = load_config(out / "config.yaml")
    assert (cfg.data.seq_len, cfg.model.init_from, cfg.optim.max_steps) == (32, str(saved), 3)
    assert (cfg.data.data_dir, cfg.data.tokenizer) == (str(shards), str(tok))
    assert cli.main(["pretrain", "--resume", "--out", str(out), "--preset", "base"]) == 1
    assert "--resume continues" in capsys.readouterr().err
    assert cli.main(["pretrain", "--resume", "--out", str(out), "model.init_from=null",
                     "model.preset=small"]) == 1
    assert "holds another model than this run builds" in capsys.readouterr().err
    assert load_config(out / "config.yaml").model.init_from == str(saved)
    assert cli.main(["pretrain", "--resume", "--out", str(out), "optim.max_steps=4"]) == 0
    assert CheckpointManager(out).load()["step"] == 4

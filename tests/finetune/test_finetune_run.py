"""`xlmr-fast finetune {xnli,ner,qa}` and `xlmr-fast evaluate` end to end on the shared data,
with a tiny model that a short pretraining run saved with save_pretrained (CPU, a few steps:
the tables must be complete and well formed; the scores of a 2-layer model are near chance)."""
import json
from pathlib import Path

import pytest

from xlmr_fast import cli
from xlmr_fast.train.config import load_config
from xlmr_fast.train.pretrain import pretrain


@pytest.fixture(scope="module")
def pretrained(prepared, tmp_path_factory):
    shards, tok = prepared
    out = tmp_path_factory.mktemp("pre") / "run"
    pretrain(load_config(None, [
        f"data.data_dir={shards}", f"data.tokenizer={tok}", f"run.out_dir={out}",
        "data.seq_len=64", "data.micro_batch=4", "optim.max_steps=3", "optim.warmup_steps=1",
        "run.eval_every=0", "run.progress=false", "run.tensorboard=false"]))
    return out / "final"


def _table(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    for lang in res["languages"]:
        assert f"| {lang} " in md.splitlines()[2] + " "
    return res


def test_xnli_transfer_with_selection_and_seeds(pretrained, shared_data, tmp_path, capsys):
    x = Path(shared_data) / "xnli"
    out = tmp_path / "xnli"
    rc = cli.main(["finetune", "xnli", "--model", str(pretrained), "--train",
                   str(x / "dev-en.tsv"), "--eval", *(str(x / f"dev-{l}.tsv")
                                                     for l in ("en", "de", "ru", "sw")),
                   "--dev", str(x / "dev-en.tsv"), "--xnli-premise-split", "--out", str(out),
                   "--seeds", "0", "1", "--epochs", "2", "--max-steps", "6", "--batch-size", "8",
                   "--max-train-examples", "48", "--max-eval-examples", "30", "--lr", "1e-4"])
    assert rc == 0
    res = _table(out)
    assert res["languages"] == ["de", "en", "ru", "sw"]
    assert len(res["seeds"]) == 2 and all(0 <= v <= 100 for v in res["mean"].values())
    assert all(s["best_dev"] is not None for s in res["seeds"])       # selection ran
    assert "joint dev set" in capsys.readouterr().out
    assert (out / "seed1" / "model.safetensors").exists()
    # `evaluate` on the saved fine-tuned model reproduces that seed's scores
    rc = cli.main(["evaluate", "xnli", "--model", str(out / "seed1"), "--eval",
                   str(x / "dev-de.tsv"), "--xnli-premise-split"])   # tokenizer saved beside it
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["de"]["accuracy"] == pytest.approx(
        next(s for s in res["seeds"] if s["seed"] == 1)["scores"]["de"], abs=1e-6)


def test_ner_panx(pretrained, shared_data, tmp_path, capsys):
    p = Path(shared_data) / "panx"
    out = tmp_path / "ner"
    rc = cli.main(["finetune", "ner", "--model", str(pretrained), "--train",
                   str(p / "train-en.tsv"), "--eval", str(p / "dev-en.tsv"),
                   str(p / "dev-de.tsv"), str(p / "dev-sw.tsv"), "--out", str(out),
                   "--max-steps", "5", "--batch-size", "8", "--max-train-examples", "64",
                   "--max-eval-examples", "40"])
    assert rc == 0
    res = _table(out)
    assert res["languages"] == ["de", "en", "sw"] and res["metric"] == "entity F1"
    assert json.loads((out / "seed0" / "labels.json").read_text())[0] == "O"
    # `evaluate` reads the tag order from labels.json; --max-eval-examples was 40, so compare
    # on a file of the same 40 sentences
    blocks = (p / "dev-de.tsv").read_text(encoding="utf-8").split("\n\n")[:40]
    sub = tmp_path / "dev-de.tsv"
    sub.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    assert cli.main(["evaluate", "ner", "--model", str(out / "seed0"), "--tokenizer",
                     str(pretrained), "--eval", str(sub)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["de"]["f1"] == pytest.approx(res["mean"]["de"], abs=1e-6)
    # the counts stay counts (only precision / recall / F1 are percentages)
    from xlmr_fast.finetune import metrics as M, readers as R
    gold = sum(len(M.entity_spans(e.tags)) for e in R.read_panx(sub))
    assert printed["de"]["n_true"] == gold


def test_qa_mlqa(pretrained, shared_data, tmp_path):
    m = Path(shared_data) / "mlqa"
    out = tmp_path / "qa"
    rc = cli.main(["finetune", "qa", "--model", str(pretrained), "--train",
                   str(Path(shared_data) / "xquad" / "xquad.en.json"), "--eval",
                   str(m / "dev-context-en-question-en.json"),
                   str(m / "dev-context-de-question-de.json"), "--out", str(out),
                   "--max-steps", "4", "--batch-size", "8", "--max-train-examples", "24",
                   "--max-eval-examples", "20", "--max-length", "128", "--doc-stride", "48"])
    assert rc == 0
    res = _table(out)
    assert res["languages"] == ["de", "en"]
    assert "(exact match)" in (out / "results.md").read_text()


def test_errors(pretrained, shared_data, tmp_path, capsys):
    x = Path(shared_data) / "xnli"
    rc = cli.main(["finetune", "xnli", "--model", str(pretrained), "--train",
                   str(x / "dev-en.tsv"), str(x / "dev-de.tsv"), "--eval", str(x / "dev-en.tsv"),
                   "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "translate-train-all" in capsys.readouterr().err
    bad = tmp_path / "dev-xx.tsv"
    bad.write_text("a\tb\tentailment\nc\td\n")
    rc = cli.main(["finetune", "xnli", "--model", str(pretrained), "--train", str(bad),
                   "--eval", str(bad), "--out", str(tmp_path / "o2")])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{bad}:line 2" in err


def test_translate_train_all(pretrained, shared_data, tmp_path):
    """One model on the training files of several languages, evaluated on each."""
    x = Path(shared_data) / "xnli"
    out = tmp_path / "tta"
    rc = cli.main(["finetune", "xnli", "--model", str(pretrained), "--protocol",
                   "translate-train-all", "--train", str(x / "dev-en.tsv"), str(x / "dev-de.tsv"),
                   "--eval", str(x / "dev-en.tsv"), str(x / "dev-de.tsv"), "--xnli-premise-split",
                   "--out", str(out), "--max-steps", "3", "--batch-size", "8",
                   "--max-train-examples", "24", "--max-eval-examples", "12"])
    assert rc == 0
    res = _table(out)
    assert res["train_languages"] == ["de", "en"] and res["protocol"] == "translate-train-all"
    assert "de,en (translate-train-all)" in (out / "results.md").read_text()

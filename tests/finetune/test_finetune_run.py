"""`xlmr-fast finetune {xnli,ner,qa}` and `xlmr-fast evaluate` end to end on the shared data,
with a tiny model that a short pretraining run saved with save_pretrained (CPU, a few steps:
the tables must be complete and well formed; the scores of a 2-layer model are near chance)."""
import json
import weakref
from pathlib import Path

import pytest
import torch

from xlmr_fast import cli


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
    # a repeated seed is one model directory (seed0/) counted twice: refused up front (under
    # torchrun the ranks would not agree on whether its second turn is done)
    rc = cli.main(["finetune", "xnli", "--model", str(pretrained), "--train",
                   str(x / "dev-en.tsv"), "--eval", str(x / "dev-en.tsv"), "--xnli-premise-split",
                   "--seeds", "0", "1", "0", "--max-steps", "1", "--max-train-examples", "8",
                   "--max-eval-examples", "8", "--out", str(tmp_path / "o3")])
    assert rc == 1
    assert "--seeds 0 1 0: a seed is given twice" in capsys.readouterr().err


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


def test_batch_stream_runs_on_across_passes():
    """--epoch-batches draws on across passes: pass p is length_batches(seed * 1000 + p), so
    with one pass per epoch the batches are those of the loop before the option."""
    import itertools

    from xlmr_fast.finetune import run as F
    from xlmr_fast.finetune.tasks import length_batches
    lengths = [5, 9, 3, 7, 7, 2, 8]
    got = list(itertools.islice(F.batch_stream(lengths, 2, seed=3), 10))
    want = (length_batches(lengths, 2, shuffle=True, seed=3000)
            + length_batches(lengths, 2, shuffle=True, seed=3001)
            + length_batches(lengths, 2, shuffle=True, seed=3002))
    assert got == want[:10] and len(want) == 12


def test_paper_xnli_recipe_epochs_and_early_stopping(pretrained, shared_data, tmp_path,
                                                     monkeypatch, capsys):
    """The paper's XNLI selection (ISSUES #1367): an "epoch" is N sampled batches, the dev set is
    scored after each, training stops after `patience` epochs without a better score and the
    best weights are kept. The dev scores are scripted: 50, 60, 55, 58, 59 -> stop after epoch
    5 (patience 3), the epoch-2 weights kept."""
    import torch

    from xlmr_fast.finetune import run as F
    x = Path(shared_data) / "xnli"
    scores = iter([50.0, 60.0, 55.0, 58.0, 59.0])
    seen, real = [], F.evaluate_sets

    def evaluate_sets(task, model, sets, dev, amp, bs, dist=None):
        seen.append((sorted(sets), model.classifier.out_proj.weight.detach().clone()))
        if list(sets) == ["en"]:  # the dev set: scripted scores
            return {"en": (next(scores), {})}
        return real(task, model, sets, dev, amp, bs, dist)  # the final evaluation (en, de)
    monkeypatch.setattr(F, "evaluate_sets", evaluate_sets)
    args = F.FinetuneArgs(task="xnli", model=str(pretrained), train=[str(x / "dev-en.tsv")],
                          eval=[str(x / "dev-en.tsv"), str(x / "dev-de.tsv")],
                          dev=[str(x / "dev-en.tsv")], xnli_premise_split=True,
                          out=str(tmp_path / "o"), epochs=30, epoch_batches=3, patience=3,
                          batch_size=4, lr=1e-3, max_train_examples=6, max_eval_examples=8,
                          save_model=False)
    res = F.finetune(args)
    s = res["seeds"][0]
    assert s["stopped_early_after_epoch"] == 5
    assert s["steps"] == 15  # 5 epochs x 3 batches; 6 examples in batches of 4 are 2 per pass
    assert [h["dev"] for h in s["history"]] == [50.0, 60.0, 55.0, 58.0, 59.0]
    assert s["best_dev"] == 60.0
    assert "stopped early after epoch 5" in capsys.readouterr().out
    # the final evaluation (en, de) saw the epoch-2 weights, not the last epoch's
    assert [x[0] for x in seen] == [["en"]] * 5 + [["de", "en"]]
    assert torch.equal(seen[-1][1], seen[1][1]) and not torch.equal(seen[1][1], seen[4][1])
    assert res["args"]["patience"] == 3 and res["args"]["epoch_batches"] == 3


def test_no_better_score_in_the_last_epoch_is_no_early_stop(pretrained, shared_data, monkeypatch):
    """Under torchrun a batch smaller than the ranks is skipped, so the steps never reach the
    planned total: a last epoch without a better dev score was reported as an early stop."""
    import torch

    from xlmr_fast.finetune import run as F
    from xlmr_fast.tokenizer import Tokenizer
    from xlmr_fast.train.distributed import DistInfo
    x = Path(shared_data) / "xnli"
    args = F.FinetuneArgs(task="xnli", model=str(pretrained), train=[str(x / "dev-en.tsv")],
                          dev=[str(x / "dev-en.tsv")], xnli_premise_split=True, epochs=2,
                          patience=1, batch_size=4, lr=1e-3, max_train_examples=5)
    ex = F.read_files("xnli", args.train, "train", True, 5)
    task = F.Task("xnli", Tokenizer.from_pretrained(pretrained), args, ex)
    scores = iter([50.0, 50.0])
    monkeypatch.setattr(F, "evaluate_sets", lambda *a, **k: {"en": (next(scores), {})})
    monkeypatch.setattr(F.D, "wrap", lambda model, dist, layers=None: model)  # rank 0 of 2, alone
    cpu = torch.device("cpu")
    _, _, info = F.train_one_seed(task, args, 0, task.features(ex), {"en": None}, cpu,
                                  DistInfo("ddp", 0, 2, 0, cpu))
    assert info["steps"] == 2  # 5 examples in batches of 4: each epoch's batch of 1 is skipped
    assert [h["dev"] for h in info["history"]] == [50.0, 50.0]
    assert info["stopped_early_after_epoch"] is None


def test_patience_needs_dev(pretrained, shared_data, tmp_path, capsys):
    x = Path(shared_data) / "xnli"
    rc = cli.main(["finetune", "xnli", "--model", str(pretrained), "--train",
                   str(x / "dev-en.tsv"), "--eval", str(x / "dev-en.tsv"), "--patience", "5",
                   "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "--patience stops on the joint dev score: it needs --dev" in capsys.readouterr().err
    rc = cli.main(["finetune", "xnli", "--model", str(pretrained), "--train",
                   str(x / "dev-en.tsv"), "--eval", str(x / "dev-en.tsv"), "--warmup-ratio", "1",
                   "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "--warmup-ratio must be in [0, 1)" in capsys.readouterr().err


def test_each_language_its_own_model(pretrained, shared_data, tmp_path, monkeypatch, capsys):
    """--protocol each (the paper's NER "each" / XNLI translate-train rows, #M = N): one model
    per evaluation language, trained on that language's files only and selected on its own dev
    set; each is saved under seed<k>/<lang>/ and `evaluate` reproduces its score."""
    from xlmr_fast.finetune import run as F
    x = Path(shared_data) / "xnli"
    trained = []
    real = F.train_one_seed

    def spy(task, args, seed, feats, dev_sets, *a, **k):
        trained.append((task, feats, sorted(dev_sets)))
        return real(task, args, seed, feats, dev_sets, *a, **k)
    monkeypatch.setattr(F, "train_one_seed", spy)
    out = tmp_path / "each"
    rc = cli.main(["finetune", "xnli", "--model", str(pretrained), "--protocol", "each",
                   "--train", str(x / "dev-en.tsv"), str(x / "dev-de.tsv"),
                   str(x / "dev-ru.tsv"), "--dev", str(x / "dev-en.tsv"), str(x / "dev-de.tsv"),
                   "--eval", str(x / "dev-de.tsv"), str(x / "dev-en.tsv"),
                   "--xnli-premise-split", "--out", str(out), "--max-steps", "2",
                   "--batch-size", "8", "--max-train-examples", "24"])
    assert rc == 0
    # models for de and en only (no ru eval file), each on its language's training examples
    assert [d for *_, d in trained] == [["de"], ["en"]]
    for (task, feats, _), lang in zip(trained, ("de", "en")):
        ex = F.read_files("xnli", [str(x / f"dev-{lang}.tsv")], "train", True, 24)
        assert feats == task.features(ex)
    res = _table(out)
    assert res["protocol"] == "each" and res["languages"] == ["de", "en"]
    assert set(res["seeds"][0]["per_language"]) == {"de", "en"}
    assert "each language's own dev set" in (out / "results.md").read_text()
    for lang in ("de", "en"):
        assert (out / "seed0" / lang / "model.safetensors").exists()
    capsys.readouterr()
    rc = cli.main(["evaluate", "xnli", "--model", str(out / "seed0" / "de"), "--eval",
                   str(x / "dev-de.tsv"), "--xnli-premise-split"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["de"]["accuracy"] == pytest.approx(res["seeds"][0]["scores"]["de"], abs=1e-6)
    rc = cli.main(["finetune", "xnli", "--model", str(pretrained), "--protocol", "each",
                   "--train", str(x / "dev-en.tsv"), "--eval", str(x / "dev-sw.tsv"),
                   "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "no --train file for ['sw']" in capsys.readouterr().err


def test_rerun_continues_an_interrupted_multi_seed_run(pretrained, shared_data, tmp_path,
                                                       monkeypatch, capsys):
    """Each finished model writes seed<k>/result.json last; a rerun with the same arguments
    into the same --out reuses those seeds (an interrupted 5-seed run keeps its done seeds)
    and trains only the rest. Results of other arguments are an error, not a mix."""
    from xlmr_fast.finetune import run as F
    x = Path(shared_data) / "xnli"
    out = tmp_path / "o"
    argv = ["finetune", "xnli", "--model", str(pretrained), "--train", str(x / "dev-en.tsv"),
            "--eval", str(x / "dev-de.tsv"), "--xnli-premise-split", "--out", str(out),
            "--seeds", "0", "1", "--max-steps", "2", "--batch-size", "8",
            "--max-train-examples", "16", "--max-eval-examples", "12"]
    assert cli.main(argv) == 0
    first = json.loads((out / "results.json").read_text())
    trained, real = [], F.train_one_seed

    def spy(task, args, seed, *a, **k):
        trained.append(seed)
        return real(task, args, seed, *a, **k)
    monkeypatch.setattr(F, "train_one_seed", spy)
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert trained == [] and "seed 1: done before" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["mean"] == first["mean"]
    (out / "seed1" / "result.json").unlink()  # as if the run had stopped during seed 1
    assert cli.main(argv) == 0
    assert trained == [1]
    assert cli.main(argv + ["--lr", "3e-5"]) == 1
    assert "seed0/result.json holds seed 0 of other arguments (differing: lr)" in \
        capsys.readouterr().err


def test_interrupted_seed_continues_after_its_last_epoch(pretrained, shared_data, tmp_path,
                                                         monkeypatch):
    """A model's training state is written after every epoch (seed<k>/checkpoint.pt); a run
    killed in epoch 3 continues after epoch 2 on the rerun and ends with the weights of a run
    that never stopped (same batches, dropout masks and optimizer state). No --dev: the final
    weights are the last epoch's, so they show all of that (a selected earlier epoch would
    not)."""
    from safetensors.torch import load_file

    from xlmr_fast.finetune import run as F
    x = Path(shared_data) / "xnli"

    def argv(out):
        return ["finetune", "xnli", "--model", str(pretrained), "--train", str(x / "dev-en.tsv"),
                "--eval", str(x / "dev-de.tsv"), "--xnli-premise-split", "--out", str(out),
                "--epochs", "3", "--batch-size", "8", "--max-train-examples", "24",
                "--max-eval-examples", "12", "--lr", "1e-3"]
    assert cli.main(argv(tmp_path / "whole")) == 0
    adamw_step, n = torch.optim.AdamW.step, []

    def dies_in_epoch_3(self, *a, **k):
        n.append(1)
        if len(n) == 7:  # the first step of epoch 3: after epoch 2's checkpoint
            raise KeyboardInterrupt
        return adamw_step(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", dies_in_epoch_3)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        cli.main(argv(cut))
    ck = cut / "seed0" / "checkpoint.pt"
    # as if saved on another kind of device: the loading optimizer keeps its own choice
    st = torch.load(ck, weights_only=True)
    for g in st["opt"]["param_groups"]:
        g["foreach"] = True
    torch.save(st, ck)
    loaded, real_load = [], F.load_epoch_checkpoint

    def load(*a, **k):
        st = real_load(*a, **k)
        loaded.extend(weakref.ref(t) for t in st["model"].values())
        return st
    monkeypatch.setattr(F, "load_epoch_checkpoint", load)
    steps = []

    def counted(self, *a, **k):
        # the checkpoint's weights are in the model: their loaded copy (a whole model on the
        # GPU) is not kept while training
        steps.append(sum(r() is not None for r in loaded))
        assert self.param_groups[0]["foreach"] is not True
        return adamw_step(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    assert cli.main(argv(cut)) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert whole["seeds"][0]["steps"] == 9 and len(steps) == 3  # 3 batches an epoch: epoch 3
    assert loaded and steps == [0, 0, 0]
    assert not (cut / "seed0" / "checkpoint.pt").exists()  # the model is done
    a = load_file(tmp_path / "whole" / "seed0" / "model.safetensors")
    b = load_file(cut / "seed0" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((cut / "results.json").read_text())["mean"] == whole["mean"]


def test_grad_accum_splits_each_batch(pretrained, shared_data, tmp_path, monkeypatch):
    """--grad-accum 3: each update runs min(3, batch size) micro-batches that together hold the
    batch (a last, smaller batch too). The same-update check (tests/finetune/test_finetune_ddp.py)
    compares weights only, so it would also pass with the option ignored."""
    from xlmr_fast.finetune import run as F
    x = Path(shared_data) / "xnli"
    parts, real_loss, real_step = [[]], F.Task.loss, torch.optim.AdamW.step

    def loss(self, model, b):
        parts[-1].append(len(b["input_ids"]))
        return real_loss(self, model, b)

    def step(self, *a, **k):
        parts.append([])
        return real_step(self, *a, **k)
    monkeypatch.setattr(F.Task, "loss", loss)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    assert cli.main(["finetune", "xnli", "--model", str(pretrained), "--train",
                     str(x / "dev-en.tsv"), "--eval", str(x / "dev-de.tsv"),
                     "--xnli-premise-split", "--out", str(tmp_path / "o"), "--epochs", "1",
                     "--batch-size", "4", "--grad-accum", "3", "--max-train-examples", "10",
                     "--max-eval-examples", "8"]) == 0
    steps = parts[:-1]
    assert len(steps) == 3 and sum(map(sum, steps)) == 10
    assert all(len(s) == min(3, sum(s)) for s in steps), steps


def test_default_out_is_per_arguments(pretrained, shared_data, tmp_path, monkeypatch, capsys):
    """Without --out each set of arguments gets runs/finetune/<task>-<hash>: a second, other
    run does not collide with the first (it would be refused as results of other arguments),
    and the same command finds its own results again."""
    from xlmr_fast.finetune import run as F
    x = Path(shared_data) / "xnli"
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", "xnli", "--model", str(pretrained), "--train", str(x / "dev-en.tsv"),
            "--eval", str(x / "dev-de.tsv"), "--xnli-premise-split", "--max-steps", "1",
            "--batch-size", "8", "--max-train-examples", "8", "--max-eval-examples", "6"]
    assert cli.main(argv) == 0
    assert cli.main(argv + ["--lr", "3e-5"]) == 0
    runs = sorted((tmp_path / "runs" / "finetune").glob("xnli-*"))
    assert len(runs) == 2 and all((r / "results.json").is_file() for r in runs)
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "seed 0: done before" in capsys.readouterr().out
    a = F.FinetuneArgs(task="xnli", model="m", train=["t"], eval=["e"])
    assert F.default_out(a) == F.default_out(F.FinetuneArgs(task="xnli", model="m", train=["t"],
                                                            eval=["e"], device="cpu", seeds=(3,)))


def test_a_result_without_its_saved_model_is_redone_when_the_model_is_wanted(tmp_path):
    from xlmr_fast.finetune import run as F
    a = F.FinetuneArgs(task="xnli", model="m", train=["t"], eval=["e"], save_model=False)
    (tmp_path / "result.json").write_text(json.dumps(
        {"args": F.fingerprint(a), "info": {"steps": 1}, "res": {"de": [50.0, {}]}}))
    assert F.done_before(a, tmp_path, "seed 0") == ({"steps": 1}, {"de": (50.0, {})})
    wants = F.FinetuneArgs(task="xnli", model="m", train=["t"], eval=["e"], save_model=True)
    assert F.done_before(wants, tmp_path, "seed 0") is None  # no model.safetensors there


def test_sigterm_mid_epoch_saves_and_the_rerun_continues_there(pretrained, shared_data,
                                                               tmp_path, monkeypatch, capsys):
    """SIGTERM (a preemption) in the middle of epoch 2: the step finishes, the state is saved
    where it left off (batch position and random generators included), the command exits 143;
    the same command then trains only the remaining steps and ends with the weights of a run
    that never stopped."""
    import os
    import signal

    from safetensors.torch import load_file
    x = Path(shared_data) / "xnli"

    def argv(out):
        return ["finetune", "xnli", "--model", str(pretrained), "--train", str(x / "dev-en.tsv"),
                "--eval", str(x / "dev-de.tsv"), "--xnli-premise-split", "--out", str(out),
                "--epochs", "3", "--batch-size", "8", "--max-train-examples", "24",
                "--max-eval-examples", "12", "--lr", "1e-3"]  # no --dev: the last epoch's model
    assert cli.main(argv(tmp_path / "whole")) == 0  # 3 epochs x 3 batches
    steps, real_step = [], torch.optim.AdamW.step

    def step_then_signal(self, *a, **k):
        out = real_step(self, *a, **k)
        steps.append(1)
        if len(steps) == 5:  # the second step of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_signal)
    cut = tmp_path / "cut"
    assert cli.main(argv(cut)) == 143
    err = capsys.readouterr().err
    assert "SIGTERM received: seed 0 stopped after step 5" in err and "run the same" in err
    st = torch.load(cut / "seed0" / "checkpoint.pt", weights_only=True)
    assert (st["epoch"], st["in_epoch"], st["step"]) == (1, 2, 5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    steps.clear()
    assert cli.main(argv(cut)) == 0
    assert len(steps) == 4  # steps 6-9 only
    a = load_file(tmp_path / "whole" / "seed0" / "model.safetensors")
    b = load_file(cut / "seed0" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert json.loads((cut / "results.json").read_text())["mean"] == whole["mean"]


def test_summary_is_mean_and_sample_std_over_seeds():
    """Catches the seed summary using the population std (ddof 0) or a wrong mean: two seeds
    scoring 50 and 60 are 55.0 ± 7.1 (statistics.stdev, ddof 1), not ± 5.0. The end-to-end runs
    only check that the means lie in [0, 100]."""
    from xlmr_fast.finetune import run as F
    a = F.FinetuneArgs(task="xnli", model="m", train=["t"], eval=["e"], seeds=(0, 1))
    per_seed = [{"seed": 0, "scores": {"de": 50.0, "en": 70.0}, "details": {}},
                {"seed": 1, "scores": {"de": 60.0, "en": 80.0}, "details": {}}]
    t = F.summarize(a, ["en"], per_seed)
    assert t["mean"] == {"de": 55.0, "en": 75.0} and t["average"] == 65.0
    assert t["std"] == pytest.approx({"de": 50 ** 0.5, "en": 50 ** 0.5})
    assert "| 55.0 ± 7.1 | 75.0 ± 7.1 | 65.0 ± 7.1 |" in t["markdown"]


def test_every_result_setting_argument_is_in_the_fingerprint():
    """Catches a field that changes a seed's model or scores being left out of the fingerprint
    (NOT_IN_RESULT): a rerun with another value would then reuse the old result.json. Only the
    fields listed here may be left out."""
    import dataclasses

    from xlmr_fast.finetune import resume as Rs
    from xlmr_fast.finetune import run as F
    assert set(Rs.NOT_IN_RESULT) == {"seeds", "out", "device", "eval_batch_size", "save_model",
                                    "checkpoints"}
    fields = {f.name for f in dataclasses.fields(F.FinetuneArgs)}
    base = F.FinetuneArgs(task="xnli", model="m", train=["t"], eval=["e"])
    assert set(F.fingerprint(base)) == fields - set(Rs.NOT_IN_RESULT)
    changed = dataclasses.replace(base, max_eval_examples=7)
    assert F.fingerprint(changed) != F.fingerprint(base)
    assert F.default_out(changed) != F.default_out(base)

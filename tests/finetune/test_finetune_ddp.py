"""`torchrun -m xlmr_fast finetune`: two CPU ranks (gloo) with --batch-size 8 (the global batch,
4 per rank) give the model of one process with batch 8. Without dropout the runs differ only in
the float order of the gradient sums. NER is the test case: its loss is a mean over labelled
tokens, whose count differs between the ranks' slices, so each rank weights its mean by its
share (an unweighted DDP average would differ by percents)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finetune(model, data, out, nproc, *extra):
    args = ["finetune", "ner", "--model", str(model), "--train", str(data / "train-en.tsv"),
            "--eval", str(data / "dev-en.tsv"), str(data / "dev-de.tsv"),
            "--dev", str(data / "dev-en.tsv"), "--out", str(out), "--epochs", "2",
            "--batch-size", "8", "--lr", "1e-3", "--max-train-examples", "27",
            "--max-eval-examples", "21", "--device", "cpu", *extra]
    cmd = [sys.executable, "-m", "xlmr_fast", *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "xlmr_fast",
         *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads((out / "results.json").read_text()), r.stdout


def _same_models(dir_a, dir_b):
    a = load_file(dir_a / "seed0" / "model.safetensors")
    b = load_file(dir_b / "seed0" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5, msg=k)


@pytest.fixture(scope="module")
def one_process(no_dropout_model, shared_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "one"
    return out, _finetune(no_dropout_model, shared_data_dir / "panx", out, 1)[0]


def test_two_ranks_train_the_one_process_model(no_dropout_model, shared_data, one_process,
                                               tmp_path):
    data = Path(shared_data) / "panx"
    one_dir, one = one_process
    two, printed = _finetune(no_dropout_model, data, tmp_path / "two", 2)
    assert (one["ranks"], two["ranks"]) == (1, 2)
    # 27 examples in batches of 8: 4 per epoch, the last of 3 (split 2 + 1), 2 epochs
    assert one["seeds"][0]["steps"] == two["seeds"][0]["steps"] == 8
    assert printed.count("| model |") == 1  # only rank 0 prints the table
    _same_models(one_dir, tmp_path / "two")
    # dev selection and the final scores: evaluation batches are split over the ranks and the
    # outputs gathered, so both runs score the same predictions
    assert [h["dev"] for h in two["seeds"][0]["history"]] == pytest.approx(
        [h["dev"] for h in one["seeds"][0]["history"]], abs=1e-6)
    assert two["mean"] == pytest.approx(one["mean"], abs=1e-6)
    assert not (tmp_path / "two" / "seed0" / "rank1").exists()


@pytest.mark.parametrize("nproc", [1, 2])
def test_gradient_accumulation_gives_the_same_update(no_dropout_model, shared_data, one_process,
                                                     tmp_path, nproc):
    """--grad-accum 2: each batch in two micro-batches (per rank), each part's mean loss
    weighted by its share of the batch's labelled tokens: the model of one step per batch.
    The last batch of 3 examples on 2 ranks makes one micro-batch (too few for two)."""
    one_dir, one = one_process
    acc, _ = _finetune(no_dropout_model, Path(shared_data) / "panx", tmp_path / "acc", nproc,
                       "--grad-accum", "2")
    assert acc["seeds"][0]["steps"] == one["seeds"][0]["steps"] == 8
    _same_models(one_dir, tmp_path / "acc")
    assert acc["mean"] == pytest.approx(one["mean"], abs=1e-6)


def test_ranks_weight_their_slice_by_its_labelled_tokens():
    """The weight that makes the DDP average the single-process mean: each rank's share of the
    batch's labelled tokens (NER), or of its features (XNLI, QA)."""
    from xlmr_fast.finetune import run as F
    from xlmr_fast.finetune.tasks import IGNORE_INDEX as X
    task = F.Task.__new__(F.Task)
    task.name = "ner"
    feats = [{"labels": [X, 1, 2, X]}, {"labels": [X, 3, X, X, X]}, {"labels": [X, 1, 1, 1, X]}]
    assert task.loss_count(feats) == 6 and task.loss_count(feats[1:2]) == 1
    task.name = "xnli"
    assert task.loss_count(feats) == 3


def test_batch_smaller_than_the_ranks_is_refused(monkeypatch, tmp_path, capsys):
    from xlmr_fast import cli
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert cli.main(["finetune", "xnli", "--model", str(tmp_path), "--train", "a.tsv",
                     "--eval", "b.tsv", "--batch-size", "2"]) == 1
    assert "--batch-size 2 is the global batch, split into --grad-accum 1 micro-batches over 4 " \
        "rank(s): it must be at least 4" in capsys.readouterr().err





def test_ranks_that_see_different_outs_stop_with_one_error(no_dropout_model, shared_data,
                                                           one_process, tmp_path, rank1_elsewhere):
    """--out on each node's own disk: rank 0 finds seed 0 done (result.json) and would reuse
    it, rank 1 finds nothing and would train, waiting in DDP's first broadcast for a rank that
    never comes: gloo's "Connection closed by peer" once rank 0 exits, a hang under NCCL, and
    with more seeds rank 0's seed 1 in the collectives of rank 1's seed 0. Both now stop with
    the same error before any collective of training."""
    import shutil
    data = Path(shared_data) / "panx"
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node1.mkdir()
    shutil.copytree(one_process[0], node0 / "ft")
    args = ["finetune", "ner", "--model", str(no_dropout_model), "--train",
            str(data / "train-en.tsv"), "--eval", str(data / "dev-en.tsv"),
            str(data / "dev-de.tsv"), "--dev", str(data / "dev-en.tsv"), "--out", "ft",
            "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--max-train-examples", "27",
            "--max-eval-examples", "21", "--device", "cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(rank1_elsewhere),
           str(node1), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=node0, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    msg = ("the ranks disagree on the files of seed 0 in ft/seed0 (rank 0: ['result.json', "
           "'model.safetensors']; rank 1: []); every rank must see the same --out")
    assert r.stderr.count(msg) == 2, r.stdout[-3000:] + r.stderr[-5000:]
    assert not (node1 / "ft" / "seed0").exists()  # rank 1 trained nothing


def test_ranks_that_read_different_files_stop_with_one_error(no_dropout_model, shared_data,
                                                             tmp_path, rank1_elsewhere):
    """Each node reads its own copy of --train: node 1's has one tag changed. Its rank would
    train on other labels (and, with other lengths, other batches) in the same DDP steps; both
    ranks now stop before training."""
    data = Path(shared_data) / "panx"
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir()
    node1.mkdir()
    text = (data / "train-en.tsv").read_text(encoding="utf-8")
    (node0 / "train-en.tsv").write_text(text, encoding="utf-8")
    (node1 / "train-en.tsv").write_text(text.replace("Saunders\tI-ORG", "Saunders\tO", 1),
                                        encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(rank1_elsewhere),
           str(node1), "finetune", "ner", "--model", str(no_dropout_model), "--train",
           "train-en.tsv", "--eval", str(data / "dev-de.tsv"), "--out", str(tmp_path / "ft"),
           "--batch-size", "8", "--max-train-examples", "27", "--max-eval-examples", "21",
           "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=node0, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    msg = "the ranks disagree on the examples of --train / --dev / --eval (rank 0: '27 training, " \
        "0 dev, 21 evaluation examples, digest "
    assert r.stderr.count(msg) == 2, r.stdout[-3000:] + r.stderr[-5000:]
    assert "every node needs the same files" in r.stderr
    assert not (tmp_path / "ft" / "seed0").exists()

"""Two CPU processes (gloo) under torchrun give the losses of one process with the same global
batch: 2 ranks x micro-batch 4 x accumulation 1 == 1 rank x 4 x accumulation 2 (same rows,
same masks: see xlmr_fast/train/pretrain.py), for DDP and FSDP2."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from xlmr_fast.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(prepared, out, nproc, *over, env_extra=None):
    shards, tok = prepared
    args = ["--data", str(shards), "--tokenizer", str(tok), "--out", str(out),
            "data.seq_len=64", "data.micro_batch=4", "data.heldout_fraction=0.01",
            "model.hidden_dropout=0.0", "model.attention_dropout=0.0", "optim.max_steps=4",
            "optim.warmup_steps=1", "optim.lr=3e-3", "run.log_every=1", "run.eval_every=2",
            "run.eval_batches=2", "run.save_every=0", "run.progress=false",
            "run.tensorboard=false", "run.peak_tflops=1", *over]
    if nproc == 1:
        cmd = [sys.executable, "-m", "xlmr_fast", "pretrain", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "xlmr_fast", "pretrain", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    r = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    recs = read_metrics(out)
    train = {x["step"]: x for x in recs if x["kind"] == "train"}
    evals = {x["step"]: x for x in recs if x["kind"] == "eval"}
    return train, evals


@pytest.mark.parametrize("lce", ["default", "fused"])
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_equal_one_rank(prepared, tmp_path, mode, lce):
    # lce="fused": the LM-head loss on the C++ path's CPU twin, so the tied token table's
    # decoder gradient goes straight into .grad (accumulate_weight_grad) and the lookup adds
    # its rows there too: DDP's hooks and FSDP2's reduce-scatter must still see the whole
    # gradient.
    env = None
    if lce == "fused":
        from xlmr_fast import _ext
        if not _ext.has_kernel("linear_cross_entropy_fwd", "CPU"):
            pytest.skip("extension not built")
        env = {"XLMR_FAST_LCE_BACKEND": "cuda"}
    one_t, one_e = _run(prepared, tmp_path / "one", 1, "optim.grad_accum=2", env_extra=env)
    two_t, two_e = _run(prepared, tmp_path / "two", 2, "optim.grad_accum=1",
                        f"run.distributed={mode}", env_extra=env)
    assert sorted(one_t) == sorted(two_t) == [1, 2, 3, 4]
    for s in one_t:
        a, b = one_t[s], two_t[s]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5), s
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), s
        assert b["loss_lang"] == pytest.approx(a["loss_lang"], rel=1e-5, abs=1e-5), s
        # tokens_per_s is the sum over the ranks, so MFU divides by W peaks: one rank's MFU
        # per token/s is twice two ranks' (catches the world size left out of the denominator)
        assert b["mfu"] / b["tokens_per_s"] == pytest.approx(a["mfu"] / a["tokens_per_s"] / 2,
                                                             rel=1e-9), s
    assert sorted(one_e) == sorted(two_e) == [2, 4]
    # evaluation rows are split over the ranks and the sums all-reduced: same targets
    for s in one_e:
        assert two_e[s]["targets"] == one_e[s]["targets"]
    # the exported model is whole (FSDP gathers the shards)
    assert (tmp_path / "two" / "final" / "model.safetensors").stat().st_size == \
        (tmp_path / "one" / "final" / "model.safetensors").stat().st_size


def test_fsdp_evaluation_with_batches_not_divisible_by_ranks(prepared, tmp_path):
    # 3 evaluation batches on 2 ranks: rank 0 evaluates two, rank 1 one. Under FSDP every
    # forward all-gathers the parameters, so rank 1 runs a filler forward (its loss dropped);
    # without it rank 0's second forward waited for a collective rank 1 never joined (a hang,
    # here the subprocess timeout). Same evaluation as one rank.
    _, one_e = _run(prepared, tmp_path / "one", 1, "optim.grad_accum=2", "run.eval_batches=3")
    _, two_e = _run(prepared, tmp_path / "two", 2, "optim.grad_accum=1", "run.eval_batches=3",
                    "run.distributed=fsdp")
    assert sorted(one_e) == sorted(two_e) == [2, 4]
    _, two_batches = _run(prepared, tmp_path / "two_batches", 1, "optim.grad_accum=2")
    assert one_e[2]["targets"] > two_batches[2]["targets"]  # a third batch was evaluated
    for s in one_e:
        assert two_e[s]["targets"] == one_e[s]["targets"]
        assert two_e[s]["loss"] == pytest.approx(one_e[s]["loss"], rel=1e-5, abs=1e-5)


def test_local_rank_maps_onto_the_visible_gpus(monkeypatch):
    # LOCAL_RANK counts a node's processes; with one visible GPU per process (SLURM
    # --gpus-per-task=1) every rank's GPU is cuda:0, and "cuda:{LOCAL_RANK}" was an invalid
    # ordinal. Stand-ins for the CUDA calls.
    import torch

    from xlmr_fast.train import distributed as D
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for count, local_rank, want in ((1, 5, 0), (8, 5, 5), (4, 3, 3)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda c=count: c)
        assert D._pick_device("cuda", local_rank) == torch.device("cuda", want)
    assert chosen == [torch.device("cuda", w) for w in (0, 5, 3)]
    assert D._pick_device("cpu", 3) == torch.device("cpu")
    # more ranks than visible GPUs: a clear error, not two ranks on one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(ValueError, match="LOCAL_RANK=6 but this process sees 4 GPUs"):
        D._pick_device("cuda", 6)


def test_ranks_agree_on_a_time_limit_stop(prepared, tmp_path):
    # Each rank reads its own clock; the stop requests ride on the step's all-reduce, so both
    # ranks leave the loop after the same step (a rank leaving alone would hang the other in
    # its next collective), then save, evaluate and export together.
    train, _ = _run(prepared, tmp_path / "two", 2, "optim.grad_accum=1", "optim.max_steps=500",
                    "run.max_time_minutes=0.0001", "run.distributed=ddp")
    last = max(train)
    assert 1 <= last < 500
    assert (tmp_path / "two" / "final" / "model.safetensors").is_file()


def test_every_rank_takes_the_same_stop_from_the_same_sums():
    # A signal anywhere wins over a time limit elsewhere: a rank that hit its own time limit
    # while another got SIGTERM must also save and return (not evaluate and export), or the
    # ranks wait in different collectives.
    from xlmr_fast.train.pretrain import Trainer
    for own, sums, want in (("time limit", (1, 1), "another rank"), ("SIGTERM", (1, 0), "SIGTERM"),
                            (None, (0, 1), "time limit"), ("time limit", (0, 1), "time limit"),
                            (None, (1, 0), "another rank"), (None, (0, 0), None)):
        t = Trainer.__new__(Trainer)
        t._stop_request, t._stop = own, None
        t._agree(*sums)
        assert t._stop == want, (own, sums)


def test_launch_mistakes_are_one_line_errors(monkeypatch, capsys):
    """WORLD_SIZE without MASTER_ADDR (a rank started by hand): a ValueError, which the CLI
    prints as one line naming the fix (a RuntimeError traceback before)."""
    from xlmr_fast import cli
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert cli.main(["finetune", "xnli", "--model", "m", "--train", "a.tsv", "--eval", "b.tsv",
                     "--device", "cpu"]) == 1
    assert "WORLD_SIZE=2 but no MASTER_ADDR (ddp): launch with torchrun" in \
        capsys.readouterr().err



def test_a_resume_where_ranks_see_different_checkpoints_is_one_error(prepared, tmp_path,
                                                                     rank1_elsewhere):
    """run.out_dir on each node's own disk: rank 0 writes the checkpoints, so on a resume rank 0
    finds step 2 and rank 1 (whose directory has the run's config.yaml but no checkpoint)
    nothing. Rank 1 used to start from scratch beside a resumed rank 0 (another schedule, data
    position and step count: the ranks trained apart, then waited in different collectives).
    Both now stop with the same error before training."""
    import shutil
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir()
    _run(prepared, node0 / "run", 1, "optim.max_steps=2", "run.save_every=2")
    (node1 / "run").mkdir(parents=True)
    shutil.copy(node0 / "run" / "config.yaml", node1 / "run" / "config.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(rank1_elsewhere),
           str(node1), "pretrain", "--resume", "--out", "run", "optim.max_steps=4",
           "run.distributed=ddp"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=node0, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode != 0
    msg = "the ranks disagree on the newest checkpoint in "
    assert r.stderr.count(msg) == 2, r.stdout[-3000:] + r.stderr[-5000:]
    assert "(rank 0: 'step_00000002.pt'; rank 1: None); every rank must see the same " \
        "run.out_dir" in r.stderr
    saved = sorted(p.name for p in (node0 / "run" / "checkpoints").glob("step_*.pt"))
    assert saved == ["step_00000002.pt"]  # rank 0 did not train on either


def test_check_same_names_what_each_group_of_ranks_saw(monkeypatch):
    import torch
    from xlmr_fast.train import distributed as D
    dist = D.DistInfo("ddp", 0, 8, 0, torch.device("cpu"))
    seen = ["a", "b", "b", "b", "a", "b", None, "a"]
    monkeypatch.setattr(D, "gather_objects", lambda obj, d: seen)
    with pytest.raises(ValueError) as e:
        D.check_same("a", "X", dist, "; hint")
    assert str(e.value) == ("the ranks disagree on X (ranks 0, 4, 7: 'a'; ranks 1-3, 5: 'b'; "
                            "rank 6: None); hint")
    monkeypatch.setattr(D, "gather_objects", lambda obj, d: [[1], [1]])
    D.check_same([1], "X", dist)  # all alike: nothing
    D.check_same("anything", "X", None)  # one process: no collective


def test_ranks_with_different_data_stop_with_one_error(prepared, tmp_path, rank1_elsewhere):
    """Each node reads its own copy of the shards: node 1's lacks a language (a stale copy).
    Its rank would sample other blocks and all-reduce per-language sums of another length;
    both ranks now stop before training, naming what each has."""
    import json
    import shutil
    shards, tok = prepared
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    shutil.copytree(shards, node0 / "shards")
    shutil.copytree(shards, node1 / "shards")
    meta = json.loads((node1 / "shards" / "meta.json").read_text())
    del meta["languages"]["sw"]
    (node1 / "shards" / "meta.json").write_text(json.dumps(meta))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(rank1_elsewhere),
           str(node1), "pretrain", "--data", "shards", "--tokenizer", str(tok), "--out",
           str(tmp_path / "run"), "data.seq_len=64", "data.micro_batch=4",
           "optim.max_steps=2", "optim.warmup_steps=1", "run.distributed=ddp",
           "run.progress=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=node0, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode != 0
    assert r.stderr.count("the ranks disagree on the data in ") == 2, \
        r.stdout[-3000:] + r.stderr[-5000:]
    assert "node1/shards (rank 0: '4 languages, " in r.stderr  # each names its own directory
    assert "rank 1: '3 languages, " in r.stderr
    assert "every node needs the same preprocessed corpus" in r.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_data_summary_ignores_timings_and_sees_any_shard_change():
    from xlmr_fast.data.shards import data_summary
    meta = {"tokenizer": {"vocab_size": 500, "sha256": "aa"}, "throughput": {"seconds": 1.5},
            "languages": {"de": {"sha256": "11", "tokens": 1000, "documents": 3, "seconds": 0.5},
                          "en": {"sha256": "22", "tokens": 2000, "documents": 4, "seconds": 0.7}}}
    s = data_summary(meta)
    assert s.startswith("2 languages, 3,000 tokens, digest ")
    again = json_copy(meta)
    again["throughput"]["seconds"] = 9.0
    again["languages"]["de"]["seconds"] = 3.0  # another machine's preprocessing of the same
    assert data_summary(again) == s
    for path, value in ((("languages", "en", "sha256"), "23"),
                        (("tokenizer", "sha256"), "ab"),
                        (("languages", "de", "documents"), 2)):
        other = json_copy(meta)
        d = other
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
        assert data_summary(other) != s, path


def json_copy(x):
    import json
    return json.loads(json.dumps(x))

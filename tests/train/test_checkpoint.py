"""CheckpointManager: layout, atomic save under a crash, pruning, latest(), load errors, the
weights_only contract, and rng_state/set_rng_state round trips."""
from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import pytest
import torch

from xlmr_fast.train import checkpoint as C
from xlmr_fast.train.checkpoint import (FORMAT, CheckpointError, CheckpointManager, rng_state,
                                        set_rng_state)


def small_training_state():
    """What the trainer saves: model, fused-style AdamW, LambdaLR, loader state, RNG, config."""
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    for _ in range(3):
        loss = model(torch.randn(4, 7)).square().mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(),
             "data": {"version": 1, "step": 3, "cursors": {"en": 12, "sw": 4}},
             "rng": rng_state(), "config": {"lr": 1e-3, "betas": (0.9, 0.98), "preset": "tiny",
                                            "compile": False, "peak_flops": None}}
    return model, opt, sched, state


def assert_tree_equal(a, b, where="state"):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_tree_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def visible_files(d):
    return sorted(p.name for p in d.iterdir())


# ---------------------------------------------------------------------------- save / load
def test_round_trip_layout_and_weights_only(tmp_path):
    model, opt, sched, state = small_training_state()
    mgr = CheckpointManager(tmp_path, keep_last=3)
    path = mgr.save(5, state, tag="periodic")
    assert path == tmp_path / "checkpoints" / "step_00000005.pt"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000005.pt"
    assert visible_files(tmp_path / "checkpoints") == ["latest", "step_00000005.pt"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    # The file loads with the strict unpickler directly, not only through the manager.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["step"] == 5 and raw["tag"] == "periodic"

    ckpt = mgr.load()
    assert ckpt["format"] == FORMAT and ckpt["step"] == 5 and ckpt["tag"] == "periodic"
    for k in state:
        assert_tree_equal(state[k], ckpt[k], k)

    # ... and restores a fresh model/optimizer/scheduler to the same state.
    model2, opt2, sched2, _ = small_training_state()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    sched2.load_state_dict(ckpt["scheduler"])
    assert_tree_equal(model.state_dict(), model2.state_dict())
    assert_tree_equal(opt.state_dict(), opt2.state_dict())
    assert sched2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"] == 3


def test_step_key_in_state_is_allowed_when_it_agrees(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(7, {"step": 7, "x": torch.arange(3)})
    assert mgr.load()["step"] == 7
    with pytest.raises(ValueError, match="reserved"):
        mgr.save(8, {"step": 7})
    with pytest.raises(ValueError, match="reserved"):
        mgr.save(8, {"format": "mine"})


def test_same_step_twice_replaces(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(3, {"x": torch.tensor([1.0])})
    mgr.save(3, {"x": torch.tensor([2.0])})
    assert [p.name for p in mgr.list()] == ["step_00000003.pt"]
    assert mgr.load()["x"].item() == 2.0


def test_crash_during_write_keeps_previous(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    good = mgr.save(1, {"w": torch.randn(64)})

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial zip bytes")  # some bytes reach the disk, then we die
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(C.torch, "save", dying_save)
    with pytest.raises(OSError, match="simulated"):
        mgr.save(2, {"w": torch.randn(64)})
    monkeypatch.undo()

    # No complete-looking step file, no temporary left behind, pointer unchanged.
    assert visible_files(tmp_path / "checkpoints") == ["latest", "step_00000001.pt"]
    assert mgr.latest() == good
    assert mgr.load()["step"] == 1


def test_crash_before_pointer_update(tmp_path, monkeypatch):
    """Killed between the checkpoint rename and the pointer rename: both files are complete and
    the pointer still names the previous one (latest() trusts it)."""
    mgr = CheckpointManager(tmp_path, keep_last=2)
    first = mgr.save(1, {"w": torch.randn(4)})
    from xlmr_fast import _io
    real_replace = _io.os.replace

    def replace(src, dst):
        if str(dst).endswith("latest"):
            raise KeyboardInterrupt  # SIGINT arriving at the worst moment
        return real_replace(src, dst)

    monkeypatch.setattr(_io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(2, {"w": torch.randn(4)})
    monkeypatch.undo()
    assert visible_files(tmp_path / "checkpoints") == ["latest", "step_00000001.pt",
                                                       "step_00000002.pt"]
    assert mgr.latest() == first
    assert mgr.load(mgr.path_for(2))["step"] == 2


def test_keep_last_pruning(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for s in range(1, 6):
        mgr.save(s * 100, {"s": s})
    assert [p.name for p in mgr.list()] == ["step_00000400.pt", "step_00000500.pt"]
    assert mgr.load()["s"] == 5

    # An older step written after newer ones (resumed from an earlier checkpoint) is kept and
    # becomes latest; it never prunes itself.
    mgr.save(150, {"s": 1.5})
    assert mgr.latest() == mgr.path_for(150)
    assert mgr.path_for(150).exists()
    assert mgr.load()["s"] == 1.5

    keep_all = CheckpointManager(tmp_path / "all", keep_last=None)
    for s in range(4):
        keep_all.save(s, {"s": s})
    assert len(keep_all.list()) == 4


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_keep_last_validation(tmp_path, bad):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=bad)


def test_disabled_manager_writes_nothing_but_reads(tmp_path):
    off = CheckpointManager(tmp_path, enabled=False)
    assert off.save(1, {"x": 1}) is None
    assert not (tmp_path / "checkpoints").exists()
    assert off.latest() is None and off.list() == []
    CheckpointManager(tmp_path).save(4, {"x": 4})
    assert off.load()["x"] == 4  # non-zero ranks still resume from rank 0's files


def test_latest_fallbacks_and_tmp_files_ignored(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=None)
    assert mgr.latest() is None
    for s in (3, 11, 7):
        mgr.save(s, {"s": s})
    d = tmp_path / "checkpoints"
    assert mgr.latest() == mgr.path_for(7)  # the pointer, not the highest number
    # leftovers of a killed save are never candidates
    (d / ".step_00000099.pt.abc.tmp").write_bytes(b"junk")
    (d / "step_00000098.pt.tmp").write_bytes(b"junk")
    assert [p.name for p in mgr.list()] == ["step_00000003.pt", "step_00000007.pt",
                                            "step_00000011.pt"]
    (d / "latest").write_text("step_00000042.pt\n")  # names a file that is gone
    assert mgr.latest() == mgr.path_for(11)
    (d / "latest").write_text("../../etc/passwd\n")  # not a step name
    assert mgr.latest() == mgr.path_for(11)
    (d / "latest").unlink()
    assert mgr.latest() == mgr.path_for(11)


def test_truncated_checkpoint_is_an_error_naming_the_file(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"w": torch.randn(1000)})
    p2 = mgr.save(2, {"w": torch.randn(1000)})
    data = p2.read_bytes()
    p2.write_bytes(data[: len(data) // 2])
    assert mgr.latest() == p2  # trusted pointer: the corruption is reported, not skipped
    with pytest.raises(CheckpointError, match="step_00000002.pt"):
        mgr.load()
    assert mgr.load(mgr.path_for(1))["step"] == 1


_RSS_PROBE = r"""
import sys, torch
from xlmr_fast.train.checkpoint import CheckpointManager

def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

mgr = CheckpointManager(sys.argv[1])
before = anon_kb()
state = mgr.load(mmap=sys.argv[2] == "1")
total = float(sum(t.double().sum() for t in state["w"]))  # touch every page
print(anon_kb() - before, total)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_mmap_load_shares_the_page_cache(tmp_path):
    """load(mmap=True), used for resumes onto GPUs: the same values, and the 64 MB of tensors
    are pages of the file (shared by a node's ranks), not private copies in anonymous memory."""
    import subprocess
    import sys
    mgr = CheckpointManager(tmp_path)
    w = [torch.randn(4 << 20) for _ in range(4)]  # 4 x 16 MB
    mgr.save(5, {"w": w})
    got = mgr.load(mmap=True)
    assert_tree_equal(got["w"], w)
    grown = {}
    for mm in ("0", "1"):
        r = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(tmp_path), mm],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        kb, total = r.stdout.split()
        assert float(total) == pytest.approx(float(sum(t.double().sum() for t in w)))
        grown[mm] = int(kb)
    assert grown["0"] > 48 << 10, grown  # read: at least 48 of the 64 MB private
    assert grown["1"] < 16 << 10, grown  # mapped: the tensors are file pages


def test_load_errors(tmp_path):
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        mgr.load()
    with pytest.raises(CheckpointError, match="does not exist"):
        mgr.load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="directory"):
        mgr.load(tmp_path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt is not an xlmr_fast checkpoint"):
        mgr.load(foreign)
    old = tmp_path / "old.pt"
    torch.save({"format": "xlmr_fast-ckpt-v0"}, old)
    with pytest.raises(CheckpointError, match="old.pt has format"):
        mgr.load(old)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="garbage.pt cannot be read"):
        mgr.load(garbage)


@dataclasses.dataclass
class _Cfg:
    lr: float = 1e-3


@pytest.mark.parametrize("bad, where", [
    ({"data": {"cursor": np.int64(3)}}, r"\['data'\]\['cursor'\].*numpy"),
    ({"rng": [np.zeros(3)]}, r"\['rng'\]\[0\].*numpy"),
    ({"config": _Cfg()}, r"\['config'\].*asdict"),
    ({"x": {1, 2}}, r"\['x'\].*set"),
])
def test_save_refuses_what_weights_only_cannot_load(tmp_path, bad, where):
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match=where):
        mgr.save(1, bad)
    assert mgr.list() == []


# ---------------------------------------------------------------------------- RNG
def draw():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.normal(size=1).tolist(), torch.rand(4), torch.randn(3))


def test_rng_round_trip_through_a_checkpoint(tmp_path):
    random.seed(123)
    np.random.seed(456)
    torch.manual_seed(789)
    draw()
    # Leave a cached Gaussian in both Python and numpy (gauss_next / has_gauss) so those parts
    # of the state matter.
    random.gauss(0, 1)
    np.random.standard_normal()
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"rng": rng_state()})
    expected = draw()
    draw()  # move every generator on
    set_rng_state(mgr.load()["rng"])
    got = draw()
    for e, g in zip(expected, got):
        if isinstance(e, torch.Tensor):
            assert torch.equal(e, g)
        else:
            assert e == g


def test_rng_state_types_are_plain():
    st = rng_state()
    assert isinstance(st["python"]["state"], list) and len(st["python"]["state"]) == 625
    assert st["numpy"]["keys"].dtype == torch.int64 and st["numpy"]["keys"].numel() == 624
    assert int(st["numpy"]["keys"].max()) < 2**32 and int(st["numpy"]["keys"].min()) >= 0
    assert st["torch"].dtype == torch.uint8
    assert ("cuda" in st) == torch.cuda.is_available()
    C._check_loadable(st, "")  # nothing weights_only would refuse


def test_set_rng_state_rejects_non_dict():
    with pytest.raises(TypeError, match="rng_state"):
        set_rng_state([1, 2, 3])


@pytest.mark.gpu
def test_cuda_rng_round_trip(tmp_path):
    torch.cuda.manual_seed_all(5)
    torch.rand(8, device="cuda")
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"rng": rng_state()})
    expected = torch.rand(8, device="cuda")
    torch.rand(8, device="cuda")
    set_rng_state(mgr.load()["rng"])
    assert torch.equal(torch.rand(8, device="cuda"), expected)

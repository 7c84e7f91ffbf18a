"""What makes fine-tuning resumable (xlmr_fast/finetune/run.py uses it):

* a finished model writes result.json last (`done_before` reuses it when a rerun has the same
  result-setting arguments, `fingerprint`); the default --out is named by those arguments;
* after every epoch, and where a SIGTERM / SIGINT stopped a step, the training state goes to
  checkpoint.pt (`save_epoch_checkpoint` / `load_epoch_checkpoint`; the random generators of
  every rank with it when stopped mid-epoch);
* stopping on a signal (`stop_agreed`: ranks stop after one step; the handlers are
  xlmr_fast/train/signals.py, shared with pretraining);
* under torchrun every rank must find the same files there (`check_ranks_see_the_same`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch

from .._io import atomic_write
from ..train import distributed as D
from ..train.distributed import DistInfo

log = logging.getLogger("xlmr_fast.finetune.run")  # the messages belong to the run's log

RESULT_FILE = "result.json"
CHECKPOINT_FILE = "checkpoint.pt"  # the model's training state after its last finished epoch


def save_epoch_checkpoint(path: Path, args, seed: int, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"args": fingerprint(args), "seed": seed, **state}
    atomic_write(path, lambda f: torch.save(state, f))


def load_epoch_checkpoint(path: Path, args, seed: int, dev) -> dict:
    try:
        st = torch.load(path, map_location=dev, weights_only=True)
    except Exception as e:  # truncated / foreign file: name it
        raise ValueError(f"{path}: not a readable fine-tuning checkpoint ({type(e).__name__}: "
                         f"{e}); delete it to restart this model") from e
    if st.get("args") != fingerprint(args) or st.get("seed") != seed:
        raise ValueError(f"{path} is a checkpoint of other arguments or another seed; use "
                         f"another --out, or delete it to restart this model")
    return st


# FinetuneArgs fields that do not change a seed's model or scores: a rerun may differ in them
# and still reuse the seeds done before (more --seeds, another --device, ...).
NOT_IN_RESULT = ("seeds", "out", "device", "eval_batch_size", "save_model", "checkpoints")


def fingerprint(args) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(args).items() if k not in NOT_IN_RESULT}


def default_out(args) -> Path:
    """runs/finetune/<task>-<8 hex digits of the arguments that set the results>: the same on
    every rank and for a rerun (which then resumes), another for other arguments."""
    key = json.dumps(fingerprint(args), sort_keys=True)
    return Path("runs") / "finetune" / f"{args.task}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def check_ranks_see_the_same(args, save_dir: Path, name: str, dist: DistInfo | None) -> None:
    """Every rank decides from its own view of save_dir whether the model is done (reused),
    half-trained (continued) or new: ranks that decided differently would wait for each other
    in different collectives until the timeout (--out on each node's local disk)."""
    names = [RESULT_FILE, "model.safetensors"] + ([CHECKPOINT_FILE] if args.checkpoints else [])
    D.check_same([n for n in names if (save_dir / n).is_file()], f"the files of {name} in "
                 f"{save_dir}", dist, "; every rank must see the same --out (a directory the "
                 "nodes share)")


def done_before(args, save_dir: Path, name: str):
    """(info, res) of a model this --out already holds (its result.json, written last), None if
    not done; results of other arguments are an error, not a silent mix."""
    f = save_dir / RESULT_FILE
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: unreadable ({e}); delete it to redo {name}") from e
    mine = fingerprint(args)
    if rec.get("args") != mine:
        diff = sorted(k for k in mine.keys() | rec.get("args", {}).keys()
                      if mine.get(k) != rec.get("args", {}).get(k))
        raise ValueError(f"{f} holds {name} of other arguments (differing: {', '.join(diff)}); "
                         f"use another --out, or delete it to redo")
    if args.save_model and not (save_dir / "model.safetensors").is_file():
        return None  # done by a run that did not save the model, which this one wants: redo
    return rec["info"], {k: tuple(v) for k, v in rec["res"].items()}


class FinetuneStopped(Exception):
    """SIGTERM / SIGINT during training: the model's state was saved (when checkpoints are on)
    where the step left off; the same command continues it."""

    def __init__(self, signal_name: str, seed: int, step: int, ckpt: Path | None):
        self.signal_name = signal_name
        super().__init__(
            f"{signal_name} received: seed {seed} stopped after step {step}; "
            + (f"its state is in {ckpt}: run the same command again to continue" if ckpt
               else "not saved (--no-checkpoints): the same command starts this model again"))


STOP_CHECK_EVERY = 10  # steps between the ranks' agreement on a stop (one small all-reduce)


def stop_agreed(signals: dict, step: int, dist: DistInfo | None, dev) -> bool:
    """Whether to stop after this step: this process's flag, or under torchrun any rank's
    (summed every STOP_CHECK_EVERY steps, so every rank stops after the same step)."""
    if dist is None or not dist.active:
        return signals["name"] is not None
    if step % STOP_CHECK_EVERY:
        return False
    t = torch.tensor([float(signals["name"] is not None)], device=dev)
    return bool(D.all_reduce_sum(t, dist).item() > 0)


def get_rng(dev) -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}


def set_rng(state: dict, dev) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if dev.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), dev)

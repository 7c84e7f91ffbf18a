"""Atomic, pruned training checkpoints and the RNG state that makes a resume exact.

    ckpts = CheckpointManager(run_dir, keep_last=3, enabled=(rank == 0))
    ckpts.save(step, {"model": ..., "optimizer": ..., "scheduler": ..., "data": loader.state_dict(),
                      "rng": rng_state(), "config": asdict(cfg)})
    ckpt = ckpts.load()              # the latest; ckpt["step"], ckpt["model"], ...
    set_rng_state(ckpt["rng"])

On disk (DESIGN.md "Files on disk"):

    run_dir/checkpoints/step_00001200.pt    one file per saved step (torch.save zip format)
    run_dir/checkpoints/latest              text: the file name of the newest complete checkpoint

A save writes a hidden temporary file in the same directory, fsyncs it, renames it over the
final name (os.replace is atomic on POSIX within one file system) and fsyncs the directory; only
then is `latest` rewritten (also tmp + rename) and old files pruned. A crash at any point
therefore leaves either the previous checkpoint set or the new one, never a half-written file
under a step name, and `latest` never points at a file that is not complete.

The saved dict is the caller's state plus three keys the manager owns: "format"
("xlmr_fast-ckpt-v1"), "step" and "tag" (free text such as "interrupted" or "last_good"; None
by default). Everything in it must load with torch.load(weights_only=True): tensors, dicts,
lists, tuples, ints, floats, str, bool, None (plus torch dtypes/devices/sizes). save() checks
this up front and names the offending key, so a numpy array or a dataclass fails at the first
save, not at resume time weeks later. rng_state() returns only such types.
"""
from __future__ import annotations

import logging
import random
import re
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_write

log = logging.getLogger(__name__)

FORMAT = "xlmr_fast-ckpt-v1"
POINTER = "latest"
_STEP_RE = re.compile(r"^step_(\d{8,})\.pt$")
_RESERVED = ("format", "step", "tag")
# What torch.load(weights_only=True) reconstructs (besides tensors): checked in save().
_LEAF_TYPES = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device,
               torch.Size)


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint that is missing, truncated, not ours, or cannot be written as asked.

    Also a ValueError, like xlmr_fast.model.convert.CheckpointError, so the CLI's error handler
    (which reports ValueErrors as one line) covers both."""


def _check_loadable(obj, where: str) -> None:
    """Raise CheckpointError naming the first value torch.load(weights_only=True) would refuse."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _LEAF_TYPES):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None), tuple)):
                raise CheckpointError(f"checkpoint state {where}: key {k!r} of type "
                                      f"{type(k).__name__} cannot be loaded with weights_only=True")
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_loadable(v, f"{where}[{i}]")
        return
    hint = (" (convert numpy values with .tolist(), .item() or torch.from_numpy)"
            if type(obj).__module__.startswith("numpy") else
            " (store plain dicts, e.g. dataclasses.asdict(...))")
    raise CheckpointError(f"checkpoint state {where} is a {type(obj).__module__}."
                          f"{type(obj).__qualname__}, which torch.load(weights_only=True) cannot "
                          f"load{hint}")


class CheckpointManager:
    """Save / find / load checkpoints of one run directory (see the module docstring).

    run_dir    the run directory; checkpoints go to run_dir/checkpoints/
    keep_last  how many step files to keep after each save (>= 1), or None to keep all
    enabled    False on non-zero ranks of a distributed run: save() does nothing and returns
               None (latest/load/list still read the directory, for resuming)
    """

    def __init__(self, run_dir, keep_last: int | None = 3, *, enabled: bool = True):
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)
                                      or keep_last < 1):
            raise ValueError(f"CheckpointManager: keep_last must be an int >= 1 or None (keep "
                             f"all), got {keep_last!r}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.keep_last = keep_last
        self.enabled = bool(enabled)

    # ------------------------------------------------------------------ names
    def path_for(self, step: int) -> Path:
        return self.dir / f"step_{step:08d}.pt"

    @staticmethod
    def step_of(path) -> int | None:
        """The step encoded in a checkpoint file name, or None if it is not one."""
        m = _STEP_RE.match(Path(path).name)
        return int(m.group(1)) if m else None

    def list(self) -> list[Path]:
        """Complete step files, oldest step first (temporary files are hidden and not listed)."""
        if not self.dir.is_dir():
            return []
        found = [(s, p) for p in self.dir.iterdir()
                 if (s := self.step_of(p)) is not None and p.is_file()]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the `latest` pointer when it names an existing step
        file in this directory, else the highest step file, else None.

        The pointer is trusted (it is only written after its file is complete and renamed into
        place); a file corrupted afterwards is reported by load(), not skipped silently."""
        ptr = self.dir / POINTER
        try:
            name = ptr.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if name and self.step_of(name) is not None and "/" not in name:
            p = self.dir / name
            if p.is_file():
                return p
            log.warning("checkpoint pointer %s names %s, which does not exist; using the highest "
                        "step file instead", ptr, name)
        files = self.list()
        return files[-1] if files else None

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: dict, *, tag: str | None = None) -> Path | None:
        """Atomically write `state` as run_dir/checkpoints/step_{step:08d}.pt, point `latest` at
        it and prune to the newest keep_last step files (the file just written is always kept).
        Saving a step that exists replaces it. Returns the path, or None when disabled."""
        if not self.enabled:
            return None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"CheckpointManager.save: step must be an int >= 0, got {step!r}")
        if not isinstance(state, dict):
            raise TypeError(f"CheckpointManager.save: state must be a dict, got "
                            f"{type(state).__name__}")
        if tag is not None and not isinstance(tag, str):
            raise TypeError(f"CheckpointManager.save: tag must be a str or None, got {tag!r}")
        clash = [k for k in _RESERVED if k in state and not (k == "step" and state[k] == step)]
        if clash:
            raise ValueError(f"CheckpointManager.save: state keys {clash} are reserved (the "
                             f"manager writes 'format', 'step' and 'tag')")
        payload = {**state, "format": FORMAT, "step": step, "tag": tag}
        _check_loadable(payload, "")

        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(step)
        t0 = time.perf_counter()
        atomic_write(final, lambda f: torch.save(payload, f))
        self._write_pointer(final.name)
        self._prune(keep=final)
        log.info("saved checkpoint %s (step %d%s, %.1f MB, %.2f s)", final, step,
                 f", {tag}" if tag else "", final.stat().st_size / 1e6, time.perf_counter() - t0)
        return final

    def _write_pointer(self, name: str) -> None:
        atomic_write(self.dir / POINTER, lambda f: f.write(name + "\n"), binary=False)

    def _prune(self, keep: Path) -> None:
        if self.keep_last is None:
            return
        files = self.list()
        newest = set(files[-self.keep_last:])
        for p in files:
            if p not in newest and p != keep:
                try:
                    p.unlink()
                    log.debug("pruned checkpoint %s", p)
                except OSError as e:  # e.g. removed by hand meanwhile: not worth failing a run
                    log.warning("could not remove old checkpoint %s: %s", p, e)

    # ------------------------------------------------------------------ load
    def load(self, path=None, map_location="cpu", *, mmap: bool = False) -> dict:
        """Load a checkpoint (default: latest()) with torch.load(weights_only=True).

        mmap=True maps the file instead of reading it: tensors are paged in from the page cache
        as they are used, so the ranks of one node resuming from one file share a single copy in
        host memory (read whole, 8 ranks of XLM-R large hold ~54 GB: weights plus two fp32 Adam
        moments each). Meant for state that is copied elsewhere (to a GPU) right away: tensors
        kept on the CPU stay backed by the file, whose disk space is then held until exit even
        once pruned.

        Returns the saved dict: the caller's keys plus "format", "step" and "tag". Raises
        CheckpointError naming the file when there is none, it is missing, truncated or
        corrupt, or it is not an xlmr_fast checkpoint."""
        if path is None:
            path = self.latest()
            if path is None:
                raise CheckpointError(f"no checkpoint found in {self.dir}")
        path = Path(path)
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path} is a directory, expected a step_*.pt file "
                                  f"(for a run directory use CheckpointManager(run_dir).load())")
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception as e:  # truncated zip, bad pickle, refused global, I/O error
            raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupt?): "
                                  f"{type(e).__name__}: {e}") from e
        if not isinstance(obj, dict) or "format" not in obj:
            raise CheckpointError(f"checkpoint {path} is not an xlmr_fast checkpoint (no 'format' "
                                  f"key; got {type(obj).__name__})")
        if obj["format"] != FORMAT:
            raise CheckpointError(f"checkpoint {path} has format {obj['format']!r}; this version "
                                  f"reads {FORMAT!r}")
        return obj


# ---------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """This process's RNG states as weights_only-loadable values: Python `random`, numpy's
    global generator, torch CPU and (when CUDA is available) every CUDA device's generator.

    Per process: in a distributed run each rank has its own dropout RNG; saving rank 0's state
    only restores rank 0 exactly (gather all ranks' states if every rank must resume exactly)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": int(version), "state": [int(x) for x in internal],
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        # uint32 keys widened to int64 so the tensor round-trips without sign games
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned. Missing parts are left alone; CUDA states are set on
    min(saved, present) devices with a warning when the counts differ."""
    if not isinstance(state, dict):
        raise TypeError(f"set_rng_state: state must be the dict rng_state() returns, got "
                        f"{type(state).__name__}")
    if "python" in state:
        p = state["python"]
        random.setstate((int(p["version"]), tuple(int(x) for x in p["state"]), p["gauss_next"]))
    if "numpy" in state:
        n = state["numpy"]
        keys = torch.as_tensor(n["keys"]).numpy().astype(np.uint32)
        np.random.set_state((n["name"], keys, int(n["pos"]), int(n["has_gauss"]),
                             float(n["cached_gaussian"])))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            log.warning("set_rng_state: the state holds %d CUDA generator(s) but CUDA is not "
                        "available; CUDA RNG not restored", len(cuda))
            return
        n_dev = torch.cuda.device_count()
        if n_dev != len(cuda):
            log.warning("set_rng_state: %d CUDA generator states saved, %d devices present; "
                        "restoring the first %d", len(cuda), n_dev, min(n_dev, len(cuda)))
        for i in range(min(n_dev, len(cuda))):
            torch.cuda.set_rng_state(torch.as_tensor(cuda[i], dtype=torch.uint8).cpu(), i)

"""Per-GPU choices measured by `xlmr-fast tune`: which path each op runs on this device.

Some choices can only be made by timing them on the GPU that runs them: the fused linear
cross-entropy's backend (Triton or the CUDA extension) and schedule (recompute or token-chunk),
whether the model's fused layer ops beat eager PyTorch and torch.compile, and whether our
attention or SDPA is faster at a given sequence length. `xlmr-fast tune`
(xlmr_fast/tune.py) times the candidates at XLM-R's shapes and writes a tuning file; the ops
read it here. A tuning file is JSON:

    {"format": 1, "device": "<torch.cuda.get_device_name()>",
     "choices": {"<knob>": {"<key>": "<value>", ...}, ...},
     "timings_ms": {...}, "settings": {...}, "versions": {...}}   # the last three: a record

KNOBS below lists each knob, its allowed values and what its key means. Where an op finds no
tuned choice for its key it uses its built-in table (PREFERENCE, SCHEDULE, FASTER_ON), so a
file for another width or dtype changes nothing there.

Files read for a device (later ones override earlier ones, knob by knob, key by key):
  1. xlmr_fast/tuned/<device slug>.json shipped with the package (measured by us);
  2. $XDG_CACHE_HOME/xlmr_fast/tuning/<device slug>.json (default ~/.cache/...), which
     `xlmr-fast tune` writes on your machine.
XLMR_FAST_TUNING=<path> reads only that file (its "device" must be this GPU's name);
XLMR_FAST_TUNING=off reads none. Forcing environment variables (XLMR_FAST_BACKEND,
XLMR_FAST_LCE_SCHEDULE, ...) still win over every file.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

FORMAT = 1

# knob -> (allowed values, what the key holds)
KNOBS: dict[str, tuple[tuple[str, ...], str]] = {
    "linear_cross_entropy.backend": (("triton", "cuda"), "hidden size,compute dtype"),
    "linear_cross_entropy.schedule": (("recompute", "tokenchunk"), "hidden size,compute dtype"),
    "add_dropout_layernorm": (("fused", "torch"), "hidden size,x dtype,residual dtype"),
    "bias_gelu": (("fused", "torch"), "hidden size,GEMM dtype"),
    "attention.backend": (("triton", "sdpa"),
                          "padded|varlen,max_seqlen bucket,heads,dropout|no-dropout,dtype"),
}

_OFF = ("off", "0", "none")
PACKAGED_DIR = Path(__file__).resolve().parent / "tuned"


def slug(device_name: str) -> str:
    """File-name form of a device name: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3'
    (the same as bench/results/<device>.csv)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_") or "unknown"


def key(*parts) -> str:
    """The key of a choice: parts joined by ',', dtypes by their short name (bfloat16)."""
    return ",".join(str(p).removeprefix("torch.") for p in parts)


def user_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xlmr_fast" / "tuning"


def user_path(device_name: str) -> Path:
    """Where `xlmr-fast tune` writes by default, and where the ops look, for this device."""
    return user_dir() / f"{slug(device_name)}.json"


def validate(doc, source) -> dict:
    """The checked document (a ValueError names `source` and what is wrong)."""
    def bad(why):
        return ValueError(f"tuning file {source}: {why} (re-run `xlmr-fast tune`, or set "
                          f"XLMR_FAST_TUNING=off to ignore tuning files)")
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("format") != FORMAT:
        raise bad(f"format {doc.get('format')!r}, this version reads format {FORMAT}")
    if not isinstance(doc.get("device"), str) or not doc["device"]:
        raise bad("no 'device' name")
    choices = doc.get("choices")
    if not isinstance(choices, dict):
        raise bad("no 'choices' object")
    for knob, table in choices.items():
        if knob not in KNOBS:
            continue  # written by a newer version: not ours to judge
        allowed = KNOBS[knob][0]
        if not isinstance(table, dict):
            raise bad(f"choices[{knob!r}] is not an object")
        for k, v in table.items():
            if v not in allowed:
                raise bad(f"choices[{knob!r}][{k!r}] = {v!r}, expected one of {allowed}")
    return doc


def read(path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"tuning file {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"tuning file {path}: unreadable ({type(e).__name__}: {e})") from None
    return validate(doc, path)


def sources(device_name: str) -> list[Path]:
    """The files consulted for this device, lowest priority first (existing or not)."""
    env = os.environ.get("XLMR_FAST_TUNING", "").strip()
    if env.lower() in _OFF:
        return []
    if env:
        return [Path(env)]
    name = f"{slug(device_name)}.json"
    return [PACKAGED_DIR / name, user_dir() / name]


@functools.lru_cache(maxsize=None)
def _merged(device_name: str, env: str) -> dict:
    # Read once per (device, XLMR_FAST_TUNING): the ops ask on every call. clear_cache() after
    # writing a file in this process.
    merged: dict[str, dict[str, str]] = {}
    explicit = bool(env) and env.lower() not in _OFF
    for path in sources(device_name):
        if not explicit and not path.is_file():
            continue  # the default places are optional; an explicit path must exist
        doc = read(path)
        if doc["device"] != device_name:
            if explicit:
                raise ValueError(f"tuning file {path} (XLMR_FAST_TUNING) was measured on "
                                 f"{doc['device']!r}, not on this {device_name!r}")
            continue  # a slug shared by two names: not this GPU's file
        for knob, table in doc["choices"].items():
            if knob in KNOBS:
                merged.setdefault(knob, {}).update(table)
    return merged


def choices(device_name: str) -> dict[str, dict[str, str]]:
    """All tuned choices in effect for a device name: {knob: {key: value}}."""
    env = os.environ.get("XLMR_FAST_TUNING", "").strip()
    return _merged(device_name, env)


def clear_cache() -> None:
    """Forget the files read so far (after writing one in this process; tests)."""
    _merged.cache_clear()
    _CHOSEN.clear()


_CHOSEN: dict = {}   # (knob, device index, key parts, XLMR_FAST_TUNING) -> value


def choice(knob: str, device, *parts) -> str | None:
    """The tuned value of `knob` for the key key(*parts) on `device` (a torch.device or CUDA
    index), or None: not a CUDA device, or nothing tuned for this key (the op then uses its
    table). Memoised: the model asks twice per layer per step (2.4 us a call on our 2-core CPU,
    half of it the environment read)."""
    if getattr(device, "type", "cuda") != "cuda":
        return None
    index = getattr(device, "index", device)
    if index is None:
        import torch
        index = torch.cuda.current_device()
    memo = (knob, index, parts, os.environ.get("XLMR_FAST_TUNING", ""))
    if memo in _CHOSEN:
        return _CHOSEN[memo]
    if knob not in KNOBS:
        raise KeyError(f"unknown tuning knob {knob!r}; known: {', '.join(KNOBS)}")
    from .ops import _backend
    value = choices(_backend._cuda_device_name(index)).get(knob, {}).get(key(*parts))
    _CHOSEN[memo] = value
    return value


def write(doc: dict, path) -> Path:
    """Check and write a tuning file atomically (a reader never sees half a file)."""
    from ._io import atomic_write
    path = Path(path)
    validate(doc, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text), binary=False, durable=False)
    clear_cache()
    return path

"""Backend choice shared by all ops: cuda extension > triton > reference.

XLMR_FAST_BACKEND=reference|triton|cuda forces one backend (tests, benchmarks); an op
that cannot run the forced backend on an input raises instead of silently falling back.
"""
from __future__ import annotations

import functools
import os

BACKENDS = ("reference", "triton", "cuda")


def forced() -> str | None:
    """The backend forced through XLMR_FAST_BACKEND, or None."""
    b = os.environ.get("XLMR_FAST_BACKEND", "").strip().lower()
    if not b:
        return None
    if b not in BACKENDS:
        raise ValueError(f"XLMR_FAST_BACKEND={b!r}: expected one of {', '.join(BACKENDS)}")
    return b


def interpret() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def triton_usable(device) -> bool:
    """Triton can run on tensors of this device: a CUDA device, or the CPU interpreter."""
    if not triton_importable():
        return False
    dev_type = device.type if hasattr(device, "type") else str(device)
    return dev_type == "cuda" or (dev_type == "cpu" and interpret())


@functools.lru_cache(maxsize=None)
def _cuda_device_name(index: int) -> str:
    import torch
    return torch.cuda.get_device_name(index)


def device_listed(device, names) -> bool:
    """True when `device` is a CUDA device whose name contains one of `names` (substrings such
    as "H100"): the ops' tables of GPUs on which a measured benchmark chose a path."""
    if getattr(device, "type", str(device)) != "cuda" or not names:
        return False
    import torch
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = _cuda_device_name(index)
    return any(n in name for n in names)


class Unsupported(RuntimeError):
    """A backend refused an input; the message says why."""

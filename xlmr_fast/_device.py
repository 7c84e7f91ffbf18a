"""One parser for the device options (--device of finetune / evaluate / tune, run.device of
pretrain), so they accept the same strings and fail the same way: a one-line ValueError naming
the option, not a RuntimeError from deep inside torch."""
from __future__ import annotations

import torch

CHOICES = "auto, cpu, cuda or cuda:N"


def parse_device(name: str, option: str, no_cuda_hint: str = "use cpu or auto") -> torch.device:
    """name -> torch.device. "auto" is CUDA where torch sees one, else the CPU. A CUDA device
    must exist here (an index past the visible count is refused). Does not change the current
    device: callers that need it call torch.cuda.set_device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{option} {name!r} is not a device ({CHOICES})") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{option} {name!r}: xlmr_fast runs on {CHOICES}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}: torch {torch.__version__} sees no CUDA device "
                             f"here ({no_cuda_hint})")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{option} {name}: only {n} CUDA device(s) visible (cuda:0 .. "
                             f"cuda:{n - 1})")
    return dev

"""Loads the compiled extension xlmr_fast._C without ever failing the import.

A missing extension (no compiler at install time, XLMR_FAST_NO_EXT=1, or an ABI
mismatch after upgrading torch) is remembered; an op that needs it raises only
when called, with the reason and the command that builds it.
"""
from __future__ import annotations

import torch

BUILD_HINT = (
    "build it from the source checkout with `pip install --no-build-isolation -e .` "
    "(needs a C++17 compiler and ninja; CUDA kernels also need nvcc and a CUDA build of torch)"
)

try:
    from . import _C  # noqa: F401  (registers torch.ops.xlmr_fast_C.*)

    _LOAD_ERROR: Exception | None = None
except Exception as e:  # ImportError, or an OSError/undefined symbol from a stale build
    _C = None
    _LOAD_ERROR = e


def available() -> bool:
    """True when xlmr_fast._C loaded."""
    return _C is not None


def build_info() -> dict:
    """What the loaded extension was built with ({} when it is not loaded)."""
    return dict(_C.build_info()) if _C is not None else {}


def cuda_built() -> bool:
    """True when the extension contains the CUDA kernels of kernels/cuda/."""
    return bool(build_info().get("cuda", False))


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when torch.ops.xlmr_fast_C.<op> has a kernel for dispatch_key ('CPU' or 'CUDA')."""
    if _C is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"xlmr_fast_C::{op}", dispatch_key)
    except RuntimeError:  # the loaded build predates this op (no schema registered)
        return False


def require(op: str, dispatch_key: str = "CPU"):
    """Return torch.ops.xlmr_fast_C.<op>, or raise a RuntimeError that says how to build it."""
    if _C is None:
        raise RuntimeError(
            f"xlmr_fast: op '{op}' needs the compiled extension xlmr_fast._C, which did not load "
            f"({type(_LOAD_ERROR).__name__}: {_LOAD_ERROR}); {BUILD_HINT}"
        )
    if not has_kernel(op, dispatch_key):
        what = "CUDA kernels" if dispatch_key == "CUDA" else "this op"
        raise RuntimeError(
            f"xlmr_fast: the loaded extension has no {dispatch_key} kernel for '{op}' "
            f"(build info: {build_info()}); rebuild with {what}: {BUILD_HINT}"
        )
    return getattr(torch.ops.xlmr_fast_C, op)

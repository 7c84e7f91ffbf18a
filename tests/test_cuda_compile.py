"""Every kernels/cuda/*.cu compiles with bare nvcc (no torch headers), where nvcc exists.

This is the CPU machines' check of the CUDA sources: setup.py only builds them with a CUDA torch.
Compiles to compute_90 PTX inside an object file (device code generated and checked, no GPU
needed). NVCC=<path> picks the compiler; without nvcc on PATH the tests skip.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "kernels", "cuda")
CU_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
NVCC = os.environ.get("NVCC") or shutil.which("nvcc")


def test_there_are_cuda_sources():
    assert CU_FILES, f"no .cu files under {CUDA_DIR}"


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("path", CU_FILES, ids=[os.path.basename(p) for p in CU_FILES])
def test_nvcc_compiles(path, tmp_path):
    out = tmp_path / (os.path.basename(path) + ".o")
    cmd = [NVCC, "-c", "-std=c++17", "-arch=compute_90", "-I", CUDA_DIR,
           "-DXLMR_FAST_WITH_CUDA=1", "-o", str(out), path]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    assert out.stat().st_size > 0

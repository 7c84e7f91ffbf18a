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
@pytest.mark.parametrize("arch", ["compute_90", "sm_90", "sm_80"])
@pytest.mark.parametrize("path", CU_FILES, ids=[os.path.basename(p) for p in CU_FILES])
def test_nvcc_compiles(path, arch, tmp_path):
    # compute_90: PTX only (what a newer GPU JIT-compiles); sm_90 / sm_80: also through ptxas,
    # the machine code setup.py builds (TORCH_CUDA_ARCH_LIST "8.0;9.0+PTX"), with its flags.
    out = tmp_path / (os.path.basename(path) + ".o")
    cmd = [NVCC, "-c", "-std=c++17", f"-arch={arch}", "-O3", "--use_fast_math", "-I", CUDA_DIR,
           "-DXLMR_FAST_WITH_CUDA=1", "-o", str(out), path]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    assert out.stat().st_size > 0


CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
CPP_WITH_CUDA = [p for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
                 if "XLMR_FAST_WITH_CUDA" in open(p).read()]


@pytest.mark.skipif(NVCC is None or CXX is None, reason="nvcc or a C++ compiler not on PATH")
@pytest.mark.parametrize("path", CPP_WITH_CUDA, ids=[os.path.basename(p) for p in CPP_WITH_CUDA])
def test_host_code_compiles_with_cuda(path, tmp_path):
    """The #ifdef XLMR_FAST_WITH_CUDA half of csrc/*.cpp (input checks, device guards, stream,
    GEMM calls) is built only by a CUDA torch, so a CPU machine never compiled it: syntax-check
    it against this torch's headers (whose c10/cuda headers a CPU wheel ships, all but one
    generated file, stubbed here) and the CUDA toolkit's."""
    import sysconfig

    from torch.utils import cpp_extension as ce

    inc = ce.include_paths()
    stub = tmp_path / "stub"
    if not any(os.path.exists(os.path.join(d, "c10/cuda/impl/cuda_cmake_macros.h")) for d in inc):
        (stub / "c10/cuda/impl").mkdir(parents=True)
        (stub / "c10/cuda/impl/cuda_cmake_macros.h").write_text(
            "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             os.path.dirname(os.path.dirname(os.path.realpath(NVCC))), "/usr/local/cuda"]
    cuda_inc = next((os.path.join(h, "include") for h in homes if h and os.path.exists(
        os.path.join(h, "include", "cuda_runtime.h"))), None)
    if cuda_inc is None:
        pytest.skip("CUDA toolkit headers (cuda_runtime.h) not found; set CUDA_HOME")
    cmd = [CXX, "-fsyntax-only", "-std=c++17", "-DXLMR_FAST_WITH_CUDA=1",
           "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H", "-I", str(stub),
           *[f"-I{d}" for d in inc], "-I", cuda_inc, "-I", sysconfig.get_paths()["include"],
           "-I", os.path.join(ROOT, "csrc"), "-I", CUDA_DIR, path]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert r.returncode == 0, f"{' '.join(cmd)}\n" + "\n".join(errors[:40])

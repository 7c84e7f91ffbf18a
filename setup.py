"""Build xlmr_fast and its compiled extension xlmr_fast._C.

C++ CPU ops in csrc/ are always built. CUDA kernels in kernels/cuda/*.cu are added
when torch was built with CUDA and nvcc is found (or XLMR_FAST_FORCE_CUDA=1).
The install never fails for lack of a GPU: set XLMR_FAST_NO_EXT=1 to skip the
extension entirely (the package then runs on its torch/Triton paths).

Environment:
  TORCH_CUDA_ARCH_LIST   CUDA archs (default "8.0;9.0+PTX": machine code for Ampere, which
                         sm_86 / sm_89 run too, and Hopper, plus Hopper PTX that the driver
                         compiles for newer GPUs such as Blackwell at first load)
  XLMR_FAST_FORCE_CUDA   1: build the CUDA sources even if torch.cuda is not usable here
  XLMR_FAST_NO_EXT       1: build no extension
  MAX_JOBS               parallel compile jobs (default: sized to cores and memory)
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _default_jobs() -> str:
    # nvcc on a template-heavy file can take ~2 GB; size jobs to memory, not only cores.
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 8
    return str(max(1, min(os.cpu_count() or 1, int(mem_gb // 2))))


def _extensions():
    if os.environ.get("XLMR_FAST_NO_EXT") == "1":
        return [], {}
    from torch.utils import cpp_extension as ce

    os.environ.setdefault("MAX_JOBS", _default_jobs())
    sources = sorted(glob.glob("csrc/*.cpp"))
    cu_sources = sorted(glob.glob("kernels/cuda/*.cu"))
    import torch

    want_cuda = os.environ.get("XLMR_FAST_FORCE_CUDA") == "1" or (
        torch.version.cuda is not None and ce.CUDA_HOME is not None
    )
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    define = []
    ext_cls = ce.CppExtension
    extra = {"cxx": cxx}
    if want_cuda and cu_sources:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        ext_cls = ce.CUDAExtension
        sources += cu_sources
        define.append(("XLMR_FAST_WITH_CUDA", "1"))
        extra["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo",
                         "-DXLMR_FAST_WITH_CUDA=1"]
        cxx.append("-DXLMR_FAST_WITH_CUDA=1")
    ext = ext_cls(
        name="xlmr_fast._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "kernels", "cuda")],
        define_macros=define,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": ce.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=[
        "xlmr_fast",
        "xlmr_fast.ops",
        "xlmr_fast.model",
        "xlmr_fast.data",
        "xlmr_fast.train",
        "xlmr_fast.finetune",
        "xlmr_fast.kernels",
        "xlmr_fast.kernels.triton",
        "xlmr_fast.tuned",
    ],
    package_dir={"xlmr_fast.kernels": "kernels"},
    # Tuning files measured on our GPUs (`xlmr-fast tune`), read by xlmr_fast.tuning.
    package_data={"xlmr_fast.tuned": ["*.json"]},
    # MANIFEST.in puts kernels/cuda/ in the sdist for the extension build; it is not package data.
    include_package_data=False,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)

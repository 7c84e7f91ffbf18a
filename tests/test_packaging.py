"""A non-editable `pip install .` ships only the packages setup.py lists: every subpackage of
xlmr_fast must be there (an editable install would hide a missing one); an sdist must carry every
source the extension build can use."""
import ast
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _listed_packages() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "packages":
            return {elt.value for elt in node.value.elts}
    raise AssertionError("setup.py has no packages=[...] list")


def test_every_subpackage_is_listed_in_setup_py():
    found = {"xlmr_fast"} | {
        "xlmr_fast." + ".".join(p.parent.relative_to(ROOT / "xlmr_fast").parts)
        for p in (ROOT / "xlmr_fast").rglob("__init__.py") if p.parent != ROOT / "xlmr_fast"}
    missing = found - _listed_packages()
    assert not missing, f"setup.py packages=[...] lacks {sorted(missing)}"


def _copy_source_tree(dst: Path) -> None:
    """What a clean checkout holds for building: setup files, csrc/, kernels/, xlmr_fast/ (no
    build outputs, so the test does not depend on what was built here)."""
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info")
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dst / name)
    for name in ("csrc", "kernels", "xlmr_fast"):
        shutil.copytree(ROOT / name, dst / name, ignore=skip)


def test_sdist_and_wheel_hold_every_file_they_need(tmp_path):
    # setup.py names kernels/cuda/*.cu as sources only where it finds CUDA, and the C++ sources
    # include kernels/cuda/*.cuh even in a CPU build: an sdist made on a CPU machine must still
    # carry them, or building it fails (mlm_mask.cuh: No such file) / drops the CUDA kernels.
    src = tmp_path / "src"
    src.mkdir()
    _copy_source_tree(src)
    (src / "xlmr_fast" / "tuned" / "TEST_GPU.json").write_text("{}")  # a shipped tuning file
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                   cwd=src, check=True, capture_output=True)
    (sdist,) = (tmp_path / "dist").glob("xlmr_fast-*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    need = {str(p.relative_to(ROOT)) for d in ("csrc", "kernels/cuda")
            for p in (ROOT / d).iterdir() if p.is_file()}
    need |= {str(p.relative_to(ROOT)) for p in (ROOT / "kernels" / "triton").glob("*.py")}
    need.add("xlmr_fast/tuned/TEST_GPU.json")
    missing = need - names
    assert not missing, f"the sdist lacks {sorted(missing)} (MANIFEST.in)"

    # the wheel built from that sdist (no extension: quick): the Triton kernels as
    # xlmr_fast.kernels.triton and the tuning files, and no build-only sources
    env = dict(os.environ, XLMR_FAST_NO_EXT="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation",
                    "--no-deps", str(sdist), "-w", str(tmp_path / "whl")],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    (whl,) = (tmp_path / "whl").glob("xlmr_fast-*.whl")
    with zipfile.ZipFile(whl) as zf:
        files = set(zf.namelist())
    need = {"xlmr_fast/tuned/TEST_GPU.json", "xlmr_fast/kernels/__init__.py"}
    need |= {f"xlmr_fast/kernels/triton/{p.name}"
             for p in (ROOT / "kernels" / "triton").glob("*.py")}
    assert not need - files, f"the wheel lacks {sorted(need - files)}"
    assert not [f for f in files if f.endswith((".cu", ".cuh", ".cpp"))]

"""scripts/device_plan.sh: the next device call's plan runs its steps in order under a deadline
and skips (and names) a step that cannot get its minimum time. Run here with PYTHON=echo, so
each step only prints its command line."""
import argparse
import importlib
import inspect
import os
import shlex
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_plan.sh"


def _run(tmp_path, which, deadline):
    env = dict(os.environ, PYTHON="echo", DEADLINE=str(deadline), OUT=str(tmp_path),
               XLMR_FAST_BUILD_STAMP=str(tmp_path / "stamp"))
    return subprocess.run(["bash", str(SCRIPT), which], env=env, capture_output=True, text=True,
                          timeout=120)


def test_plan_1_steps_and_deadline(tmp_path):
    r = _run(tmp_path, "1", 50)
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "plan_summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == [
        "build", "lce-goal", "attention-64x512", "mlm_mask", "gpu-tests", "profile",
        "lce-phases"]
    assert summary[0] == "build: skipped (50s left, needs 60s)"
    assert summary[4] == "gpu-tests: skipped (50s left, needs 120s)"
    assert summary[1].startswith("lce-goal: rc=0 in ")
    log = (tmp_path / "plan.log").read_text()
    assert ("=== lce-goal (limit 50s, bench deadline 39s)\n"
            "-m bench.bench_linear_cross_entropy --N 8192 --H 1024") in log


def test_plan_2_runs_the_layer_ops_first(tmp_path):
    # call 2 gets what call 1 left: issue 5's layer-op goal before tune and the training step
    r = _run(tmp_path, "2", 600)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "plan.log").read_text()
    assert log.index("=== add_dropout_layernorm") < log.index("=== bias_gelu") < log.index(
        "=== tune") < log.index("=== train-e2e")
    assert f"-m xlmr_fast tune --out {tmp_path}/tuning.json" in log


def test_plan_refuses_an_unknown_plan(tmp_path):
    r = _run(tmp_path, "3", 50)
    assert r.returncode == 2 and "usage" in r.stderr


class _Parsed(Exception):
    """Raised in place of running a command once its arguments have parsed."""


def _plan_commands(tmp_path, which):
    """The plan's `python -m MODULE ARGS` lines, as the device would run them."""
    assert _run(tmp_path, which, 600).returncode == 0
    lines = (tmp_path / "plan.log").read_text().splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("-m ")]


@pytest.mark.parametrize("which", ["1", "2"])
def test_plan_commands_parse(which, tmp_path, monkeypatch):
    """Every module the plan runs accepts the plan's arguments: a misspelt option or choice
    would cost a step of a device call (minutes a session may not get again)."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    commands = _plan_commands(tmp_path, which)
    assert len(commands) >= 5
    for module, *argv in commands:
        if module == "pytest":
            # what pytest would select: the gpu marker exists and the test path is there
            assert "gpu" in (SCRIPT.parents[1] / "pyproject.toml").read_text()
            assert all((SCRIPT.parents[1] / a).exists() for a in argv
                       if not a.startswith("-") and a not in ("gpu", "8", "no:cacheprovider"))
            continue
        main = importlib.import_module("xlmr_fast.cli" if module == "xlmr_fast" else module).main
        if not inspect.signature(main).parameters:  # a bench without options: none given
            assert argv == [], f"{module} takes no arguments, the plan gives {argv}"
            continue
        with pytest.raises(_Parsed):
            main(argv)


GPU_CHECK = SCRIPT.parent / "gpu_check.sh"


def test_gpu_check_ensure_rebuilds_on_changed_sources_and_fails_when_nothing_loads(tmp_path):
    # A warm machine keeps the built extension between calls; `ensure` rebuilds only when it
    # does not load or when csrc/, kernels/cuda/ or setup.py changed since (a stamp of their
    # hash), and a build that leaves no loadable extension fails the step (it said rc=0).
    loads = tmp_path / "loads"
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\n[[ "$1" == -c && "$2" == *cuda_built* ]] && '
                    f'{{ [[ -f {loads} ]]; exit $?; }}\nexit 0\n')
    fake.chmod(0o755)
    stamp = tmp_path / "stamp"
    env = dict(os.environ, PYTHON=str(fake), OUT=str(tmp_path / "out"),
               XLMR_FAST_BUILD_STAMP=str(stamp))
    build_log = tmp_path / "out" / "build.log"

    def ensure():
        build_log.unlink(missing_ok=True)
        r = subprocess.run(["bash", str(GPU_CHECK), "ensure"], env=env, capture_output=True,
                           text=True, timeout=60)
        return r.returncode, build_log.exists()

    loads.touch()
    assert ensure() == (0, True) and stamp.read_text().strip()  # no stamp yet: builds
    assert ensure() == (0, False)  # loads and the sources are the stamped ones
    stamp.write_text("0" * 64 + "\n")  # sources changed since the build
    assert ensure() == (0, True)
    loads.unlink()  # the build leaves no loadable CUDA extension
    assert ensure() == (1, True) and not stamp.exists()

"""scripts/device_plan.sh: the next device call's plan runs its steps in order under a deadline
and skips (and names) a step that cannot get its minimum time. Run here with PYTHON=echo, so
each step only prints its command line."""
import argparse
import importlib
import inspect
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_plan.sh"


def _run(tmp_path, which, deadline):
    env = dict(os.environ, PYTHON="echo", DEADLINE=str(deadline), OUT=str(tmp_path),
               XLMR_FAST_BUILD_STAMP=str(tmp_path / "stamp"))
    return subprocess.run(["bash", str(SCRIPT), which], env=env, capture_output=True, text=True,
                          timeout=120)


def _seconds(text, pattern):
    """The number pattern's group captures in text. Not an exact figure: bash's SECONDS counts
    whole seconds and can tick while the plan runs (an exact "50s left" failed now and then)."""
    m = re.search(pattern, text, re.M)
    assert m, (pattern, text)
    return int(m.group(1))


def test_plan_1_steps_and_deadline(tmp_path):
    r = _run(tmp_path, "1", 70)   # the steps end 20 s before the deadline: 50 s for them
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "plan_summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == [
        "build", "lce-goal", "attention-64x512", "mlm_mask", "gpu-tests", "profile",
        "lce-phases"]
    assert 48 <= _seconds(summary[0], r"^build: skipped \((\d+)s left, needs 60s\)$") <= 50
    assert 48 <= _seconds(summary[4], r"^gpu-tests: skipped \((\d+)s left, needs 120s\)$") <= 50
    assert summary[1].startswith("lce-goal: rc=0 in ")
    log = (tmp_path / "plan.log").read_text()
    lim = _seconds(log, r"=== lce-goal \(limit (\d+)s, bench deadline \d+s\)\n"
                        r"-m bench.bench_linear_cross_entropy --N 8192 --H 1024")
    assert 48 <= lim <= 50
    assert f"=== lce-goal (limit {lim}s, bench deadline {lim - lim // 8 - 5}s)" in log


def test_plan_caps_the_deadline_at_one_call(tmp_path):
    # a device call runs at most 600 s: DEADLINE=<what the session has left> may say more
    assert _run(tmp_path, "2", 900).returncode == 0
    assert "=== plan 2 (deadline 590s, steps end 20s before it)" in (
        tmp_path / "plan.log").read_text()


@pytest.mark.slow
def test_plan_ends_within_its_deadline_even_when_a_step_hangs(tmp_path):
    """DEADLINE is the time the call has (call 2: what the session has left). The goals and the
    summary come after the last step: they must fit before it, even when that step ran to its
    limit and ignored the SIGTERM (it gets a SIGKILL 10 s later). Before, the steps could run to
    DEADLINE itself, and a call cut at that moment lost goals.txt and plan_summary.txt."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\n[[ "$1" == -c ]] && exit 1\n'          # no xdist
                    '[[ "$2" == bench.goals ]] && { echo goals; exit 0; }\n'
                    "trap '' TERM\nexec sleep 600\n")                   # every step hangs
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=str(fake), DEADLINE="41", OUT=str(out),
               XLMR_FAST_BUILD_STAMP=str(tmp_path / "stamp"))
    t = time.monotonic()
    r = subprocess.run(["bash", str(SCRIPT), "1"], env=env, capture_output=True, text=True,
                       timeout=120)
    wall = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    assert wall < 41, wall
    summary = (out / "plan_summary.txt").read_text()
    assert re.search(r"^mlm_mask: rc=137 in 3\ds$", summary, re.M), summary
    assert "lce-goal: skipped" in summary
    assert (out / "goals.txt").read_text() == "goals\n"


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


def test_gpu_check_build_log_keeps_the_compiler_errors(tmp_path):
    # pip ends a failed build with generic lines; the compiler's errors come before them, and
    # build.log is all a device session brings back to fix the build from
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\n[[ "$1" == -m && "$2" == pip ]] || exit 1\necho "pip $*"\n'
                    'echo "kernels/cuda/mlm_mask.cu(12): error: identifier undefined"\n'
                    'for i in 1 2 3 4 5; do echo "note: generic line $i"; done\nexit 1\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), OUT=str(tmp_path / "out"),
               XLMR_FAST_BUILD_STAMP=str(tmp_path / "stamp"))
    r = subprocess.run(["bash", str(GPU_CHECK), "ensure"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    log = (tmp_path / "out" / "build.log").read_text()
    assert "mlm_mask.cu(12): error: identifier undefined" in log
    assert "--no-index" in log.split("pip ", 1)[1].splitlines()[0]  # offline: no index to ask

"""scripts/device_plan.sh: the next device call's plan runs its steps in order under a deadline
and skips (and names) a step that cannot get its minimum time. Run here with PYTHON=echo, so
each step only prints its command line."""
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_plan.sh"


def _run(tmp_path, which, deadline):
    env = dict(os.environ, PYTHON="echo", DEADLINE=str(deadline), OUT=str(tmp_path))
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
    assert "=== lce-goal (limit 50s)\n-m bench.bench_linear_cross_entropy --N 8192 --H 1024" in log


def test_plan_2_runs_tune_first(tmp_path):
    r = _run(tmp_path, "2", 600)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "plan.log").read_text()
    assert log.index("=== tune") < log.index("=== train-e2e") < log.index(
        "=== add_dropout_layernorm")
    assert f"-m xlmr_fast tune --out {tmp_path}/tuning.json" in log


def test_plan_refuses_an_unknown_plan(tmp_path):
    r = _run(tmp_path, "3", 50)
    assert r.returncode == 2 and "usage" in r.stderr

"""`xlmr-fast bench`: lists the repository's benchmarks and refuses unknown names."""
import os

import pytest
import torch

from xlmr_fast import cli


def test_bench_lists_and_refuses(capsys):
    assert cli.main(["bench"]) == 0
    listed = capsys.readouterr().out
    for name in ("attention", "linear_cross_entropy", "mlm_mask", "train", "data"):
        assert name in listed
    assert cli.main(["bench", "nope"]) == 1
    assert "unknown benchmark(s) ['nope']" in capsys.readouterr().err


def test_bench_outside_a_checkout(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XLMR_FAST_REPO", str(tmp_path))
    assert cli.main(["bench", "attention"]) == 1
    assert "XLMR_FAST_REPO" in capsys.readouterr().err


@pytest.mark.interpret
def test_bench_attention_runs_under_the_interpreter(monkeypatch):
    # The benchmark's own code (providers, packing, rows) runs before device time is spent
    # on it: tiny shapes on the CPU through the Triton interpreter, one call per timing.
    from bench import bench_attention
    monkeypatch.setattr(bench_attention, "D", 32)
    rows = bench_attention.run([(2, 24, 2, 0.0), (3, 24, 2, 0.5)], tune=True, device="cpu",
                               warmup=0, rounds=1)
    got = {(r["provider"], r["mode"], r["shape"]) for r in rows}
    for shape in ("B2xT24xH2xD32", "B3xT24xH2xD32 pad0.5"):
        for p in ("ours_mask", "ours_varlen", "ours_mask_drop0.1", "ours_varlen_drop0.1",
                  "triton_tutorial", "sdpa_math"):
            assert {(p, m, shape) for m in ("fwd", "bwd", "fwd+bwd")} <= got, (p, shape)
    varlen = [r for r in rows if r["provider"] == "ours_varlen" and "pad" in r["shape"]]
    assert varlen and all(r["note"].startswith("real work 0.") for r in varlen)


def test_bench_attention_quick_and_short_shapes(monkeypatch):
    # --quick and --short are device-plan steps: no torch.compile of the reference there
    from bench import bench_attention
    seen = []
    monkeypatch.setattr(bench_attention.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_attention, "run", lambda shapes, **kw: seen.append((shapes, kw))
                        or [])
    for argv in (["--quick", "--no-save"], ["--short", "--tune", "--no-save"], ["--no-save"]):
        assert bench_attention.main(argv) == 0
    (quick, kq), (short, ks), (full, kf) = seen
    assert quick == bench_attention.SHAPES[:3] and kq["compile_ref"] is False
    assert [s[:2] for s in short] == [(128, 256), (256, 128)] and ks["tune"]
    assert ks["compile_ref"] is False
    assert full == bench_attention.SHAPES and kf["compile_ref"] is True
    with pytest.raises(SystemExit):
        bench_attention.main(["--quick", "--short"])


@pytest.mark.interpret
def test_bench_linear_cross_entropy_providers_run_under_the_interpreter(monkeypatch):
    # Our providers and their variant switches (XLMR_FAST_LCE_* set per row, then restored)
    # at a tiny shape on the CPU: the token-chunk rows really take the token-chunk schedule.
    import argparse

    from bench import bench_linear_cross_entropy as B
    from bench import harness
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    monkeypatch.setattr(harness, "time_ms", lambda fn, **kw: (fn(), 1.0)[1])
    monkeypatch.setattr(harness, "peak_mb", lambda fn: 0.0)
    monkeypatch.delenv("XLMR_FAST_LCE_SCHEDULE", raising=False)
    calls = []
    real = kern.lce_fwdgrad
    monkeypatch.setattr(kern, "lce_fwdgrad",
                        lambda *a, **k: calls.append(kern.TOKEN_CHUNK_BYTES) or real(*a, **k))
    provs = B.providers(argparse.Namespace(chunk=None, rows=[3]))
    h, w, b, t = B.make(7, 32, 301, torch.bfloat16, device="cpu")
    for name in ("torch-eager", "ours-triton", "ours-triton-cublasmm", "ours-triton-flat",
                 "ours-triton-tokenchunk", "ours-triton-tokenchunk-r3"):
        fn, use_bias, _ = provs[name]
        with B._variant(name):
            assert B.bench_one(fn, use_bias, "full", h, w, b, t, 1) == (1.0, 0.0)
    budget = kern.TOKEN_CHUNK_BYTES
    assert calls == [budget, 3 * kern.padded_vocab(301) * 2]  # default, then 3 rows
    assert "XLMR_FAST_LCE_SCHEDULE" not in os.environ


@pytest.mark.interpret
def test_bench_linear_cross_entropy_breakdown_under_the_interpreter(monkeypatch):
    # --breakdown's code at a tiny shape on the CPU: every phase of every chunk is timed and
    # the phases add up to the total; then, with the timings replaced by known ones, the
    # rates: 2NHV FLOPs per GEMM, the logits buffer's bytes once for the stats pass and twice
    # (read, write) for the grad pass.
    from bench import bench_linear_cross_entropy as B
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    h, w, b, t = B.make(7, 32, 301, torch.float16, device="cpu")
    spent = B.breakdown(h, w, b, t, rows=3)                        # 3 chunks: 3 + 3 + 1 rows
    assert list(spent) == list(kern.PHASES) and all(v > 0 for v in spent.values())
    rows = B.breakdown_rows(h, w, b, t, "tiny", rows=3)
    assert [r["provider"] for r in rows] == [f"tokenchunk:{p}" for p in kern.PHASES] + [
        "tokenchunk:total"]
    assert all(r["mode"] == "phase" and r["shape"] == "tiny" for r in rows)
    ms = {p: (i + 1) * 1e-4 for i, p in enumerate(kern.PHASES)}
    monkeypatch.setattr(B, "breakdown", lambda *a, **k: dict(ms))
    by = {r["provider"]: r for r in B.breakdown_rows(h, w, b, t, "tiny", rows=3)}
    gemm, buf = 2 * 7 * 32 * 301, 7 * kern.padded_vocab(301) * 2
    for p in ("logits GEMM", "dX GEMM", "dW GEMM"):
        assert by[f"tokenchunk:{p}"]["tflops"] == f"{gemm / ms[p] / 1e9:.1f}"
    assert by["tokenchunk:stats"]["gbps"] == f"{buf / ms['stats'] / 1e6:.1f}"
    assert by["tokenchunk:grad"]["gbps"] == f"{2 * buf / ms['grad'] / 1e6:.1f}"
    assert by["tokenchunk:total"]["median_ms"] == f"{sum(ms.values()):.4f}"
    assert by["tokenchunk:total"]["tflops"] == f"{3 * gemm / sum(ms.values()) / 1e9:.1f}"


def test_keep_summary_verdict(capsys):
    """The fused-op benches end with the FASTER_ON verdict: add the GPU only when ours beats
    every must-beat provider in every fwd+bwd device-time row (of the chosen shapes)."""
    from bench import harness

    def rows(shape, ours, eager, compile_):
        return [dict(mode="fwd+bwd(graph)", shape=shape, provider=p, median_ms=m)
                for p, m in (("ours", ours), ("eager", eager), ("compile", compile_))]

    win, loss = rows("ctx H=768", 1.0, 1.2, 1.1), rows("H=768", 1.0, 0.9, 1.1)
    harness.print_keep_summary("bias_gelu", win + loss, verdict_shapes="ctx")
    assert "verdict: ours beats eager/compile" in capsys.readouterr().out
    harness.print_keep_summary("bias_gelu", win + loss)
    assert "verdict: ours loses 1 of 2" in capsys.readouterr().out
    harness.print_keep_summary("bias_gelu", rows("ctx", 1.0, 1.2, 1.0), verdict_shapes="ctx")
    assert "loses 1 of 1" in capsys.readouterr().out  # a tie is not a win
    harness.print_keep_summary("bias_gelu", win, verdict_mode="fwd")
    assert "no fwd rows" in capsys.readouterr().out


def test_harness_timing_carries_p20_p80():
    # Issue 4's harness: median and p20/p80 per row.
    from bench import harness
    t = harness.Timing.of([5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0])
    assert float(t) == 6.0 and (t.p20, t.p80) == (3.0, 9.0)
    half = t.scaled(0.5)
    assert (float(half), half.p20, half.p80) == (3.0, 1.5, 4.5)
    one = harness.Timing.of([2.5])
    assert float(one) == one.p20 == one.p80 == 2.5
    with pytest.raises(ValueError, match="no timing samples"):
        harness.Timing.of([])
    calls = []
    got = harness.time_ms(lambda: calls.append(1), warmup=2, rep=7)  # CPU: perf_counter
    assert len(calls) == 9 and got.p20 <= got <= got.p80
    r = harness.row("op", "p", "fwd", "s", got)
    assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
    assert harness.row("op", "p", "fwd", "s", 1.0)["p20_ms"] == ""  # a derived time: no spread


def test_harness_results_file_gains_new_columns_without_losing_rows(tmp_path, capsys):
    import csv

    from bench import harness
    old_fields = [f for f in harness.FIELDS if f not in ("p20_ms", "p80_ms")]
    path = tmp_path / "GPU.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_fields)
        w.writeheader()
        w.writerow({k: f"old-{k}" for k in old_fields})
    harness.append_rows([harness.row("op", "p", "fwd", "s", harness.Timing(2.0, 1.5, 2.5))],
                        str(path))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == harness.FIELDS
    assert rows[0]["median_ms"] == "old-median_ms" and rows[0]["p20_ms"] == ""
    assert rows[0]["note"] == "old-note"
    assert (rows[1]["median_ms"], rows[1]["p20_ms"], rows[1]["p80_ms"]) == (
        "2.0000", "1.5000", "2.5000")
    assert [p.name for p in tmp_path.iterdir()] == ["GPU.csv"]  # no temporary left behind
    harness.print_table([rows[1]])
    assert "50.0%" in capsys.readouterr().out  # p20-p80 spread / median
    bad = tmp_path / "other.csv"
    bad.write_text("op,weird\nx,y\n")
    with pytest.raises(ValueError, match=r"other.csv: columns \['weird'\]"):
        harness.append_rows([], str(bad))
    assert bad.read_text() == "op,weird\nx,y\n"


def test_harness_interleaved_rounds():
    # Every provider's timed calls of round r come before any of round r + 1 (drift falls on
    # all alike); warm-up first; the context wraps each provider's turn; a failure drops the
    # provider from later rounds and is returned, not raised.
    import contextlib

    from bench import harness
    log = []

    def fn(name):
        def call():
            log.append(name)
            if name == "bad" and log.count("bad") == 2:
                raise RuntimeError("boom")
        return call

    @contextlib.contextmanager
    def ctx(name):
        log.append(f"<{name}")
        yield

    got = harness.time_interleaved({n: fn(n) for n in ("a", "bad", "b")}, warmup=2, rounds=3,
                                   rep=2, context=ctx)
    assert isinstance(got["bad"], RuntimeError) and str(got["bad"]) == "boom"
    # kept without its traceback: its frames would hold the failed call's tensors alive
    assert got["bad"].__traceback__ is None
    assert isinstance(got["a"], harness.Timing) and got["a"].p20 <= got["a"] <= got["a"].p80
    # warm-up: `warmup` calls each, then 3 rounds of 2 timed calls
    assert log == (["<a", "a", "a", "<bad", "bad", "bad", "<b", "b", "b"]
                   + ["<a", "a", "a", "<b", "b", "b"] * 3)


def test_bench_linear_cross_entropy_time_providers_on_cpu(capsys):
    from bench import bench_linear_cross_entropy as B

    def broken(h, w, b, t):
        raise RuntimeError("library error")
    seen = []

    def ours(h, w, b, t):
        seen.append((h.requires_grad, w.requires_grad, b is None or b.requires_grad))
        return B.torch_eager(h, w, b, t)
    provs = {"torch-eager": (B.torch_eager, True, "fp32 logits"),
             "ours-triton-tokenchunk": (ours, True, "6NHV"),
             "broken": (broken, False, "")}
    h, w, b, t = B.make(7, 16, 50, torch.float32, device="cpu")
    full = B.time_providers(provs, "full", h, w, b, t, 3, "N7")
    # ours first (B.PRIORITY): a deadline cutting the warm-ups leaves out the optional ones
    assert [r["provider"] for r in full] == ["ours-triton-tokenchunk", "torch-eager"]
    assert all(r["p20_ms"] and r["p80_ms"] and r["mode"] == "full" for r in full)
    assert full[1]["tflops"] and full[0]["note"] == "6NHV"
    assert "[fail] broken full N7: RuntimeError: library error" in capsys.readouterr().err
    assert seen and all(all(s) for s in seen)  # full mode: grads of hidden, weight and bias
    fwd = B.time_providers(provs, "forward", h, w, b, t, 3, "N7")
    assert [r["provider"] for r in fwd] == ["torch-eager"]  # tokenchunk has no forward row


def test_bench_mlm_mask_writes_gpu_rows_before_the_cpu_part(monkeypatch, tmp_path):
    # On 11-22 the device call's time limit fell in the CPU baselines and took the GPU rows with
    # it: they were written at the end. Here the CPU part dies; the GPU rows must be on disk.
    import csv

    from bench import bench_mlm_mask as B
    from bench import harness
    out = tmp_path / "rows.csv"
    monkeypatch.setenv("XLMR_FAST_BENCH_OUT", str(out))
    monkeypatch.delenv("XLMR_FAST_BENCH_NO_APPEND", raising=False)
    monkeypatch.delenv("XLMR_FAST_BENCH_SKIP_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(harness, "device_name", lambda: "a GPU")
    monkeypatch.setattr(B, "bench_gpu", lambda rows: rows.append(
        harness.row("mlm_mask", "ours_triton", "graph", "64x512", 0.0103)))

    def killed(rows):
        raise KeyboardInterrupt("time limit")

    monkeypatch.setattr(B, "bench_cpu", killed)
    with pytest.raises(KeyboardInterrupt):
        B.main()
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert [(r["op"], r["provider"], r["mode"]) for r in got] == [
        ("mlm_mask", "ours_triton", "graph")]
    # and a full run writes each row once
    monkeypatch.setattr(B, "bench_cpu", lambda rows: rows.append(
        harness.row("mlm_mask", "hf_collator", "cpu", "64x512", 14.8)))
    out.unlink()
    assert B.main() == 0
    with open(out, newline="") as f:
        assert [r["provider"] for r in csv.DictReader(f)] == ["ours_triton", "hf_collator"]


@pytest.mark.interpret
@pytest.mark.parametrize("op", ["add_dropout_layernorm", "bias_gelu"])
def test_bench_layer_ops_run_under_the_interpreter(op, monkeypatch, tmp_path, capsys):
    # The fused layer-op benchmarks' own code at tiny shapes on the CPU before device time is
    # spent on it; each width's rows are on disk as soon as that width is done.
    import csv
    import importlib
    B = importlib.import_module(f"bench.bench_{op}")
    out = tmp_path / "rows.csv"
    monkeypatch.setenv("XLMR_FAST_BENCH_OUT", str(out))
    monkeypatch.delenv("XLMR_FAST_BACKEND", raising=False)
    kw = dict(hidden=(32, 48)) if op == "add_dropout_layernorm" else dict(
        widths=((16, 64), (24, 96)))
    writes = []
    real_append = B.H.append_new
    monkeypatch.setattr(B.H, "append_new", lambda rows, done: writes.append(len(rows) - done)
                        or real_append(rows, done))
    rows = B.run(T=40, device="cpu", warmup=0, rep=1, compile_baseline=False, **kw)
    shapes = {r["shape"] for r in rows}
    assert len(shapes) == (8 if op == "add_dropout_layernorm" else 4)
    assert len(writes) == (8 if op == "add_dropout_layernorm" else 2) and all(writes), writes
    for shape in shapes:
        for mode in ("fwd", "fwd+bwd"):
            got = {r["provider"] for r in rows if r["shape"] == shape and r["mode"] == mode}
            assert {"eager", "ours", "ours_autotuned"} <= got, (shape, mode, got)
    failed = [line for line in capsys.readouterr().out.splitlines() if "failed" in line]
    assert all(line.startswith("liger ") for line in failed), failed
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_harness_deadline_from_the_environment(monkeypatch, capsys):
    # scripts/device_plan.sh sets XLMR_FAST_BENCH_DEADLINE before a step's time limit: past it,
    # nothing more is warmed up (a TimeoutError in the provider's place), and the LCE bench
    # leaves out what is not measured with a reason instead of dying without rows
    import time

    from bench import bench_linear_cross_entropy as B
    from bench import harness
    monkeypatch.setenv("XLMR_FAST_BENCH_DEADLINE", str(time.time() - 1))
    got = harness.time_interleaved({"a": lambda: None}, warmup=1, rounds=2, rep=1)
    assert isinstance(got["a"], TimeoutError)
    h, w, b, t = B.make(5, 8, 30, torch.float32, device="cpu")
    assert B.time_providers({"torch-eager": (B.torch_eager, True, "")}, "full", h, w, b, t, 2,
                            "N5") == []
    assert "[fail] torch-eager full N5: TimeoutError" in capsys.readouterr().err
    monkeypatch.setenv("XLMR_FAST_BENCH_DEADLINE", str(time.time() + 3600))
    assert not harness.past_deadline()
    rows = B.time_providers({"torch-eager": (B.torch_eager, True, "")}, "full", h, w, b, t, 2,
                            "N5")
    assert [r["provider"] for r in rows] == ["torch-eager"]


def test_harness_results_path_may_be_a_bare_file_name(tmp_path, monkeypatch):
    # XLMR_FAST_BENCH_OUT=rows.csv (no directory) used to fail in os.makedirs("")
    from bench import harness
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XLMR_FAST_BENCH_OUT", "rows.csv")
    harness.append_rows([harness.row("op", "p", "fwd", "s", 1.0)])
    assert (tmp_path / "rows.csv").read_text().count("\n") == 2


@pytest.mark.parametrize("members,want", [
    (("CCE", "TORCH_COMPILE"), ("cce-exact", {"filter_eps": None})),  # 25.1.x, the device wheel
    (("CCE", "CCE_KAHAN_FULL_C", "TORCH_COMPILE"),
     ("cce-kahan-full-c", {"impl": "cce_kahan_full_c"}))])
def test_cce_exact_variant_follows_the_installed_version(monkeypatch, members, want):
    # 25.1.1 has no impl "cce_kahan_full_c" (NotImplementedError): the unfiltered CCE row was
    # lost on every device run until the variant was chosen by what the version has.
    import enum
    import sys
    import types
    mod = types.ModuleType("cut_cross_entropy.linear_cross_entropy")
    mod.LinearCrossEntropyImpl = enum.IntEnum("LinearCrossEntropyImpl", members)
    monkeypatch.setitem(sys.modules, "cut_cross_entropy", types.ModuleType("cut_cross_entropy"))
    monkeypatch.setitem(sys.modules, "cut_cross_entropy.linear_cross_entropy", mod)
    from bench import bench_linear_cross_entropy as B
    assert B.cce_exact_variant() == want


def test_harness_graph_capture_failure_restores_the_stream_and_names_the_cause(monkeypatch,
                                                                               capsys):
    # torch.cuda.graph's exit ends the capture before restoring the stream; when the captured
    # body raises, ending the capture raises too. The caller's stream must be current again
    # (later providers would run on the capture stream) and the printed reason must be the
    # body's error, not capture_end's. Stand-ins for the CUDA calls: this runs on the CPU.
    import contextlib

    from bench import harness
    cuda = harness.torch.cuda
    current = ["main"]

    class Stream:
        def __init__(self, name="side"):
            self.name = name

        def wait_stream(self, other):
            pass

    @contextlib.contextmanager
    def stream(s):
        prev, current[0] = current[0], s.name
        yield
        current[0] = prev

    @contextlib.contextmanager
    def graph(g):
        current[0] = "capture"
        try:
            yield
        finally:  # as torch's exit: capture_end first (raising after a failed body)
            raise RuntimeError("operation failed due to a previous error during capture")

    calls = []

    def body():
        calls.append(current[0])
        if current[0] == "capture":
            raise RuntimeError("host sync during capture")

    monkeypatch.setattr(cuda, "Stream", Stream)
    monkeypatch.setattr(cuda, "current_stream", lambda: Stream(current[0]))
    monkeypatch.setattr(cuda, "stream", stream)
    monkeypatch.setattr(cuda, "CUDAGraph", lambda: None)
    monkeypatch.setattr(cuda, "graph", graph)
    monkeypatch.setattr(cuda, "set_stream", lambda s: current.__setitem__(0, s.name))
    assert harness.device_ms(body, 3) != harness.device_ms(body, 3)  # nan
    assert current == ["main"] and calls[:2] == ["side", "capture"]
    out = capsys.readouterr().out
    assert "while handling RuntimeError: host sync during capture" in out
    # and the HBM yardstick does not cache a failed measurement
    monkeypatch.setattr(harness, "_HBM", [])
    monkeypatch.setattr(harness.torch, "empty", lambda *a, **k: torch.zeros(1))
    monkeypatch.setattr(harness, "device_ms", lambda fn, calls: float("nan"))
    assert harness.hbm_gbps() != harness.hbm_gbps() and harness._HBM == []
    monkeypatch.setattr(harness, "device_ms", lambda fn, calls: 1.0)
    assert harness.hbm_gbps() == 2 * 2**30 / 1e6 and harness._HBM


def test_harness_autotuned_sets_the_switch_for_forward_and_backward(monkeypatch):
    # ours_autotuned rows: XLMR_FAST_AUTOTUNE=1 while the whole call (forward and the backward
    # it runs) executes, and the caller's environment back afterwards.
    from bench import harness
    monkeypatch.delenv("XLMR_FAST_AUTOTUNE", raising=False)
    seen = []
    call = harness.autotuned(lambda: seen.append(os.environ.get("XLMR_FAST_AUTOTUNE")) or 7)
    assert call() == 7 and seen == ["1"] and "XLMR_FAST_AUTOTUNE" not in os.environ

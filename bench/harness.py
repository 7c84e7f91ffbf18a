"""Shared benchmark harness: timing, environment facts, and result rows.

Every bench/bench_<op>.py compares providers on the same inputs in one process, prints a
table with ratios, and appends rows to bench/results/<device>.csv. Benchmarks never assert.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import re
import statistics
import time

import torch

from xlmr_fast import tune
from xlmr_fast._io import atomic_write

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FIELDS = ["op", "provider", "mode", "shape", "median_ms", "p20_ms", "p80_ms", "tflops", "gbps",
          "peak_mb", "device", "torch", "triton", "commit", "date", "note"]


def device_name() -> str:
    return tune.device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def commit() -> str:
    """xlmr_fast.tune.source_commit(): XLMR_FAST_COMMIT, else git's HEAD; "unknown" if none."""
    return tune.source_commit() or "unknown"


def triton_version() -> str:
    return tune.triton_version() or "none"


class Timing(float):
    """A median time in ms (a float: callers do arithmetic and formatting with it as before)
    that also carries the 20th and 80th percentiles of its samples, which row() records."""

    def __new__(cls, median: float, p20: float, p80: float):
        t = super().__new__(cls, median)
        t.p20, t.p80 = float(p20), float(p80)
        return t

    @classmethod
    def of(cls, samples) -> "Timing":
        xs = sorted(float(x) for x in samples)
        if not xs:
            raise ValueError("no timing samples")
        if len(xs) == 1:
            return cls(xs[0], xs[0], xs[0])
        q = statistics.quantiles(xs, n=5, method="inclusive")  # 20/40/60/80th percentiles
        return cls(statistics.median(xs), q[0], q[3])

    def scaled(self, k: float) -> "Timing":
        """The same timing for 1/k of the work (e.g. one call of a replay of k calls: 1/k)."""
        return Timing(float(self) * k, self.p20 * k, self.p80 * k)


def time_ms(fn, *, warmup: int = 5, rep: int = 30) -> Timing:
    """Median time of fn() in ms, with p20/p80: CUDA events on GPU, perf_counter on CPU
    (xlmr_fast.tune's timer: calls enqueued back to back, one sync at the end, as
    triton.testing.do_bench). XLMR_FAST_BENCH_SYNC=1 synchronises after every call
    (latency including host dispatch)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync_each = os.environ.get("XLMR_FAST_BENCH_SYNC") == "1"
    return Timing.of(tune.time_samples(fn, device, warmup, rep, sync_each=sync_each))


def deadline() -> float | None:
    """XLMR_FAST_BENCH_DEADLINE (time.time() seconds), set by scripts/device_plan.sh a little
    before a step's time limit: timing loops then stop early rather than die with no rows."""
    v = os.environ.get("XLMR_FAST_BENCH_DEADLINE")
    return float(v) if v else None


def past_deadline() -> bool:
    d = deadline()
    return d is not None and time.time() > d


def time_interleaved(calls: dict, *, warmup: int = 3, rounds: int = 5, rep: int = 2,
                     context=None) -> dict:
    """{name: Timing of its rounds * rep calls, or the exception it raised} for several
    providers of one measurement, timed in interleaved rounds (xlmr_fast.tune.interleaved:
    drift falls on all of them alike; kernels.md section 5). context(name) is entered around
    each provider's turn (e.g. its environment knobs)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync_each = os.environ.get("XLMR_FAST_BENCH_SYNC") == "1"

    def samples(fn, dev, w, r):
        return tune.time_samples(fn, dev, w, r, sync_each)
    got = tune.interleaved(calls, device, warmup, rounds, rep, samples, context, deadline())
    return {name: v if isinstance(v, Exception) else Timing.of([x for xs in v for x in xs])
            for name, v in got.items()}


def graph_replay(fn, calls: int):
    """A callable replaying `calls` calls of fn captured in one CUDA graph (outputs reused,
    inputs fixed). time_ms(graph_replay(fn, n)) / n is fn's device time without the host:
    comparing it with time_ms(fn) shows whether a provider is host-bound at a shape."""
    side = torch.cuda.Stream()
    prev = torch.cuda.current_stream()
    side.wait_stream(prev)
    with torch.cuda.stream(side):  # warm-up outside capture (allocations, lazy init)
        fn()
    prev.wait_stream(side)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
    finally:
        # torch.cuda.graph's exit ends the capture before it restores the stream: when the
        # body raises, ending the capture raises too and the capture stream stays current, so
        # every later provider would run on it. Put the caller's stream back.
        torch.cuda.set_stream(prev)
    return g.replay


def device_ms(fn, calls: int = 10) -> float:
    """fn's device time per call without the host: `calls` calls captured in one CUDA graph,
    replayed and timed; nan (with the reason printed) when fn cannot be captured."""
    try:
        replay = graph_replay(fn, calls)
    except Exception as e:
        def line(x):
            return f"{type(x).__name__}: {(str(x).splitlines() or [''])[0][:100]}"
        # a body failing in capture surfaces as capture_end's own error, with the body's
        # error (the cause worth reading) as its __context__
        why = line(e) + (f"; raised while handling {line(e.__context__)}"
                         if e.__context__ is not None else "")
        print(f"  (no CUDA graph: {why})")
        return float("nan")
    return time_ms(replay, warmup=2, rep=10).scaled(1 / calls)


_HBM = []


def hbm_gbps() -> float:
    """Measured HBM bandwidth of this GPU in GB/s: a 1 GiB device-to-device copy (read +
    write bytes over device time). The yardstick for memory-bound kernels' GB/s."""
    if not _HBM:
        src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        ms = device_ms(lambda: dst.copy_(src), calls=5)
        del src, dst
        if not ms == ms:
            return float("nan")  # a failed capture is not cached: the next call measures again
        _HBM.append(2 * 2**30 / ms / 1e6)
    return _HBM[0]


def hbm_note(nbytes, ms) -> str:
    """'NN% of HBM' for a memory-bound op moving nbytes in ms (see hbm_gbps)."""
    if not nbytes or not ms == ms or not torch.cuda.is_available():
        return ""
    hbm = hbm_gbps()
    return f"{nbytes / ms / 1e6 / hbm:.0%} of HBM copy {hbm:.0f} GB/s"


def time_rows(rows, op, provider, mode, shape, call, *, warmup, rep, nbytes=None, flops=None,
              graph=True):
    """Append call()'s row (calls enqueued back to back, peak memory, share of HBM) and, with
    graph on CUDA, its "(graph)" row (device time alone, from a CUDA graph). A failure is
    printed, not raised: one provider failing must not hide the others."""
    try:
        ms = time_ms(call, warmup=warmup, rep=rep)
        rows.append(row(op, provider, mode, shape, ms, bytes_moved=nbytes, flops=flops,
                        peak=peak_mb(call), note=hbm_note(nbytes, ms)))
        if graph and torch.cuda.is_available():
            ms = device_ms(call)
            rows.append(row(op, provider, mode + "(graph)", shape, ms, bytes_moved=nbytes,
                            flops=flops, note=hbm_note(nbytes, ms)))
    except Exception as e:
        print(f"{provider} {mode} {shape}: failed: {type(e).__name__}: {e}")


def autotuned(call):
    """call, run with XLMR_FAST_AUTOTUNE=1 through its forward and backward: the layer ops'
    timing-based config choice (kernels/triton.autotune_on), timed next to the fixed config the
    model runs by default (provider ours_autotuned vs ours)."""
    from xlmr_fast.tune import scoped_env

    def f():
        with scoped_env(XLMR_FAST_AUTOTUNE="1"):
            return call()
    return f


def print_autotune_picks(kern) -> None:
    """The configs a layer-op kernel module's autotuners picked in this process, by key: what a
    fixed default (kernels/triton/<op>.py forward / backward) could be set to."""
    for name, tuner in (("fwd", kern._fwd_tuned), ("bwd", kern._bwd_tuned)):
        for key, cfg in getattr(tuner, "cache", {}).items():
            print(f"  autotuned {kern.__name__.rsplit('.', 1)[-1]} {name} {key}: {cfg}")


def fused_op_main(run, op, **keep_summary) -> int:
    """main() of a fused layer-op benchmark: run() on CUDA (it appends its rows shape by
    shape), then the table and the keep/drop summary against eager and compile."""
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 0
    rows = run()
    print_table(rows, baseline_provider=("eager", "compile"))
    print_keep_summary(op, rows, **keep_summary)
    print("rows appended to", results_path())
    return 0


def peak_mb(fn) -> float:
    """Peak CUDA memory allocated during fn() beyond what was allocated before, in MB."""
    if not torch.cuda.is_available():
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def row(op, provider, mode, shape, ms, *, flops=None, bytes_moved=None, peak=float("nan"), note=""):
    return {
        "op": op, "provider": provider, "mode": mode, "shape": shape,
        "median_ms": f"{ms:.4f}",
        "p20_ms": f"{ms.p20:.4f}" if isinstance(ms, Timing) else "",
        "p80_ms": f"{ms.p80:.4f}" if isinstance(ms, Timing) else "",
        "tflops": f"{flops / ms / 1e9:.1f}" if flops else "",
        "gbps": f"{bytes_moved / ms / 1e6:.1f}" if bytes_moved else "",
        "peak_mb": f"{peak:.1f}", "device": device_name(), "torch": torch.__version__,
        "triton": triton_version(), "commit": commit(),
        "date": _dt.date.today().isoformat(), "note": note,
    }


def print_table(rows, baseline_provider=None):
    """Print rows grouped by (mode, shape) with each provider's ratio to the best baseline."""
    groups = {}
    for r in rows:
        groups.setdefault((r["op"], r["mode"], r["shape"]), []).append(r)
    print(f"{'op':<22}{'mode':<9}{'shape':<30}{'provider':<26}{'ms':>10}{'p20-p80':>9}"
          f"{'TFLOP/s':>9}{'GB/s':>9}{'peakMB':>9}{'speedup':>9}")
    for (op, mode, shape), rs in groups.items():
        base = [float(r["median_ms"]) for r in rs
                if r["median_ms"] not in ("", "nan") and (baseline_provider is None or
                                                          r["provider"] in baseline_provider)]
        ref = min(base) if base else None
        for r in rs:
            ms = float(r["median_ms"])
            sp = f"{ref / ms:.2f}x" if ref and ms == ms and ms > 0 else ""
            p20, p80 = r.get("p20_ms", ""), r.get("p80_ms", "")
            # the p20-p80 spread as a share of the median
            spread = (f"{100 * (float(p80) - float(p20)) / ms:.1f}%"
                      if p20 and p80 and ms == ms and ms > 0 else "")
            print(f"{op:<22}{mode:<9}{shape:<30}{r['provider']:<26}{ms:>10.4f}{spread:>9}"
                  f"{r['tflops']:>9}{r['gbps']:>9}{r['peak_mb']:>9}{sp:>9}")


def results_path() -> str:
    """bench/results/<device>.csv, or XLMR_FAST_BENCH_OUT."""
    return os.environ.get("XLMR_FAST_BENCH_OUT") or os.path.join(
        RESULTS_DIR, re.sub(r"[^A-Za-z0-9_.-]+", "_", device_name()) + ".csv")


def append_new(rows, done: int) -> int:
    """Append rows[done:] (those not written yet) and return len(rows): a benchmark calls it
    after each shape, so a device call that times out keeps the shapes it finished."""
    append_rows(rows[done:])
    return len(rows)


def _upgrade_header(path: str) -> None:
    """A results file written before FIELDS gained columns (p20_ms, p80_ms) is rewritten with
    the current header, old rows keeping their values and blanks in the new columns; through
    xlmr_fast._io.atomic_write, so an interruption leaves the old file whole."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if header == FIELDS:
            return
        unknown = [c for c in header if c not in FIELDS]
        if unknown:
            raise ValueError(f"{path}: columns {unknown} are not bench/harness.py FIELDS; "
                             f"move the file aside or write elsewhere (XLMR_FAST_BENCH_OUT)")
        old = list(reader)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=FIELDS, restval="")
    w.writeheader()
    w.writerows(old)
    atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")), durable=False)


def append_rows(rows, path: str | None = None) -> str:
    """Append rows to bench/results/<device>.csv (or path; XLMR_FAST_BENCH_OUT overrides)."""
    path = path or results_path()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # a bare file name: this directory
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
        _upgrade_header(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, restval="")
        if new:
            w.writeheader()
        w.writerows(rows)
    return path


def print_keep_summary(op, rows, ours="ours", must_beat=("eager", "compile"), extra=(),
                       verdict_mode="fwd+bwd(graph)", verdict_shapes=""):
    """Speedup of `ours` against each provider in must_beat + extra, per (mode, shape), and
    whether it beats every must_beat provider (the keep/drop rule for a fused op); then the
    verdict for the op's FASTER_ON table from the verdict_mode rows whose shape starts with
    verdict_shapes (device time of fwd+bwd: what a training step pays)."""
    ms = {(r["mode"], r["shape"], r["provider"]): float(r["median_ms"]) for r in rows}
    others = tuple(must_beat) + tuple(extra)
    print(f"\n{op}: speedup of {ours} (>1 = ours faster)")
    print(f"{'mode':<16}{'shape':<34}" + "".join(f"{'vs ' + o:>14}" for o in others)
          + "  beats all of " + "/".join(must_beat))
    for (mode, shape, prov), t in ms.items():
        if prov != ours:
            continue
        base = {o: ms.get((mode, shape, o)) for o in others}
        cols = "".join(f"{(f'{base[o] / t:.2f}x' if base[o] else 'n/a'):>14}" for o in others)
        beats = all(base[o] and t < base[o] for o in must_beat)
        print(f"{mode:<16}{shape:<34}{cols}  {'YES' if beats else 'no'}")
    verdict = [all(ms.get((mode, shape, o), 0) > t for o in must_beat)
               for (mode, shape, prov), t in ms.items()
               if prov == ours and mode == verdict_mode and shape.startswith(verdict_shapes)]
    where = f"xlmr_fast/ops/{op}.py FASTER_ON"
    if not verdict:
        print(f"verdict: no {verdict_mode} rows of {ours}: {where} unchanged")
    elif all(verdict):
        print(f"verdict: {ours} beats {'/'.join(must_beat)} in every {verdict_mode} row: add "
              f"{device_name()!r} (or a substring) to {where}")
    else:
        print(f"verdict: {ours} loses {verdict.count(False)} of {len(verdict)} {verdict_mode} "
              f"rows: leave this GPU out of {where}")

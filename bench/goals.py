"""Issues 4 and 5's benchmark goals, read from result rows: what was measured, and does it meet
the goal.

    python -m bench.goals                          # every bench/results/*.csv, one table each
    python -m bench.goals gpu_out/results.csv      # a device run's rows
    python -m bench.goals --device H200            # only devices whose name contains H200

Attention verdicts use the fwd+bwd rows (calls enqueued back to back, as a training step runs
them) and add the same pair's device time from the CUDA-graph rows when the run has them, which
tells a host-bound miss from a slow kernel.

A goal compares providers "in the same run", so a ratio only ever uses rows of one run (same
device, commit and date). For each goal the newest run holding the rows it needs is used (the
run column says which); a goal that no run covers reads "not measured", with what is missing.
Rows written before a provider existed simply do not count for it. Nothing here times anything:
it reads CSV files that the benches wrote (bench/harness.py's columns).

Goals (H100, bf16; ../shared/docs/kernels.md and the issues):
  issue 4  linear_cross_entropy full fwd+bwd at N8192 H1024 V250002: >= 2x torch eager, faster
           than Liger and Cut Cross-Entropy, >= 550 TFLOP/s, peak memory beyond inputs and grads
           under 5% of eager's (the same checks are listed at the benchmark's other shapes,
           N4915 x H1024 / H768, marked as not the goal's shape); mlm_mask at 64 x 512 under
           20 us of device time.
  issue 5  attention fwd+bwd at B64 T512 D64 (12 and 16 heads): without dropout at least as fast
           as the best SDPA backend; with dropout 0.1 >= 1.2x SDPA (mem-efficient, the one SDPA
           backend with a mask and dropout); at 30% padding the varlen path >= 1.3x padded SDPA
           (the masked backends: flash ignores the mask); residual + dropout + LayerNorm and
           bias + GELU at >= 85% of the measured HBM copy bandwidth at hidden 768 and 1024, and
           faster than both eager and torch.compile (the keep rule for a fused op).
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import re
import sys
from dataclasses import dataclass

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

LCE_SHAPE = "N8192_H1024_V250002_bf16"   # the goal's shape; the others: the same checks
LCE_SHAPES = (LCE_SHAPE, "N4915_H1024_V250002_bf16", "N4915_H768_V250002_bf16")
ATTN_SHAPES = ("B64xT512xH12xD64", "B64xT512xH16xD64")
PADDED_SHAPES = ("B64xT512xH12xD64 pad0.3", "B64xT512xH16xD64 pad0.3",
                 "B128xT256xH12xD64 pad0.3", "B256xT128xH12xD64 pad0.3")
SDPA = ("sdpa_flash_nomask", "sdpa_efficient", "sdpa_cudnn", "sdpa_math")
SDPA_MASKED = ("sdpa_efficient", "sdpa_cudnn", "sdpa_math")
LAYER_OPS = {"add_dropout_layernorm": "H", "bias_gelu": "F"}
LAYER_WIDTHS = {"add_dropout_layernorm": (768, 1024), "bias_gelu": (3072, 4096)}
_HBM = re.compile(r"(\d+)% of HBM")


@dataclass
class Verdict:
    goal: str
    target: str
    measured: str
    ok: bool | None          # None: rows to compare are missing
    run: str = ""


# ----------------------------------------------------------------------------- reading
def read_rows(paths) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if r.get("op") and r.get("median_ms"):
                    rows.append(r)
    return rows


def runs(rows) -> list[tuple[tuple[str, str, str], list[dict]]]:
    """Rows grouped by run (device, commit, date), newest first (date, then file order)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    order: dict[tuple[str, str, str], int] = {}
    for i, r in enumerate(rows):
        k = (r.get("device", ""), r.get("commit", ""), r.get("date", ""))
        groups.setdefault(k, []).append(r)
        order[k] = i  # the last row of the run
    return sorted(groups.items(), key=lambda kv: (kv[0][2], order[kv[0]]), reverse=True)


def _ms(rows, op, mode, shape) -> dict[str, float]:
    """{provider: median ms} at (op, mode, shape); a provider's last row wins."""
    out = {}
    for r in rows:
        if r["op"] == op and r["mode"] == mode and r["shape"] == shape:
            try:
                out[r["provider"]] = float(r["median_ms"])
            except ValueError:
                pass
    return out


def _field(rows, op, mode, shape, provider, name) -> float | None:
    val = None
    for r in rows:
        if (r["op"], r["mode"], r["shape"], r["provider"]) == (op, mode, shape, provider):
            try:
                val = float(r.get(name) or "nan")
            except ValueError:
                val = None
    return None if val is None or val != val else val


def _best(times: dict[str, float], names) -> tuple[str, float] | None:
    got = [(t, n) for n, t in times.items() if n in names]
    return (min(got)[1], min(got)[0]) if got else None


def _run_label(key) -> str:
    device, commit, date = key
    return f"{commit or '?'} {date or '?'}"


def newest(runs_, judge, goal, target) -> Verdict:
    """judge(run rows) -> (measured, ok) or None; the newest run it accepts, else not measured
    (with judge's docstring: the rows it needs)."""
    for key, rows in runs_:
        got = judge(rows)
        if got is not None:
            return Verdict(goal, target, got[0], got[1], _run_label(key))
    return Verdict(goal, target, f"not measured: {judge.__doc__ or 'no rows'}", None)


# ----------------------------------------------------------------------------- issue 4
def _lce_ours(times) -> tuple[str, float] | None:
    """Our fastest path: every ours-* provider (knobs the op takes, e.g. the token-chunk
    schedule) except the block-config sweep's forced variants."""
    ours = [n for n in times if n.startswith("ours-") and not re.search(r"(fwd|mm)cfg\d", n)]
    return _best(times, ours)


def lce_goals(runs_) -> list[Verdict]:
    out = []
    for shape in LCE_SHAPES:
        out += _lce_goals_at(runs_, shape)
    out.append(newest(runs_, _mask, "mlm_mask 64x512, device time", "< 20 us"))
    return out


def _mask(rows):
    """mlm_mask graph rows (device time) at 64x512"""
    t = _ms(rows, "mlm_mask", "graph", "64x512,int32")
    best = _best(t, [n for n in t if n.startswith("ours")])
    if not best:
        return None
    return f"{best[0]} {best[1] * 1000:.1f} us", best[1] * 1000 < 20


def _lce_goals_at(runs_, shape) -> list[Verdict]:
    where = shape.split("_V")[0].replace("_", " ")
    if shape != LCE_SHAPE:
        where += ", not the goal's shape"

    def speed(rows):
        t = _ms(rows, "linear_cross_entropy", "full", shape)
        ours, eager = _lce_ours(t), t.get("torch-eager")
        if not ours or eager is None:
            return None
        r = eager / ours[1]
        return f"{ours[0]} {ours[1]:.1f} ms, eager {eager:.1f} ms: {r:.2f}x", r >= 2.0
    speed.__doc__ = f"torch-eager and an ours-* row, mode full, at {shape}"

    def libraries(rows):
        t = _ms(rows, "linear_cross_entropy", "full", shape)
        ours = _lce_ours(t)
        liger = t.get("liger-flce")
        cce = _best(t, [n for n in t if n.startswith("cce")])
        if not ours or liger is None or cce is None:
            return None
        return (f"{ours[0]} {ours[1]:.1f} ms; Liger {liger:.1f} ms ({liger / ours[1]:.2f}x); "
                f"{cce[0]} {cce[1]:.1f} ms ({cce[1] / ours[1]:.2f}x)",
                ours[1] < liger and ours[1] < cce[1])
    libraries.__doc__ = f"liger-flce and cce rows next to an ours-* row, mode full, at {shape}"

    def tflops(rows):
        t = _ms(rows, "linear_cross_entropy", "full", shape)
        ours = _lce_ours(t)
        if not ours:
            return None
        tf = _field(rows, "linear_cross_entropy", "full", shape, ours[0], "tflops")
        if tf is None:
            return None
        return f"{ours[0]} {tf:.0f} TFLOP/s", tf >= 550
    tflops.__doc__ = f"an ours-* row with TFLOP/s, mode full, at {shape}"

    def memory(rows):
        t = _ms(rows, "linear_cross_entropy", "full", shape)
        ours = _lce_ours(t)
        if not ours or "torch-eager" not in t:
            return None
        mine = _field(rows, "linear_cross_entropy", "full", shape, ours[0], "peak_mb")
        eager = _field(rows, "linear_cross_entropy", "full", shape, "torch-eager", "peak_mb")
        if mine is None or not eager:
            return None
        return (f"{ours[0]} {mine:.0f} MB vs eager {eager:.0f} MB: {mine / eager:.1%}",
                mine < 0.05 * eager)
    memory.__doc__ = f"peak_mb of torch-eager and of an ours-* row, mode full, at {shape}"

    return [
        newest(runs_, speed, f"LM head fwd+bwd vs torch eager ({where})", ">= 2x"),
        newest(runs_, libraries, f"LM head vs Liger and Cut Cross-Entropy ({where})",
               "faster than both"),
        newest(runs_, tflops, f"LM head effective TFLOP/s, 6NHV ({where})", ">= 550"),
        newest(runs_, memory, f"LM head peak memory beyond inputs+grads ({where})",
               "< 5% of eager"),
    ]


# ----------------------------------------------------------------------------- issue 5
def _attn(shape, ours_names, base_names, target_ratio, what):
    def judge(rows):
        t = _ms(rows, "attention", "fwd+bwd", shape)
        ours, base = _best(t, ours_names), _best(t, base_names)
        if not ours or not base:
            return None
        r = base[1] / ours[1]
        text = f"{ours[0]} {ours[1]:.3f} ms, {base[0]} {base[1]:.3f} ms: {r:.2f}x"
        # the same pair's device time (CUDA-graph rows), when measured: a verdict that differs
        # there means the host, not the kernels, set the eager time
        g = _ms(rows, "attention", "graph", shape)
        if ours[0] in g and base[0] in g:
            text += (f"; device time {g[ours[0]]:.3f} vs {g[base[0]]:.3f} ms: "
                     f"{g[base[0]] / g[ours[0]]:.2f}x")
        return text, r >= target_ratio
    judge.__doc__ = f"fwd+bwd rows of {what} at {shape}"
    return judge


def attention_goals(runs_) -> list[Verdict]:
    out = []
    for shape in ATTN_SHAPES:
        out.append(newest(runs_, _attn(shape, ("ours_mask", "ours_qkvpacked", "ours_varlen"),
                                       SDPA, 1.0, "ours and SDPA"),
                          f"attention, no dropout ({shape})", ">= 1.0x best SDPA"))
    for shape in ATTN_SHAPES:
        out.append(newest(runs_, _attn(shape, ("ours_mask_drop0.1", "ours_varlen_drop0.1"),
                                       ("sdpa_eff_drop0.1",), 1.2, "ours and SDPA, dropout 0.1"),
                          f"attention, dropout 0.1 ({shape})", ">= 1.2x SDPA"))
    for shape in PADDED_SHAPES:
        out.append(newest(runs_, _attn(shape, ("ours_varlen",), SDPA_MASKED, 1.3,
                                       "ours_varlen and masked SDPA"),
                          f"attention varlen, 30% padding ({shape})",
                          ">= 1.3x padded SDPA"))
    return out


def _layer_rows(rows, op, width):
    """(mode, shapes): the mode to judge op by at this width (fwd+bwd device time from the
    CUDA-graph rows, fwd+bwd if the run has none) and its shapes at this width."""
    key = f"{LAYER_OPS[op]}={width},"
    shapes = {r["shape"] for r in rows if r["op"] == op and key in r["shape"] + ","
              and not r["shape"].startswith("ctx")}
    graph = any(r["mode"] == "fwd+bwd(graph)" for r in rows if r["op"] == op)
    return "fwd+bwd(graph)" if graph else "fwd+bwd", sorted(shapes)


def layer_goals(runs_) -> list[Verdict]:
    out = []
    for op, widths in LAYER_WIDTHS.items():
        for width in widths:
            def hbm(rows, op=op, width=width):
                mode, shapes = _layer_rows(rows, op, width)
                shares = []
                for shape in shapes:
                    for r in rows:
                        if (r["op"], r["mode"], r["shape"], r["provider"]) == (op, mode, shape,
                                                                               "ours"):
                            m = _HBM.search(r.get("note", ""))
                            if m:
                                shares.append(int(m.group(1)))
                if not shares:
                    return None
                return (f"ours {min(shares)}-{max(shares)}% over {len(shares)} shapes ({mode})",
                        min(shares) >= 85)
            hbm.__doc__ = f"ours rows with an HBM share at {LAYER_OPS[op]}={width}"

            def keep(rows, op=op, width=width):
                mode, shapes = _layer_rows(rows, op, width)
                wins, n, worst = 0, 0, None
                for shape in shapes:
                    t = _ms(rows, op, mode, shape)
                    if "ours" not in t or "eager" not in t or "compile" not in t:
                        continue
                    n += 1
                    r = min(t["eager"], t["compile"]) / t["ours"]
                    worst = r if worst is None else min(worst, r)
                    wins += r > 1.0
                if not n:
                    return None
                return (f"beats both in {wins} of {n} shapes; worst {worst:.2f}x of the faster "
                        f"of eager/compile ({mode})", wins == n)
            keep.__doc__ = f"ours, eager and compile rows at {LAYER_OPS[op]}={width}"
            out.append(newest(runs_, hbm, f"{op} HBM share ({LAYER_OPS[op]}={width})",
                              ">= 85% of HBM copy"))
            out.append(newest(runs_, keep, f"{op} vs eager and compile ({LAYER_OPS[op]}={width})",
                              "faster than both"))
    return out


# ----------------------------------------------------------------------------- report
def verdicts(rows) -> dict[str, list[Verdict]]:
    """{device: verdicts} for every device in rows."""
    by_device: dict[str, list[dict]] = {}
    for r in rows:
        by_device.setdefault(r.get("device", "") or "?", []).append(r)
    out = {}
    for device, drows in by_device.items():
        rs = runs(drows)
        out[device] = lce_goals(rs) + attention_goals(rs) + layer_goals(rs)
    return out


def _mark(ok) -> str:
    return {True: "MET", False: "not met", None: "-"}[ok]


def print_report(table: dict[str, list[Verdict]], markdown: bool, out=None) -> None:
    out = out or sys.stdout
    for device, vs in table.items():
        met = sum(v.ok is True for v in vs)
        missed = sum(v.ok is False for v in vs)
        print(f"\n## {device}: {met} met, {missed} not met, {len(vs) - met - missed} not "
              f"measured", file=out)
        if markdown:
            print("| goal | target | measured | verdict | run |\n|---|---|---|---|---|", file=out)
            for v in vs:
                print(f"| {v.goal} | {v.target} | {v.measured} | {_mark(v.ok)} | {v.run} |",
                      file=out)
        else:
            for v in vs:
                print(f"  [{_mark(v.ok):>7}] {v.goal}: {v.target}\n            {v.measured}"
                      + (f"   (run {v.run})" if v.run else ""), file=out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="*", help="result files (default: bench/results/*.csv)")
    ap.add_argument("--device", help="only devices whose name contains this")
    ap.add_argument("--markdown", action="store_true", help="a markdown table per device")
    args = ap.parse_args(argv)
    paths = args.csv or sorted(glob.glob(os.path.join(RESULTS, "*.csv")))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        ap.error(f"no such result file: {', '.join(missing)}")
    rows = read_rows(paths)
    if args.device:
        rows = [r for r in rows if args.device in r.get("device", "")]
    if not rows:
        print(f"no result rows in {', '.join(paths) or RESULTS}"
              + (f" for a device matching {args.device!r}" if args.device else ""))
        return 1
    print_report(verdicts(rows), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bench/goals.py: issues 4 and 5's goals read from result rows (no GPU: it only reads CSVs).
Synthetic runs check the rules (ratios never mix runs, the newest run that has the needed rows
wins, what counts as ours); the committed result files must parse into one verdict per goal."""
import csv
import glob
import os

import pytest

from bench import goals, harness

LCE = goals.LCE_SHAPE


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=harness.FIELDS, restval="")
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _row(op, provider, mode, shape, ms, commit, date, device="GPU X", **extra):
    r = dict(op=op, provider=provider, mode=mode, shape=shape, median_ms=f"{ms:.4f}",
             device=device, commit=commit, date=date)
    r.update({k: str(v) for k, v in extra.items()})
    return r


def _table(tmp_path, rows, device="GPU X"):
    return {v.goal: v for v in goals.verdicts(goals.read_rows([_write(tmp_path / "r.csv",
                                                                      rows)]))[device]}


def _goal(table, prefix):
    hits = [v for g, v in table.items() if g.startswith(prefix)]
    assert len(hits) == 1, (prefix, list(table))
    return hits[0]


def test_lce_goals_use_one_run_and_the_newest_that_has_the_rows(tmp_path):
    lce = "linear_cross_entropy"
    rows = [
        # run a (older): eager and ours, with memory
        _row(lce, "torch-eager", "full", LCE, 60.0, "a", "2026-11-23", peak_mb=20000),
        _row(lce, "ours-triton", "full", LCE, 40.0, "a", "2026-11-23", peak_mb=150,
             tflops=300),
        # run b (newer): ours only, faster through the token-chunk schedule, and a sweep
        # variant even faster (a forced block config: not a path the op takes by itself)
        _row(lce, "ours-triton-tokenchunk", "full", LCE, 25.0, "b", "2026-12-05", tflops=500,
             peak_mb=1200),
        _row(lce, "ours-triton-fwdcfg1", "full", LCE, 20.0, "b", "2026-12-05", tflops=600),
        _row(lce, "liger-flce", "full", LCE, 30.0, "b", "2026-12-05"),
    ]
    t = _table(tmp_path, rows)
    speed = _goal(t, "LM head fwd+bwd vs torch eager (N8192 H1024)")
    # b has no eager row: the ratio comes from run a alone (60 / 40), not 60 / 25 across runs
    assert speed.run == "a 2026-11-23" and "1.50x" in speed.measured and speed.ok is False
    tf = _goal(t, "LM head effective TFLOP/s, 6NHV (N8192 H1024)")
    assert tf.run == "b 2026-12-05" and "ours-triton-tokenchunk 500" in tf.measured
    assert tf.ok is False  # the sweep's 600 does not count
    mem = _goal(t, "LM head peak memory beyond inputs+grads (N8192 H1024)")
    assert mem.run == "a 2026-11-23" and mem.ok is True and "0.8%" in mem.measured
    libs = _goal(t, "LM head vs Liger and Cut Cross-Entropy (N8192 H1024)")
    assert libs.ok is None and "not measured" in libs.measured  # no CCE row in any run
    # the other benchmark shapes are listed, marked, and unmeasured here
    assert _goal(t, "LM head fwd+bwd vs torch eager (N4915 H1024, not the goal's shape)").ok \
        is None


def test_lce_goal_met_and_the_fastest_cce_variant_counts(tmp_path):
    lce = "linear_cross_entropy"
    run = dict(commit="c", date="2026-12-05")
    rows = [_row(lce, p, "full", LCE, ms, **run, tflops=tf) for p, ms, tf in (
        ("torch-eager", 50.0, 200), ("liger-flce", 90.0, 100), ("cce", 40.0, 250),
        ("cce-kahan-full-c", 30.0, 300), ("ours-triton-tokenchunk", 22.0, 560))]
    t = _table(tmp_path, rows)
    assert _goal(t, "LM head fwd+bwd vs torch eager (N8192 H1024)").ok is True
    libs = _goal(t, "LM head vs Liger and Cut Cross-Entropy (N8192 H1024)")
    assert libs.ok is True and "cce-kahan-full-c 30.0 ms (1.36x)" in libs.measured
    assert _goal(t, "LM head effective TFLOP/s, 6NHV (N8192 H1024)").ok is True
    rows.append(_row(lce, "cce", "full", LCE, 21.0, **run))  # a faster CCE: no longer met
    assert _goal(_table(tmp_path, rows),
                 "LM head vs Liger and Cut Cross-Entropy (N8192 H1024)").ok is False


def test_attention_and_mask_goals(tmp_path):
    run = dict(commit="c", date="2026-12-05")
    s12 = "B64xT512xH12xD64"
    pad = "B64xT512xH12xD64 pad0.3"
    rows = [
        _row("attention", "sdpa_cudnn", "fwd+bwd", s12, 0.90, **run),
        _row("attention", "sdpa_flash_nomask", "fwd+bwd", s12, 0.85, **run),
        _row("attention", "ours_mask", "fwd+bwd", s12, 0.80, **run),
        _row("attention", "sdpa_eff_drop0.1", "fwd+bwd", s12, 2.0, **run),
        _row("attention", "ours_mask_drop0.1", "fwd+bwd", s12, 1.8, **run),
        # padded: flash ignores the mask, so it is not the baseline even though it is fastest
        _row("attention", "sdpa_flash_nomask", "fwd+bwd", pad, 0.40, **run),
        _row("attention", "sdpa_cudnn", "fwd+bwd", pad, 0.70, **run),
        _row("attention", "ours_varlen", "fwd+bwd", pad, 0.50, **run),
        # device time of the pair (graph rows): shown next to the eager verdict
        _row("attention", "ours_varlen", "graph", pad, 0.30, **run),
        _row("attention", "sdpa_cudnn", "graph", pad, 0.60, **run),
        # a fwd row must not stand in for fwd+bwd
        _row("attention", "ours_mask", "fwd", "B64xT512xH16xD64", 0.1, **run),
        _row("mlm_mask", "ours_triton", "graph", "64x512,int32", 0.0125, **run),
        _row("mlm_mask", "ours_cuda", "graph", "64x512,int32", 0.0230, **run),
    ]
    t = _table(tmp_path, rows)
    v = _goal(t, f"attention, no dropout ({s12})")
    assert v.ok is True and "1.06x" in v.measured and "sdpa_flash_nomask" in v.measured
    assert _goal(t, f"attention, dropout 0.1 ({s12})").ok is False  # 1.11x < 1.2x
    v = _goal(t, f"attention varlen, 30% padding ({pad})")
    assert v.ok is True and "sdpa_cudnn" in v.measured and "1.40x" in v.measured
    assert "device time 0.300 vs 0.600 ms: 2.00x" in v.measured
    assert "device time" not in _goal(t, f"attention, no dropout ({s12})").measured
    assert _goal(t, "attention, no dropout (B64xT512xH16xD64)").ok is None
    v = _goal(t, "mlm_mask")
    assert v.ok is True and "ours_triton 12.5 us" in v.measured


def test_layer_op_goals_read_the_hbm_share_and_the_keep_rule(tmp_path):
    run = dict(commit="c", date="2026-12-05")
    op = "add_dropout_layernorm"
    a = "T=32768,H=768,p=0.1,bf16,residual fp32"
    b = "T=32768,H=768,p=0.0,bf16"
    rows = []
    for shape, ours, share in ((a, 0.10, 88), (b, 0.12, 80)):
        rows += [_row(op, "ours", "fwd+bwd(graph)", shape, ours, **run,
                      note=f"{share}% of HBM copy 3000 GB/s"),
                 _row(op, "eager", "fwd+bwd(graph)", shape, 0.20, **run),
                 _row(op, "compile", "fwd+bwd(graph)", shape, 0.15, **run),
                 # eager-timed rows exist too: the device-time (graph) rows are the ones read
                 _row(op, "ours", "fwd+bwd", shape, 9.0, **run, note="1% of HBM copy")]
    t = _table(tmp_path, rows)
    hbm = _goal(t, f"{op} HBM share (H=768)")
    assert hbm.ok is False and "80-88% over 2 shapes" in hbm.measured
    keep = _goal(t, f"{op} vs eager and compile (H=768)")
    assert keep.ok is True and "2 of 2" in keep.measured and "1.25x" in keep.measured
    assert _goal(t, f"{op} HBM share (H=1024)").ok is None
    assert _goal(t, "bias_gelu vs eager and compile (F=3072)").ok is None


def test_newest_run_is_the_latest_date_then_the_latest_in_the_file(tmp_path):
    # Runs are ordered by date, then by where their last row sits in the file (results are
    # appended); never by commit hash. Same-day runs are the common case (every committed run
    # so far is dated 2026-11-23), and a run appended again after another is the newer one.
    def mask(us, commit, date="2026-11-23"):
        return _row("mlm_mask", "ours_triton", "graph", "64x512,int32", us / 1000, commit, date)
    # commit hashes in the opposite order to the dates
    v = _goal(_table(tmp_path, [mask(30, "ffff", "2026-11-20"), mask(12, "0000")]), "mlm_mask")
    assert v.run == "0000 2026-11-23" and v.ok is True
    # same day: the run whose rows come later in the file, whatever the hashes
    for first, second in (("aaaa", "bbbb"), ("bbbb", "aaaa")):
        v = _goal(_table(tmp_path, [mask(30, first), mask(12, second)]), "mlm_mask")
        assert v.run == f"{second} 2026-11-23" and v.ok is True
    # run a, then run b, then a again (re-run at the same commit): a's last row is the newest
    v = _goal(_table(tmp_path, [mask(12, "aaaa"), mask(12, "bbbb"), mask(25, "aaaa")]),
              "mlm_mask")
    assert v.run == "aaaa 2026-11-23" and "25.0 us" in v.measured and v.ok is False


def test_goal_boundaries_and_partial_graph_rows(tmp_path):
    run = dict(commit="c", date="2026-12-05")
    s12 = "B64xT512xH12xD64"
    # "< 20 us": exactly 20 us is not met
    t = _table(tmp_path, [_row("mlm_mask", "ours_triton", "graph", "64x512,int32", 0.020, **run)])
    assert _goal(t, "mlm_mask").ok is False
    # a graph row for ours alone (SDPA's capture failed): no device-time pair, still a verdict
    t = _table(tmp_path, [_row("attention", "sdpa_cudnn", "fwd+bwd", s12, 0.90, **run),
                          _row("attention", "ours_mask", "fwd+bwd", s12, 0.80, **run),
                          _row("attention", "ours_mask", "graph", s12, 0.50, **run)])
    v = _goal(t, f"attention, no dropout ({s12})")
    assert v.ok is True and "device time" not in v.measured


def test_layer_keep_rule_needs_every_shape_and_ignores_in_context_rows(tmp_path):
    run = dict(commit="c", date="2026-12-05")
    op = "bias_gelu"
    rows = []
    # ours beats eager and compile at one shape and loses at the other: the keep rule
    # ("faster than both", at every shape) is not met
    for shape, ours in (("T=32768,F=3072,bf16", 0.10), ("T=8192,F=3072,bf16", 0.30)):
        rows += [_row(op, "ours", "fwd+bwd(graph)", shape, ours, **run,
                      note="90% of HBM copy 3000 GB/s"),
                 _row(op, "eager", "fwd+bwd(graph)", shape, 0.20, **run),
                 _row(op, "compile", "fwd+bwd(graph)", shape, 0.25, **run)]
    # in-context rows (the GEMM with its epilogue, "ctx" shapes) count for neither goal
    ctx = "ctx T=32768,H=768,F=3072,bf16"
    rows += [_row(op, "ours", "fwd+bwd(graph)", ctx, 1.0, **run, note="5% of HBM copy"),
             _row(op, "eager", "fwd+bwd(graph)", ctx, 2.0, **run),
             _row(op, "compile", "fwd+bwd(graph)", ctx, 2.0, **run)]
    t = _table(tmp_path, rows)
    keep = _goal(t, f"{op} vs eager and compile (F=3072)")
    assert keep.ok is False and "1 of 2 shapes" in keep.measured
    hbm = _goal(t, f"{op} HBM share (F=3072)")
    assert hbm.ok is True and "90-90% over 2 shapes" in hbm.measured


def test_committed_results_give_a_verdict_per_goal(capsys):
    paths = sorted(glob.glob(os.path.join(goals.RESULTS, "*.csv")))
    if not paths:
        pytest.skip("no committed result files")
    table = goals.verdicts(goals.read_rows(paths))
    assert table
    n = len(goals.LCE_SHAPES) * 4 + 1 + 2 * len(goals.ATTN_SHAPES) + len(goals.PADDED_SHAPES) \
        + 2 * sum(len(w) for w in goals.LAYER_WIDTHS.values())
    for device, vs in table.items():
        assert len(vs) == n, device
        for v in vs:  # a verdict names its run; "not measured" says what is missing
            assert (v.ok is None) == (v.run == ""), v
            assert v.measured
    assert goals.main(["--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| goal | target | measured | verdict | run |" in out


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        goals.main([str(tmp_path / "missing.csv")])
    assert "no such result file" in capsys.readouterr().err
    empty = _write(tmp_path / "e.csv", [])
    assert goals.main([empty]) == 1
    assert "no result rows" in capsys.readouterr().out
    path = _write(tmp_path / "d.csv", [_row("mlm_mask", "ours_cuda", "graph", "64x512,int32",
                                            0.03, "c", "2026-12-05", device="GPU Y")])
    assert goals.main([path, "--device", "GPU Z"]) == 1
    assert goals.main([path, "--device", "GPU Y"]) == 0
    assert "mlm_mask 64x512" in capsys.readouterr().out

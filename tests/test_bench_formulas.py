"""The benchmark rows' rates on the CPU with fake timings: TFLOP/s, GB/s and the CSV row's own
columns are what bench/goals.py judges the GPU goals by, so a wrong unit, FLOP count or byte
count would misreport a result without any benchmark failing. No kernel runs here: the timing
calls are replaced by known times."""
import csv

import torch

from bench import harness


def test_row_rates_units_and_versions(monkeypatch):
    # catches: TFLOP/s divided by 1e12 instead of 1e9 (ms in the denominator), GB/s by 1e9
    # instead of 1e6, and the torch / triton version columns swapped
    monkeypatch.setattr(harness, "triton_version", lambda: "T.V")
    r = harness.row("op", "p", "fwd", "s", harness.Timing(2.0, 1.0, 3.0),
                    flops=3e12, bytes_moved=5e9)
    assert r["tflops"] == "1500.0"   # 3e12 FLOP in 2 ms: 1.5e15 FLOP/s
    assert r["gbps"] == "2500.0"     # 5e9 B in 2 ms: 2.5e12 B/s
    assert (r["torch"], r["triton"]) == (torch.__version__, "T.V")


def test_append_rows_keeps_crlf_line_ends(tmp_path):
    # catches: a csv writer with lineterminator="\n" appending LF rows to the CRLF files in
    # bench/results (csv's default, and what the committed results use)
    path = tmp_path / "rows.csv"
    harness.append_rows([harness.row("op", "p", "fwd", "s", 1.0)], str(path))
    harness.append_rows([harness.row("op", "p", "bwd", "s", 2.0)], str(path))
    data = path.read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n") == 3
    with open(path, newline="") as f:
        assert [r["mode"] for r in csv.DictReader(f)] == ["fwd", "bwd"]


def test_time_interleaved_pools_every_round(monkeypatch):
    # catches: the median taken over the first round's samples only, not all rounds'
    from xlmr_fast import tune
    monkeypatch.setattr(tune, "interleaved",
                        lambda calls, *a: {"a": [[1.0, 1.0], [5.0, 5.0], [9.0, 9.0]]})
    got = harness.time_interleaved({"a": lambda: None}, warmup=0, rounds=3, rep=2)
    assert (float(got["a"]), got["a"].p20, got["a"].p80) == (5.0, 1.0, 9.0)


def test_hbm_note_share(monkeypatch):
    # catches: the share of HBM bandwidth computed with the wrong unit (bytes / ms / 1e6 = GB/s)
    monkeypatch.setattr(harness.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(harness, "hbm_gbps", lambda: 4000.0)
    assert harness.hbm_note(2e9, 1.0) == "50% of HBM copy 4000 GB/s"  # 2000 GB/s of 4000
    assert harness.hbm_note(None, 1.0) == "" and harness.hbm_note(2e9, float("nan")) == ""


def test_linear_cross_entropy_rows_count_6nhv_full_and_2nhv_forward(monkeypatch):
    # catches: a wrong FLOP convention in time_providers (issue 4's >= 550 TFLOP/s goal reads
    # the full row's tflops: 6NHV for forward + backward, 2NHV for the forward alone)
    from bench import bench_linear_cross_entropy as B
    monkeypatch.setattr(harness, "time_interleaved", lambda calls, **kw: {
        n: harness.Timing(1e-6, 1e-6, 1e-6) for n in calls})
    monkeypatch.setattr(harness, "peak_mb", lambda fn: 0.0)
    N, H, V = 7, 16, 50
    h, w, b, t = B.make(N, H, V, torch.float32, device="cpu")
    provs = {"torch-eager": (B.torch_eager, True, "")}
    for mode, k in (("full", 6), ("forward", 2)):
        (r,) = B.time_providers(provs, mode, h, w, b, t, 1, "N7")
        assert r["tflops"] == f"{k * N * H * V / 1e-6 / 1e9:.1f}", mode


def test_attention_rows_flops_4btthd_fwd_x2_5_bwd(monkeypatch):
    # catches: a wrong nominal FLOP count for attention: 4*B*T^2*H*D forward, 2.5x that for the
    # backward, 3.5x for both (the padded shape's, whatever the padding)
    from bench import bench_attention as A
    monkeypatch.setattr(A, "D", 8)

    def providers(q, k, v, kpm, lengths, T, compile_ref):
        return {"fake": (lambda: q * 2, (q,))}
    monkeypatch.setattr(A, "_providers", providers)
    monkeypatch.setattr(harness, "time_interleaved", lambda calls, **kw: {
        n: harness.Timing(1e-6, 1e-6, 1e-6) for n in calls})
    monkeypatch.setattr(harness, "peak_mb", lambda fn: 0.0)
    B, T, H = 2, 16, 2
    rows = A.run([(B, T, H, 0.0), (B, T, H, 0.5)], device="cpu", warmup=0, rounds=1,
                 compile_ref=False)
    fwd = 4 * B * T * T * H * 8
    want = {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}
    assert len(rows) == 6
    for r in rows:
        assert r["tflops"] == f"{want[r['mode']] / 1e-6 / 1e9:.1f}", r


def _nbytes_of(B, monkeypatch, **kw):
    """{(shape, mode): nbytes} the benchmark hands harness.time_rows, no provider run."""
    seen = {}

    def time_rows(rows, op, name, mode, shape, call, *, nbytes=None, **k):
        seen[(shape, mode)] = nbytes
    monkeypatch.setattr(B.H, "time_rows", time_rows)
    B.run(T=4, device="cpu", save=False, compile_baseline=False, **kw)
    return seen


def test_add_dropout_layernorm_bytes_moved(monkeypatch):
    # catches: a wrong HBM byte count (the GB/s and "% of HBM" the keep rule is read against):
    # fwd reads x (bf16) and the residual and writes y (residual dtype), plus mean and rstd
    # (fp32) per row; bwd reads dy, x, y... : 2 bf16 + 3 residual-dtype tensors, again 8 B/row
    from bench import bench_add_dropout_layernorm as B
    T, N = 4, 32
    seen = _nbytes_of(B, monkeypatch, hidden=(N,))
    for shape_tail, re in ((",residual fp32", 4), ("", 2)):
        shape = f"T={T},H={N},p=0.1,bf16" + shape_tail
        fwd = T * N * (2 + 2 * re) + 8 * T
        assert seen[(shape, "fwd")] == fwd
        assert seen[(shape, "fwd+bwd")] == fwd + T * N * (2 * 2 + 3 * re) + 8 * T


def test_bias_gelu_bytes_moved(monkeypatch):
    # catches: a wrong byte count of the elementwise activation: fwd reads x, writes y (2 T*F
    # bf16 tensors); fwd+bwd adds reading x and dy and writing dx (5 in all)
    from bench import bench_bias_gelu as B
    T, F = 4, 64
    seen = _nbytes_of(B, monkeypatch, widths=((16, F),))
    assert seen[(f"T={T},F={F},bf16", "fwd")] == 2 * T * F * 2
    assert seen[(f"T={T},F={F},bf16", "fwd+bwd")] == 5 * T * F * 2
    assert seen[(f"ctx T={T},H=16,F={F},bf16", "fwd")] is None  # the GEMM rows count FLOPs


def test_mlm_mask_bytes_moved():
    # catches: a wrong byte count of the masking op: ids read and written (int32 each) plus
    # 8 B per token, plus 8 B per selected position of the capacity
    from bench import bench_mlm_mask as B
    x = torch.zeros(3, 5, dtype=torch.int32)
    assert B._bytes(x, 7) == 15 * (2 * 4 + 8) + 8 * 7

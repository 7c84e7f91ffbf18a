"""Training metrics: the MFU FLOP formula by hand, peak FLOP/s lookup, Throughput, metrics.jsonl
round trip (nested per-language dicts, NaN), resume de-duplication, TensorBoard, plots and the
console line."""
from __future__ import annotations

import json
import logging
import math
import sys

import numpy as np
import pytest
import torch

import xlmr_fast as xf
from xlmr_fast.train import metrics as M
from xlmr_fast.train.metrics import (MetricsLogger, Throughput, format_log_line,
                                     model_flops_per_token, peak_flops, plot_metrics, read_metrics)


# ---------------------------------------------------------------------------- FLOPs / MFU
def test_flops_per_token_base_by_hand():
    cfg = xf.XLMRConfig.base()
    # L=12, H=768, F=3072, T=512, V=250002 (DESIGN.md "Performance bookkeeping")
    per_layer = 8 * 768**2 + 4 * 768 * 3072 + 4 * 512 * 768  # 4,718,592 + 9,437,184 + 1,572,864
    assert per_layer == 15_728_640
    head = 2 * 768**2 + 2 * 768 * 250002                      # 1,179,648 + 384,003,072
    assert head == 385_182_720
    forward = 12 * 15_728_640 + 0.15 * 385_182_720           # 188,743,680 + 57,777,408
    assert forward == pytest.approx(246_521_088)
    assert model_flops_per_token(cfg, 512, training=False) == pytest.approx(246_521_088, rel=1e-12)
    assert model_flops_per_token(cfg, 512) == pytest.approx(739_563_264, rel=1e-12)
    # no masked tokens: the head costs nothing
    assert model_flops_per_token(cfg, 512, p_mask=0.0, training=False) == 188_743_680
    # the anchor: ~580k tokens/s on the 790 TFLOP/s H100 is ~55% MFU
    assert M.mfu(580e3, 739_563_264, 790e12) == pytest.approx(0.543, abs=0.001)
    assert M.mfu(580e3, 739_563_264, None) is None


def test_flops_per_token_large_and_validation():
    cfg = xf.XLMRConfig.large()
    L, H, F, V, T = 24, 1024, 4096, 250002, 512
    fwd = L * (8 * H * H + 4 * H * F + 4 * T * H) + 0.15 * (2 * H * H + 2 * H * V)
    assert model_flops_per_token(cfg, T) == pytest.approx(3 * fwd, rel=1e-12)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="seq_len"):
            model_flops_per_token(cfg, bad)
    with pytest.raises(ValueError, match="p_mask"):
        model_flops_per_token(cfg, 512, p_mask=1.5)


def test_peak_flops_override_cpu_and_table(caplog):
    assert peak_flops("cpu", override=123e12) == 123e12
    assert peak_flops(torch.device("cpu"), override=5) == 5.0
    assert peak_flops("cpu") is None
    for bad in (0, -1.0, float("nan"), float("inf"), True, "790e12"):
        with pytest.raises(ValueError, match="override"):
            peak_flops("cpu", override=bad)
    names = {"NVIDIA H100 80GB HBM3": 790e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H200": 790e12,
             "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12,
             "NVIDIA L4": 121e12, "NVIDIA L40S": 362e12, "NVIDIA L40": 181e12,
             "NVIDIA A10G": 70e12, "NVIDIA B200": 2250e12}
    for name, want in names.items():
        assert M.peak_flops_for_name(name) == want, name
    with caplog.at_level(logging.WARNING, logger=M.__name__):
        assert M.peak_flops_for_name("Imaginary GPU 9000") is None
    assert "Imaginary GPU 9000" in caplog.text and "peak_flops" in caplog.text


def test_throughput_window_with_fake_clock():
    now = [100.0]
    tp = Throughput(clock=lambda: now[0])
    assert tp.rate() == 0.0  # no time has passed
    tp.update(1000)
    tp.update(3000)
    now[0] += 2.0
    assert tp.tokens == 4000 and tp.steps == 2 and tp.elapsed == 2.0
    assert tp.rate() == 2000.0
    tp.reset()
    tp.update(500)
    now[0] += 0.25
    assert tp.rate() == 2000.0 and tp.steps == 1
    with pytest.raises(ValueError):
        tp.update(-1)


# ---------------------------------------------------------------------------- metrics.jsonl
def test_jsonl_round_trip_nested_and_nonfinite(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as lg:
        lg.log(10, {"loss": 2.5, "loss_lang": {"en": 2.25, "sw": float("nan")}, "lr": 1e-4,
                    "grad_norm": torch.tensor(0.75), "tokens_per_s": np.float32(1234.5),
                    "steps": np.int64(3), "note": "ok", "flag": True, "hist": [1, 2.5]})
        lg.log(10, {"loss": float("inf"), "ppl": float("nan")}, kind="eval")
        lg.log(20, {"loss": 2.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:  # strict JSON: no NaN/Infinity tokens
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    recs = read_metrics(tmp_path)
    r0, r1, r2 = recs
    assert r0["step"] == 10 and r0["kind"] == "train" and isinstance(r0["time"], float)
    assert r0["loss"] == 2.5 and r0["loss_lang"] == {"en": 2.25, "sw": None}
    assert r0["grad_norm"] == 0.75 and r0["tokens_per_s"] == 1234.5 and r0["steps"] == 3
    assert r0["note"] == "ok" and r0["flag"] is True and r0["hist"] == [1, 2.5]
    assert r1["kind"] == "eval" and r1["loss"] is None and r1["ppl"] is None
    assert r2["step"] == 20 and r2["loss"] == 2.0
    # read_metrics also takes the file itself
    assert read_metrics(tmp_path / "metrics.jsonl") == recs


def test_log_errors_and_disabled(tmp_path):
    lg = MetricsLogger(tmp_path / "run", tensorboard=False)
    with pytest.raises(ValueError, match="reserved"):
        lg.log(1, {"step": 3})
    with pytest.raises(TypeError, match="loss"):
        lg.log(1, {"loss": torch.ones(3)})
    with pytest.raises(TypeError, match="weird"):
        lg.log(1, {"weird": object()})
    lg.close()
    lg.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        lg.log(1, {"loss": 1.0})

    off = MetricsLogger(tmp_path / "rank1", enabled=False, tensorboard=True)
    off.log(1, {"loss": 1.0})
    off.close()
    assert not (tmp_path / "rank1").exists()
    assert read_metrics(tmp_path / "missing") == []


def test_read_metrics_resume_dedupe_and_partial_line(tmp_path, caplog):
    # First run logs steps 10..40, crashes mid-line; the resume restarts from its step-20
    # checkpoint and logs 30, 40, 50 again with new values.
    with MetricsLogger(tmp_path, tensorboard=False) as lg:
        for s in (10, 20, 30, 40):
            lg.log(s, {"loss": 10.0 - s / 10})
        lg.log(20, {"loss": 9.0}, kind="eval")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "kind": "tra')  # partial write at the crash
    with MetricsLogger(tmp_path, tensorboard=False) as lg:  # append on resume
        for s in (30, 40, 50):
            lg.log(s, {"loss": 1.0 - s / 100})
        lg.log(40, {"loss": 8.0}, kind="eval")
    with caplog.at_level(logging.WARNING, logger=M.__name__):
        recs = read_metrics(tmp_path)
    assert "not valid JSON" in caplog.text
    train = [(r["step"], r["loss"]) for r in recs if r["kind"] == "train"]
    assert train == [(10, 9.0), (20, 8.0), (30, 0.7), (40, 0.6), (50, 0.5)]
    assert [(r["step"], r["loss"]) for r in recs if r["kind"] == "eval"] == [(20, 9.0), (40, 8.0)]
    raw = read_metrics(tmp_path, dedupe=False)
    assert len(raw) == 9


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, tensorboard=True) as lg:
        assert lg.tensorboard
        lg.log(5, {"loss": 2.5, "loss_lang": {"en": 2.0, "sw": 3.0}, "note": "x",
                   "flag": True, "nan": float("nan")})
        lg.log(6, {"loss": 2.25})
        lg.log(6, {"loss": 2.75, "ppl_lang": {"en": 7.5}}, kind="eval")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {"train/loss", "train/loss_lang/en", "train/loss_lang/sw", "eval/loss",
                    "eval/ppl_lang/en"}
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(5, 2.5), (6, 2.25)]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss_lang/sw")] == [(5, 3.0)]


def test_tensorboard_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    lg = MetricsLogger(tmp_path / "auto")  # None: quietly without
    assert not lg.tensorboard
    lg.log(1, {"loss": 1.0})
    lg.close()
    assert read_metrics(tmp_path / "auto")[0]["loss"] == 1.0
    with pytest.raises(ImportError, match=r"xlmr_fast\[tensorboard\]"):
        MetricsLogger(tmp_path / "required", tensorboard=True)
    assert not (tmp_path / "required").exists()  # refused before creating anything
    assert not (tmp_path / "tb-off").exists()
    MetricsLogger(tmp_path / "tb-off", tensorboard=False).close()
    assert not (tmp_path / "tb-off" / "tensorboard").exists()


# ---------------------------------------------------------------------------- plots
def write_run(run_dir, langs=("en", "fr", "sw"), with_eval=True):
    rng = np.random.default_rng(0)
    with MetricsLogger(run_dir, tensorboard=False) as lg:
        for s in range(10, 210, 10):
            per = {x: float(8 * math.exp(-s / 100) + i + rng.random() * 0.1)
                   for i, x in enumerate(langs)}
            lg.log(s, {"loss": sum(per.values()) / len(per), "loss_lang": per,
                       "lr": 1e-4 * min(1.0, s / 50)})
            if with_eval and s % 50 == 0:
                ev = {x: v + 0.2 for x, v in per.items()}
                lg.log(s, {"loss": sum(ev.values()) / len(ev), "loss_lang": ev,
                           "ppl_lang": {x: math.exp(v) for x, v in ev.items()}}, kind="eval")


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path


def test_plot_metrics_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    write_run(tmp_path)
    paths = plot_metrics(tmp_path)
    assert [p.name for p in paths] == ["loss.png", "loss_per_language.png", "lr.png"]
    for p in paths:
        assert p.parent == tmp_path
        assert_png(p)
    assert not list(tmp_path.glob(".*.tmp"))
    # two panels (train + eval) make a taller figure than one panel
    from PIL import Image  # matplotlib depends on pillow

    two = Image.open(tmp_path / "loss_per_language.png").size[1]
    write_run(tmp_path / "train_only", with_eval=False)
    paths = plot_metrics(tmp_path / "train_only")
    assert [p.name for p in paths] == ["loss.png", "loss_per_language.png", "lr.png"]
    one = Image.open(tmp_path / "train_only" / "loss_per_language.png").size[1]
    assert two > 1.5 * one


def test_plot_metrics_many_languages_and_nan(tmp_path):
    pytest.importorskip("matplotlib")
    langs = [f"l{i:02d}" for i in range(30)]  # more languages than colours
    write_run(tmp_path, langs=langs, with_eval=False)
    with MetricsLogger(tmp_path, tensorboard=False) as lg:
        lg.log(300, {"loss": float("nan"), "loss_lang": {"l00": float("nan")}})  # a bad step
    paths = plot_metrics(tmp_path)
    assert len(paths) == 3
    for p in paths:
        assert_png(p)


def test_plot_metrics_empty_and_without_matplotlib(tmp_path, monkeypatch, caplog):
    pytest.importorskip("matplotlib")
    assert plot_metrics(tmp_path) == []  # no metrics.jsonl
    write_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level(logging.WARNING, logger=M.__name__):
        assert plot_metrics(tmp_path) == []
    assert "xlmr_fast[plot]" in caplog.text
    assert not list(tmp_path.glob("*.png"))


# ---------------------------------------------------------------------------- console line
def test_format_log_line():
    m = {"loss": 2.345678, "loss_lang": {"en": 2.0}, "lr": 1.5e-4, "grad_norm": 0.8123,
         "tokens_per_s": 581234.0, "mfu": 0.5432, "peak_mem_gb": 38.24, "steps": 4}
    assert format_log_line(1200, m) == ("step 1200 | loss 2.3457 | lr 1.50e-04 | gnorm 0.812 | "
                                        "581.2k tok/s | MFU 54.3% | mem 38.2 GB")
    assert format_log_line(3, {"loss": float("nan"), "tokens_per_s": 950.0, "mfu": None}) == \
        "step 3 | loss nan | 950 tok/s"
    assert format_log_line(7, {"tokens_per_s": 2.5e6, "loss": torch.tensor(1.25)}) == \
        "step 7 | loss 1.2500 | 2.50M tok/s"
    assert format_log_line(0, {}) == "step 0"


def test_peak_memory_off_cuda():
    assert M.peak_memory_gb("cpu") is None
    if not torch.cuda.is_available():
        assert M.peak_memory_gb() is None


@pytest.mark.gpu
def test_peak_flops_and_memory_on_this_gpu():
    name = torch.cuda.get_device_name()
    want = M.peak_flops_for_name(name)
    assert peak_flops() == peak_flops(0) == peak_flops("cuda") == want
    if "H100" in name.upper() or "H200" in name.upper():
        assert want in (790e12, 756e12)
    x = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB
    assert M.peak_memory_gb() >= 0.25
    del x

"""Training metrics: model FLOPs and MFU, tokens/s, metrics.jsonl (+ TensorBoard), plots, log lines.

    fpt = model_flops_per_token(cfg, seq_len=512)            # training FLOPs per token (3x forward)
    tflops = train_cfg.run.peak_tflops                         # TFLOP/s, or None: detect
    peak = peak_flops(device, override=tflops * 1e12 if tflops else None)  # None: no MFU
    tput = Throughput()
    ... each optimizer step: tput.update(tokens_in_step)  # this rank's, all micro-batches
    ... each log interval (after a device sync):
    tps = tput.rate(); tput.reset()
    m = {"loss": 2.31, "loss_lang": {"en": 2.2, "sw": 2.9}, "lr": 1e-4, "grad_norm": 0.8,
         "tokens_per_s": tps, "mfu": mfu(tps, fpt, peak), "peak_mem_gb": peak_memory_gb(device)}
    logger.log(step, m)                   # kind="train"
    logger.log(step, {"loss": 2.4, "ppl": 11.0, "loss_lang": {...}, "ppl_lang": {...}}, kind="eval")
    tqdm.write(format_log_line(step, m))
    ... at the end: logger.close(); plot_metrics(run_dir)

Metric keys the plots and the log line understand (others are logged and stored as given):
    loss, loss_lang {lang: loss}, lr, grad_norm, tokens_per_s, mfu (a fraction, 0.55 = 55%),
    peak_mem_gb (peak device memory in binary GB, 2**30 bytes); eval records add ppl and
    ppl_lang {lang: ppl}.

metrics.jsonl is one JSON object per line: {"step", "kind", "time" (unix seconds), **metrics}.
JSON has no NaN/Infinity, so a non-finite float (a diverged loss) is written as null. Nested
dicts stay nested in the file; TensorBoard gets them flattened as "<kind>/loss_lang/en".
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_write

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
_RESERVED = ("step", "kind", "time")

# Dense bf16 matrix-multiply peak (FLOP/s) by GPU name, most specific first. Hopper entries are
# what we measured on the device machines (DESIGN.md), not the 989 TFLOP/s datasheet number; the
# others are datasheet dense (non-sparse) bf16 rates. A wrong peak only mis-scales MFU, so an
# unknown GPU reports no MFU rather than a guess; pass the peak explicitly for those.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIE", 756e12),   # datasheet; PCIe cards clock lower than SXM
    ("H200", 790e12),        # measured here (also matches GH200, the same Hopper die)
    ("H100", 790e12),        # measured here
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
)
_warned_unknown: set[str] = set()


# ---------------------------------------------------------------------- FLOPs and MFU
def model_flops_per_token(cfg, seq_len: int, p_mask: float = 0.15, training: bool = True) -> float:
    """Model FLOPs per token (DESIGN.md "Performance bookkeeping").

    forward = L*(8H^2 + 4HF + 4TH) + p_mask*(2H^2 + 2HV)
      8H^2  Q, K, V and output projections (4 H x H matmuls, 2 FLOPs per multiply-add)
      4HF   the two FFN matmuls
      4TH   attention scores QK^T and probabilities x V against T keys
      p_mask*(2H^2 + 2HV)  LM head dense + tied vocabulary projection, on masked tokens only
    training = 3x forward (backward costs two forwards). Model FLOPs only: activation
    recomputation, embeddings, norms and softmax are not counted, as is usual for MFU.
    cfg: an XLMRConfig (hidden_size, num_layers, ffn_size, vocab_size)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"model_flops_per_token: seq_len must be a positive int, got {seq_len!r}")
    if not (isinstance(p_mask, (int, float)) and 0.0 <= p_mask <= 1.0):
        raise ValueError(f"model_flops_per_token: p_mask must be in [0, 1], got {p_mask!r}")
    L, H, F, V, T = cfg.num_layers, cfg.hidden_size, cfg.ffn_size, cfg.vocab_size, seq_len
    forward = L * (8 * H * H + 4 * H * F + 4 * T * H) + p_mask * (2 * H * H + 2 * H * V)
    return float(3 * forward if training else forward)


def peak_flops(device=None, override: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of `device` for MFU, or None when unknown (MFU is then not
    reported). `override` in FLOP/s (the training config's run.peak_tflops * 1e12) wins.
    device: None (the current CUDA device if any, else CPU), an int, a str or a torch.device.
    CPU -> None."""
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, (int, float)) \
                or not math.isfinite(override) or override <= 0:
            raise ValueError(f"peak_flops: override must be a positive number of FLOP/s, got "
                             f"{override!r}")
        return float(override)
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    elif isinstance(device, int):
        device = torch.device("cuda", device)
    else:
        device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return peak_flops_for_name(name)


def peak_flops_for_name(name: str) -> float | None:
    """Table lookup behind peak_flops(): the first PEAK_BF16_FLOPS key contained in the
    (upper-cased) device name; None with a one-time warning when nothing matches."""
    up = name.upper()
    for key, flops in PEAK_BF16_FLOPS:
        if key in up:
            return flops
    if name not in _warned_unknown:
        _warned_unknown.add(name)
        log.warning("peak_flops: unknown GPU %r, MFU will not be reported; pass its dense bf16 "
                    "peak explicitly (training config run.peak_tflops, in TFLOP/s)", name)
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation as a fraction (0.55 = 55%), or None when the peak is unknown.
    tokens_per_s and peak are of the same devices: one GPU's rate against one GPU's peak (a
    rate summed over W ranks needs peak * W)."""
    if peak is None or peak <= 0:
        return None
    return tokens_per_s * flops_per_token / peak


def peak_memory_gb(device=None) -> float | None:
    """Peak allocated memory on a CUDA device since the last torch.cuda.reset_peak_memory_stats,
    in binary GB (2**30 bytes, i.e. GiB); None off CUDA."""
    dev = torch.device(device) if device is not None else None
    if (dev is not None and dev.type != "cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated(dev) / 2**30


class Throughput:
    """Tokens per second over the window since the last reset().

    update(n_tokens) once per optimizer step; rate() divides the tokens since reset() by the
    wall time since reset(). The GPU runs asynchronously, so the caller must synchronize the
    device before rate() (at a log interval, where a sync is paid anyway) or the window ends
    while queued work is still running. `clock` is injectable for tests."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self._t0 = self._clock()
        self.tokens = 0
        self.steps = 0

    def update(self, n_tokens: int) -> None:
        if n_tokens < 0:
            raise ValueError(f"Throughput.update: n_tokens must be >= 0, got {n_tokens}")
        self.tokens += int(n_tokens)
        self.steps += 1

    @property
    def elapsed(self) -> float:
        return self._clock() - self._t0

    def rate(self) -> float:
        """Tokens per second since reset(); 0.0 before any time has passed."""
        dt = self.elapsed
        return self.tokens / dt if dt > 0 else 0.0


# ---------------------------------------------------------------------- metrics.jsonl
def _jsonable(v, where: str):
    """Plain JSON values: tensors/numpy scalars -> Python numbers, non-finite floats -> None."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _jsonable(x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise TypeError(f"MetricsLogger.log: metric {where} is a tensor of shape "
                            f"{tuple(v.shape)}; log scalars")
        return _jsonable(v.item(), where)  # .item() syncs the device: prefer Python numbers
    if isinstance(v, np.generic):
        return _jsonable(v.item(), where)
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist(), where)
    raise TypeError(f"MetricsLogger.log: metric {where} has unsupported type "
                    f"{type(v).__name__}; use numbers, strings, lists or dicts")


def _flatten(d: dict, prefix: str):
    for k, v in d.items():
        name = f"{prefix}/{k}"
        if isinstance(v, dict):
            yield from _flatten(v, name)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield name, v


class MetricsLogger:
    """Append metric records to run_dir/metrics.jsonl (and TensorBoard under run_dir/tensorboard).

    enabled      False on non-zero ranks: every method is a no-op and nothing is created
    tensorboard  None: use TensorBoard when `tensorboard` is installed; True: require it
                 (ImportError naming `pip install xlmr_fast[tensorboard]`); False: never

    The file is opened for appending, so a resumed run continues it; read_metrics() drops the
    records a resume re-did (see there)."""

    def __init__(self, run_dir, *, enabled: bool = True, tensorboard: bool | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = bool(enabled)
        self._file = None
        self._tb = None
        if not self.enabled:
            return
        writer_cls = None
        if tensorboard or tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter as writer_cls
            except ImportError as e:
                if tensorboard:
                    raise ImportError("MetricsLogger(tensorboard=True) needs the tensorboard "
                                      "package: pip install 'xlmr_fast[tensorboard]'") from e
                log.debug("tensorboard not installed; metrics go to %s only", self.path)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if self._ends_mid_line():
            # a crash left a partial last line: end it, or the first new record would be glued
            # onto it and lost with it
            self._file.write("\n")
            self._file.flush()
        if writer_cls is not None:
            self._tb = writer_cls(log_dir=str(self.run_dir / "tensorboard"))

    def _ends_mid_line(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def log(self, step: int, metrics: dict, *, kind: str = "train") -> None:
        """Append {"step", "kind", "time", **metrics} as one flushed JSON line (non-finite floats
        as null; tensors and numpy scalars as Python numbers) and send numeric values to
        TensorBoard as "<kind>/<key>[/<subkey>]"."""
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError(f"MetricsLogger.log: the logger for {self.path} is closed")
        if not isinstance(metrics, dict):
            raise TypeError(f"MetricsLogger.log: metrics must be a dict, got "
                            f"{type(metrics).__name__}")
        clash = [k for k in _RESERVED if k in metrics]
        if clash:
            raise ValueError(f"MetricsLogger.log: metric names {clash} are reserved (the record "
                             f"carries step, kind and time itself)")
        now = time.time()
        record = {"step": int(step), "kind": str(kind), "time": now,
                  **_jsonable(dict(metrics), "")}
        self._file.write(json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for tag, value in _flatten({k: record[k] for k in metrics}, kind):
                self._tb.add_scalar(tag, value, global_step=int(step), walltime=now)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(run_dir, *, dedupe: bool = True) -> list[dict]:
    """The records of run_dir/metrics.jsonl (or of that file given directly), in file order.

    Unparseable lines (a crash mid-write leaves a partial last line) are skipped with a warning.
    dedupe: a resumed run restarts from its checkpoint step and logs those steps again, so when a
    kind's step goes back to s, that kind's earlier records with step >= s are dropped: the result
    has one record per (kind, step), from the timeline that continued. Missing file -> []."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    records: list[dict | None] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not valid JSON (partial write?), skipped", path, lineno)
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                log.warning("%s:%d: not a metrics record, skipped", path, lineno)
                continue
            records.append(rec)
    if not dedupe:
        return records
    by_kind: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        idx = by_kind.setdefault(rec.get("kind", "train"), [])
        while idx and records[idx[-1]]["step"] >= rec["step"]:
            records[idx.pop()] = None
        idx.append(i)
    return [r for r in records if r is not None]


# ---------------------------------------------------------------------- plots
def _series(records, kind, key):
    pts = [(r["step"], r[key]) for r in records
           if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
    return [s for s, _ in pts], [v for _, v in pts]


def _lang_series(records, kind, key) -> dict[str, tuple[list, list]]:
    out: dict[str, tuple[list, list]] = {}
    for r in records:
        if r.get("kind") != kind or not isinstance(r.get(key), dict):
            continue
        for lang, v in r[key].items():
            if isinstance(v, (int, float)):
                xs, ys = out.setdefault(lang, ([], []))
                xs.append(r["step"])
                ys.append(v)
    return dict(sorted(out.items()))


def _save_atomic(fig, path: Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110,
                                                    bbox_inches="tight"), durable=False)


def _lang_styles(langs) -> dict[str, dict]:
    """One colour/line style per language, shared by both panels so a language looks the same
    in each. Up to 10 languages: tab10; more: tab20 x 4 line styles (80 distinct)."""
    import matplotlib

    langs = sorted(langs)
    n_col = 10 if len(langs) <= 10 else 20
    cmap = matplotlib.colormaps[f"tab{n_col}"]
    styles = ("-", "--", ":", "-.")
    return {x: {"color": cmap(i % n_col), "linestyle": styles[(i // n_col) % 4]}
            for i, x in enumerate(langs)}


def _plot_langs(ax, series: dict, styles: dict, *, marker=None, suffix=None):
    for lang, (xs, ys) in series.items():
        label = lang + (suffix(lang, ys) if suffix else "")
        ax.plot(xs, ys, label=label, marker=marker, markersize=3, linewidth=1, **styles[lang])
    ncol = max(1, math.ceil(len(series) / 25))
    ax.legend(fontsize=7, ncol=ncol, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0.0)


def plot_metrics(run_dir) -> list[Path]:
    """Write PNG plots from run_dir/metrics.jsonl into run_dir and return their paths:

      loss.png               train loss vs step, eval loss (markers) when logged
      loss_per_language.png  per-language train loss; a second panel of per-language eval loss
                             (latest perplexity in the legend) when eval records have loss_lang
      lr.png                 learning rate vs step, when logged

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch). Without
    matplotlib: a warning naming `pip install 'xlmr_fast[plot]'` and []. Each file is written
    under a temporary name and renamed, so a reader never sees a half-written PNG."""
    run_dir = Path(run_dir)
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("plot_metrics: matplotlib is not installed, no plots written; "
                    "pip install 'xlmr_fast[plot]'")
        return []
    records = read_metrics(run_dir)
    if not records:
        log.info("plot_metrics: no records in %s, no plots written", run_dir / METRICS_FILE)
        return []

    def new_fig(nrows=1, width=7.0, panel_height=3.6):
        fig = Figure(figsize=(width, panel_height * nrows))
        FigureCanvasAgg(fig)
        return fig

    written = []
    tx, ty = _series(records, "train", "loss")
    ex, ey = _series(records, "eval", "loss")
    if tx or ex:
        fig = new_fig()
        ax = fig.add_subplot(1, 1, 1)
        if tx:
            ax.plot(tx, ty, label="train", linewidth=1)
        if ex:
            ax.plot(ex, ey, label="eval", marker="o", markersize=4, linewidth=1)
        ax.set(xlabel="step", ylabel="MLM loss (nats)", title="masked-LM loss")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save_atomic(fig, run_dir / "loss.png"))

    train_lang = _lang_series(records, "train", "loss_lang")
    eval_lang = _lang_series(records, "eval", "loss_lang")
    if train_lang or eval_lang:
        panels = [p for p in (("train", train_lang), ("eval", eval_lang)) if p[1]]
        styles = _lang_styles(set(train_lang) | set(eval_lang))
        # a panel as tall as its legend (up to 25 rows of 7-point text per column)
        n = max(len(p[1]) for p in panels)
        rows = math.ceil(n / max(1, math.ceil(n / 25)))
        fig = new_fig(nrows=len(panels), width=8.5, panel_height=max(3.6, 0.16 * rows + 0.8))
        for row, (kind, series) in enumerate(panels, 1):
            ax = fig.add_subplot(len(panels), 1, row)
            if kind == "eval":
                # perplexity = exp(loss): the latest value per language in the legend (a second
                # exp-scaled axis was unreadable)
                _plot_langs(ax, series, styles, marker="o",
                            suffix=lambda lang, ys: f"  ppl {math.exp(min(ys[-1], 700.0)):.4g}")
                ax.set_title("eval loss per language (legend: latest perplexity)")
            else:
                _plot_langs(ax, series, styles)
                ax.set_title("train loss per language")
            ax.set(xlabel="step", ylabel="MLM loss (nats)")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save_atomic(fig, run_dir / "loss_per_language.png"))

    lx, ly = _series(records, "train", "lr")
    if lx:
        fig = new_fig()
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(lx, ly, linewidth=1)
        ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
        ax.grid(alpha=0.3)
        written.append(_save_atomic(fig, run_dir / "lr.png"))
    return written


# ---------------------------------------------------------------------- console
def _fmt_rate(tps: float) -> str:
    if tps >= 1e6:
        return f"{tps / 1e6:.2f}M"
    if tps >= 1e3:
        return f"{tps / 1e3:.1f}k"
    return f"{tps:.0f}"


def format_log_line(step: int, metrics: dict) -> str:
    """One compact console line: step, loss, lr, grad norm, tokens/s, MFU %, peak memory.
    Keys that are missing or None are left out; a non-finite loss prints as nan/inf."""
    parts = [f"step {int(step)}"]

    def num(key):
        v = metrics.get(key)
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    if (v := num("loss")) is not None:
        parts.append(f"loss {v:.4f}")
    if (v := num("lr")) is not None:
        parts.append(f"lr {v:.2e}")
    if (v := num("grad_norm")) is not None:
        parts.append(f"gnorm {v:.3f}")
    if (v := num("tokens_per_s")) is not None:
        parts.append(f"{_fmt_rate(v)} tok/s")
    if (v := num("mfu")) is not None:
        parts.append(f"MFU {100 * v:.1f}%")
    if (v := num("peak_mem_gb")) is not None:
        parts.append(f"mem {v:.1f} GB")
    return " | ".join(parts)

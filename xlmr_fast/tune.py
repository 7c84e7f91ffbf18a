"""`xlmr-fast tune`: time each op's candidate paths on this GPU, keep the fastest.

Writes the tuning file that xlmr_fast.tuning reads (see its doc for the format and where the
ops look), so the choices below follow the GPU the job runs on instead of the tables measured
on ours:

  linear_cross_entropy   N masked rows (--rows) x H x V (--vocab), in training's layout: 16-bit
                         hidden, fp32 master weight and bias, loss.backward() with the gradient
                         added into weight.grad. Candidates: triton/recompute,
                         triton/tokenchunk, cuda (when the extension has CUDA kernels). Knobs:
                         .backend (fastest overall) and .schedule (fastest Triton schedule).
  add_dropout_layernorm  --tokens rows x H, dropout 0.1, forward + backward; x 16-bit and the
                         residual fp32 (the model under autocast) or 16-bit (a 16-bit model).
  bias_gelu              in context: the fc1 GEMM (H -> 4H) with its bias in the GEMM epilogue
                         + GELU, against the GEMM without bias + the fused bias-GELU kernel;
                         under autocast, forward + backward.
For the two layer ops the candidates are the fused op, eager PyTorch and torch.compile of the
same code; "fused" is kept only when it beats both (issue 5's rule), else "torch".
  attention              the model's call (attention_qkvpacked, forward + backward) on --tokens
                         tokens of heads of 64 (hidden / 64 heads), at each --seqlens length,
                         padded (key mask; lengths uniform in [T/2, T]) and varlen (the same
                         tokens packed), without and with dropout 0.1: our Triton kernel against
                         SDPA. Knob attention.backend, per layout, length bucket, heads, dropout
                         and dtype: the model then uses SDPA where SDPA was faster here.

Times are medians of CUDA-event timings of back-to-back calls (as triton.testing.do_bench).
A candidate that fails (out of memory, a refused input) is recorded with its error and skipped.
An existing file at --out is updated: keys measured now replace theirs, others stay.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import os
import statistics
import time

import torch
import torch.nn.functional as F

from . import tuning
from ._device import parse_device
from .cli import register

OPS = ("linear_cross_entropy", "add_dropout_layernorm", "bias_gelu", "attention")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DROPOUT = 0.1   # XLM-R's hidden dropout
EPS = 1e-5


def _put_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def scoped_env(**values):
    """Set environment variables for the block (None unsets), then restore them."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            _put_env(k, v)
        yield
    finally:
        for k, v in old.items():
            _put_env(k, v)


def time_ms(fn, device: torch.device, warmup: int = 3, rep: int = 10,
            sync_each: bool = False) -> float:
    """Median of time_samples(): fn()'s time in ms."""
    return statistics.median(time_samples(fn, device, warmup, rep, sync_each))


def time_samples(fn, device: torch.device, warmup: int = 3, rep: int = 10,
                 sync_each: bool = False) -> list[float]:
    """`rep` times of fn() in ms: perf_counter on the CPU; on the GPU CUDA events around each
    of `rep` calls enqueued back to back and synchronised once at the end (as
    triton.testing.do_bench does), so a call is timed from its first to its last kernel while
    the host runs ahead, as in a training loop (host overhead shows only where the host is
    slower than the device); sync_each=True synchronises after every call instead."""
    if rep < 1:
        raise ValueError(f"rep must be >= 1, got {rep}")
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = []
        for _ in range(rep):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            events.append((a, b))
            if sync_each:
                torch.cuda.synchronize(device)
        torch.cuda.synchronize(device)
        return [a.elapsed_time(b) for a, b in events]
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def interleaved(calls: dict, device: torch.device, warmup: int, rounds: int, per_round: int,
                timer=time_ms, context=None, deadline: float | None = None) -> dict:
    """{name: [timer(fn, device, 0, per_round) per round], or the exception fn raised}.

    The calls are timed in interleaved rounds: every call's turn in round r comes before any
    turn in round r + 1, so that clock and thermal drift over a long run falls on all of them
    alike instead of on whichever runs last (Liger's benchmark method). Each call first gets
    `warmup` untimed runs (JIT, torch.compile, autotuning). context(name), if given, is entered
    around each turn. A call that raises is left out of the later rounds.

    deadline (time.time() seconds), if given, trades samples for an answer when a time limit
    is near: a call whose warm-up would start past it is not run (a TimeoutError in its
    place), and no round after the first starts past it, so a bench killed at its limit a
    little later has still written rows of every call that was warmed up."""
    ctx = context or (lambda name: contextlib.nullcontext())
    got = {name: [] for name in calls}
    late = (lambda: False) if deadline is None else (lambda: time.time() > deadline)
    for r in range(rounds + 1):  # round 0: warm-up
        if r >= 2 and late():
            print(f"deadline: timed {r - 1} of {rounds} rounds", flush=True)
            break
        for name, fn in calls.items():
            if isinstance(got[name], Exception):
                continue
            if r == 0 and late():
                got[name] = TimeoutError("not run: the deadline passed before its warm-up")
                continue
            try:
                with ctx(name):
                    if r == 0:
                        for _ in range(warmup):
                            fn()
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)  # an asynchronous error shows here
                    else:
                        got[name].append(timer(fn, device, 0, per_round))
            except Exception as e:  # OOM or a library failure: the caller reports it
                # without its traceback, whose frames would keep the failed call's tensors
                # (e.g. a V x H gradient) alive through every later candidate
                got[name] = e.with_traceback(None)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return got


def measure(candidates: dict, device: torch.device, warmup: int, rep: int, timer=time_ms) -> dict:
    """{name: median ms, or 'error: ...'} for each candidate: `rep` timed calls each, two per
    interleaved round (see interleaved()); a failure does not stop the rest."""
    per_round = min(2, rep)
    got = interleaved(candidates, device, warmup, -(-rep // per_round), per_round, timer)
    out = {}
    for name, v in got.items():
        if isinstance(v, Exception):
            first = (str(v).splitlines() or [""])[0][:200]
            out[name] = f"error: {type(v).__name__}: {first}"
        else:
            out[name] = round(float(statistics.median(v)), 4)
    return out


def fastest(times: dict, among=None) -> str | None:
    """The candidate with the smallest time (among `among` if given); None if none ran."""
    ok = {k: v for k, v in times.items()
          if isinstance(v, float) and (among is None or k in among)}
    return min(ok, key=ok.get) if ok else None


def pick_lce(times: dict) -> dict:
    """{knob: value} from linear_cross_entropy's times: the backend only when both backends
    ran (else there is nothing to choose), the schedule from the Triton candidates."""
    out = {}
    best_triton = fastest(times, ("triton/recompute", "triton/tokenchunk"))
    if best_triton is not None:
        out["linear_cross_entropy.schedule"] = best_triton.split("/")[1]
        if isinstance(times.get("cuda"), float):
            best = fastest(times, ("cuda", best_triton))
            out["linear_cross_entropy.backend"] = "cuda" if best == "cuda" else "triton"
    return out


def pick_fused(times: dict) -> str | None:
    """'fused' when the fused op beat every baseline that ran, 'torch' otherwise; None when no
    baseline ran (nothing to compare against)."""
    base = [v for k, v in times.items() if k != "fused" and isinstance(v, float)]
    if not base:
        return None
    f = times.get("fused")
    return "fused" if isinstance(f, float) and f < min(base) else "torch"


# ---------------------------------------------------------------- candidates per op
def lce_candidates(device, H: int, dtype, rows: int, vocab: int) -> dict:
    from . import _ext
    from .ops import linear_cross_entropy as lce

    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(rows, H, device=device, generator=g).to(dtype).requires_grad_()
    w = (0.02 * torch.randn(vocab, H, device=device, generator=g)).requires_grad_()
    b = torch.zeros(vocab, device=device, requires_grad=True)
    t = torch.randint(0, vocab, (rows,), device=device, generator=g)

    def run(backend, schedule):
        def step():
            try:
                with scoped_env(XLMR_FAST_LCE_BACKEND=backend, XLMR_FAST_LCE_SCHEDULE=schedule):
                    lce(h, w, b, t, accumulate_weight_grad=True).backward()
            finally:  # every call (and the next candidate, after a failure) starts without .grad
                h.grad = w.grad = b.grad = None
        return step

    cands = {"triton/recompute": run("triton", "recompute"),
             "triton/tokenchunk": run("triton", "tokenchunk")}
    if device.type == "cuda" and _ext.has_kernel("linear_cross_entropy_fwd", "CUDA"):
        cands["cuda"] = run("cuda", None)
    return cands


def _adln_plain(x, r, w, b):
    return F.layer_norm(r + F.dropout(x, DROPOUT, training=True), (x.shape[-1],), w, b, EPS)


def _gelu_plain(x, w, b):
    return F.gelu(F.linear(x, w, b))


def _gelu_fused(x, w, b):
    from .ops import bias_gelu
    return bias_gelu(F.linear(x, w), b)


def _grad_step(fn, inputs, dy, autocast_dtype=None):
    def step():
        ctx = (torch.autocast(inputs[0].device.type, dtype=autocast_dtype) if autocast_dtype
               else contextlib.nullcontext())
        with ctx:
            y = fn(*inputs)
        torch.autograd.grad(y, inputs, dy)
    return step


def _with_baselines(fused, plain, compile_baseline: bool) -> dict:
    cands = {"fused": fused, "eager": plain}
    if compile_baseline:
        cands["compile"] = torch.compile(plain, dynamic=False)
    return cands


def adln_candidates(device, H: int, dtype, rdtype, tokens: int, compile_baseline=True) -> dict:
    from .ops import add_dropout_layernorm as op
    pdtype = torch.float32 if rdtype == torch.float32 else dtype  # LayerNorm params
    x = torch.randn(tokens, H, device=device, dtype=dtype, requires_grad=True)
    r = torch.randn(tokens, H, device=device, dtype=rdtype, requires_grad=True)
    w = (1 + 0.1 * torch.randn(H, device=device)).to(pdtype).requires_grad_()
    b = (0.1 * torch.randn(H, device=device)).to(pdtype).requires_grad_()
    dy = torch.randn(tokens, H, device=device, dtype=rdtype)

    def fused(x, r, w, b):
        return op(x, r, w, b, dropout_p=DROPOUT, eps=EPS)
    fns = _with_baselines(fused, _adln_plain, compile_baseline)
    return {k: _grad_step(f, (x, r, w, b), dy) for k, f in fns.items()}


def bias_gelu_candidates(device, H: int, dtype, tokens: int, compile_baseline=True) -> dict:
    # The layer's tensors under autocast: fp32 residual-stream input, fp32 master weights.
    x = torch.randn(tokens, H, device=device, requires_grad=True)
    w = (0.02 * torch.randn(4 * H, H, device=device)).requires_grad_()
    b = (0.02 * torch.randn(4 * H, device=device)).requires_grad_()
    dy = torch.randn(tokens, 4 * H, device=device, dtype=dtype)
    fns = _with_baselines(_gelu_fused, _gelu_plain, compile_baseline)
    return {k: _grad_step(f, (x, w, b), dy, autocast_dtype=dtype) for k, f in fns.items()}


def attention_candidates(device, heads: int, dtype, T: int, tokens: int, varlen: bool,
                         dropout: float) -> dict:
    """fwd+bwd of attention_qkvpacked (the model's call) on one batch, through our Triton kernel
    and through SDPA (each forced with XLMR_FAST_BACKEND, as attention_backend() would pick it)."""
    from .ops import attention_qkvpacked
    from .ops.attention import TUNED_HEAD_DIM as D
    B = max(1, tokens // T)
    g = torch.Generator().manual_seed(T)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    lengths[0] = T  # the batch's longest sequence has the bucket's length
    if varlen:
        total = int(lengths.sum())
        qkv = torch.randn(total, 3, heads, D, device=device, dtype=dtype)
        cu = torch.zeros(B + 1, dtype=torch.int32)
        cu[1:] = lengths.cumsum(0)
        kw = dict(cu_seqlens=cu.to(device), max_seqlen=T)
        dout = torch.randn(total, heads, D, device=device, dtype=dtype)
    else:
        qkv = torch.randn(B, T, 3, heads, D, device=device, dtype=dtype)
        kw = dict(key_padding_mask=(torch.arange(T)[None, :] >= lengths[:, None]).to(device))
        dout = torch.randn(B, heads, T, D, device=device, dtype=dtype)
    qkv.requires_grad_()

    def run(forced):
        def step():
            with scoped_env(XLMR_FAST_BACKEND=forced):
                out = attention_qkvpacked(qkv, dropout_p=dropout, **kw)
                torch.autograd.grad(out, (qkv,), dout)
        return step
    return {"triton": run("triton"), "sdpa": run("reference")}


def _fused_op_runs(device, op: str) -> str | None:
    """Why the fused op cannot run its kernel here (then there is nothing to tune), or None."""
    from .ops import _backend
    if not _backend.triton_usable(device):
        return f"{op}: triton cannot run on {device} (CUDA, or the CPU with TRITON_INTERPRET=1)"
    if _backend.forced() == "reference":
        return f"{op}: XLMR_FAST_BACKEND=reference"
    return None


# ---------------------------------------------------------------- the run
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        from .ops import _backend
        return _backend._cuda_device_name(device.index if device.index is not None
                                          else torch.cuda.current_device())
    return device.type


def triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except Exception:
        return None


def source_commit() -> str | None:
    """XLMR_FAST_COMMIT when set (the device machine's copy of the tree can carry a stale
    .git, so the caller passes the real commit), else git's HEAD of this checkout, else None."""
    import subprocess
    env = os.environ.get("XLMR_FAST_COMMIT")
    if env:
        return env
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


def _versions() -> dict:
    try:
        from importlib.metadata import version
        package = version("xlmr_fast")
    except Exception:
        package = None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version(),
            "xlmr_fast": package, "commit": source_commit()}


def tune(device: torch.device, ops=OPS, hidden=(768, 1024), dtypes=(torch.bfloat16,),
         rows: int = 8192, vocab: int = 250002, tokens: int = 64 * 512, warmup: int = 3,
         rep: int = 10, compile_baseline: bool = True, timer=time_ms, log=print,
         save=None, seqlens=None) -> dict:
    """Time every candidate and return the tuning document (choices, timings, settings).
    save(doc), if given, gets the document so far after each measurement: a run cut short
    (a device call's time limit) keeps what it measured. seqlens: attention's batch lengths
    (default: xlmr_fast.ops.attention.SEQLEN_BUCKETS)."""
    from .ops.attention import SEQLEN_BUCKETS, TUNED_HEAD_DIM, attention_tuning_key
    seqlens = tuple(seqlens or SEQLEN_BUCKETS)
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise ValueError(f"tune: unknown op(s) {unknown}; known: {', '.join(OPS)}")
    choices: dict[str, dict[str, str]] = {}
    timings: dict[str, dict[str, dict]] = {}
    skipped: dict[str, str] = {}

    def record(op, key, times, picked: dict):
        timings.setdefault(op, {})[key] = times
        for knob, value in picked.items():
            choices.setdefault(knob, {})[key] = value
        cells = "  ".join(f"{k} {v:.3f} ms" if isinstance(v, float) else f"{k} {v}"
                          for k, v in times.items())
        log(f"{op:22s} {key:24s} {cells}  ->  "
            f"{', '.join(f'{k}={v}' for k, v in picked.items()) or 'no choice'}")
        if save is not None:
            save(document())

    def document():
        return {
            "format": tuning.FORMAT,
            "device": device_name(device),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "settings": {"rows": rows, "vocab": vocab, "tokens": tokens, "dropout": DROPOUT,
                         "warmup": warmup, "rep": rep, "compile_baseline": compile_baseline,
                         "seqlens": list(seqlens)},
            "choices": choices,
            "timings_ms": timings,
            "skipped": skipped,
        }

    def tune_fused(op, key, cands):
        times = measure(cands, device, warmup, rep, timer)
        p = pick_fused(times)
        record(op, key, times, {op: p} if p else {})

    for dtype in dtypes:
        for H in hidden:
            if "linear_cross_entropy" in ops:
                key = tuning.key(H, dtype)
                times = measure(lce_candidates(device, H, dtype, rows, vocab), device, warmup,
                                rep, timer)
                record("linear_cross_entropy", key, times, pick_lce(times))
            if "add_dropout_layernorm" in ops:
                why = _fused_op_runs(device, "add_dropout_layernorm")
                if why:
                    skipped["add_dropout_layernorm"] = why
                else:
                    for rdtype in (torch.float32, dtype):
                        tune_fused("add_dropout_layernorm", tuning.key(H, dtype, rdtype),
                                   adln_candidates(device, H, dtype, rdtype, tokens,
                                                   compile_baseline))
            if "bias_gelu" in ops:
                why = _fused_op_runs(device, "bias_gelu")
                if why:
                    skipped["bias_gelu"] = why
                else:
                    tune_fused("bias_gelu", tuning.key(H, dtype),
                               bias_gelu_candidates(device, H, dtype, tokens, compile_baseline))
    # attention last: the LM head and the layer ops matter more, and a run cut short keeps
    # what it measured
    if "attention" in ops:
        why = _fused_op_runs(device, "attention")
        if why:
            skipped["attention"] = why
        else:
            for dtype, H, T, varlen, p in itertools.product(dtypes, hidden, seqlens,
                                                            (False, True), (0.0, DROPOUT)):
                heads = max(1, H // TUNED_HEAD_DIM)
                key = attention_tuning_key("varlen" if varlen else "padded", T, heads, p > 0,
                                           dtype)
                if key is None:
                    skipped["attention"] = f"--seqlens {T}: longer than the tuned lengths"
                    continue
                times = measure(attention_candidates(device, heads, dtype, T, tokens, varlen, p),
                                device, warmup, rep, timer)
                best = fastest(times)
                record("attention", key, times, {"attention.backend": best} if best else {})
    for op, why in skipped.items():
        log(f"{op:22s} skipped: {why}")
    return document()


def merge(old: dict, new: dict) -> dict:
    """new's measured keys over old's (same device): choices and timings key by key."""
    doc = dict(new)
    for field in ("choices", "timings_ms"):
        merged = {k: dict(v) for k, v in old.get(field, {}).items()}
        for k, v in new.get(field, {}).items():
            merged.setdefault(k, {}).update(v)
        doc[field] = merged
    return doc


def describe(device: torch.device, hidden: int, dtype, fused_layer_ops=None) -> str:
    """One line: which path the LM head and the layer ops take for a model of width `hidden`
    computing in `dtype` on `device` (16-bit dtype: under autocast, fp32 residual stream), as
    the ops will choose (forcing variables, tuning files, tables)."""
    import importlib
    lce = importlib.import_module("xlmr_fast.ops.linear_cross_entropy")
    adln = importlib.import_module("xlmr_fast.ops.add_dropout_layernorm")
    bg = importlib.import_module("xlmr_fast.ops.bias_gelu")
    backend, why = lce._choose_backend(device.type, device.index, hidden, dtype, torch.float32)
    head = f"{backend} ({why})"
    if backend == "triton":
        head = (f"triton, {lce._schedule(device.type, device.index, hidden, dtype)} schedule "
                f"({why})")

    def layer_op(faster, *key):
        on = faster(device, hidden, dtype, *key) if fused_layer_ops is None else fused_layer_ops
        return "fused" if on else "torch"
    files = [str(p) for p in tuning.sources(device_name(device)) if p.is_file()]
    return (f"LM head + CE: {head}; residual+dropout+LayerNorm: "
            f"{layer_op(adln.faster_than_torch, torch.float32)}; bias+GELU: "
            f"{layer_op(bg.faster_than_torch)} (hidden {hidden}, {str(dtype)[6:]}; tuning files: "
            f"{', '.join(files) if files and device.type == 'cuda' else 'none'})")


# ---------------------------------------------------------------- command line
def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS, help="ops to tune")
    p.add_argument("--hidden", nargs="+", type=int, default=[768, 1024],
                   help="model widths (768 base, 1024 large)")
    p.add_argument("--dtype", nargs="+", default=["bf16"], choices=sorted(DTYPES),
                   help="16-bit compute dtypes")
    p.add_argument("--rows", type=int, default=8192, help="masked rows for linear_cross_entropy")
    p.add_argument("--vocab", type=int, default=250002, help="vocabulary size")
    p.add_argument("--tokens", type=int, default=64 * 512,
                   help="tokens for the layer ops and per attention batch")
    from .ops.attention import SEQLEN_BUCKETS
    p.add_argument("--seqlens", nargs="+", type=int, default=list(SEQLEN_BUCKETS),
                   help="attention batch lengths to time (each is filed under its bucket: "
                        "128, 256 or 512)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rep", type=int, default=10, help="timed calls per candidate (median)")
    p.add_argument("--device", default="cuda",
                   help="cuda, cuda:N (cpu only checks the command under TRITON_INTERPRET=1: "
                        "its times mean nothing)")
    p.add_argument("--no-compile-baseline", action="store_true",
                   help="skip torch.compile baselines of the layer ops (faster; the fused op "
                        "then only has to beat eager)")
    p.add_argument("--out", default=None, help="tuning file to write (default: the user cache "
                                               "file the ops read for this GPU)")
    p.add_argument("--show", action="store_true",
                   help="print the tuned choices in effect for this GPU and the files read; "
                        "measure nothing")


def _run(a: argparse.Namespace) -> int:
    device = parse_device(a.device, "--device", "tuning times the GPU paths" + (
        "; --show reads the choices for a GPU: run it there" if a.show else ""))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the timing events record on the current device
    name = device_name(device)
    if a.show:
        for path in tuning.sources(name):
            print(f"{path}: {'read' if path.is_file() else 'absent'}")
        for knob, table in tuning.choices(name).items():
            for k, v in sorted(table.items()):
                print(f"{knob:32s} {k:24s} {v}")
        for h in a.hidden:
            for d in a.dtype:
                print(describe(device, h, DTYPES[d]))
        return 0
    for flag in ("rows", "vocab", "tokens", "rep"):
        if getattr(a, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(a, flag)}")
    from .ops.attention import SEQLEN_BUCKETS
    if any(not 2 <= t <= SEQLEN_BUCKETS[-1] for t in a.seqlens):
        raise ValueError(f"--seqlens must be in [2, {SEQLEN_BUCKETS[-1]}] (the tuned lengths), "
                         f"got {a.seqlens}")
    if any(h < 1 for h in a.hidden):
        raise ValueError(f"--hidden must be positive, got {a.hidden}")
    out = a.out or tuning.user_path(name)
    old = None
    if os.path.isfile(out):
        try:
            old = tuning.read(out)
        except ValueError as e:  # unreadable, or not a format this version reads: the ops'
            # error for it says to re-run this command, so it must not stop here too
            print(f"{out}: not a tuning file this version can update, replaced by this run's "
                  f"({str(e).split(' (re-run')[0]})")
    if old is not None and old["device"] != name:
        print(f"{out} held {old['device']!r}'s choices: replaced by this GPU's")
        old = None

    def save(doc):  # after every measurement (atomic): a run cut short keeps what it measured
        return tuning.write(merge(old, doc) if old is not None else doc, out)
    doc = tune(device, ops=tuple(a.ops), hidden=tuple(a.hidden),
               dtypes=tuple(DTYPES[d] for d in a.dtype), rows=a.rows, vocab=a.vocab,
               tokens=a.tokens, warmup=a.warmup, rep=a.rep,
               compile_baseline=not a.no_compile_baseline, save=save,
               seqlens=tuple(a.seqlens))
    print("wrote", save(doc))
    return 0


register("tune", "time each op's paths on this GPU and write the tuning file the ops read",
         _args, _run)

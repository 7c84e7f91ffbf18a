"""Benchmark xf.ops.linear_cross_entropy at XLM-R LM-head shapes (masked rows only).

    python -m bench.bench_linear_cross_entropy       # N 8192 and 4915 x H 1024 and 768, bf16
    python -m bench.bench_linear_cross_entropy --N 8192 --H 1024 --modes full --providers ours torch
    python -m bench.bench_linear_cross_entropy --chunk 1024 2048 4096 8192   # chunk sweep (ours)
    python -m bench.bench_linear_cross_entropy --sweep             # Triton block-config sweep
    python -m bench.bench_linear_cross_entropy --breakdown         # token-chunk phases (ms, rates)

Providers (same inputs, one process): torch eager (F.linear + F.cross_entropy), torch.compile
of it, Liger LigerFusedLinearCrossEntropyLoss and Cut Cross-Entropy when importable (CCE
25.x takes no bias: it runs without one, noted in the row), ours-triton, ours-triton-cublasmm
(the same with the backward GEMMs on cuBLAS), ours-triton-flat and ours-triton-flat-cublasmm
(the forward / dlogits kernels with their flattened tile loops, XLMR_FAST_LCE_FLAT=1), ours-cuda,
ours-triton-tokenchunk (the 6NHV token-chunk schedule, XLMR_FAST_LCE_SCHEDULE=tokenchunk: full
mode only, as it computes the gradients in the forward; --rows adds -r<rows> variants).
Modes: forward (no autograd) and full (forward + backward of all of hidden, weight, bias).
TFLOP/s counts model FLOPs: 2NHV forward, 6NHV full (no recompute counted, so a recomputing
kernel is charged for its extra work; kernels.md §1.5 target: >= 650 TFLOP/s). Peak memory is
the allocation above the inputs during one call. The providers of one (shape, mode) are timed
in interleaved rounds (harness.time_interleaved), so that clock and thermal drift falls on all
of them alike; each row keeps the median and p20/p80 of its --rep calls. Never asserts speed.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time

import torch
import torch.nn.functional as F

from bench import harness
from xlmr_fast.tune import scoped_env

OP = "linear_cross_entropy"


def make(N, H, V, dtype, device="cuda", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = torch.randn(N, H, generator=g).to(device, dtype)
    w = (torch.randn(V, H, generator=g) * (3.0 / H ** 0.5)).to(device, dtype)
    b = (torch.randn(V, generator=g) * 0.5).to(device, dtype)
    t = torch.randint(0, V, (N,), generator=g).to(device)
    return h, w, b, t


def torch_eager(h, w, b, t):
    return F.cross_entropy(F.linear(h, w, b).float(), t)


def cce_exact_variant():
    """(provider name, kwargs) of Cut Cross-Entropy without its gradient filtering, the mode
    its authors advise for pretraining (kernels.md 1.4): impl="cce_kahan_full_c" where the
    installed version has it (newer releases), else filter_eps=None (25.1.x, the wheel the
    device gets, whose impl is only "cce" or "torch_compile")."""
    from cut_cross_entropy.linear_cross_entropy import LinearCrossEntropyImpl
    if "CCE_KAHAN_FULL_C" in LinearCrossEntropyImpl.__members__:
        return "cce-kahan-full-c", {"impl": "cce_kahan_full_c"}
    return "cce-exact", {"filter_eps": None}


def providers(args):
    """name -> (callable(h, w, b, t) -> loss, uses_bias, note)."""
    lce = importlib.import_module("xlmr_fast.ops.linear_cross_entropy")

    out = {}
    out["torch-eager"] = (torch_eager, True, "fp32 logits")
    out["torch-compile"] = (torch.compile(torch_eager), True, "")
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(accum_dtype=torch.float32)
        out["liger-flce"] = (lambda h, w, b, t: liger(w, h, t, b), True, "accum fp32")
    except Exception as e:  # not installed, or an API change
        print(f"[skip] liger: {type(e).__name__}: {e}", file=sys.stderr)
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        out["cce"] = (lambda h, w, b, t: cce(h, w, t), False, "no bias")
        name, kw = cce_exact_variant()
        out[name] = (lambda h, w, b, t: cce(h, w, t, **kw), False, f"no bias; {kw}")
    except Exception as e:
        print(f"[skip] cut_cross_entropy: {type(e).__name__}: {e}", file=sys.stderr)

    def ours(backend, chunk):
        def fn(h, w, b, t):
            loss, _ = lce._lce_fwd(h, w, b, t, -100, 0.0, backend, chunk)
            return loss.sum() / (t != -100).sum().clamp(min=1)
        return fn

    kern = importlib.import_module("xlmr_fast.kernels.triton.linear_cross_entropy")

    def token_chunks(rows):
        def fn(h, w, b, t):
            saved = kern.TOKEN_CHUNK_BYTES
            if rows:
                kern.TOKEN_CHUNK_BYTES = rows * kern.padded_vocab(w.shape[0]) * h.element_size()
            try:
                return lce.linear_cross_entropy(h, w, b, t)
            finally:
                kern.TOKEN_CHUNK_BYTES = saved
        return fn

    for r in [0] + list(args.rows or []):
        name = "ours-triton-tokenchunk" + (f"-r{r}" if r else "")
        out[name] = (token_chunks(r), True,
                     f"6NHV, grads in the forward, rows={r or 'default'}")
    chunks = args.chunk or [0]
    for c in chunks:
        tag = "" if c == 0 else f"-c{c}"
        out[f"ours-triton{tag}"] = (ours("triton", c), True, f"chunk={c or 'default'}")
        # the same fused kernels with the backward's two GEMMs on cuBLAS (see MM_BACKEND)
        out[f"ours-triton-cublasmm{tag}"] = (ours("triton", c), True,
                                             f"chunk={c or 'default'}, GEMMs on cuBLAS")
        # flattened (tile, H step) loops in the forward and dlogits kernels (see FLAT)
        out[f"ours-triton-flat{tag}"] = (ours("triton", c), True,
                                         f"chunk={c or 'default'}, flat loops")
        out[f"ours-triton-flat-cublasmm{tag}"] = (ours("triton", c), True,
                                                  f"chunk={c or 'default'}, flat loops, GEMMs "
                                                  f"on cuBLAS")
        if lce._ext.has_kernel("linear_cross_entropy_fwd", "CUDA"):
            out[f"ours-cuda{tag}"] = (ours("cuda", c), True, f"chunk={c or 'default'}")
    return out


@contextlib.contextmanager
def _variant(provider):
    """The provider's Triton variant, set through the environment knobs that win over the
    module defaults (so a value in the caller's environment cannot make two differently named
    rows the same run): *cublasmm* runs the backward GEMMs on cuBLAS (XLMR_FAST_LCE_MM), *flat*
    the flattened tile loops (XLMR_FAST_LCE_FLAT), *tokenchunk* the token-chunk schedule
    (XLMR_FAST_LCE_SCHEDULE); every other provider none of them."""
    want = {"XLMR_FAST_LCE_MM": "cublas" if "cublasmm" in provider else "triton",
            "XLMR_FAST_LCE_FLAT": "1" if "-flat" in provider else "0",
            "XLMR_FAST_LCE_SCHEDULE": "tokenchunk" if "tokenchunk" in provider else "recompute"}
    if "tokenchunk" in provider:  # the public entry point: make sure it takes the Triton path
        want["XLMR_FAST_LCE_BACKEND"] = "triton"
    with scoped_env(**want):
        yield


def make_call(fn, use_bias, mode, h, w, b, t, release_grads="start"):
    """One timed call of a provider: forward under no_grad, or forward + backward into fresh
    grads of hidden, weight (and bias). release_grads="start": the previous call's grads are
    dropped as the call starts, so peak_mb (allocation above what was held before the call)
    is the memory beyond inputs and grads, the issue's measure; "end": dropped as it ends, so
    that providers timed in turn do not hold each other's V x H weight grads."""
    bb = b if use_bias else None
    if mode == "forward":
        def call():
            with torch.no_grad():
                fn(h, w, bb, t)
        return call
    hh, ww = h.detach().requires_grad_(), w.detach().requires_grad_()
    bg = bb.detach().requires_grad_() if bb is not None else None
    leaves = [x for x in (hh, ww, bg) if x is not None]

    def call():
        if release_grads == "start":
            for x in leaves:
                x.grad = None
        fn(hh, ww, bg, t).backward()
        if release_grads == "end":
            for x in leaves:
                x.grad = None
    return call


def bench_one(fn, use_bias, mode, h, w, b, t, rep):
    call = make_call(fn, use_bias, mode, h, w, b, t)
    ms = harness.time_ms(call, warmup=3, rep=rep)
    peak = harness.peak_mb(call)
    return ms, peak


# Timing order (and which warm-ups a deadline reaches first): ours, then the baselines of
# issue 4's goal (2x eager, faster than Liger and CCE), torch.compile (its compile is long),
# then the variants.
PRIORITY = ("ours-triton-tokenchunk", "ours-triton", "torch-eager", "liger-flce", "cce",
            "torch-compile")


def time_providers(provs, mode, h, w, b, t, rep, shape):
    """Rows for every provider at one (shape, mode): times from interleaved rounds
    (harness.time_interleaved: rep timed calls each, two per round), then each one's peak
    memory; a provider that fails (OOM, a library error) is reported and left out."""
    N, H = h.shape
    V = w.shape[0]
    flops = (2 if mode == "forward" else 6) * N * H * V
    # under no_grad the token-chunk provider runs ours-triton's forward: not a row of its own
    todo = {name: p for name, p in provs.items()
            if not (mode == "forward" and "tokenchunk" in name)}
    # the goal's ratios first: if a deadline cuts the warm-ups (harness.deadline), the
    # providers it leaves out are the optional variants
    order = sorted(todo, key=lambda n: PRIORITY.index(n) if n in PRIORITY else len(PRIORITY))
    calls = {name: make_call(*todo[name][:2], mode, h, w, b, t, release_grads="end")
             for name in order}
    times = harness.time_interleaved(calls, warmup=3, rounds=max(1, (rep + 1) // 2), rep=2,
                                     context=_variant)
    rows = []
    for name, ms in times.items():
        if isinstance(ms, Exception):
            print(f"[fail] {name} {mode} {shape}: {type(ms).__name__}: {ms}", file=sys.stderr)
            continue
        fn, use_bias, note = todo[name]
        try:
            if harness.past_deadline():
                raise TimeoutError("skipped: the deadline passed")
            with _variant(name):
                held = make_call(fn, use_bias, mode, h, w, b, t)  # grads held between calls
                held()
                peak = harness.peak_mb(held)
            del held
        except Exception as e:
            print(f"[fail] {name} {mode} {shape} (peak memory): {type(e).__name__}: {e}",
                  file=sys.stderr)
            peak = float("nan")
        rows.append(harness.row(OP, name, mode, shape, ms, flops=flops, peak=peak, note=note))
        if h.is_cuda:
            torch.cuda.empty_cache()
    return rows


def breakdown(h, w, b, t, rows=None):
    """ms per phase of the token-chunk schedule (kern.lce_fwdgrad: its forward computes every
    gradient), summed over the chunks: CUDA events at each phase boundary (perf_counter on the
    CPU, where each launch runs to completion). Where the 6NHV schedule's time goes against the
    ~23 ms estimate at N8192 H1024 (GEMMs at ~650 TFLOP/s + three logits passes at HBM speed)."""
    kern = importlib.import_module("xlmr_fast.kernels.triton.linear_cross_entropy")
    cuda = h.is_cuda
    marks = []

    def phase(name):
        if cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            marks.append((name, ev))
        else:
            marks.append((name, time.perf_counter()))

    kern.lce_fwdgrad(h, w, b, t, -100, 0.0, rows=rows)  # warm-up: JIT, cuBLAS heuristics
    kern.lce_fwdgrad(h, w, b, t, -100, 0.0, rows=rows, phase=phase)
    if cuda:
        torch.cuda.synchronize()
    spent = dict.fromkeys(kern.PHASES, 0.0)
    for (name, start), (_, end) in zip(marks, marks[1:]):
        spent[name] += start.elapsed_time(end) if cuda else (end - start) * 1e3
    return spent


def breakdown_rows(h, w, b, t, shape, rows=None):
    """breakdown() as harness rows (mode "phase"), rates included, and printed."""
    kern = importlib.import_module("xlmr_fast.kernels.triton.linear_cross_entropy")
    N, H = h.shape
    V = w.shape[0]
    logits_bytes = N * kern.padded_vocab(V) * h.element_size()  # the (rows, V_pad) buffers
    gemm = 2 * N * H * V
    work = {"logits GEMM": dict(flops=gemm), "dX GEMM": dict(flops=gemm),
            "dW GEMM": dict(flops=gemm), "stats": dict(bytes_moved=logits_bytes),
            "grad": dict(bytes_moved=2 * logits_bytes)}   # read, then write d in place
    spent = breakdown(h, w, b, t, rows)
    hbm = harness.hbm_gbps() if h.is_cuda else float("nan")
    tag = f"rows={rows or kern.token_chunk_rows(N, V, h.element_size())}"
    out = []
    for name, ms in spent.items():
        kw = work.get(name, {})
        note = tag
        if "bytes_moved" in kw and ms > 0 and h.is_cuda:
            note += f", {kw['bytes_moved'] / ms / 1e6 / hbm:.0%} of HBM copy bandwidth"
        out.append(harness.row(OP, f"tokenchunk:{name}", "phase", shape, ms, note=note, **kw))
    total = sum(spent.values())
    out.append(harness.row(OP, "tokenchunk:total", "phase", shape, total, flops=6 * N * H * V,
                           note=f"{tag}, sum of the phases (6NHV over it)"))
    for r in out:
        print(f"  {r['provider']:<26}{float(r['median_ms']):>9.3f} ms {r['tflops']:>7} TFLOP/s "
              f"{r['gbps']:>8} GB/s  {r['note']}", flush=True)
    return out


def sweep_triton(args, h, w, b, t, shape, rows):
    """Time every Triton forward / dlogits / matmul config (module lists) in 'full' mode."""
    from xlmr_fast.kernels.triton import linear_cross_entropy as K
    lce = importlib.import_module("xlmr_fast.ops.linear_cross_entropy")

    N, H, V = h.shape[0], h.shape[1], w.shape[0]

    def fn(hh, ww, bb, tt):
        loss, _ = lce._lce_fwd(hh, ww, bb, tt, -100, 0.0, "triton", 0)
        return loss.sum()

    for mode in args.modes:
        for i, cfg in enumerate(K.FWD_CONFIGS):
            K.FWD_CONFIG = cfg
            K.DLOGITS_CONFIG = cfg
            try:
                ms, peak = bench_one(fn, True, mode, h, w, b, t, args.rep)
            except Exception as e:
                print(f"[fail] fwd config {cfg}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            flops = (2 if mode == "forward" else 6) * N * H * V
            rows.append(harness.row(OP, f"ours-triton-fwdcfg{i}", mode, shape, ms, flops=flops,
                                    peak=peak, note=str(cfg)))
        K.FWD_CONFIG = K.DLOGITS_CONFIG = None
    for i, cfg in enumerate(K.MM_CONFIGS):
        K.MM_CONFIG = cfg
        try:
            ms, peak = bench_one(fn, True, "full", h, w, b, t, args.rep)
        except Exception as e:
            print(f"[fail] mm config {cfg}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        rows.append(harness.row(OP, f"ours-triton-mmcfg{i}", "full", shape, ms,
                                flops=6 * N * H * V, peak=peak, note=str(cfg)))
    K.MM_CONFIG = None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The goal shape (N=8192, H=1024) first: a device call that times out keeps the
    # shapes it finished (rows are appended shape by shape).
    p.add_argument("--N", type=int, nargs="+", default=[8192, 4915])
    p.add_argument("--H", type=int, nargs="+", default=[1024, 768])
    p.add_argument("--V", type=int, default=250002)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--modes", nargs="+", default=["forward", "full"], choices=["forward", "full"])
    p.add_argument("--providers", nargs="*", default=None,
                   help="subset of provider names (prefix match), default all")
    p.add_argument("--chunk", type=int, nargs="*", default=None,
                   help="vocab chunk widths to try for ours-* (0 = default)")
    p.add_argument("--rows", type=int, nargs="*", default=None,
                   help="rows per chunk to try for ours-triton-tokenchunk (default budget too)")
    p.add_argument("--sweep", action="store_true", help="sweep the Triton block configs")
    p.add_argument("--breakdown", action="store_true",
                   help="ms and rate per phase of the token-chunk schedule (--rows: per size)")
    p.add_argument("--rep", type=int, default=10)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA: skipping the linear_cross_entropy benchmark")
        return 0
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    rows = []
    provs = providers(args)
    if args.providers:
        provs = {k: v for k, v in provs.items() if any(k.startswith(s) for s in args.providers)}
    saved = 0
    for N, H in ((n, h_) for n in args.N for h_ in args.H):
        V = args.V
        h, w, b, t = make(N, H, V, dtype)
        shape = f"N{N}_H{H}_V{V}_{args.dtype}"
        if args.sweep:
            sweep_triton(args, h, w, b, t, shape, rows)
            if not args.no_save:
                saved = harness.append_new(rows, saved)
            continue
        if args.breakdown:
            for r in [None] + list(args.rows or []):
                print(f"# token-chunk phases {shape}", flush=True)
                rows += breakdown_rows(h, w, b, t, shape, r)
            del h, w, b, t
            torch.cuda.empty_cache()
            if not args.no_save:
                saved = harness.append_new(rows, saved)
            continue
        for mode in args.modes:
            rows += time_providers(provs, mode, h, w, b, t, args.rep, shape)
        del h, w, b, t
        torch.cuda.empty_cache()
        if not args.no_save:  # per shape: a device call that times out keeps what it finished
            saved = harness.append_new(rows, saved)
    harness.print_table(rows, baseline_provider=("torch-eager", "torch-compile", "liger-flce",
                                                 "cce", "cce-kahan-full-c", "cce-exact"))
    if rows and not args.no_save:
        print("appended to", harness.results_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())

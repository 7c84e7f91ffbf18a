"""Where a step's device time goes: profiled steps, kernels grouped by what they do.

The 2026-11-23 H100 rows put XLM-R base's MLM step (B32 x T512, fwd+bwd, bf16) at 59.5 ms,
against roughly 20 ms of GEMM work at cuBLAS rates: this table says where the rest goes.
Per category: device ms per step, share of the busy time, kernel launches per step, and, for
cuBLAS GEMMs, TFLOP/s from the profiler's FLOP count of the launching aten ops (over the
kernels of ops it counts). GEMMs whose operands have a vocabulary-wide dimension are the LM
head's (the token-chunk schedule's and Hugging Face's full-logits GEMMs), the others the
encoder's. "idle" is the time the device waited inside the profiled window (host-bound
launches, syncs): span minus the union of all kernel intervals. The profiler adds host time
per launch, so the idle share is an upper bound; compare the span with the un-profiled step
time of bench_model.

On a CPU (no CUDA) the same table is built from the aten ops' self times (each op's time less
its children's): it checks the code, and it says where a CPU step goes. Used by
`python -m bench.bench_model --profile` and `python -m bench.bench_train --kernel-profile`.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib
import inspect
import os
import re
from collections import defaultdict

import torch

OPS = ("attention", "linear_cross_entropy", "mlm_mask", "add_dropout_layernorm", "bias_gelu")
LM_HEAD = "GEMM: LM head (vocab-wide)"
GEMM = "GEMM: encoder and other"
IDLE = "idle (no kernel running)"

# First match wins; our own kernels are matched before these by name (our_kernels()).
# Kernel names: CUDA's demangled names (cuBLAS: nvjet_*, sm90_xmma_*, cutlass_*; PyTorch's
# at::native::*), Triton's function names, inductor's triton_{poi,red,per,tem}_*; on a CPU
# the aten op names.
CATEGORIES = [
    ("views / allocation (host only)", r"^aten::(empty|empty_strided|view|as_strided|reshape|"
     r"_reshape_alias|_unsafe_view|transpose|t|permute|expand|detach|alias|slice|select|"
     r"unsqueeze|squeeze|resize_|split|split_with_sizes|unbind|chunk|narrow|lift_fresh|"
     r"result_type|set_|numpy_T|expand_as|view_as)$"),
    ("inductor (torch.compile)", r"^triton_(poi|red|per|tem)_"),
    ("attention (torch SDPA)", r"fmha|flash|sdpa|attention|_efficient_attention|cudnn"),
    (GEMM, r"gemm|nvjet|xmma|cutlass|cublas|splitkreduce|^aten::(mm|addmm|bmm|baddbmm|matmul"
           r"|_scaled_mm)$"),
    ("layernorm (torch)", r"layer_?norm"),
    ("softmax / cross-entropy (torch)", r"softmax|nll_loss|cross_entropy"),
    ("dropout (torch)", r"dropout|bernoulli|philox"),
    ("gelu (torch)", r"gelu"),
    ("optimizer", r"multi_tensor|adam|_foreach"),
    ("embedding / index", r"embedding|index|gather|scatter|take|nonzero"),
    ("reduction (torch)", r"reduce|sum|norm|mean|max|min"),
    ("copy / memset / cat", r"memcpy|memset|copy|cat|fill|zero|clone|contiguous|to_copy"),
    ("elementwise (torch)", r"elementwise|vectorized|unrolled|^aten::"),
]
_COMPILED = [(c, re.compile(p, re.IGNORECASE)) for c, p in CATEGORIES]


@dataclasses.dataclass
class Kernel:
    name: str
    start: float  # us
    end: float
    vocab_wide: bool = False  # launched by an op with a vocabulary-wide operand
    flops: int = 0  # of the launching aten op (GEMMs), attributed to its first kernel
    counted: bool = False  # the launching op has a FLOP count: this kernel is in the rate


def our_kernels() -> dict[str, str]:
    """Kernel name -> category for every Triton kernel in kernels/triton and every
    __global__ function in kernels/cuda (their names are unique: profilers show only them)."""
    out = {}
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        JITFunction = None
    for op in OPS:
        if JITFunction is None:
            break
        try:
            mod = importlib.import_module(f"xlmr_fast.kernels.triton.{op}")
        except ImportError:
            continue
        for name in launched_kernels(mod, JITFunction):
            out[name] = f"ours: {op} (Triton)"
    try:
        import xlmr_fast.kernels as kdir
        cu = glob.glob(os.path.join(os.path.dirname(kdir.__file__), "cuda", "*.cu"))
    except ImportError:
        cu = []
    glob_re = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)")
    for path in cu:
        op = os.path.splitext(os.path.basename(path))[0]
        with open(path) as f:
            for name in glob_re.findall(f.read()):
                out[name] = f"ours: {op} (CUDA C++)"
    return out


def launched_kernels(mod, jit_type) -> set[str]:
    """Names of the module's Triton kernels that are launched (`name[grid](...)` in its source,
    or wrapped by an autotuner), not the @triton.jit helpers inlined into them."""
    src = inspect.getsource(mod)
    names = set()
    for v in vars(mod).values():
        if isinstance(v, jit_type) and v.__module__ == mod.__name__:
            if re.search(rf"\b{re.escape(v.__name__)}\[", src):
                names.add(v.__name__)
        elif isinstance(getattr(v, "fn", None), jit_type):  # triton.autotune(...)(kernel)
            names.add(v.fn.__name__)
    return names


def categorize(name: str, ours: dict[str, str]) -> str:
    if name in ours:
        return ours[name]
    m = re.match(r"xlmr_fast(?:_C)?::(\w+)", name)  # our op's host event (CPU profiles)
    if m:
        op = next((o for o in OPS if m.group(1).startswith(o)), m.group(1))
        return f"ours: {op} (op)"
    if "xlmr_fast::" in name:  # a CUDA C++ kernel: demangled "void xlmr_fast::(anon)::f<..>(..)"
        m = re.search(r"xlmr_fast::(?:\(anonymous namespace\)::)?(\w+)", name)
        return ours.get(m.group(1) if m else "", "ours (CUDA C++)")
    for cat, rx in _COMPILED:
        if rx.search(name):
            return cat
    return "other"


@dataclasses.dataclass
class Summary:
    steps: int
    span_ms: float  # first kernel start to last kernel end, per step
    busy_ms: float  # union of kernel intervals, per step
    rows: list  # (category, ms per step, calls per step, TFLOP/s or None), by time
    top: list  # (kernel name, category, ms per step, calls per step), by time

    @property
    def idle_ms(self) -> float:
        return self.span_ms - self.busy_ms


def _union_us(intervals) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0.0)


def summarize(kernels: list[Kernel], steps: int, ours: dict[str, str] | None = None,
              top: int = 12, busy_intervals=None) -> Summary:
    """Group kernels (over `steps` steps) by category; times per step. The span and the busy
    time come from busy_intervals ((start, end) pairs) when given, else from the kernels."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ours = our_kernels() if ours is None else ours
    by_cat = defaultdict(lambda: [0.0, 0, 0, 0.0])  # us, calls, flops, us of counted kernels
    by_name = defaultdict(lambda: [0.0, 0])  # by (name, category): aten::mm is in two
    for k in kernels:
        cat = categorize(k.name, ours)
        if cat == GEMM and k.vocab_wide:
            cat = LM_HEAD
        c = by_cat[cat]
        c[0] += k.end - k.start
        c[1] += 1
        c[2] += k.flops
        c[3] += (k.end - k.start) if k.counted else 0.0
        n = by_name[(k.name, cat)]
        n[0] += k.end - k.start
        n[1] += 1
    rows = []
    for cat, (us, calls, flops, counted_us) in by_cat.items():
        # the rate of the kernels whose op has a FLOP count (a GEMM launched by an op the
        # profiler does not count, e.g. addmm with out_dtype, is left out of it, not diluting it)
        ok = flops and counted_us > 0 and cat in (GEMM, LM_HEAD)
        tflops = flops / counted_us / 1e6 if ok else None
        rows.append((cat, us / 1e3 / steps, calls / steps, tflops))
    rows.sort(key=lambda r: -r[1])
    tops = sorted(((name, cat, us / 1e3 / steps, calls / steps)
                   for (name, cat), (us, calls) in by_name.items()), key=lambda r: -r[2])[:top]
    iv = list(busy_intervals) if busy_intervals is not None else [(k.start, k.end)
                                                                    for k in kernels]
    span = (max(e for _, e in iv) - min(s for s, _ in iv)) if iv else 0.0
    busy = _union_us(iv)
    return Summary(steps, span / 1e3 / steps, busy / 1e3 / steps, rows, tops)


def _is_vocab_wide(shapes, vocab: int | None) -> bool:
    if not vocab:
        return False
    for s in shapes or ():
        for d in (s if isinstance(s, (list, tuple)) else ()):
            if isinstance(d, int) and d >= vocab:
                return True
    return False


def _host_op(name: str) -> bool:
    return name.startswith(("aten::", "xlmr_fast::", "xlmr_fast_C::"))


def kernels_from_profile(prof, *, cuda: bool, vocab: int | None = None):
    """(kernel records, busy intervals or None) from a finished torch.profiler.profile
    (record_shapes=True and with_flops=True for the LM-head split and the GEMM rates).

    cuda=True: the device's kernels, memcpys and memsets (not the device-side copies of
    record_function ranges); each takes the vocabulary-wide flag and the FLOPs of the aten
    op that launched it (FunctionEvent.kernels; a kernel launched outside any op, e.g. a
    Triton launch in a forward, keeps neither). cuda=False: every aten (and our) op
    with its self time (its time less its children's), the busy time being the union of
    the outermost such ops: the host time between them is the "idle" row."""
    from torch.autograd import DeviceType
    events = prof.events()
    if not cuda:
        out, busy = [], []
        for e in events:
            if e.device_type != DeviceType.CPU or e.is_async or not _host_op(e.name):
                continue
            s = e.time_range.start
            flops = int(e.flops or 0)
            out.append(Kernel(e.name, s, s + e.self_cpu_time_total,
                              _is_vocab_wide(e.input_shapes, vocab), flops, flops > 0))
            p = e.cpu_parent
            while p is not None and not _host_op(p.name):
                p = p.cpu_parent
            if p is None:
                busy.append((s, e.time_range.end))
        return out, busy
    # launching op -> its kernels, by (name, duration) in launch order
    owner = defaultdict(list)
    for e in events:
        if e.device_type == DeviceType.CPU and e.kernels:
            wide = _is_vocab_wide(e.input_shapes, vocab)
            flops = int(e.flops or 0)
            for i, k in enumerate(e.kernels):
                owner[(k.name, round(k.duration, 3))].append(
                    (wide, flops if i == 0 else 0, flops > 0))
    out = []
    for e in sorted((e for e in events if e.device_type == DeviceType.CUDA),
                    key=lambda e: e.time_range.start):
        if getattr(e, "is_user_annotation", False) or "annotation" in str(
                getattr(e, "activity_type", "") or ""):
            continue
        s, t = e.time_range.start, e.time_range.end
        got = owner.get((e.name, round(t - s, 3)))
        wide, flops, counted = got.pop(0) if got else (False, 0, False)
        out.append(Kernel(e.name, s, t, wide, flops, counted))
    return out, None


def profile(step, *, steps: int = 3, warmup: int = 2, vocab: int | None = None,
            device: torch.device | None = None) -> Summary:
    """Run step() warmup times, then profile `steps` calls and summarize them."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    from torch.profiler import ProfilerActivity, profile as _profile
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with _profile(activities=acts, record_shapes=True, with_flops=True) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    kernels, busy = kernels_from_profile(prof, cuda=cuda, vocab=vocab)
    return summarize(kernels, steps, busy_intervals=busy)


def format_summary(s: Summary, title: str = "") -> str:
    width = 64
    lines = [f"step profile{': ' + title if title else ''} ({s.steps} steps; per step)",
             f"  span {s.span_ms:.3f} ms, busy {s.busy_ms:.3f} ms, {IDLE} {s.idle_ms:.3f} ms",
             f"  {'category':<36}{'ms':>10}{'% busy':>8}{'calls':>8}{'TFLOP/s':>9}"]
    for cat, ms, calls, tf in s.rows:
        share = 100 * ms / s.busy_ms if s.busy_ms > 0 else float("nan")
        tfs = "" if tf is None else f"{tf:.0f}" if tf >= 10 else f"{tf:.3g}"
        lines.append(f"  {cat:<36}{ms:>10.3f}{share:>8.1f}{calls:>8.1f}{tfs:>9}")
    lines.append(f"  top kernels{'':<{width - 11}}{'ms':>10}{'calls':>8}  category")
    for name, cat, ms, calls in s.top:
        short = name if len(name) <= width else name[:width - 3] + "..."
        lines.append(f"  {short:<{width}}{ms:>10.3f}{calls:>8.1f}  {cat}")
    return "\n".join(lines)


def rows_for_csv(s: Summary, provider: str, shape: str) -> list[dict]:
    """bench/results rows: op model_step_profile, one mode per category (and span / idle)."""
    from bench import harness
    out = [harness.row("model_step_profile", provider, "span", shape, s.span_ms,
                       note=f"busy {s.busy_ms:.3f} ms, idle {s.idle_ms:.3f} ms")]
    for cat, ms, calls, tf in s.rows:
        share = 100 * ms / s.busy_ms if s.busy_ms > 0 else float("nan")
        note = f"{share:.1f}% of busy, {calls:.1f} calls/step"
        if tf is not None:
            note += f", {tf:.0f} TFLOP/s"
        out.append(harness.row("model_step_profile", provider, cat, shape, ms, note=note))
    return out

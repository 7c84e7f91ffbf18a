"""Offline Hopper compile report: every Triton kernel, as our host code launches it, compiled
for sm_90 on a machine without a GPU, with what ptxas and the Triton IR say about speed.

    python -m bench.compile_report                   # all ops, every config in the lists
    python -m bench.compile_report --defaults        # only the configs the ops launch today
    python -m bench.compile_report --ops attention
    python -m bench.compile_report --arch 86         # Ampere/Ada codegen (A10, L4, RTX 4090)
    python -m bench.compile_report --arch 100        # Blackwell (B200)

Why: device time is scarce. A config that spills registers, or whose K-loop Triton did not
software-pipeline, is slow on any Hopper card; both are visible at compile time. The report
lets a CPU-only session rule such configs out before a device session times the rest.

How: the ops' host wrappers run on CPU tensors of XLM-R shapes (never filled) with Triton's
launcher replaced by a recorder, so each recorded launch carries exactly the arguments, block
sizes and warps our code passes. Triton's own binder then specialises them (16-byte
alignment, ints equal to 1 or divisible by 16) as a CUDA launch would, and triton.compile
builds the kernel for GPUTarget("cuda", 90). ptxas -v on the PTX gives registers and spills.
Columns:
    regs, spill   registers per thread and spill-store bytes (ptxas); spills mean slow
    smem          shared memory bytes (Triton's metadata)
    async         cp.async / TMA copies in the IR: > 0 means the loads are pipelined
    narrow        global loads/stores in the PTX that move 1 or 2 bytes per thread (scalar,
                  not vector): one per element of a 16-bit tile means the mask or the
                  addresses kept Triton from vectorising, a few is a bias/target/mask load
    mma_wait      pending-group counts of the wgmma waits: a 1 inside the loop means the MMA
                  of one iteration overlaps the next; only 0 means each MMA is waited for
--arch compiles for another compute capability instead (75, 80, 86, 89, 100, 120; 90 by
default) with that GPU's shared-memory limit: Triton's codegen differs by architecture (no
wgmma before sm_90, no cp.async pipelining before sm_80, tcgen05 on sm_100), and so does a
block's shared memory, so a config that fits an H100 need not load on an A10 or L4 (99 KB per
block). mma_wait reads "-" where there is no wgmma; async counts cp.async copies from sm_80 on.
This is Triton's compiler on this machine (the newest Triton here, 3.6 on the device), and
it uses Triton internals (triton.runtime.jit binder, JITFunction._pack_args) that may move
between versions: the report says so and exits 2 when they are missing. Performance is never
asserted from it; tests only check that every launched configuration compiles.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile

import torch

OPS = ("attention", "linear_cross_entropy", "mlm_mask", "add_dropout_layernorm", "bias_gelu")


# ----------------------------------------------------------------------------- recording
class Launches(list):
    """Recorded launches (kernel, args, kwargs), and in .grids the grid of each."""

    def __init__(self):
        super().__init__()
        self.grids = []


@contextlib.contextmanager
def recording():
    """Replace JITFunction.run (the launcher) by a recorder; yields the list of launches
    (kernel, args, kwargs), their grids in .grids. Launches do nothing, so outputs stay
    unwritten."""
    from triton.runtime.jit import JITFunction
    launches = Launches()
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))
        launches.grids.append(grid)

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


@contextlib.contextmanager
def _no_interpret():
    """The ops pick their real (device) block configs only when not interpreting."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


def launches_attention(defaults: bool):
    """Padded (key mask) and varlen layouts, without and with dropout, at T = 512 and head dim
    64 (every config, or the defaults); with defaults also head dims 32 and 128 (their own
    default configs), key mask and dropout."""
    from xlmr_fast.kernels.triton import attention as kern
    fwd_cfgs = [None] if defaults else range(len(kern.FWD_CONFIGS))
    bwd_cfgs = [None] if defaults else range(len(kern.BWD_CONFIGS))
    out = []
    cases = [(layout, 64, p) for layout in ("mask", "varlen") for p in (0.0, 0.1)]
    if defaults:
        cases += [("mask", 32, 0.1), ("mask", 128, 0.1)]
    for layout, D, p in cases:
        ins, mask, cus = _attention_inputs(layout, D)
        T = 512
        name = f"{layout}{' drop' if p else ''}{'' if D == 64 else f' D{D}'}"
        for fi in fwd_cfgs:
            kern.set_configs(fwd=fi)
            with recording() as rec:
                kern.attention_fwd(*ins, mask, cus, T, D ** -0.5, p, 123, 456)
            kern.set_configs()
            out += [(name, "fwd " + ("default" if fi is None else f"cfg{fi}"), r) for r in rec]
        o = torch.empty_like(ins[0])
        lse = torch.empty(kern.stats_shape(ins[0], cus is not None), dtype=torch.float32)
        for bi in bwd_cfgs:
            kern.set_configs(bwd=bi)
            with recording() as rec:
                kern.attention_bwd(torch.empty_like(o), *ins, o, torch.empty_like(o), lse,
                                   mask, cus, T, D ** -0.5, p, 123, 456)
            kern.set_configs()
            out += [(name, "bwd " + ("default" if bi is None else f"cfg{bi}"), r) for r in rec]
    return out


def _attention_inputs(layout, D, B=2, H=12, T=512, dt=torch.bfloat16):
    """(q, k, v), key_padding_mask, cu_seqlens: padded (B, H, T, D) views of (B, T, H, D), or
    packed (B * T, H, D)."""
    if layout == "mask":
        ins = tuple(torch.empty(B, T, H, D, dtype=dt).transpose(1, 2) for _ in range(3))
        return ins, torch.zeros(B, T, dtype=torch.bool), None
    ins = tuple(torch.empty(B * T, H, D, dtype=dt) for _ in range(3))
    return ins, None, torch.tensor([0, T, 2 * T], dtype=torch.int32)


def launches_linear_cross_entropy(defaults: bool):
    from xlmr_fast.kernels.triton import linear_cross_entropy as kern
    out = []
    V = 250_002
    saved = kern._interpret
    kern._interpret = lambda t: False  # CPU tensors stand in for CUDA ones here
    try:
        for N, H in ((4915, 768), (8192, 1024)):
            x = torch.empty(N, H, dtype=torch.bfloat16)
            w = torch.empty(V, H, dtype=torch.bfloat16)
            b = torch.empty(V, dtype=torch.bfloat16)
            t = torch.zeros(N, dtype=torch.int64)
            stats = torch.zeros(2, N)
            shape = f"N{N} H{H}"
            # the default config with and without FLAT (the flattened tile loops, a bench
            # provider until measured), then every config of the sweep list
            cfgs = [(None, False), (None, True)]
            if not defaults:
                cfgs += [(c, False) for c in kern.FWD_CONFIGS]
            for i, (cfg, flat) in enumerate(cfgs):
                tag = ("flat" if flat else "default") if cfg is None else f"cfg{i - 2}"
                with recording() as rec:
                    try:
                        kern.lce_forward(x, w, b, t, -100, 0.0, config=cfg, flat=flat)
                    except Exception:  # the torch combine after the launch reads empty partials
                        pass
                out += [(shape, f"fwd {tag}", r) for r in rec]
                with recording() as rec:
                    kern.lce_backward(torch.ones(N), x, w, b, t, stats, -100, 0.0, config=cfg,
                                      chunk=4096, flat=flat)
                # one chunk's three launches are enough: the other chunks only move c0
                out += [(shape, f"{part} {tag}", r) for part, r in zip(("dlogits", "dW", "dX"),
                                                                       rec[:3])]
                if cfg is None and not flat:  # label smoothing: the forward's extra sum
                    with recording() as rec:
                        try:
                            kern.lce_forward(x, w, b, t, -100, 0.1)
                        except Exception:
                            pass
                    out += [(shape, "fwd smooth", r) for r in rec]
            # the token-chunk schedule's two kernels (first chunk); its GEMMs are cuBLAS calls
            # (kern._gemm), skipped here: on CPU tensors they would really run
            gemm = kern._gemm
            kern._gemm = lambda *a, **k: None
            try:
                with recording() as rec:
                    try:
                        kern.lce_fwdgrad(x, w, b, t, -100, 0.0)
                    except Exception:  # the combine reads empty partials, as above
                        pass
            finally:
                kern._gemm = gemm
            out += [(shape, f"{part} default", r) for part, r in zip(("tc-stats", "tc-grad"),
                                                                     rec[:2])]
            if not defaults:
                for j, mcfg in enumerate(kern.MM_CONFIGS):
                    kern.MM_CONFIG = mcfg
                    with recording() as rec:
                        kern.lce_backward(torch.ones(N), x, w, b, t, stats, -100, 0.0,
                                          chunk=4096)
                    kern.MM_CONFIG = None
                    out += [(shape, f"{part} mm cfg{j}", r) for part, r in zip(("dW", "dX"),
                                                                               rec[1:3])]
    finally:
        kern._interpret = saved
        kern.MM_CONFIG = None
    return out


def launches_mlm_mask(defaults: bool):
    from xlmr_fast.kernels.triton import mlm_mask as kern
    ids = torch.zeros(64, 512, dtype=torch.int32)
    with recording() as rec:
        kern.mlm_mask_static(ids, 250_002, 250_001, 12345, 678, 2**31, 1, False, 64 * 512 // 6)
    return [("64x512", "default", r) for r in rec]


def launches_fused(op: str, defaults: bool):
    """add_dropout_layernorm / bias_gelu at XLM-R shapes: one recorded launch per kernel
    (their fixed-config path), then each of the autotuner's configs in its place (on a GPU
    the autotuner picks among them; it needs a GPU to time them, the compiler does not)."""
    import triton

    from xlmr_fast.kernels.triton import config_launch_kw
    mod = __import__(f"xlmr_fast.kernels.triton.{op}", fromlist=["_"])
    out = []
    M = 64 * 512
    ln = op == "add_dropout_layernorm"
    # add_dropout_layernorm also with a fp32 residual stream (y, dy, dresidual fp32): the model's
    # case under autocast
    cases = [(N, r32) for N in (768, 1024) for r32 in (False, True)] if ln else \
        [(N, False) for N in (3072, 4096)]
    for N, r32 in cases:
        x = torch.empty(M, N, dtype=torch.bfloat16)
        r = torch.empty(M, N) if r32 else x  # residual, y, dy, dresidual
        w = torch.empty(N, dtype=torch.float32 if r32 else torch.bfloat16)
        st = torch.empty(M)
        G = 4 * 132
        part = torch.empty(G, N)
        with recording() as rec:
            if ln:
                mod.forward(x, r, w, w, r, st, st, 1, 2, 3, 1.1, 1e-5, True)
                mod.backward(r, x, r, w, st, st, x, r, part, part, triton.cdiv(M, G), 1, 2, 3,
                             1.1, True)
            else:
                mod.forward(x, w, x)
                mod.backward(x, x, w, x, part, triton.cdiv(M, G))
        tuned = {t.fn: t for t in (mod._fwd_tuned, mod._bwd_tuned)}
        for fn, args, kwargs in rec:
            for c, cfg in enumerate(tuned[fn].configs):
                kw = {k: v for k, v in kwargs.items() if k not in cfg.kwargs}
                kw.update(config_launch_kw(cfg))  # as the ops launch a forced config
                out.append((f"T{M} N{N}" + (" r32" if r32 else ""), f"autotune {c}",
                            (fn, args, kw)))
    return out


def collect(ops, defaults, arch: int = 90):
    """The launches, recorded on CPU tensors standing for a GPU of compute capability arch (so
    that the ops pick the configs they would pick on such a GPU: kernels/triton.tuned_here)."""
    import xlmr_fast.kernels.triton as kt
    saved = kt.CPU_STANDS_FOR
    kt.CPU_STANDS_FOR = divmod(arch, 10)
    try:
        with _no_interpret():
            return _collect(ops, defaults)
    finally:
        kt.CPU_STANDS_FOR = saved


def _collect(ops, defaults):
    got = []
    for op in ops:
        if op == "attention":
            got += [("attention",) + x for x in launches_attention(defaults)]
        elif op == "linear_cross_entropy":
            got += [("linear_cross_entropy",) + x for x in launches_linear_cross_entropy(defaults)]
        elif op == "mlm_mask":
            got += [("mlm_mask",) + x for x in launches_mlm_mask(defaults)]
        else:
            got += [(op,) + x for x in launches_fused(op, defaults)]
    return got


# ----------------------------------------------------------------------------- compiling
# Shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin, CUDA programming
# guide's table per compute capability): sm_75 T4 64 KB, sm_80 A100 163 KB, sm_86 / sm_89 A10,
# L4, L40S, RTX 3090 / 4090 99 KB, sm_90 H100 / H200 227 KB, sm_100 B200 227 KB, sm_120
# RTX 5090 / RTX PRO 6000 99 KB. Triton compiles a kernel over the limit without complaint and
# raises OutOfResources only when it loads it on the GPU.
MAX_SMEM = {75: 65_536, 80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448, 100: 232_448,
            120: 101_376}


def _target(arch: int = 90):
    from triton.backends.compiler import GPUTarget
    return GPUTarget("cuda", arch, 32)


def compile_launch(fn, args, kwargs, arch: int = 90):
    """Compile one recorded launch for sm_<arch> with the JIT's own specialisation."""
    import triton
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    target = _target(arch)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=options.__dict__)


def ptxas_usage(kernel, arch: int = 90) -> tuple[int, int]:
    """(registers, spill-store bytes) from ptxas -v on the kernel's PTX."""
    from triton.backends.nvidia.compiler import get_ptxas
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        r = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", ptx, "-o",
                            os.path.join(d, "k.cubin")], capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", r.stderr)
    spill = re.search(r"(\d+) bytes spill stores", r.stderr)
    return (int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else 0)


def ir_facts(kernel) -> tuple[int, str]:
    g = kernel.asm["ttgir"]
    copies = g.count("async_copy_global_to_local") + g.count("async_tma_copy")
    waits = re.findall(r"warp_group_dot_wait[^\n]*?pendings = (\d+)", g)
    return copies, ",".join(waits) if waits else "-"


_NARROW = re.compile(r"\b(?:ld|st)\.global(?:\.[A-Za-z0-9_:]+)*?\.(?:[bus]8|[bus]16|f16)\b")


def narrow_accesses(kernel) -> int:
    """Global loads/stores of 1 or 2 bytes per thread (no .v2/.v4) in the kernel's PTX."""
    return sum(1 for m in _NARROW.finditer(kernel.asm["ptx"]) if ".v" not in m.group(0))


def _launch_config(fn, args, kwargs) -> str:
    keys = [p.name for p in fn.params if p.is_constexpr and p.name.startswith("BLOCK")]
    vals = dict(zip([p.name for p in fn.params], args))
    vals.update(kwargs)
    blocks = " ".join(f"{k[6:] or k}={vals[k]}" for k in keys if k in vals)
    return f"{blocks} w{kwargs.get('num_warps', 4)} s{kwargs.get('num_stages', 3)}"


def report(ops, defaults, out=sys.stdout, arch: int = 90):
    """Compile every recorded launch for sm_<arch>; print one line each. Returns the rows
    (dicts)."""
    rows = []
    seen = set()
    print(f"{'op':<22}{'shape/layout':<18}{'launch':<18}{'kernel':<24}{'config':<34}"
          f"{'regs':>5}{'spill':>7}{'smem':>8}{'async':>6}{'narrow':>7}  mma_wait", file=out)
    for op, shape, tag, (fn, args, kwargs) in collect(ops, defaults, arch):
        cfg = _launch_config(fn, args, kwargs)
        key = (op, shape, tag, fn.__name__, cfg, tuple(sorted(
            (k, v) for k, v in kwargs.items() if not k.startswith("num_"))))
        if key in seen:
            continue
        seen.add(key)
        k = compile_launch(fn, args, kwargs, arch)
        regs, spill = ptxas_usage(k, arch)
        copies, waits = ir_facts(k)
        narrow = narrow_accesses(k)
        row = dict(op=op, shape=shape, launch=tag, kernel=fn.__name__, config=cfg, regs=regs,
                   spill=spill, smem=k.metadata.shared, async_copies=copies, narrow=narrow,
                   mma_wait=waits)
        rows.append(row)
        print(f"{op:<22}{shape:<18}{tag:<18}{fn.__name__:<24}{cfg:<34}{regs:>5}{spill:>7}"
              f"{k.metadata.shared:>8}{copies:>6}{narrow:>7}  {waits}", file=out, flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    ap.add_argument("--defaults", action="store_true", help="only the configs launched today")
    ap.add_argument("--arch", type=int, choices=sorted(MAX_SMEM), default=90,
                    help="compute capability to compile for (default 90: H100/H200)")
    args = ap.parse_args(argv)
    try:
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
        assert hasattr(JITFunction, "_pack_args")
    except Exception as e:
        print(f"compile_report: this Triton lacks the internals it uses ({e}); skipping")
        return 2
    rows = report(args.ops, args.defaults, arch=args.arch)
    bad = [r for r in rows if r["spill"] > 0]
    limit = MAX_SMEM[args.arch]
    big = [r for r in rows if r["smem"] > limit]
    print(f"\n{len(rows)} launches compiled for sm_{args.arch}; {len(bad)} spill registers; "
          f"{len(big)} need more shared memory than sm_{args.arch} has ({limit} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

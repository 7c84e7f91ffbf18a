"""Triton kernels, one file per op. Importing a module here imports triton; callers in
xlmr_fast.ops import these lazily so the package works without triton installed."""

# Passed to every launch: floating-point contraction (FMA) on, whatever Triton's default. The
# kernels were tested and measured with it on (Triton 3.6's default, still 3.9's); Triton 3.9
# warns when it is left to the default, and 3.10 turns the default off.
LAUNCH = {"enable_fp_fusion": True}

# The measured block-config tables (the LM head's TUNED_BY_SHAPE, attention's TUNED_BY_SEQLEN)
# hold winners timed on Hopper (compute capability 9.0: H100, H200). Triton's codegen differs by
# architecture (wgmma and a deeper shared-memory pipeline from sm_90 on, mma.sync before), so a
# tile that won there can be a poor choice elsewhere: the LM head's 128 x 256 tile compiles with
# no spills for sm_90 but spills 464 bytes per thread for sm_86 (bench/compile_report --arch).
# On any other GPU the ops keep their untuned defaults.
TUNED_CAPABILITY = (9, 0)
# The compute capability a CPU (or meta) tensor stands for when a launcher is run on one to
# record its launches rather than interpret them: bench/compile_report sets the arch it compiles
# for. (Under TRITON_INTERPRET=1 the ops use their interpreter configs and never ask.)
CPU_STANDS_FOR = (9, 0)
_CAPABILITIES: dict[int, tuple[int, int]] = {}


def capability(device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device (cached per index); CPU_STANDS_FOR
    for any other device."""
    if device.type != "cuda":
        return CPU_STANDS_FOR
    import torch
    index = device.index if device.index is not None else torch.cuda.current_device()
    cap = _CAPABILITIES.get(index)
    if cap is None:
        cap = _CAPABILITIES[index] = tuple(torch.cuda.get_device_capability(index))
    return cap


def tuned_here(device) -> bool:
    """Whether the measured tables apply on this device: it has the architecture they were
    timed on (TUNED_CAPABILITY)."""
    return capability(device) == TUNED_CAPABILITY


def on_input_device(fn):
    """Decorator of a kernel module's entry function: run it with its first argument's CUDA
    device current. Triton launches on the current device (and that device's current stream),
    torch ops on their tensors' own: with tensors on cuda:1 while cuda:0 is current, a launch
    would run on the wrong GPU (an illegal address, or no ordering with torch's work)."""
    import functools

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        dev = x.device
        if dev.type == "cuda" and dev.index is not None:
            import torch
            if dev.index != torch.cuda.current_device():
                with torch.cuda.device(dev):
                    return fn(x, *args, **kwargs)
        return fn(x, *args, **kwargs)
    return wrapper


class ForcedConfigs:
    """An op's forced block configs, in place of its own choice (the layer ops' autotuner or
    fixed interpreter config, attention's tables): .fwd / .bwd are None (no forcing) or an
    entry shaped like those of its lists (triton.Config for the layer ops, dicts for
    attention). Tests and the benchmarks' sweeps force every entry in turn."""

    def __init__(self, fwd_configs, bwd_configs):
        self._lists = (fwd_configs, bwd_configs)
        self.fwd = self.bwd = None

    def set(self, fwd=None, bwd=None):
        """fwd / bwd: an index into the op's FWD_CONFIGS / BWD_CONFIGS, a triton.Config, or None
        to restore the default choice."""
        self.fwd, self.bwd = (lst[c] if isinstance(c, int) else c
                              for lst, c in zip(self._lists, (fwd, bwd)))


def config_launch_kw(cfg) -> dict:
    """The launch keywords of a triton.Config forced in place of the autotuner's choice: its
    block sizes, warps and stages, and LAUNCH."""
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **LAUNCH)


AUTOTUNE_ENV = "XLMR_FAST_AUTOTUNE"


def autotune_on(t) -> bool:
    """Whether a layer op (add_dropout_layernorm, bias_gelu) launched on tensor t lets Triton's
    autotuner pick its block config by timing: only for a CUDA tensor with XLMR_FAST_AUTOTUNE=1.

    Off by default, for reproducibility: the backward kernels sum their weight / bias gradient
    partials over BLOCK_M rows, and a row's LayerNorm statistics over a layout set by the warps,
    so the rounding of the results depends on the config. A choice made by timing can differ
    between processes (a resumed run, each rank), which would break the bitwise-equal resume
    the trainer promises. The fixed configs are the ones the CPU tests run; the benchmarks time
    the autotuned choice next to them (provider ours_autotuned) and print what it picked."""
    import os
    return t.is_cuda and os.environ.get(AUTOTUNE_ENV) == "1"


def tune_bench(kernel_call, quantiles):
    """How the layer ops' autotuners (XLMR_FAST_AUTOTUNE=1) time a config
    (triton.autotune(do_bench=...)).

    Triton's default warms up for 25 ms and times for 100 ms per config, for every tuning key
    (width, dtypes, dropout) in every process: ~1 s per key for these 6-8 config lists. The
    kernels are memory-bound, 5-300 us a call, so 20 ms of timed calls (50 or more) separate
    configs that differ by a few percent.
    The choice is not kept on disk (autotune's cache_results): a choice timed while the card
    was shared (the GPU tests run 8 workers on it) would then stick in later processes."""
    import triton.testing
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)

"""Triton kernels, one file per op. Importing a module here imports triton; callers in
xlmr_fast.ops import these lazily so the package works without triton installed."""

# Passed to every launch: floating-point contraction (FMA) on, whatever Triton's default. The
# kernels were tested and measured with it on (Triton 3.6's default, still 3.9's); Triton 3.9
# warns when it is left to the default, and 3.10 turns the default off.
LAUNCH = {"enable_fp_fusion": True}


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


def tune_bench(kernel_call, quantiles):
    """How the layer ops' autotuners time a config (triton.autotune(do_bench=...)).

    Triton's default warms up for 25 ms and times for 100 ms per config, for every tuning key
    (width, dtypes, dropout) in every process: ~1 s per key for these 6-8 config lists, at each
    training start, and for each of ~120 kernel-key pairs of the GPU tests (by count, ~2-3
    minutes of them). The kernels are memory-bound, 5-300 us a call, so 20 ms of timed calls
    (50 or more) separate configs that differ by a few percent.
    The choice is not kept on disk (autotune's cache_results): a choice timed while the card
    was shared (the GPU tests run 8 workers on it) would then stick in later processes."""
    import triton.testing
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)

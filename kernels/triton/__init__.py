"""Triton kernels, one file per op. Importing a module here imports triton; callers in
xlmr_fast.ops import these lazily so the package works without triton installed."""

# Passed to every launch: floating-point contraction (FMA) on, whatever Triton's default. The
# kernels were tested and measured with it on (Triton 3.6's default, still 3.9's); Triton 3.9
# warns when it is left to the default, and 3.10 turns the default off.
LAUNCH = {"enable_fp_fusion": True}

"""Triton kernels, one file per op. Importing a module here imports triton; callers in
xlmr_fast.ops import these lazily so the package works without triton installed."""

"""Reference kernels the benchmarks compare against; not part of the xlmr_fast package."""

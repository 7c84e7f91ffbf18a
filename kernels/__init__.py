"""Device code of xlmr_fast: kernels/triton/<op>.py (importable as xlmr_fast.kernels.triton)
and kernels/cuda/<op>.cu (compiled into xlmr_fast._C by setup.py)."""

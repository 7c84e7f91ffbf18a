"""The one counter-based hash every Triton kernel draws random bits from.

mix32 is Wellons' lowbias32, the same bijection of uint32 that xlmr_fast/ops/mlm_mask.py
defines for every backend; keep the constants in step with it. x must be uint32 (multiplication
then wraps mod 2^32 and shifts are logical)."""
import triton
import triton.language as tl  # noqa: F401  (Triton requires it visible in a jit function's module)


@triton.jit
def mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    x = x ^ (x >> 16)
    return x

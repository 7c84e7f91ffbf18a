"""xf.ops: the fused ops of xlmr_fast, each with a plain-torch reference beside it."""
from .attention import attention, attention_reference  # noqa: F401
from .linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference  # noqa: F401
from .mlm_mask import mlm_mask, mlm_mask_reference  # noqa: F401

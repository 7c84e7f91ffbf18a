"""xf.ops: the fused ops of xlmr_fast, each with a plain-torch reference beside it."""
from .attention import attention, attention_qkvpacked, attention_reference  # noqa: F401
from .linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference  # noqa: F401
from .mlm_mask import (  # noqa: F401
    mlm_mask,
    mlm_mask_reference,
    mlm_mask_static,
    mlm_mask_static_reference,
)
from .attention import attention_backend, attention_dropout_mask  # noqa: F401
from .add_dropout_layernorm import (  # noqa: F401
    add_dropout_layernorm,
    add_dropout_layernorm_reference,
    dropout_keep_mask,
)
from .bias_gelu import bias_gelu, bias_gelu_reference  # noqa: F401

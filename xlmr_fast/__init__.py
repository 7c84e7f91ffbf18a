"""xlmr_fast: fast, faithful XLM-R pretraining and fine-tuning."""
from . import ops  # noqa: F401
from ._ext import available as extension_available  # noqa: F401
from .config import XLMRConfig  # noqa: F401
from .tokenizer import Tokenizer  # noqa: F401
from .model import (  # noqa: F401
    XLMRForMaskedLM,
    XLMRForQuestionAnswering,
    XLMRForSequenceClassification,
    XLMRForTokenClassification,
    XLMRModel,
)

__version__ = "0.1.0"

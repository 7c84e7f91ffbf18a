"""xf.model: XLM-R (xlmr.py) and checkpoint interchange with HF and fairseq (convert.py)."""
from .xlmr import (  # noqa: F401
    XLMRForMaskedLM,
    XLMRForQuestionAnswering,
    XLMRForSequenceClassification,
    XLMRForTokenClassification,
    XLMRModel,
    XLMROutput,
)

__all__ = ["XLMRModel", "XLMRForMaskedLM", "XLMRForSequenceClassification",
           "XLMRForTokenClassification", "XLMRForQuestionAnswering", "XLMROutput"]

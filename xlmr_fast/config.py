"""XLMRConfig: the model's shape and regularisation, frozen, with named presets.

    cfg = XLMRConfig.base()                       # xlm-roberta-base (the released model)
    cfg = dataclasses.replace(cfg, num_labels=3)  # variants by replace(), never by mutation

Values are the released XLM-R ones (docs/xlmr-spec.md 1.1-1.2: post-LN, LayerNorm eps 1e-5, exact
GELU, 514 position rows, fairseq ids <s>=0 <pad>=1 </s>=2, <mask> last). to_hf_dict() and
from_hf_dict() translate to and from a Hugging Face config.json, so a saved directory loads in
`transformers` unchanged and an HF directory means the same model here as there.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# What transformers' XLMRobertaConfig assumes for a key a config.json leaves out. A config.json
# means what transformers reads from it, so a missing key gets HF's default here too (note the
# BERT-era 1e-12 LayerNorm eps and 30522 vocabulary: real XLM-R files always spell them out).
HF_DEFAULTS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2, "position_embedding_type": "absolute", "classifier_dropout": None,
}
HF_ARCHITECTURES = {  # our class name -> the transformers class that holds the same weights
    "XLMRModel": "XLMRobertaModel",
    "XLMRForMaskedLM": "XLMRobertaForMaskedLM",
    "XLMRForSequenceClassification": "XLMRobertaForSequenceClassification",
    "XLMRForTokenClassification": "XLMRobertaForTokenClassification",
    "XLMRForQuestionAnswering": "XLMRobertaForQuestionAnswering",
}


@dataclass(frozen=True)
class XLMRConfig:
    """XLM-R model configuration; defaults are xlm-roberta-base.

    vocab_size               token rows (250,002 = 4 specials + 249,997 pieces + <mask>)
    hidden_size              H, model width
    num_layers               post-LN Transformer layers
    num_heads                attention heads (head_dim = hidden_size / num_heads)
    ffn_size                 inner width of the feed-forward block
    max_position_embeddings  rows of the position table: max tokens + pad_token_id + 1 (514 -> 512)
    pad/bos/eos_token_id     fairseq ids: <pad>=1, <s>=0, </s>=2
    mask_token_id            <mask>; None means the last id, vocab_size - 1
    layer_norm_eps           every LayerNorm (embedding, layers, LM head)
    hidden_dropout           embeddings, attention output, FFN output (fairseq --dropout)
    attention_dropout        on the attention probabilities
    activation_dropout       after the FFN GELU (fairseq default 0.0; HF has none)
    initializer_range        std of the N(0, std) init of every Linear and Embedding
    classifier_dropout       classification heads; None means hidden_dropout (HF's rule)
    num_labels               classes of the sequence/token classification heads
    problem_type             sequence classification loss; None infers it as HF does
    unpad                    run the encoder on packed non-pad tokens (varlen attention) instead
                             of the padded (B, T) batch; outputs at non-pad positions equal the
                             padded path, pad positions of last_hidden_state are 0. An execution
                             choice, not part of the model: never written to config.json
    fused_layer_ops          the layers' residual + dropout + LayerNorm and bias + GELU through
                             xf.ops.add_dropout_layernorm / bias_gelu (Triton kernels): None =
                             auto, each op only where it was measured faster than eager and
                             torch.compile on this GPU for this width and dtype (a tuning file
                             of `xlmr-fast tune`, else the ops' FASTER_ON tables); True =
                             always (on the CPU: the Triton interpreter under TRITON_INTERPRET=1,
                             else the ops' fp32 reference math); False = never. Never under
                             torch.compile (it fuses these itself). The residual stream keeps the
                             plain path's dtype (fp32 under autocast); dropout masks come from
                             the ops' counter-based hash, seeded from torch's CPU generator, so
                             they differ from torch's F.dropout masks. An execution choice: never
                             written to config.json
    """

    vocab_size: int = 250002
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_size: int = 3072
    max_position_embeddings: int = 514
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    mask_token_id: int | None = None
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    initializer_range: float = 0.02
    classifier_dropout: float | None = None
    num_labels: int = 2
    problem_type: str | None = None
    unpad: bool = False
    fused_layer_ops: bool | None = None

    # ------------------------------------------------------------ validation
    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size",
                     "max_position_embeddings", "num_labels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"XLMRConfig: {name} must be a positive int, got {v!r}")
        if self.mask_token_id is None:
            # frozen dataclass: resolve the default once, here, so every reader sees an int.
            object.__setattr__(self, "mask_token_id", self.vocab_size - 1)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"XLMRConfig: hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "mask_token_id"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.vocab_size:
                raise ValueError(f"XLMRConfig: {name} must be an id in [0, vocab_size="
                                 f"{self.vocab_size}), got {v!r}")
        if self.max_position_embeddings < self.pad_token_id + 2:
            raise ValueError(f"XLMRConfig: max_position_embeddings ({self.max_position_embeddings})"
                             f" must be >= pad_token_id + 2 = {self.pad_token_id + 2}: positions "
                             f"start at pad_token_id + 1")
        for name in ("hidden_dropout", "attention_dropout", "activation_dropout",
                     "classifier_dropout"):
            v = getattr(self, name)
            if v is None and name == "classifier_dropout":
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
                raise ValueError(f"XLMRConfig: {name} must be in [0, 1), got {v!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"XLMRConfig: layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        if not self.initializer_range > 0:
            raise ValueError(f"XLMRConfig: initializer_range must be > 0, got "
                             f"{self.initializer_range}")
        if not isinstance(self.unpad, bool):
            raise ValueError(f"XLMRConfig: unpad must be a bool, got {self.unpad!r}")
        if self.fused_layer_ops is not None and not isinstance(self.fused_layer_ops, bool):
            raise ValueError(f"XLMRConfig: fused_layer_ops must be None (auto), True or False, "
                             f"got {self.fused_layer_ops!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"XLMRConfig: problem_type must be None or one of {PROBLEM_TYPES}, "
                             f"got {self.problem_type!r}")

    # ------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_tokens(self) -> int:
        """Longest sequence the position table covers (512 for XLM-R)."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @property
    def effective_classifier_dropout(self) -> float:
        return self.hidden_dropout if self.classifier_dropout is None else self.classifier_dropout

    # HF spellings, read-only, for code that thinks in transformers' names.
    num_hidden_layers = property(lambda self: self.num_layers)
    num_attention_heads = property(lambda self: self.num_heads)
    intermediate_size = property(lambda self: self.ffn_size)

    # ------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, **overrides) -> XLMRConfig:
        """Unit tests and the CPU demo: 2 layers of width 64 over a 1,000-id vocabulary."""
        return cls(**{**dict(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4,
                             ffn_size=128), **overrides})

    @classmethod
    def small(cls, **overrides) -> XLMRConfig:
        """Quick GPU experiments: 6 layers of width 512 (head dim 64), the full vocabulary."""
        return cls(**{**dict(hidden_size=512, num_layers=6, num_heads=8, ffn_size=2048),
                      **overrides})

    @classmethod
    def base(cls, **overrides) -> XLMRConfig:
        """xlmr.base / xlm-roberta-base: 12 x 768, 12 heads, FFN 3072 (~278M parameters)."""
        return cls(**overrides)

    @classmethod
    def large(cls, **overrides) -> XLMRConfig:
        """xlmr.large / xlm-roberta-large: 24 x 1024, 16 heads, FFN 4096 (~560M parameters)."""
        return cls(**{**dict(hidden_size=1024, num_layers=24, num_heads=16, ffn_size=4096),
                      **overrides})

    # ------------------------------------------------------------ Hugging Face config.json
    def to_hf_dict(self, architecture: str = "XLMRobertaForMaskedLM") -> dict:
        """The config.json transformers' XLMRobertaConfig reads as this model."""
        d = {
            "architectures": [architecture],
            "model_type": "xlm-roberta",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.ffn_size,
            "hidden_act": "gelu",
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": 1,  # a zero row, written only so HF's token-type table loads
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "position_embedding_type": "absolute",
            "classifier_dropout": self.classifier_dropout,
            "use_cache": True,
            "tie_word_embeddings": True,
            "id2label": {str(i): f"LABEL_{i}" for i in range(self.num_labels)},
            "label2id": {f"LABEL_{i}": i for i in range(self.num_labels)},
        }
        if self.problem_type is not None:
            d["problem_type"] = self.problem_type
        # Ours only (transformers keeps unknown keys as attributes and ignores them):
        if self.mask_token_id != self.vocab_size - 1:
            d["mask_token_id"] = self.mask_token_id
        if self.activation_dropout:
            d["activation_dropout"] = self.activation_dropout
        return d

    @classmethod
    def from_hf_dict(cls, d: dict, **overrides) -> XLMRConfig:
        """Read a transformers config.json dict (keys it leaves out take transformers' defaults)."""
        if not isinstance(d, dict):
            raise TypeError(f"XLMRConfig.from_hf_dict: expected a dict, got {type(d).__name__}")
        mt = d.get("model_type")
        if mt is not None and mt not in ("xlm-roberta", "roberta"):
            raise ValueError(f"XLMRConfig.from_hf_dict: model_type {mt!r} is not an XLM-R/RoBERTa "
                             f"model (expected 'xlm-roberta')")
        g = lambda k: d.get(k, HF_DEFAULTS.get(k))  # noqa: E731
        if g("hidden_act") != "gelu":
            raise ValueError(f"XLMRConfig.from_hf_dict: hidden_act {g('hidden_act')!r} is not "
                             f"supported (XLM-R uses the exact erf 'gelu')")
        if g("position_embedding_type") != "absolute":
            raise ValueError(f"XLMRConfig.from_hf_dict: position_embedding_type "
                             f"{g('position_embedding_type')!r} is not supported (only 'absolute')")
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise ValueError("XLMRConfig.from_hf_dict: decoder / cross-attention configs are not "
                             "supported (XLM-R is a bidirectional encoder)")
        if "id2label" in d and d["id2label"]:
            num_labels = len(d["id2label"])
        else:
            num_labels = d.get("num_labels", 2)
        kw = dict(
            vocab_size=g("vocab_size"), hidden_size=g("hidden_size"),
            num_layers=g("num_hidden_layers"), num_heads=g("num_attention_heads"),
            ffn_size=g("intermediate_size"), max_position_embeddings=g("max_position_embeddings"),
            pad_token_id=g("pad_token_id"), bos_token_id=g("bos_token_id"),
            eos_token_id=g("eos_token_id"), mask_token_id=d.get("mask_token_id"),
            layer_norm_eps=g("layer_norm_eps"), hidden_dropout=g("hidden_dropout_prob"),
            attention_dropout=g("attention_probs_dropout_prob"),
            activation_dropout=d.get("activation_dropout", 0.0),
            initializer_range=g("initializer_range"), classifier_dropout=g("classifier_dropout"),
            num_labels=num_labels, problem_type=d.get("problem_type"),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> XLMRConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"XLMRConfig.from_dict: unknown keys {unknown}")
        return cls(**d)

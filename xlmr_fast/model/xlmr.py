"""XLM-R (Conneau et al. 2020) in one file: encoder, MLM head and the fine-tuning heads.

The math is docs/xlmr-spec.md 1.2-1.4 line for line (fairseq @4c0d432e == HF XLMRoberta):

    x = LN_emb(E[ids] + P[positions]) -> dropout -> L x post-LN layer -> features (no final LN)
    layer(x) = LN_ffn(h + drop(W2 gelu(W1 h)))  with  h = LN_attn(x + drop(Wo attn(x)))

Shape legend in names: B batch, T tokens, H hidden, N rows (gathered tokens), V vocabulary.

Differences from the reference code that do not change any output:
* q, k, v are one fused Linear(H, 3H) (`qkv`): one GEMM instead of three. The converter splits
  and joins it (HF query/key/value, fairseq q/k/v_proj or in_proj).
* No token-type table. HF's type_vocab_size=1 table is added to every position; the converter
  folds a non-zero row into the position table on load and writes a zero row on save.
* The MLM head runs only on labelled rows and its loss goes through ops.linear_cross_entropy,
  so the (N, 250002) logits are never formed during training (fairseq does the same gather).
* fairseq zeroes pad positions after the embedding dropout; HF does not and neither do we. Pad
  positions are never attended to, so no non-pad output changes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..config import XLMRConfig
from ..ops.add_dropout_layernorm import faster_than_torch as _adln_faster
from ..ops.bias_gelu import faster_than_torch as _bias_gelu_faster
from ..ops.linear_cross_entropy import _engine_accumulates

IGNORE_INDEX = -100


@dataclass
class XLMROutput:
    """What every model returns; fields a class does not produce stay None."""
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None             # MLM (B, T, V), classes (B, C) or (B, T, C)
    last_hidden_state: torch.Tensor | None = None  # (B, T, H) encoder features
    hidden_states: tuple | None = None             # embeddings + every layer, when asked
    start_logits: torch.Tensor | None = None       # QA (B, T)
    end_logits: torch.Tensor | None = None         # QA (B, T)

    def __getitem__(self, name: str):
        if not isinstance(name, str):  # HF's outputs[0]: its tuples' order differs per class
            raise TypeError(f"XLMROutput is indexed by field name (out['loss'], out.logits), not "
                            f"by position ({name!r}): fields {[f.name for f in fields(self)]}")
        return getattr(self, name)


def make_positions(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """fairseq make_positions / HF create_position_ids_from_input_ids: 2, 3, ... per row for
    non-pad tokens (counting only non-pad, so left padding does not shift them), pad_id on pads."""
    not_pad = (input_ids != pad_id).int()
    return (torch.cumsum(not_pad, dim=1) * not_pad).long() + pad_id


def _gemm_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a Linear on x computes in: autocast's on CUDA under autocast, else x's."""
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return x.dtype


class XLMRLayer(nn.Module):
    """One post-LN Transformer layer: attention block, then FFN block, each LN(residual + f(x))."""

    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        H = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(H, 3 * H)        # rows [q; k; v]: one GEMM for the three projections
        self.attn_out = nn.Linear(H, H)
        self.attn_ln = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(H, cfg.ffn_size)
        self.fc2 = nn.Linear(cfg.ffn_size, H)
        self.ffn_ln = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.hidden_dropout = cfg.hidden_dropout
        self.attention_dropout = cfg.attention_dropout
        self.activation_dropout = cfg.activation_dropout
        self.fused_layer_ops = cfg.fused_layer_ops

    def forward(self, x: torch.Tensor, key_padding_mask_BT: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None
                ) -> torch.Tensor:
        """x: padded (B, T, H) with key_padding_mask_BT, or packed (N, H) with cu_seqlens."""
        H = x.shape[-1]
        if cu_seqlens is None:
            B, T, _ = x.shape
            qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim)
        else:
            qkv = self.qkv(x).view(-1, 3, self.num_heads, self.head_dim)  # packed tokens
        # The kernels read q, k, v as strided slices of the interleaved GEMM output (no copy)
        # and, on the Triton path, write the three gradients into one dqkv tensor.
        a = ops.attention_qkvpacked(qkv, key_padding_mask=key_padding_mask_BT,
                                    cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                                    dropout_p=self.attention_dropout if self.training else 0.0,
                                    softmax_scale=None)  # None = head_dim^-0.5 (fairseq)
        if cu_seqlens is None:
            a = a.transpose(1, 2).reshape(B, T, H)
        else:
            a = a.reshape(-1, H)
        x = self._join(self.attn_ln, self.attn_out(a), x)
        if self._fused(_bias_gelu_faster, x.device, H, _gemm_dtype(x)):
            # the bias joins the GELU kernel instead of the GEMM's epilogue
            h = ops.bias_gelu(F.linear(x, self.fc1.weight), self.fc1.bias)
        else:
            h = F.gelu(self.fc1(x))  # exact erf GELU (fairseq 'gelu', HF 'gelu'), not tanh
        h = F.dropout(h, self.activation_dropout, self.training)
        return self._join(self.ffn_ln, self.fc2(h), x)

    def _fused(self, faster_than_torch, device: torch.device, *layer) -> bool:
        """config.fused_layer_ops: True/False, or None = where the op was measured faster on
        this GPU for this layer (width and dtypes: `layer`; a tuning file, else the op's table)."""
        if torch.compiler.is_compiling():
            return False  # inductor fuses the plain ops itself (and the seed draw would break)
        if self.fused_layer_ops is None:
            return faster_than_torch(device, *layer)
        return self.fused_layer_ops

    def _join(self, ln: nn.LayerNorm, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Post-LN join LN(residual + dropout(y)), in one fused kernel when chosen."""
        p = self.hidden_dropout if self.training else 0.0
        # Under autocast y is 16-bit and the residual stream fp32 (LayerNorm's output): the op
        # reads both as they are and returns fp32, exactly the plain path's precision.
        if residual.dtype in (y.dtype, torch.float32) and self._fused(
                _adln_faster, y.device, y.shape[-1], y.dtype, residual.dtype):
            return ops.add_dropout_layernorm(y, residual, ln.weight, ln.bias, dropout_p=p,
                                             eps=ln.eps)
        return ln(residual + F.dropout(y, p, self.training))


def init_weights(module: nn.Module, std: float) -> None:
    """fairseq init_bert_params (spec 1.4): Linear/Embedding N(0, std), biases 0, pad row 0."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class _Pretrained(nn.Module):
    """from_pretrained / save_pretrained for every class (the work is in model/convert.py)."""

    # Prefix of the encoder's keys inside this class's state dict ("" for XLMRModel itself).
    encoder_prefix = "encoder."

    @classmethod
    def from_pretrained(cls, path, config: XLMRConfig | None = None, *, unsafe_load: bool = False,
                        **config_overrides):
        """Load an HF directory (config.json + model.safetensors / pytorch_model.bin, or either
        file alone) or a fairseq model.pt. `config` replaces the file's config; keyword overrides
        (e.g. num_heads=16, num_labels=3) are applied on top. unsafe_load=True allows a full
        pickle load of a fairseq file whose metadata needs more than argparse.Namespace (only for
        files you trust)."""
        from . import convert
        return convert.load_pretrained(cls, path, config=config, unsafe_load=unsafe_load,
                                       **config_overrides)

    @classmethod
    def from_state_dict(cls, state_dict: dict, config: XLMRConfig | None = None,
                        **config_overrides):
        """Build from an in-memory HF, fairseq or xlmr_fast state dict (format detected)."""
        from . import convert
        return convert.from_state_dict(cls, state_dict, config=config, **config_overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write config.json + model.safetensors in the HF layout (atomic per file)."""
        from . import convert
        convert.save_pretrained(self, save_directory)

    def _init_head(self, *modules: nn.Module) -> None:
        for m in modules:
            m.apply(lambda mod: init_weights(mod, self.config.initializer_range))


class XLMRModel(_Pretrained):
    """The encoder: features (B, T, H) of token ids (B, T)."""

    encoder_prefix = ""

    def __init__(self, config: XLMRConfig):
        super().__init__()
        self.config = cfg = config
        H = cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, H, padding_idx=cfg.pad_token_id)
        # Row pad_token_id (1) is what pad tokens index; positions start at pad_token_id + 1.
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings, H,
                                            padding_idx=cfg.pad_token_id)
        self.embed_ln = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(XLMRLayer(cfg) for _ in range(cfg.num_layers))
        self.apply(lambda m: init_weights(m, cfg.initializer_range))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, *,
                token_grad_into_grad: bool = False) -> XLMROutput:
        """input_ids (B, T) int; attention_mask (B, T), 1/True = attend, 0 = padding (default:
        wherever input_ids is pad_token_id). Positions always come from the pad ids, as in HF.
        token_grad_into_grad: this lookup adds its gradient rows into the token table's .grad
        in place (no V x H tensor of its own); XLMRForMaskedLM sets it when its tied LM head
        writes the dense part into .grad, see there and _LookupIntoGrad."""
        if input_ids.dim() != 2:
            raise ValueError(f"XLMRModel: input_ids must be (batch, tokens), got shape "
                             f"{tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if T > self.config.max_tokens:
            raise ValueError(f"XLMRModel: sequence length {T} exceeds the position table "
                             f"({self.config.max_tokens} tokens, max_position_embeddings="
                             f"{self.config.max_position_embeddings})")
        pad = self.config.pad_token_id
        if attention_mask is None:
            key_padding_mask = input_ids == pad
        else:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"XLMRModel: attention_mask shape {tuple(attention_mask.shape)} "
                                 f"!= input_ids shape {tuple(input_ids.shape)}")
            key_padding_mask = attention_mask == 0
        positions = make_positions(input_ids, pad)
        if self.config.unpad:
            return self._forward_unpadded(input_ids, positions, key_padding_mask,
                                          output_hidden_states, token_grad_into_grad)
        x = self._tokens(input_ids, token_grad_into_grad) + self.embed_positions(positions)
        x = F.dropout(self.embed_ln(x), self.config.hidden_dropout, self.training)
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, key_padding_mask)
            if hidden is not None:
                hidden.append(x)
        return XLMROutput(last_hidden_state=x,
                          hidden_states=tuple(hidden) if hidden is not None else None)

    def _tokens(self, ids: torch.Tensor, into_grad: bool) -> torch.Tensor:
        if into_grad:
            return _LookupIntoGrad.apply(ids, self.embed_tokens.weight,
                                         self.embed_tokens.padding_idx)
        return F.embedding(ids, self.embed_tokens.weight, self.embed_tokens.padding_idx)

    def _forward_unpadded(self, input_ids, positions, key_padding_mask, output_hidden_states,
                          token_grad_into_grad=False):
        """The encoder on packed tokens: gather the non-pad tokens once (row-major, so each
        row's tokens stay in order and contiguous), run every layer on (N, H) with varlen
        attention, scatter back to (B, T, H) at the end (zeros at pad positions). Saves the
        FLOPs and memory of the padding (fine-tuning batches are often 30-50% padding)."""
        B, T = input_ids.shape
        keep_BT = ~key_padding_mask
        index = torch.nonzero(keep_BT.reshape(-1)).squeeze(1)  # one host sync: N sizes all
        lengths = keep_BT.sum(1, dtype=torch.int32)
        cu_seqlens = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        # T bounds the longest row: no sync for max(lengths); it only sizes the kernel grid.
        x = (self._tokens(input_ids.reshape(-1).index_select(0, index), token_grad_into_grad)
             + self.embed_positions(positions.reshape(-1).index_select(0, index)))
        x = F.dropout(self.embed_ln(x), self.config.hidden_dropout, self.training)

        def scatter(x_NH):
            out = x_NH.new_zeros(B * T, x_NH.shape[-1])
            return out.index_copy(0, index, x_NH).view(B, T, -1)

        hidden = [scatter(x)] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, cu_seqlens=cu_seqlens, max_seqlen=T)
            if hidden is not None:
                hidden.append(scatter(x))
        return XLMROutput(last_hidden_state=hidden[-1] if hidden else scatter(x),
                          hidden_states=tuple(hidden) if hidden is not None else None)


class _LookupIntoGrad(torch.autograd.Function):
    """The token lookup of the tied table in MLM training (tied_grad): its backward adds the
    looked-up rows' gradients into the table's .grad in place, which the fused LM head's
    backward (earlier in the backward pass) has just filled, and hands autograd an empty sparse
    gradient (so the table's gradient-accumulation hooks, e.g. DDP's, fire as usual).

    Why not F.embedding(sparse=True), the earlier way: autograd added its uncoalesced sparse
    gradient into the dense .grad with index_add_, whose CUDA kernel uses atomics (a repeated
    token's rows summed in a varying order: not bitwise reproducible, against the trainer's
    resume guarantee), and its padding_idx filter is a boolean index (a host sync per
    micro-step). index_put_(accumulate=True) on CUDA sorts the indices and sums each row's
    duplicates in that order (deterministic, no sync); the padding row is zeroed, not indexed
    out. Under torch.autograd.grad, or without a dense .grad, the gradient is returned dense."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx  # the leaf: its .grad is written
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        flat = ids.reshape(-1)
        rows = grad_out.reshape(flat.numel(), weight.shape[1])  # (0, H) for an empty batch
        if ctx.padding_idx is not None:  # the padding row gets no gradient from the lookup
            rows = rows.masked_fill((flat == ctx.padding_idx)[:, None], 0.0)
        grad = weight.grad
        if (grad is not None and grad.layout == torch.strided and grad.shape == weight.shape
                and _engine_accumulates(weight)):
            grad.index_put_((flat,), rows.to(grad.dtype), accumulate=True)
            empty = torch.sparse_coo_tensor(flat.new_zeros(1, 0), rows.new_zeros(0, rows.shape[1]),
                                            weight.shape, dtype=weight.dtype, is_coalesced=True,
                                            check_invariants=False)
            return None, empty, None
        dense = torch.zeros_like(weight)
        return None, dense.index_put_((flat,), rows.to(dense.dtype), accumulate=True), None


class XLMRLMHead(nn.Module):
    """dense -> GELU -> LN, then the tied token table E^T plus a separate bias (spec 1.3)."""

    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(F.gelu(self.dense(x)))


class XLMRForMaskedLM(_Pretrained):
    """Encoder + MLM head; the decoder weight is the encoder's token table (tied, one tensor)."""

    def __init__(self, config: XLMRConfig):
        super().__init__()
        self.config = config
        self.encoder = XLMRModel(config)
        self.lm_head = XLMRLMHead(config)
        self._init_head(self.lm_head)
        nn.init.zeros_(self.lm_head.bias)

    @property
    def decoder_weight(self) -> torch.Tensor:
        return self.encoder.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, *, masked_positions: torch.Tensor | None = None,
                return_logits: bool | None = None, output_hidden_states: bool = False,
                reduction: str = "mean") -> XLMROutput:
        """labels (B, T): target ids, -100 = not a target. The loss is the mean cross-entropy
        over the targets (0 when there are none; HF gives NaN there), computed on those rows only.
        masked_positions (N,): flat indices b*T + t of the target rows (ops.mlm_mask returns
        them); without it the rows are found with nonzero(), one host sync per call. Entries of
        -1 are unused slots (ops.mlm_mask_static pads its fixed-capacity buffer with them): they
        count as ignored rows, so a static-shape training step needs no host sync.
        reduction: "mean" (above), "sum" over the targets, or "none": (N,) loss per entry of
        masked_positions, 0 at unused slots (the trainer sums these per language).
        Logits (B, T, V) are computed when labels is None or return_logits=True.

        Training with labels (eager): the tied token table gets ONE V x H gradient buffer, its
        .grad: the fused loss adds the decoder's dW into .grad itself (accumulate_weight_grad)
        and the token lookup adds its rows into .grad in place (_LookupIntoGrad). The plain
        way holds two dense V x H gradients at the backward's end (the decoder's and the
        lookup's) before summing them: 1 GB extra at H = 1024 with fp32 master weights. Under
        torch.compile, in eval, or without labels, both are plain."""
        tied_grad = (labels is not None and self.training and torch.is_grad_enabled()
                     and not torch.compiler.is_compiling() and self.decoder_weight.is_leaf
                     and self.decoder_weight.requires_grad)
        out = self.encoder(input_ids, attention_mask, output_hidden_states,
                           token_grad_into_grad=tied_grad)
        h_BTH = out.last_hidden_state
        if return_logits is None:
            return_logits = labels is None
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"XLMRForMaskedLM: labels shape {tuple(labels.shape)} != "
                                 f"input_ids shape {tuple(input_ids.shape)}")
            flat_labels = labels.reshape(-1)
            if masked_positions is None:
                masked_positions = torch.nonzero(flat_labels != IGNORE_INDEX).squeeze(1)
            # Gather first: the head and the vocabulary GEMM run on ~15% of the rows.
            used_N = masked_positions >= 0
            rows_N = masked_positions.clamp(min=0)
            h_NH = h_BTH.reshape(-1, h_BTH.shape[-1]).index_select(0, rows_N)
            targets_N = flat_labels.index_select(0, rows_N).masked_fill(~used_N, IGNORE_INDEX)
            z_NH = self.lm_head.transform(h_NH)
            if z_NH.is_cuda and torch.is_autocast_enabled("cuda"):
                # Autocast runs LayerNorm in fp32; the fused CE would then do the 250k-wide GEMM in
                # fp32 too. Cast to the autocast dtype, as the F.linear it replaces would.
                z_NH = z_NH.to(torch.get_autocast_dtype("cuda"))
            loss = ops.linear_cross_entropy(z_NH, self.decoder_weight, self.lm_head.bias,
                                            targets_N, ignore_index=IGNORE_INDEX,
                                            reduction=reduction,
                                            accumulate_weight_grad=tied_grad)
        logits = None
        if return_logits:
            logits = F.linear(self.lm_head.transform(h_BTH), self.decoder_weight,
                              self.lm_head.bias)
        return XLMROutput(loss=loss, logits=logits, last_hidden_state=h_BTH,
                          hidden_states=out.hidden_states)


def _int64(labels: torch.Tensor) -> torch.Tensor:
    """Integer class indices as int64 (F.cross_entropy refuses int32); float labels are kept
    as they are, for F.cross_entropy's own error rather than a silent truncation."""
    return labels if labels.is_floating_point() else labels.long()


def _cross_entropy_mean(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labels that are not IGNORE_INDEX, as HF's CrossEntropyLoss,
    except with none: 0 with zero gradients (F.cross_entropy gives NaN), like the MLM loss.
    Integer labels of any width (F.cross_entropy refuses int32). No host sync."""
    labels = _int64(labels)
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


class XLMRClassificationHead(nn.Module):
    """On the <s> features: dropout, dense, tanh, dropout, out_proj (HF/fairseq key names)."""

    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.dropout = cfg.effective_classifier_dropout

    def forward(self, h_BTH: torch.Tensor) -> torch.Tensor:
        x = F.dropout(h_BTH[:, 0], self.dropout, self.training)
        x = torch.tanh(self.dense(x))
        return self.out_proj(F.dropout(x, self.dropout, self.training))


class XLMRForSequenceClassification(_Pretrained):
    """Sentence / pair classification (XNLI) or regression on the <s> token."""

    def __init__(self, config: XLMRConfig):
        super().__init__()
        self.config = config
        self.encoder = XLMRModel(config)
        self.classifier = XLMRClassificationHead(config)
        self._init_head(self.classifier)

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False):
        out = self.encoder(input_ids, attention_mask, output_hidden_states)
        logits = self.classifier(out.last_hidden_state)
        loss = None
        if labels is not None:
            # HF's rule: problem_type, else regression for 1 label, integer labels -> single-label
            # cross-entropy, float labels -> multi-label BCE.
            pt = self.config.problem_type
            if pt is None:
                if self.config.num_labels == 1:
                    pt = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    pt = "single_label_classification"
                else:
                    pt = "multi_label_classification"
            if pt == "regression":
                if self.config.num_labels == 1:
                    loss = F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
                else:
                    loss = F.mse_loss(logits, labels.to(logits.dtype))
            elif pt == "single_label_classification":
                loss = _cross_entropy_mean(logits.view(-1, self.config.num_labels),
                                           labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return XLMROutput(loss=loss, logits=logits, last_hidden_state=out.last_hidden_state,
                          hidden_states=out.hidden_states)


class XLMRForTokenClassification(_Pretrained):
    """Per-token labels (NER): dropout -> Linear(H, num_labels) on every token; -100 = ignore."""

    def __init__(self, config: XLMRConfig):
        super().__init__()
        self.config = config
        self.encoder = XLMRModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self._init_head(self.classifier)

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False):
        out = self.encoder(input_ids, attention_mask, output_hidden_states)
        h = F.dropout(out.last_hidden_state, self.config.effective_classifier_dropout,
                      self.training)
        logits = self.classifier(h)
        loss = None
        if labels is not None:
            loss = _cross_entropy_mean(logits.view(-1, self.config.num_labels), labels.view(-1))
        return XLMROutput(loss=loss, logits=logits, last_hidden_state=out.last_hidden_state,
                          hidden_states=out.hidden_states)


class XLMRForQuestionAnswering(_Pretrained):
    """Extractive QA: Linear(H, 2) -> start / end logits per token."""

    def __init__(self, config: XLMRConfig):
        super().__init__()
        self.config = config
        self.encoder = XLMRModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self._init_head(self.qa_outputs)

    def forward(self, input_ids, attention_mask=None, start_positions=None, end_positions=None,
                output_hidden_states=False):
        out = self.encoder(input_ids, attention_mask, output_hidden_states)
        start_logits, end_logits = self.qa_outputs(out.last_hidden_state).unbind(dim=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            # As HF: positions outside the input are clamped to T and ignored; mean of the two.
            T = start_logits.shape[1]
            start = _int64(start_positions.reshape(-1)).clamp(0, T)  # CE refuses int32
            end = _int64(end_positions.reshape(-1)).clamp(0, T)
            loss = (F.cross_entropy(start_logits, start, ignore_index=T)
                    + F.cross_entropy(end_logits, end, ignore_index=T)) / 2
        return XLMROutput(loss=loss, start_logits=start_logits.contiguous(),
                          end_logits=end_logits.contiguous(),
                          last_hidden_state=out.last_hidden_state,
                          hidden_states=out.hidden_states)


def num_parameters(model: nn.Module) -> int:
    """Unique parameters (the tied decoder is the token table, counted once)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["XLMRModel", "XLMRForMaskedLM", "XLMRForSequenceClassification",
           "XLMRForTokenClassification", "XLMRForQuestionAnswering", "XLMROutput",
           "make_positions", "init_weights", "num_parameters", "IGNORE_INDEX"]

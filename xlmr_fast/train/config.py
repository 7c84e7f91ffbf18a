"""TrainConfig: everything a pretraining run needs, typed, frozen, validated, with presets.

    cfg = TrainConfig.preset("base")                           # tiny | small | base | large
    cfg = load_config("my.yaml", overrides=["optim.lr=3e-4", "run.max_steps=1000"])
    save_config(cfg, run_dir / "config.yaml")                  # the resolved config of every run

A config file (YAML or JSON) holds any subset of the sections below, plus an optional top-level
`preset:` naming the starting point; dotted overrides `section.field=value` come last (values are
parsed as YAML scalars: 3e-4, true, null, [0.9, 0.98]). Unknown keys, wrong types and
out-of-range values are errors that name the key and what is accepted.

Recipe defaults (spec §4): AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.01 except LayerNorm
and biases; linear warmup then linear decay to 0; 15% masking with 80/10/10, over the whole block
including <s> and </s> as fairseq does; alpha = 0.3 language sampling; 512-token blocks; XLM-R's
effective batch is 8192 sequences (base/large presets: micro-batch x accumulation x GPUs).
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

MODEL_PRESETS = ("tiny", "small", "base", "large")


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it."""


@dataclass(frozen=True)
class ModelSection:
    """The model: a named XLMRConfig preset and field overrides (vocab_size always comes from the
    tokenizer the data was made with; mask_token_id is its last id)."""
    preset: str = "tiny"
    init_from: str | None = None              # HF dir / fairseq model.pt: continue pretraining
    #                                           from its weights (its architecture; the preset
    #                                           then sets only data / optim / run defaults)
    hidden_dropout: float | None = None      # None = the preset's (0.1)
    attention_dropout: float | None = None
    unpad: bool = False                       # packed varlen encoder (only helps padded batches)
    fused_layer_ops: bool | None = None       # None = auto (where measured faster), true, false
    activation_checkpointing: bool = False    # recompute each layer in the backward: less memory
    compile: bool = False                     # torch.compile the model


@dataclass(frozen=True)
class DataSection:
    """Where the tokens are and how batches are cut (xlmr_fast.data.loader.BlockLoader)."""
    data_dir: str | None = None        # preprocessed shards (meta.json + <lang>.bin)
    tokenizer: str | None = None       # tokenizer dir (sentencepiece.bpe.model + HF files)
    seq_len: int = 512                 # <s> + seq_len - 1 stream tokens per row
    micro_batch: int = 8               # rows per device per micro-step
    alpha: float = 0.3                 # language sampling q_i ∝ p_i^alpha
    cross_documents: bool = True       # RoBERTa's stream of text; False pads at document ends
    heldout_fraction: float = 0.005    # per-language held-out tail for evaluation
    eval_text: str | None = None       # dir of <lang>.txt / <lang>.*.tsv (id TAB text) files:
                                       # per-language MLM loss on outside text (e.g. ud-pud-text)
    verify_checksums: bool = False     # sha256 of every shard against meta.json at start (reads
                                       # all shards: minutes per 100 GB; catches corrupt bytes)
    threads: int = 1                   # C++ gather threads
    prefetch: int = 2                  # batches prepared ahead by a background thread


@dataclass(frozen=True)
class MaskSection:
    prob: float = 0.15
    mask_special: bool = True          # fairseq masks <s> and </s> too (spec §4.1 step 2)
    capacity_sigmas: float = 6.0       # static positions buffer: mean + k sigma of the count


@dataclass(frozen=True)
class OptimSection:
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 1000              # optimizer steps; the schedule decays to 0 here
    grad_accum: int = 1                # micro-steps per optimizer step
    clip_norm: float = 1.0             # 0 = no clipping (the norm is still logged)
    fused: bool | None = None          # torch AdamW(fused=...): None = on CUDA


@dataclass(frozen=True)
class RunSection:
    out_dir: str = "runs/pretrain"
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    precision: str = "auto"            # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    distributed: str = "auto"          # auto (ddp under torchrun) | none | ddp | fsdp
    log_every: int = 10
    eval_every: int = 200              # 0 = only at the end
    eval_batches: int = 20             # per evaluation, over the held-out split
    save_every: int = 200              # 0 = only at the end and on signals
    keep_last: int = 3
    max_time_minutes: float = 0.0      # > 0: stop (checkpoint, eval, export) after this long
    max_bad_steps: int = 5             # consecutive non-finite steps before the run stops
    peak_tflops: float | None = None   # MFU denominator per device; None = detect
    tensorboard: bool | None = None    # None = when installed
    progress: bool = True              # tqdm bar
    export: bool = True                # save_pretrained + tokenizer files at the end


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    mask: MaskSection = field(default_factory=MaskSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self):
        validate(self)

    @classmethod
    def preset(cls, name: str) -> "TrainConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[name]()

    def replace(self, **sections) -> "TrainConfig":
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


# ---------------------------------------------------------------- presets
def _tiny() -> TrainConfig:
    """CPU demo and tests: 2 x 64 model, 128-token blocks, ~3 minutes on 2 cores."""
    return TrainConfig(model=ModelSection("tiny"),
                       data=DataSection(seq_len=128, micro_batch=16),
                       optim=OptimSection(lr=2e-3, warmup_steps=100, max_steps=1500),
                       run=RunSection(log_every=25, eval_every=250, save_every=250,
                                      eval_batches=8))


def _small() -> TrainConfig:
    """One GPU, quick experiments: 6 x 512 model, full 512-token blocks."""
    return TrainConfig(model=ModelSection("small"),
                       data=DataSection(seq_len=512, micro_batch=32),
                       optim=OptimSection(lr=6e-4, warmup_steps=1000, max_steps=20000,
                                          grad_accum=4),
                       run=RunSection(log_every=50, eval_every=1000, save_every=1000))


def _base() -> TrainConfig:
    """xlm-roberta-base recipe, per GPU micro-batch 32; 8192 sequences = 32 x accum x GPUs
    (grad_accum 256 on one GPU, 32 on 8); RoBERTa's lr for an 8k batch (spec §4.3)."""
    return TrainConfig(model=ModelSection("base"),
                       data=DataSection(seq_len=512, micro_batch=32),
                       optim=OptimSection(lr=7e-4, warmup_steps=10000, max_steps=1_500_000,
                                          grad_accum=256),
                       run=RunSection(log_every=10, eval_every=2000, save_every=2000))


def _large() -> TrainConfig:
    return TrainConfig(model=ModelSection("large"),
                       data=DataSection(seq_len=512, micro_batch=16),
                       optim=OptimSection(lr=4e-4, warmup_steps=10000, max_steps=1_500_000,
                                          grad_accum=512),
                       run=RunSection(log_every=10, eval_every=2000, save_every=2000))


PRESETS = {"tiny": _tiny, "small": _small, "base": _base, "large": _large}


# ---------------------------------------------------------------- validation
def _check(ok: bool, key: str, value, want: str) -> None:
    if not ok:
        raise ConfigError(f"config: {key} = {value!r} is invalid: {want}")


def validate(cfg: TrainConfig) -> None:
    m, d, k, o, r = cfg.model, cfg.data, cfg.mask, cfg.optim, cfg.run
    _check(m.preset in MODEL_PRESETS, "model.preset", m.preset, f"one of {MODEL_PRESETS}")
    for name in ("hidden_dropout", "attention_dropout"):
        v = getattr(m, name)
        _check(v is None or 0 <= v < 1, f"model.{name}", v, "in [0, 1) or null")
    _check(2 <= d.seq_len <= 512, "data.seq_len", d.seq_len, "2..512 (the position table)")
    _check(d.micro_batch >= 1, "data.micro_batch", d.micro_batch, ">= 1")
    _check(d.alpha >= 0, "data.alpha", d.alpha, ">= 0 (0.3 for XLM-R)")
    _check(0 <= d.heldout_fraction < 1, "data.heldout_fraction", d.heldout_fraction, "in [0, 1)")
    _check(d.threads >= 1, "data.threads", d.threads, ">= 1")
    _check(d.prefetch >= 0, "data.prefetch", d.prefetch, ">= 0")
    _check(0 < k.prob < 1, "mask.prob", k.prob, "in (0, 1)")
    _check(k.capacity_sigmas >= 0, "mask.capacity_sigmas", k.capacity_sigmas, ">= 0")
    _check(o.lr > 0, "optim.lr", o.lr, "> 0")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas,
           "two numbers in [0, 1)")
    _check(o.eps > 0, "optim.eps", o.eps, "> 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0")
    _check(o.max_steps >= 1, "optim.max_steps", o.max_steps, ">= 1")
    _check(0 <= o.warmup_steps <= o.max_steps, "optim.warmup_steps", o.warmup_steps,
           f"in [0, optim.max_steps = {o.max_steps}]")
    _check(o.grad_accum >= 1, "optim.grad_accum", o.grad_accum, ">= 1")
    _check(o.clip_norm >= 0, "optim.clip_norm", o.clip_norm, ">= 0 (0 = no clipping)")
    _check(r.device == "auto" or r.device == "cpu" or r.device.startswith("cuda"), "run.device",
           r.device, "auto, cpu, cuda or cuda:N")
    _check(r.precision in ("auto", "bf16", "fp32"), "run.precision", r.precision,
           "auto, bf16 or fp32")
    _check(r.distributed in ("auto", "none", "ddp", "fsdp"), "run.distributed", r.distributed,
           "auto, none, ddp or fsdp")
    for name in ("log_every",):
        _check(getattr(r, name) >= 1, f"run.{name}", getattr(r, name), ">= 1")
    for name in ("eval_every", "eval_batches", "save_every", "max_bad_steps"):
        _check(getattr(r, name) >= 0, f"run.{name}", getattr(r, name), ">= 0")
    _check(r.keep_last >= 1, "run.keep_last", r.keep_last, ">= 1")
    _check(r.max_time_minutes >= 0, "run.max_time_minutes", r.max_time_minutes, ">= 0")
    _check(r.peak_tflops is None or r.peak_tflops > 0, "run.peak_tflops", r.peak_tflops,
           "> 0 or null")


# ---------------------------------------------------------------- dict <-> dataclass
def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _coerce(key: str, value, tp):
    """value (from YAML/JSON) as the annotated type tp, or a ConfigError naming key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"config: {key} = {value!r} matches none of {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config: {key} = {value!r} must be a list of {len(args)} values")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: {key} = {value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config: {key} = {value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config: {key} = {value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config: {key} = {value!r} must be a string")
        return value
    raise ConfigError(f"config: {key}: unsupported type {tp}")  # pragma: no cover


def _section(cls, key: str, data: dict, base):
    if not isinstance(data, dict):
        raise ConfigError(f"config: {key} must be a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"config: unknown key {key}.{unknown[0]}; {key} has: {', '.join(names)}")
    values = {n: _coerce(f"{key}.{n}", v, hints[n]) for n, v in data.items()}
    return dataclasses.replace(base, **values)


def from_dict(data: dict, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from nested plain data, starting from base (or data['preset'], or tiny)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: the top level must be a mapping, got {type(data).__name__}")
    data = dict(data)
    preset = data.pop("preset", None)
    if base is None:
        base = TrainConfig.preset(preset or "tiny")
    elif preset is not None:
        base = TrainConfig.preset(preset)
    hints = typing.get_type_hints(TrainConfig)
    sections = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"config: unknown section {key!r}; sections are: preset, "
                              f"{', '.join(hints)}")
        sections[key] = _section(hints[key], key, value, getattr(base, key))
    return dataclasses.replace(base, **sections)  # __post_init__ validates the whole


def parse_override(text: str) -> tuple[str, str, object]:
    """'optim.lr=3e-4' -> ('optim', 'lr', 3e-4): the value parsed as a YAML scalar/list."""
    import yaml
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r}: the key must be section.field (e.g. optim.lr)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse the value: {e}") from None
    if isinstance(value, str) and value.lower() in ("none", "null"):
        value = None
    # YAML reads 3e-4 (no dot) as a string; numbers people write should be numbers.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return parts[0], parts[1], value


def read_file(path) -> dict:
    """A YAML or JSON config file as plain data, with errors naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read it ({e.strerror})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # json.JSONDecodeError / yaml.YAMLError: both say where
        raise ConfigError(f"config file {path}: not valid {path.suffix.lstrip('.') or 'YAML'}: "
                          f"{e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    return data


def load_config(path=None, overrides=(), base: TrainConfig | None = None) -> TrainConfig:
    """base (or the file's preset, or tiny) <- the file at path <- the dotted overrides."""
    data = read_file(path) if path is not None else {}
    try:
        cfg = from_dict(data, base)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {path})" if path else str(e)) from None
    nested: dict[str, dict] = {}
    for text in overrides:
        sec, name, value = parse_override(text)
        nested.setdefault(sec, {})[name] = value
    if nested:
        try:
            cfg = from_dict(nested, cfg)
        except ConfigError as e:
            raise ConfigError(f"{e} (from the command-line overrides)") from None
    return cfg


def save_config(cfg: TrainConfig, path) -> Path:
    """Write the resolved config as YAML, atomically (tmp + rename)."""
    import yaml

    from .._io import atomic_write
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    return atomic_write(path, lambda f: f.write(text), binary=False)

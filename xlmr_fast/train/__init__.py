"""Pretraining: config (TrainConfig, presets, files + overrides), optim (AdamW + schedule),
checkpoint (atomic, resumable), metrics (tokens/s, MFU, jsonl, plots), distributed (DDP/FSDP2),
prepare (corpus -> tokenizer + shards), pretrain (the Trainer loop) and cli (`xlmr-fast
pretrain`)."""
from .config import ConfigError, TrainConfig, load_config, save_config  # noqa: F401

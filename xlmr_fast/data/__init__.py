"""Data pipeline: corpus reading (corpus), token shards (shards), preprocess, loader."""

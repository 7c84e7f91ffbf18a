"""Data pipeline: corpus reading (corpus), token shards (shards), preprocess, loader, and the
embedded demo corpus (demo) that `xlmr-fast pretrain` uses when given no data."""

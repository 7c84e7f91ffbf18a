"""Benchmark the CPU data path. Runs on CPU only (no GPU needed; exits 0 everywhere).

Loader part (xlmr_fast.data.loader.BlockLoader), (64, 512) int32 batches from a synthetic
~50M-token corpus of 6 languages of very different sizes (or --data DIR, a preprocessed corpus):
  plan            the numpy row plan alone (language choice, per-language Feistel
                  permutation, block -> (start, length)); per row, never per token
  gather_cpp_tN   xlmr_fast_C::gather_blocks with N OpenMP threads (t1 = per core)
  gather_numpy    the numpy fallback (per-row slice copies)
  loader_cpp      plan + gather through the iterator, prefetch=0 (one core does both)
  loader_numpy    the same with the numpy fallback
The note column has tokens/s (B * T / time); the issue's goal is >= 10 M tokens/s per core for
block assembly. GB/s counts bytes written (B * T * 4); reads are the same amount.
Run: python -m bench.bench_data [--data DIR] [--tokens N] [--no-append]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import harness as H
from xlmr_fast.data import loader as LD
from xlmr_fast.data.shards import FORMAT, ShardWriter, write_meta

B, T = 64, 512
V = 250002


def make_synthetic(root: Path, n_tokens: int, seed: int = 0) -> Path:
    """6 languages, sizes in ratio 1000:300:100:30:10:3 (like CC-100's head and tail)."""
    weights = np.array([1000, 300, 100, 30, 10, 3], dtype=np.float64)
    sizes = (weights / weights.sum() * n_tokens).astype(np.int64)
    rng = np.random.default_rng(seed)
    langs = {}
    for li, n in enumerate(sizes):
        name = f"l{li}"
        with ShardWriter(root / f"{name}.bin", V) as w:
            pos = 0
            while pos < n:  # ~1M-token chunks of ~200-token documents
                chunk = int(min(n - pos, 1 << 20))
                toks = rng.integers(4, V, chunk, dtype=np.int64).astype(np.uint32)
                cuts = np.arange(0, chunk, 200)
                for a, b in zip(cuts, np.append(cuts[1:], chunk)):
                    w.add_document(toks[a:b], 1)
                pos += chunk
            langs[name] = w.close()
    write_meta(root, {"format": FORMAT, "version": 1,
                      "tokenizer": {"vocab_size": V, "sha256": "0" * 64}, "languages": langs})
    return root


def _time_ms(fn, warmup=5, rep=50):
    return H.time_ms(fn, warmup=warmup, rep=rep)


def bench_loader(rows, data: Path):
    ld = LD.BlockLoader(data, batch_size=B, block_size=T, alpha=0.3, seed=0, prefetch=0,
                        backend="numpy")
    shape = f"{B}x{T}"
    ntok = B * T
    state = {"step": 0}

    def plan():
        state["step"] += 1
        return ld._plan(state["step"], ld._cursors)

    # a fixed set of plans so gather timings do not include planning
    plans = [ld._plan(s, ld._cursors)[3] for s in range(64)]
    out = torch.empty((B, T), dtype=torch.int32)
    it = {"i": 0}

    def gather(backend, threads):
        def f():
            it["i"] = (it["i"] + 1) % len(plans)
            LD.gather_blocks(ld._streams_t, ld._streams_np, plans[it["i"]], out,
                             backend=backend, threads=threads)
        return f

    def add(provider, ms):
        rows.append(H.row("data_loader", provider, "cpu", shape, ms, bytes_moved=ntok * 4,
                          note=f"{ntok / ms / 1e3:.2f} M tokens/s"))

    add("plan", _time_ms(plan))
    threads = sorted({1, min(4, os.cpu_count() or 1)})
    if LD.cpp_available():
        for t in threads:
            add(f"gather_cpp_t{t}", _time_ms(gather("cpp", t)))
    else:
        print("gather_cpp: xlmr_fast._C has no gather_blocks (build the extension)")
    add("gather_numpy", _time_ms(gather("numpy", 1)))
    for backend in (["cpp"] if LD.cpp_available() else []) + ["numpy"]:
        ld_b = LD.BlockLoader(data, batch_size=B, block_size=T, alpha=0.3, seed=0, prefetch=0,
                              backend=backend, threads=1)
        g = iter(ld_b)
        add(f"loader_{backend}", _time_ms(lambda: next(g)))


# TODO(lead): tokenizer / preprocess throughput goes here (MB/s of text and tokens/s for
# xlmr_fast.tokenizer encode and xlmr_fast.data.preprocess, vs sentencepiece and transformers'
# XLMRobertaTokenizer, DESIGN.md baselines: 24 MB/s spm one thread, 2.6 MB/s HF). Not called yet.
def bench_tokenizer_and_preprocess(rows):  # pragma: no cover - stub for the lead
    raise NotImplementedError


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a preprocessed corpus dir (meta.json + <lang>.bin)")
    ap.add_argument("--tokens", type=int, default=50_000_000,
                    help="size of the synthetic corpus when --data is not given")
    ap.add_argument("--no-append", action="store_true", help="do not write bench/results/")
    args = ap.parse_args(argv)
    rows = []
    print(f"torch threads {torch.get_num_threads()}, cpu_count {os.cpu_count()}, "
          f"gather_blocks C++ {'yes' if LD.cpp_available() else 'no'}", flush=True)
    if args.data:
        bench_loader(rows, Path(args.data))
    else:
        with tempfile.TemporaryDirectory(prefix="xlmr_bench_data_") as d:
            t = time.perf_counter()
            make_synthetic(Path(d), args.tokens)
            print(f"synthetic corpus of {args.tokens / 1e6:.0f}M tokens: "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
            bench_loader(rows, Path(d))
    H.print_table(rows)
    for r in rows:
        print(f"{r['provider']:<18}{r['note']}")
    if rows and not args.no_append and os.environ.get("XLMR_FAST_BENCH_NO_APPEND") != "1":
        print("appended to", H.append_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

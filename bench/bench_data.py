"""Benchmark the CPU data path. Runs on CPU only (no GPU needed; exits 0 everywhere).

Tokenizer / preprocess part (on a CC-100-format corpus, default ../shared/data/cc100-mini;
skipped with a message when it is missing):
  tokenizer_train     xlmr_fast.tokenizer.train_tokenizer on the whole corpus (alpha-sampled
                      sentence budget --train-sentences, --train-vocab pieces, all cores): seconds
                      (the median_ms column) and sampled sentences/s; one run, it is seconds long
  tokenizer_encode    MB/s of UTF-8 text on the same --sample-mb sample of lines drawn from several
                      languages and scripts (en de ru ar hi zh ja ko th sw), no special tokens:
      spm_t1 / spm_tN        raw sentencepiece, batch encode with 1 / all threads (fairseq's path)
      ours_t1 / ours_tN      xlmr_fast Tokenizer.encode_ids (batch path, a list of ids per line)
      ours_flat_t1 / _tN     Tokenizer.encode_ids_flat (one uint32 array: what preprocess uses)
      hf_fast_t1 / _tN       transformers.XLMRobertaTokenizerFast.from_pretrained(our dir) called on
                             the batch (the `tokenizers` Rust backend; TOKENIZERS_PARALLELISM
                             off / on)
      hf_tokenizers_tN       its backend_tokenizer.encode_batch (Rust alone, without transformers)
  tokenizer_encode on a smaller sample (--small-mb), one text per call:
      ours_encode / ours_call   Tokenizer.encode(text) per line / Tokenizer(batch) (the HF-shaped
                                __call__, which loops over the texts)
      hf_slow                   transformers.XLMRobertaTokenizer (slow, sentencepiece in Python) on
                                the batch: transformers 4.x only; in 5.x that class IS the fast one
                                and this row is replaced by hf_per_text (one call per line)
  preprocess_wN       xlmr_fast.data.preprocess of --preprocess-langs into a temporary directory
                      with N = 1 and 2 workers: MB of text per second overall and per worker
                      (includes xz decompression, encoding, writing and hashing the shards)
Text rates (MB/s of UTF-8 text, M tokens/s) are in the note column and the list printed after
the table (the GB/s column would round them to 0.0); the ratio summary at the end compares ours
with Hugging Face at equal thread counts.

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
Run: python -m bench.bench_data [--corpus DIR] [--skip-tokenizer] [--skip-preprocess]
                                 [--skip-loader] [--data DIR] [--tokens N] [--no-append]
(about 45 s on 2 cores with the defaults)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench import harness as H
from xlmr_fast.data import loader as LD
from xlmr_fast.data.shards import FORMAT, ShardWriter, write_meta

B, T = 64, 512
V = 250002
DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cc100-mini"
SAMPLE_LANGS = ("en", "de", "ru", "ar", "hi", "zh", "ja", "ko", "th", "sw")
PREPROCESS_LANGS = "en,de,ru,ar,hi,zh,ja,ko,th,sw"


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
    """Median wall time of fn() in ms with perf_counter. Not H.time_ms: everything here runs on
    the host, and on a CUDA machine H.time_ms would time it with CUDA events on an idle stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


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


# ------------------------------------------------------------------ tokenizer and preprocess
def text_sample(corpus: Path, langs, mb: float) -> tuple[list[str], dict]:
    """Lines of several languages, an equal share of `mb` MB each (or all a small language has),
    read with the same reader as preprocess; interleaved so that every slice mixes scripts."""
    from xlmr_fast.data.corpus import iter_lines, list_languages
    files = list_languages(corpus)
    have = [x for x in langs if x in files]
    share = mb * 1e6 / max(1, len(have))
    per: dict[str, list[str]] = {}
    for x in have:
        got, n = [], 0
        for ln in iter_lines(files[x]):
            got.append(ln)
            n += len(ln.encode("utf-8"))
            if n >= share:
                break
        per[x] = got
    lines = [ln for group in _interleave(list(per.values())) for ln in group]
    return lines, {x: sum(len(ln.encode("utf-8")) for ln in v) for x, v in per.items()}


def _interleave(groups):
    i = 0
    while any(i < len(g) for g in groups):
        yield [g[i] for g in groups if i < len(g)]
        i += 1


def _mb(lines) -> float:
    return sum(len(ln.encode("utf-8")) for ln in lines) / 1e6


def _text_row(rows, op, provider, lines, ms, n_tokens, threads, extra=""):
    mb = _mb(lines)
    shape = f"{len(lines)} lines {mb:.2f}MB"
    rows.append(H.row(op, provider, "cpu", shape, ms,
                      note=f"{mb / ms * 1e3:.2f} MB/s, {n_tokens / ms / 1e3:.2f} M tokens/s, "
                           f"{threads} thread(s){extra}"))
    return mb / ms * 1e3


def bench_tokenizer_and_preprocess(rows, corpus: Path, args) -> dict:
    """Rows tokenizer_train, tokenizer_encode (two sample sizes) and preprocess_w1/w2; returns
    {provider: MB/s} for the ratio summary."""
    import sentencepiece as spm
    from xlmr_fast.data import preprocess as PP
    from xlmr_fast.tokenizer import META_FILE, MODEL_FILE, Tokenizer, train_tokenizer

    ncpu = os.cpu_count() or 1
    speeds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="xlmr_bench_tok_") as tmp:
        tmp = Path(tmp)
        # -- training: one run (seconds long; the variance between runs is small next to it)
        if args.tokenizer:
            tok_dir = Path(args.tokenizer)
            print(f"tokenizer: {tok_dir} (given; training not timed)", flush=True)
        else:
            tok_dir = tmp / "tok"
            t = time.perf_counter()
            train_tokenizer(corpus, tok_dir, vocab_size=args.train_vocab,
                            sentences=args.train_sentences, threads=ncpu,
                            hard_vocab_limit=False, progress=False)
            sec = time.perf_counter() - t
            meta = json.loads((tok_dir / META_FILE).read_text(encoding="utf-8"))
            n = meta["sentences_sampled"]
            rows.append(H.row("tokenizer_train", "ours", "cpu",
                              f"{len(meta['line_counts'])} langs {n} sents v{args.train_vocab}",
                              sec * 1e3,
                              note=f"{sec:.1f} s, {n / sec:.0f} sentences/s, "
                                   f"{meta['spm_vocab_size']} pieces, {ncpu} threads"))
            print(f"tokenizer_train: {sec:.1f} s for {n} sentences "
                  f"({meta['spm_vocab_size']} pieces)", flush=True)

        # -- encoding throughput, all providers on the same lines
        lines, per_lang = text_sample(corpus, SAMPLE_LANGS, args.sample_mb)
        print("encode sample: " + ", ".join(f"{x} {b / 1e6:.2f}" for x, b in per_lang.items())
              + f" MB; {len(lines)} lines, {_mb(lines):.2f} MB", flush=True)
        ours = Tokenizer.from_pretrained(tok_dir)
        sp = spm.SentencePieceProcessor(model_file=str(tok_dir / MODEL_FILE))
        ref = ours.encode_ids(lines)
        n_tok = sum(map(len, ref))
        rep = dict(warmup=1, rep=args.reps)

        for t in sorted({1, ncpu}):
            ms = _time_ms(lambda t=t: sp.encode(lines, num_threads=t), **rep)
            speeds[f"spm_t{t}"] = _text_row(rows, "tokenizer_encode", f"spm_t{t}", lines, ms,
                                            n_tok, t)
        for t in sorted({1, ncpu}):
            ours.threads = t
            ms = _time_ms(lambda: ours.encode_ids(lines), **rep)
            speeds[f"ours_t{t}"] = _text_row(rows, "tokenizer_encode", f"ours_t{t}", lines, ms,
                                             n_tok, t)
            ms = _time_ms(lambda: ours.encode_ids_flat(lines), **rep)
            speeds[f"ours_flat_t{t}"] = _text_row(rows, "tokenizer_encode", f"ours_flat_t{t}",
                                                  lines, ms, n_tok, t)
        ours.threads = ncpu

        small = lines[: max(1, int(len(lines) * args.small_mb / max(args.sample_mb, 1e-9)))]
        n_small = sum(map(len, ref[: len(small)]))
        hf = None
        try:
            import transformers
            from transformers import XLMRobertaTokenizer, XLMRobertaTokenizerFast
        except ImportError:
            print("transformers not installed: Hugging Face rows skipped")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hf = XLMRobertaTokenizerFast.from_pretrained(str(tok_dir))
            prev = os.environ.get("TOKENIZERS_PARALLELISM")
            try:
                # tokenizers reads TOKENIZERS_PARALLELISM at every batch call: "false" = 1 thread
                for t in sorted({1, ncpu}):
                    os.environ["TOKENIZERS_PARALLELISM"] = "false" if t == 1 else "true"
                    ms = _time_ms(lambda: hf(lines, add_special_tokens=False), **rep)
                    speeds[f"hf_fast_t{t}"] = _text_row(rows, "tokenizer_encode", f"hf_fast_t{t}",
                                                        lines, ms, n_tok, t)
                os.environ["TOKENIZERS_PARALLELISM"] = "true"
                bt = hf.backend_tokenizer
                ms = _time_ms(lambda: bt.encode_batch(lines, add_special_tokens=False), **rep)
                speeds[f"hf_tokenizers_t{ncpu}"] = _text_row(
                    rows, "tokenizer_encode", f"hf_tokenizers_t{ncpu}", lines, ms, n_tok, ncpu)
            finally:
                if prev is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = prev
            got = hf(lines, add_special_tokens=False)["input_ids"]
            same = sum(a == b for a, b in zip(got, ref))
            print(f"ids: HF fast == ours on {same}/{len(lines)} lines "
                  f"({100 * same / len(lines):.2f}%); tokens {sum(map(len, got))} vs {n_tok}",
                  flush=True)

        # -- one text per call (the per-text APIs), and the slow HF tokenizer, on `small`
        ms = _time_ms(lambda: [ours.encode(x, add_special_tokens=False) for x in small], **rep)
        speeds["ours_encode"] = _text_row(rows, "tokenizer_encode", "ours_encode", small, ms,
                                          n_small, 1)
        ms = _time_ms(lambda: ours(small, add_special_tokens=False), **rep)
        speeds["ours_call"] = _text_row(rows, "tokenizer_encode", "ours_call", small, ms,
                                        n_small, 1)
        ours.threads = 1
        ms = _time_ms(lambda: ours.encode_ids(small), **rep)
        _text_row(rows, "tokenizer_encode", "ours_t1", small, ms, n_small, 1)
        ours.threads = ncpu
        if hf is not None:
            if XLMRobertaTokenizer is XLMRobertaTokenizerFast or \
                    issubclass(XLMRobertaTokenizer, XLMRobertaTokenizerFast):
                print(f"transformers {transformers.__version__}: XLMRobertaTokenizer is the fast "
                      f"tokenizer (no slow one since 5.0): hf_slow skipped, hf_per_text instead",
                      flush=True)
                ms = _time_ms(lambda: [hf(x, add_special_tokens=False) for x in small], **rep)
                speeds["hf_per_text"] = _text_row(rows, "tokenizer_encode", "hf_per_text", small,
                                                  ms, n_small, 1)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    slow = XLMRobertaTokenizer.from_pretrained(str(tok_dir))
                ms = _time_ms(lambda: slow(small, add_special_tokens=False), warmup=0,
                               rep=max(1, args.reps // 2))
                speeds["hf_slow"] = _text_row(rows, "tokenizer_encode", "hf_slow", small, ms,
                                              n_small, 1)

        # -- preprocess: the same languages, 1 and 2 workers, a fresh output each time
        if not args.skip_preprocess:
            want = [x.strip() for x in args.preprocess_langs.split(",") if x.strip()]
            from xlmr_fast.data.corpus import list_languages
            have = list_languages(corpus)
            langs = [x for x in want if x in have]
            for w in sorted({1, min(2, ncpu)}):
                out = tmp / f"pp_w{w}"
                t = time.perf_counter()
                meta = PP.preprocess(corpus, tok_dir, out, workers=w, languages=langs,
                                     progress=False)
                sec = time.perf_counter() - t
                th = meta["throughput"]
                n_tok_pp = sum(e["tokens"] for e in meta["languages"].values())
                rows.append(H.row(
                    "preprocess", f"preprocess_w{w}", "cpu",
                    f"{len(langs)} langs {th['mb_text']:.1f}MB", sec * 1e3,
                    note=f"{th['mb_per_s']:.2f} MB/s total, {th['mb_per_s_per_worker']:.2f} MB/s "
                         f"per worker, {n_tok_pp / sec / 1e6:.2f} M tokens/s, {w} worker(s)"))
                speeds[f"preprocess_w{w}"] = th["mb_per_s"]
                speeds[f"preprocess_w{w}_per_worker"] = th["mb_per_s_per_worker"]
                print(f"preprocess_w{w}: {th['mb_text']:.1f} MB in {sec:.1f} s", flush=True)
    return speeds


def print_ratios(speeds: dict) -> None:
    """ours / HF fast (MB/s ratios, > 1 = ours faster) at equal thread counts."""
    ncpu = os.cpu_count() or 1
    pairs = [(f"ours_t{t}", f"hf_fast_t{t}", "batch encode") for t in sorted({1, ncpu})]
    pairs += [(f"ours_t{ncpu}", f"hf_tokenizers_t{ncpu}", "vs the Rust backend alone"),
              ("ours_flat_t1", "spm_t1", "cost of the fairseq id mapping"),
              ("ours_t1", "spm_t1", "the id mapping and a Python list per line"),
              ("ours_encode", "hf_per_text", "one text per call"),
              ("ours_call", "hf_per_text", "HF-shaped __call__ vs one text per call"),
              ("ours_call", "hf_slow", "vs the slow tokenizer (transformers 4.x)"),
              (f"preprocess_w{min(2, ncpu)}_per_worker", "hf_fast_t1",
               "whole preprocess per worker vs HF encode alone, per core")]
    if not speeds:
        return
    print("\nthroughput ratios (MB/s of text; > 1 = the first is faster)")
    for a, b, what in pairs:
        if a in speeds and b in speeds:
            print(f"  {a:<26} / {b:<18} {speeds[a]:7.2f} / {speeds[b]:6.2f} MB/s = "
                  f"{speeds[a] / speeds[b]:6.2f}x  ({what})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=None,
                    help=f"CC-100-format corpus for the tokenizer/preprocess part (default "
                         f"{DEFAULT_CORPUS.resolve()} when it exists)")
    ap.add_argument("--tokenizer", default=None,
                    help="use this tokenizer dir (e.g. XLM-R's sentencepiece.bpe.model) for the "
                         "encode/preprocess rows instead of training one (no training row)")
    ap.add_argument("--train-vocab", type=int, default=8000, help="pieces to train (8000)")
    ap.add_argument("--train-sentences", type=int, default=20000,
                    help="tokenizer training sentence budget (20000)")
    ap.add_argument("--sample-mb", type=float, default=4.0,
                    help="MB of text in the encode sample (4)")
    ap.add_argument("--small-mb", type=float, default=0.5,
                    help="MB of it for the one-text-per-call and slow-tokenizer rows (0.5)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per encode row (5)")
    ap.add_argument("--preprocess-langs", default=PREPROCESS_LANGS,
                    help=f"languages to preprocess ({PREPROCESS_LANGS})")
    ap.add_argument("--skip-tokenizer", action="store_true",
                    help="skip the tokenizer and preprocess part")
    ap.add_argument("--skip-preprocess", action="store_true", help="skip the preprocess rows")
    ap.add_argument("--skip-loader", action="store_true", help="skip the loader part")
    ap.add_argument("--data", help="a preprocessed corpus dir (meta.json + <lang>.bin) for the "
                                   "loader part")
    ap.add_argument("--tokens", type=int, default=50_000_000,
                    help="size of the synthetic corpus when --data is not given")
    ap.add_argument("--no-append", action="store_true", help="do not write bench/results/")
    args = ap.parse_args(argv)
    rows = []
    speeds = {}
    print(f"torch threads {torch.get_num_threads()}, cpu_count {os.cpu_count()}, "
          f"gather_blocks C++ {'yes' if LD.cpp_available() else 'no'}", flush=True)
    if not args.skip_tokenizer:
        corpus = Path(args.corpus) if args.corpus else DEFAULT_CORPUS
        if corpus.is_dir():
            t = time.perf_counter()
            speeds = bench_tokenizer_and_preprocess(rows, corpus, args)
            print(f"tokenizer/preprocess part: {time.perf_counter() - t:.0f} s", flush=True)
        elif args.corpus:
            print(f"--corpus {corpus} is not a directory", file=sys.stderr)
            return 2
        else:
            print(f"tokenizer/preprocess part skipped: no corpus at {corpus.resolve()} (pass "
                  f"--corpus DIR)", flush=True)
    if not args.skip_loader:
        t = time.perf_counter()
        if args.data:
            bench_loader(rows, Path(args.data))
        else:
            with tempfile.TemporaryDirectory(prefix="xlmr_bench_data_") as d:
                t = time.perf_counter()
                make_synthetic(Path(d), args.tokens)
                print(f"synthetic corpus of {args.tokens / 1e6:.0f}M tokens: "
                      f"{time.perf_counter() - t:.1f} s", flush=True)
                bench_loader(rows, Path(d))
        print(f"loader part: {time.perf_counter() - t:.0f} s", flush=True)
    H.print_table(rows)
    for r in rows:
        print(f"{r['op']:<18}{r['provider']:<20}{r['note']}")
    print_ratios(speeds)
    if rows and not args.no_append and os.environ.get("XLMR_FAST_BENCH_NO_APPEND") != "1":
        print("appended to", H.append_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

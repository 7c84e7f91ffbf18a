"""Block loader for XLM-R pretraining: language-sampled, resumable, rank-disjoint batches.

    loader = BlockLoader("corpus.bin/", batch_size=64, block_size=512, alpha=0.3, seed=0,
                         rank=rank, world_size=world_size, heldout_fraction=0.001)
    for ids, langs in loader:        # ids (64, 512) int32, langs (64,) int64 (index in loader.languages)
        ...
    ckpt["data"] = loader.state_dict()   # small dict; load_state_dict() resumes bit-exactly

What a batch is (spec §4.2, fairseq `multilingual_masked_lm` with `--sample-break-mode none`):
  * every row is <s> (0) followed by block_size - 1 tokens taken contiguously from ONE
    language's token stream (lines end with </s>, as the binarizer writes them);
  * each row picks its language independently with q_i ∝ p_i^alpha, p_i = n_i / Σ n_j where
    n_i is the number of TRAINING tokens of language i (alpha = 0.3 for XLM-R; alpha = 1
    reproduces the natural distribution, alpha = 0 the uniform one). loader.probs holds
    {lang: (p_i, q_i)} and both are logged when the loader is made;
  * within a language, rows walk a per-epoch permutation of that language's blocks, so blocks
    are drawn without replacement until the language is exhausted; its next epoch uses a new
    permutation. Batches therefore mix languages (the paper's wording is compatible; whether
    XLM-R used single-language batches is unconfirmed, spec §4.2).

Blocks:
  cross_documents=True   (default, RoBERTa "stream of text"): the training region of a language
                         is cut into consecutive blocks of block_size - 1 tokens that cross line
                         and document boundaries; the final partial block is dropped (at most
                         block_size - 2 tokens per language per split).
  cross_documents=False  blocks never cross a document boundary: each document is split into
                         consecutive chunks of block_size - 1 tokens; a document's last chunk
                         is shorter and the row's tail is padded with <pad> (1). Short
                         documents are NOT packed together (one chunk = one row), so corpora of
                         many short documents waste positions in this mode; it exists for
                         ablations and evaluation, the default mode wastes nothing.

Determinism, resume and ranks. Row j of step s has the global row index
g = s * world_size * batch_size + rank * batch_size + j. Its language is a pure function of
(seed, g) (a counter-based hash, no RNG state). Every rank computes the language choices of the
whole global batch (world_size * batch_size hashes: cheap), so all ranks keep the same global
per-language draw counters ("cursors"): the k-th draw of language i takes position k mod n_i of
permutation(seed, i, epoch = k div n_i). Permutations are Feistel bijections with cycle walking,
evaluated per row, so nothing of size n_blocks is ever materialised. Consequences:
  * ranks never share a block within a language epoch (each draw index is used by one row);
  * state_dict() = {step, cursors, fingerprint, ...} is the same on every rank; saving it from
    rank 0 and loading it on all ranks resumes exactly (test_loader.py checks bit equality);
  * a state from a different corpus or a different (batch_size, block_size, alpha, seed,
    world_size, languages, held-out, cross_documents) is rejected by load_state_dict.

Held-out split: heldout_fraction=f (or heldout_docs=k) reserves, per language, the LAST
documents whose tokens sum to at least max(f * n_tokens, block_size - 1) (or the last k
documents) as split="valid"; training never reads them. split="valid" is a finite, unshuffled
pass over each language's held-out blocks in language order, rows strided over ranks
(row r goes to rank r % world_size; the last batch may be smaller and ranks may differ by one
batch: reduce sums, not per-batch means, across ranks).

A language with fewer than block_size - 1 tokens in its training region (or, with a held-out
split, in its held-out region) is dropped with a warning naming it; no language left is an error.
vocab_size and tokenizer_sha256 (Tokenizer.model_sha256), when given, must match meta.json's
tokenizer; every shard's header vocabulary must match meta.json's (a shard copied in from another
tokenizer's run is an error).

Speed: Python does per-row work only (vectorised numpy for the plan); the token copies are done
by xlmr_fast_C::gather_blocks (csrc/data_loader.cpp, OpenMP over rows, GIL released) into an
int32 tensor (pinned when pin_memory=True and CUDA is available). A background thread prepares
`prefetch` batches ahead. Without the compiled extension gather_blocks_numpy produces the same
bits (tests compare them).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import _ext
from .shards import ShardError, open_shard, read_meta, verify

log = logging.getLogger(__name__)

BOS, PAD, EOS = 0, 1, 2
STATE_VERSION = 1
_U64 = np.uint64
_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------- counter-based hashing
def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic): a good 64-bit bijective mix."""
    # numpy array arithmetic wraps modulo 2^64 without warnings (only scalar ops warn)
    x = x.astype(_U64) + _U64(0x9E3779B97F4A7C15)
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


def _key(*parts: int) -> int:
    """A 64-bit key from small non-negative integers (seed, purpose, language code, ...)."""
    h = 0x6A09E667F3BCC909
    for p in parts:
        h = int(_mix64(np.array([(h ^ (int(p) & _MASK64)) & _MASK64], dtype=_U64))[0])
    return h


def _uniform(key: int, counters: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) from (key, counter): 53 high bits of mix64(mix64(counter ^ key))."""
    x = _mix64(counters.astype(_U64) ^ _U64(key))
    return (_mix64(x) >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _permute(pos: np.ndarray, n: np.ndarray, key: np.ndarray, rounds: int = 4) -> np.ndarray:
    """Per-element bijection of [0, n) evaluated at pos: an unbalanced Feistel network on
    bits = ceil(log2 n) bits (halves of bits//2 and bits - bits//2, swapping each round), with
    cycle walking back into [0, n). The domain is < 2n, so a walk needs < 2 passes on average.
    pos, n, key: equal-length arrays (int64, int64, uint64); each element has its own domain
    and key, so one call serves rows of every language and epoch."""
    n64 = n.astype(_U64)
    bits = np.maximum(2, np.ceil(np.log2(np.maximum(n, 2).astype(np.float64)))).astype(np.int64)
    wa = (bits // 2).astype(_U64)          # width of the left part (>= 1)
    wb = (bits - bits // 2).astype(_U64)   # width of the right part (>= 1)
    rkeys = [_mix64(key ^ _U64((0x9E3779B97F4A7C15 * (r + 1)) & _MASK64)) for r in range(rounds)]
    out = np.empty(pos.shape[0], dtype=_U64)
    todo = np.arange(pos.shape[0])
    x = pos.astype(_U64)
    one, c1, c2, s31, s64 = _U64(1), _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB), \
        _U64(31), _U64(64)
    while todo.size:
        a, b = wa[todo], wb[todo]
        ks = [k[todo] for k in rkeys]
        for r in range(rounds):
            left, right = x >> b, x & ((one << b) - one)
            t = (right ^ ks[r]) * c1
            t ^= t >> s31
            t *= c2
            # round: (left a bits, right b bits) -> (right, left ^ F(right)): b then a bits
            x = (right << a) | (left ^ (t >> (s64 - a)))
            a, b = b, a
        ok = x < n64[todo]
        out[todo[ok]] = x[ok]
        todo, x = todo[~ok], x[~ok]
    return out.astype(np.int64)


# ------------------------------------------------------------------------------------- the gather
def gather_blocks_numpy(streams, rows: np.ndarray, out: np.ndarray, bos: int = BOS,
                        pad: int = PAD) -> None:
    """Reference/fallback of xlmr_fast_C::gather_blocks: per-row slice copies (no per-token
    Python). streams: list of 1-D int32 arrays; rows (B, 3) int64 (stream, start, length);
    out (B, T) int32, written in place."""
    T = out.shape[1]
    out[:, 0] = bos
    for r in range(rows.shape[0]):
        s, start, n = (int(v) for v in rows[r])
        if not (0 <= n <= T - 1 and 0 <= start and start + n <= streams[s].shape[0]):
            raise ValueError(f"gather_blocks: row {r} reads [{start}, {start + n}) of stream {s} "
                             f"({streams[s].shape[0]} tokens) into {T - 1} positions")
        out[r, 1:1 + n] = streams[s][start:start + n]
        out[r, 1 + n:] = pad


def cpp_available() -> bool:
    """True when xlmr_fast._C has the gather_blocks CPU kernel (an older build lacks the op)."""
    return _ext.has_kernel("gather_blocks", "CPU")


_GATHER_OP = None


def gather_blocks(streams_t, streams_np, rows: np.ndarray, out: torch.Tensor, *, backend: str,
                  threads: int) -> None:
    if backend == "cpp":
        global _GATHER_OP
        if _GATHER_OP is None:  # the lookup costs ~100 us: once per process
            _GATHER_OP = _ext.require("gather_blocks", "CPU")
        _GATHER_OP(streams_t, torch.from_numpy(rows), out, BOS, PAD, int(threads))
    else:
        gather_blocks_numpy(streams_np, rows, out.numpy())


# --------------------------------------------------------------------------------- per language
@dataclass
class _Region:
    """Blocks of one language in one split: token range [lo, hi) of its stream."""
    lo: int
    hi: int
    n_blocks: int
    doc_starts: np.ndarray | None = None  # cross_documents=False: int64 starts of the docs, then hi
    doc_cum: np.ndarray | None = None     # cumulative block counts per document (int64)

    @property
    def tokens(self) -> int:
        return self.hi - self.lo


def _region(doc_index: np.ndarray, d0: int, d1: int, L: int, cross: bool) -> _Region:
    lo, hi = int(doc_index[d0]), int(doc_index[d1])
    if cross:
        return _Region(lo, hi, (hi - lo) // L)
    # n_docs int64 starts + cumulative block counts per document: 16 bytes per document
    starts = np.asarray(doc_index[d0:d1 + 1], dtype=np.int64)
    nb = (np.diff(starts) + L - 1) // L
    cum = np.cumsum(nb)
    return _Region(lo, hi, int(cum[-1]) if cum.size else 0, starts, cum)


def _block_rows(reg: _Region, blocks: np.ndarray, L: int, cross: bool):
    """(start, length) int64 arrays of block ids within a region (vectorised per language)."""
    if cross:
        return reg.lo + blocks * L, np.full(blocks.shape, L, dtype=np.int64)
    d = np.searchsorted(reg.doc_cum, blocks, side="right")
    prev = np.where(d > 0, reg.doc_cum[np.maximum(d - 1, 0)], 0)
    j = blocks - prev
    start = reg.doc_starts[d] + j * L
    length = np.minimum(L, reg.doc_starts[d + 1] - start)
    return start, length


# ----------------------------------------------------------------------------------- the loader
class BlockLoader:
    """Iterable of (ids (B, T) int32, langs (B,) int64) batches; see the module docstring."""

    def __init__(self, data_dir, *, batch_size: int, block_size: int = 512, alpha: float = 0.3,
                 seed: int = 0, rank: int = 0, world_size: int = 1, cross_documents: bool = True,
                 split: str = "train", heldout_fraction: float = 0.0, heldout_docs: int = 0,
                 languages=None, vocab_size: int | None = None,
                 tokenizer_sha256: str | None = None, threads: int | None = None,
                 prefetch: int = 2, pin_memory: bool = False, verify_checksums: bool = False,
                 backend: str | None = None):
        self._check_args(batch_size, block_size, alpha, seed, rank, world_size, split,
                         heldout_fraction, heldout_docs, prefetch)
        self.data_dir = Path(data_dir)
        self.batch_size, self.block_size = int(batch_size), int(block_size)
        self.alpha, self.seed = float(alpha), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.cross_documents, self.split = bool(cross_documents), split
        self.heldout_fraction, self.heldout_docs = float(heldout_fraction), int(heldout_docs)
        self.threads = int(threads) if threads else min(4, os.cpu_count() or 1)
        self.prefetch, self.pin_memory = int(prefetch), bool(pin_memory)
        if backend is None:
            backend = "cpp" if cpp_available() else "numpy"
            if backend == "numpy":
                log.warning("xlmr_fast._C has no gather_blocks kernel; the loader uses the numpy "
                            "fallback (slower). %s", _ext.BUILD_HINT)
        if backend not in ("cpp", "numpy"):
            raise ValueError(f"backend must be 'cpp', 'numpy' or None, got {backend!r}")
        if backend == "cpp":
            _ext.require("gather_blocks", "CPU")
        self.backend = backend
        L = self.block_size - 1

        meta = read_meta(self.data_dir)
        tok = meta.get("tokenizer", {})
        if vocab_size is not None and tok.get("vocab_size") not in (None, vocab_size):
            raise ShardError(f"{self.data_dir / 'meta.json'}: corpus was made with a vocabulary "
                             f"of {tok.get('vocab_size')} ids, vocab_size={vocab_size} was given; "
                             f"re-run `xlmr-fast preprocess` with this tokenizer")
        # Same vocabulary size is not the same tokenizer: the model file's hash decides.
        if tokenizer_sha256 is not None and tok.get("sha256") not in (None, tokenizer_sha256):
            raise ShardError(f"{self.data_dir / 'meta.json'}: corpus was preprocessed with "
                             f"another tokenizer (sha256 {str(tok.get('sha256'))[:12]}...; "
                             f"this one is {tokenizer_sha256[:12]}...); re-run `xlmr-fast "
                             f"preprocess --tokenizer <this tokenizer> --out <new dir>`")
        meta_vocab = tok.get("vocab_size")
        entries = meta.get("languages", {})
        if languages is None:
            names = sorted(entries)
        else:
            names = list(languages)
            repeated = sorted({x for x in names if names.count(x) > 1})
            if repeated:  # each would be sampled, and its blocks drawn, as two languages
                raise ValueError(f"languages={names} lists {repeated} more than once")
            missing = [x for x in names if x not in entries]
            if missing:
                raise ValueError(f"languages={missing} are not in {self.data_dir / 'meta.json'} "
                                 f"(it has {sorted(entries)})")
        if not names:
            raise ShardError(f"{self.data_dir / 'meta.json'} lists no languages: run `xlmr-fast "
                             f"preprocess` on a corpus with text into {self.data_dir}")

        heldout = self.heldout_fraction > 0 or self.heldout_docs > 0
        kept, dropped = [], []
        for name in names:
            if verify_checksums:
                verify(self.data_dir, name, meta)
            sh = open_shard(self.data_dir / entries[name]["file"], vocab_size)
            if meta_vocab is not None and sh.vocab_size != meta_vocab:
                # e.g. a <lang>.bin copied in from another tokenizer's preprocess run
                raise ShardError(f"shard {sh.path} was made with a vocabulary of "
                                 f"{sh.vocab_size} ids, but {self.data_dir / 'meta.json'} "
                                 f"records {meta_vocab}: it comes from another tokenizer; delete "
                                 f"it and rerun `xlmr-fast preprocess` with the tokenizer of "
                                 f"meta.json")
            di = sh.doc_index
            nd = sh.n_docs
            k = 0
            if self.heldout_docs > 0:
                k = min(self.heldout_docs, nd)
            elif self.heldout_fraction > 0:
                target = max(math.ceil(self.heldout_fraction * sh.n_tokens), L)
                tail = sh.n_tokens - np.asarray(di[::-1], dtype=np.int64)  # tail[k]: last k docs
                k = min(int(np.searchsorted(tail, target, side="left")), nd)
            train = _region(di, 0, nd - k, L, self.cross_documents)
            valid = _region(di, nd - k, nd, L, self.cross_documents)
            if train.tokens < L or (heldout and valid.tokens < L):
                dropped.append(name)
                warnings.warn(f"BlockLoader: language {name!r} dropped: {train.tokens} training "
                              + (f"and {valid.tokens} held-out " if heldout else "")
                              + f"tokens in {sh.path}, fewer than one block of {L} "
                              f"(block_size - 1); add text for it"
                              + (" or lower the held-out share" if heldout else "")
                              + ", or leave it out with languages=[...] to silence this",
                              stacklevel=2)
                continue
            kept.append((name, sh, train, valid, entries[name]))
        if not kept:
            raise ShardError(f"BlockLoader: no language in {self.data_dir} has enough tokens for "
                             f"one block of {L} tokens (dropped: {dropped}); preprocess more "
                             f"text or use a smaller block_size")

        self.languages = [k[0] for k in kept]
        self._shards = [k[1] for k in kept]
        self._train = [k[2] for k in kept]
        self._valid = [k[3] for k in kept] if heldout else None
        if split == "valid" and self._valid is None:
            raise ValueError("split='valid' needs heldout_fraction > 0 or heldout_docs > 0")
        # Zero-copy views: uint32 ids < 2^31 read as int32. torch warns that the memmap is
        # read-only; the gather only reads it.
        self._streams_np = [s.tokens.view(np.int32) for s in self._shards]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self._streams_t = [torch.from_numpy(a) for a in self._streams_np]

        n = np.array([r.tokens for r in self._train], dtype=np.float64)
        p = n / n.sum()
        q = p ** self.alpha
        q /= q.sum()
        self._cumq = np.cumsum(q)
        self._cumq[-1] = 1.0
        self.probs = {name: (float(pi), float(qi)) for name, pi, qi in zip(self.languages, p, q)}
        self._n_blocks = np.array([r.n_blocks for r in self._train], dtype=np.int64)
        self._lang_codes = [zlib.crc32(x.encode()) for x in self.languages]
        self._lang_key = _key(self.seed, 1)
        self._perm_base = _mix64(np.array(self._lang_codes, dtype=_U64) ^ _U64(_key(self.seed, 2)))

        self.config = {
            "batch_size": self.batch_size, "block_size": self.block_size, "alpha": self.alpha,
            "seed": self.seed, "world_size": self.world_size,
            "cross_documents": self.cross_documents, "heldout_fraction": self.heldout_fraction,
            "heldout_docs": self.heldout_docs, "languages": self.languages,
            "data": {x[0]: [int(x[4].get("tokens", x[1].n_tokens)), x[4].get("sha256", "")]
                     for x in kept},
        }
        self.fingerprint = hashlib.sha256(
            json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]
        self._step = 0
        self._cursors = np.zeros(len(self.languages), dtype=np.int64)

        log.info("BlockLoader %s split=%s: %d languages, block %d, batch %d x %d ranks, alpha %.2f",
                 self.data_dir, split, len(self.languages), self.block_size, self.batch_size,
                 self.world_size, self.alpha)
        for name, r in zip(self.languages, self._train):
            pi, qi = self.probs[name]
            log.info("  %-10s tokens %12d  blocks %10d  p %.5f  q %.5f", name, r.tokens,
                     r.n_blocks, pi, qi)

    @staticmethod
    def _check_args(batch_size, block_size, alpha, seed, rank, world_size, split,
                    heldout_fraction, heldout_docs, prefetch):
        def _int(name, v, lo):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        _int("batch_size", batch_size, 1)
        _int("block_size", block_size, 2)
        _int("seed", seed, 0)
        _int("world_size", world_size, 1)
        _int("rank", rank, 0)
        _int("heldout_docs", heldout_docs, 0)
        _int("prefetch", prefetch, 0)
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if not (isinstance(alpha, (int, float)) and 0 <= alpha and math.isfinite(alpha)):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        if not (0 <= heldout_fraction < 1):
            raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
        if heldout_fraction > 0 and heldout_docs > 0:
            raise ValueError("give heldout_fraction or heldout_docs, not both")
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid', got {split!r}")

    # ------------------------------------------------------------------------------- planning
    def _plan(self, step: int, cursors: np.ndarray):
        """Rows of this rank at `step` given the global draw counters before it.

        Returns (lang (B,), block (B,), epoch (B,), rows (B, 3) int64, new cursors)."""
        B, W = self.batch_size, self.world_size
        N = B * W
        g = np.arange(step * N, (step + 1) * N, dtype=np.int64)
        lang_g = np.searchsorted(self._cumq, _uniform(self._lang_key, g), side="right")
        lang_g = np.minimum(lang_g, len(self.languages) - 1)
        counts = np.bincount(lang_g, minlength=len(self.languages))
        order = np.argsort(lang_g, kind="stable")
        firsts = np.cumsum(counts) - counts
        draw = np.empty(N, dtype=np.int64)
        ls = lang_g[order]
        draw[order] = cursors[ls] + np.arange(N, dtype=np.int64) - firsts[ls]
        mine = slice(self.rank * B, (self.rank + 1) * B)
        lang, draw = lang_g[mine].astype(np.int64), draw[mine]
        nb = self._n_blocks[lang]
        epoch, pos = draw // nb, draw % nb
        block = _permute(pos, nb, self._perm_keys(lang, epoch))
        rows = np.empty((B, 3), dtype=np.int64)
        rows[:, 0] = lang
        for li in np.unique(lang):
            sel = lang == li
            rows[sel, 1], rows[sel, 2] = _block_rows(self._train[li], block[sel],
                                                     self.block_size - 1, self.cross_documents)
        return lang, block, epoch, rows, cursors + counts

    def _perm_keys(self, lang: np.ndarray, epoch: np.ndarray) -> np.ndarray:
        """Permutation key of (seed, language, epoch) per row, vectorised."""
        return _mix64(self._perm_base[lang] ^ epoch.astype(_U64))

    def plan(self, n_steps: int = 1) -> list[dict]:
        """The next n_steps batches' row plans from the current state, without advancing it:
        [{"step", "lang", "block", "epoch", "rows"}] (for tests and debugging)."""
        step, cur, out = self._step, self._cursors.copy(), []
        for _ in range(n_steps):
            lang, block, epoch, rows, cur = self._plan(step, cur)
            out.append({"step": step, "lang": lang, "block": block, "epoch": epoch, "rows": rows})
            step += 1
        return out

    def _assemble(self, rows: np.ndarray) -> torch.Tensor:
        pin = self.pin_memory and torch.cuda.is_available()
        out = torch.empty((rows.shape[0], self.block_size), dtype=torch.int32, pin_memory=pin)
        # Threads only pay off on big batches: a (64, 512) batch is 128 KiB, one memcpy-bound
        # core does it in ~50 us, and waking OpenMP threads costs more than that (measured 8 ms
        # with 2 threads on a busy 2-core machine). At least 256K tokens per thread.
        threads = max(1, min(self.threads, out.numel() // (1 << 18)))
        gather_blocks(self._streams_t, self._streams_np, rows, out, backend=self.backend,
                      threads=threads)
        return out

    def _make(self, step: int, cursors: np.ndarray):
        lang, _, _, rows, new = self._plan(step, cursors)
        return self._assemble(rows), torch.from_numpy(lang), new

    # ------------------------------------------------------------------------------ iteration
    def __iter__(self):
        if self.split == "valid":
            return self._iter_valid()
        return self._iter_train()

    def _iter_train(self):
        if self.prefetch == 0:
            while True:
                ids, langs, new = self._make(self._step, self._cursors)
                self._step, self._cursors = self._step + 1, new
                yield ids, langs
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item):  # gives up when the consumer has gone (never blocks past stop)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    pass

        def produce(step, cur):
            try:
                while not stop.is_set():
                    ids, langs, cur = self._make(step, cur)
                    step += 1
                    put((ids, langs, step, cur))
            except BaseException as e:  # surfaced in the consumer
                put(e)

        th = threading.Thread(target=produce, args=(self._step, self._cursors.copy()),
                              name="xlmr_fast-BlockLoader", daemon=True)
        th.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                ids, langs, step, cur = item
                self._step, self._cursors = step, cur  # the state after the batch handed out
                yield ids, langs
        finally:
            stop.set()
            th.join(timeout=5)

    def valid_rows(self) -> np.ndarray:
        """All held-out rows (lang, start, length) of this rank, in order."""
        if self._valid is None:
            raise ValueError("no held-out split: pass heldout_fraction or heldout_docs")
        parts = []
        for li, reg in enumerate(self._valid):
            b = np.arange(reg.n_blocks, dtype=np.int64)
            start, length = _block_rows(reg, b, self.block_size - 1, self.cross_documents)
            parts.append(np.stack([np.full_like(b, li), start, length], axis=1))
        rows = np.concatenate(parts)
        return rows[self.rank::self.world_size]

    def _iter_valid(self):
        rows = self.valid_rows()
        for i in range(0, rows.shape[0], self.batch_size):
            r = np.ascontiguousarray(rows[i:i + self.batch_size])
            yield self._assemble(r), torch.from_numpy(r[:, 0].copy())

    def __len__(self):
        if self.split != "valid":
            raise TypeError("the training split is an endless stream (no len)")
        n = self.valid_rows().shape[0]
        return (n + self.batch_size - 1) // self.batch_size

    # ---------------------------------------------------------------------------------- state
    @property
    def step(self) -> int:
        """Number of training batches handed out so far."""
        return self._step

    def state_dict(self) -> dict:
        """Small, JSON-able, identical on every rank: resume with load_state_dict."""
        return {"version": STATE_VERSION, "step": int(self._step), "seed": self.seed,
                "fingerprint": self.fingerprint, "config": self.config,
                "cursors": {x: int(c) for x, c in zip(self.languages, self._cursors)}}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"BlockLoader.load_state_dict: not a BlockLoader state (version "
                             f"{state.get('version') if isinstance(state, dict) else state!r}, "
                             f"this reads {STATE_VERSION})")
        if state.get("fingerprint") != self.fingerprint:
            old = state.get("config", {})
            diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
            raise ValueError(f"BlockLoader.load_state_dict: the state was saved by a loader with "
                             f"a different configuration or corpus (differs in: "
                             f"{', '.join(diff) or 'unknown'}); resuming would not reproduce the "
                             f"run. Use the same data and arguments, or start a fresh loader.")
        self._step = int(state["step"])
        self._cursors = np.array([int(state["cursors"][x]) for x in self.languages],
                                 dtype=np.int64)

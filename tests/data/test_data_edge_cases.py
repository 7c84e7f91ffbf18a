"""Edge cases of the data path found in review: documents longer than a preprocess batch, a UTF-8
byte-order mark, corrupt compressed input, the shard writer's index memory, the loader's
prefetch thread after a producer error, the dedup filter's memory and meta.json's durability.
Fast: a stand-in tokenizer, synthetic files."""
from __future__ import annotations

import gzip
import lzma
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pytest

from xlmr_fast.data import corpus as C
from xlmr_fast.data import preprocess as pp
from xlmr_fast.data.corpus import CorpusError, ReadStats, iter_documents, list_languages
from xlmr_fast.data.loader import BlockLoader
from xlmr_fast.data.shards import FORMAT, ShardWriter, open_shard, write_meta


class _WordTokenizer:
    """Stand-in for xlmr_fast.Tokenizer in preprocess: one id per word, deterministic."""
    vocab_size = 100
    model_sha256 = "f" * 64
    threads = 1

    def encode_ids_flat(self, lines):
        ids = [[4 + zlib.crc32(w.encode()) % 90 for w in ln.split()] for ln in lines]
        lens = np.array([len(x) for x in ids], dtype=np.int64)
        flat = np.array([i for x in ids for i in x], dtype=np.uint32)
        return flat, lens


@pytest.fixture
def fake_tok(tmp_path, monkeypatch):
    d = tmp_path / "tok"
    d.mkdir()
    (d / pp.SPM_FILE).write_bytes(b"stand-in")
    monkeypatch.setattr(pp, "_load_tokenizer", lambda _d: _WordTokenizer())
    return d


def test_long_document_encoded_in_parts(tmp_path, fake_tok, monkeypatch):
    # A language file without empty lines is one document: preprocess must still encode it in
    # batches of about batch_lines lines (not the whole file at once), and the shard must not
    # depend on batch_lines (the long document stays one entry of the index).
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "xx.txt").write_text("".join(f"line {i} of one long document\n" for i in range(3000)))
    short = "\n\n".join(f"short doc {i}\nsecond line {i}" for i in range(50))
    (corpus / "yy.txt").write_text(short + "\n\n" + "\n".join(f"long {i}" for i in range(700))
                                   + "\n\nlast doc\n")
    calls = []
    orig = pp._encode

    def spy(tok, lines, threads):
        calls.append(len(lines))
        return orig(tok, lines, threads)

    monkeypatch.setattr(pp, "_encode", spy)
    bl = 64
    pp.preprocess(corpus, fake_tok, tmp_path / "small", workers=1, batch_lines=bl,
                  progress=False)
    assert max(calls) < 2 * bl, f"an encode call got {max(calls)} lines (batch_lines={bl})"
    pp.preprocess(corpus, fake_tok, tmp_path / "big", workers=1, batch_lines=100_000,
                  progress=False)
    for lang, n_docs, n_lines in (("xx", 1, 3000), ("yy", 52, 801)):
        a, b = tmp_path / "small" / f"{lang}.bin", tmp_path / "big" / f"{lang}.bin"
        assert a.read_bytes() == b.read_bytes(), lang
        sh = open_shard(a)
        assert sh.n_docs == n_docs and sh.n_lines == n_lines
        assert int((np.asarray(sh.tokens) == 2).sum()) == n_lines  # a </s> per line


def test_document_parts_match_documents(tmp_path):
    p = tmp_path / "en.txt"
    docs = [[f"d{d} l{i}" for i in range(n)] for d, n in enumerate((1, 5, 4, 9, 2))]
    p.write_text("\n\n\n".join("\n".join(d) for d in docs) + "\n")
    s0, s1 = ReadStats(), ReadStats()
    assert list(iter_documents(p, s0)) == docs
    parts = list(C.iter_document_parts(p, s1, max_lines=4))
    assert all(0 < len(x) <= 4 for x, _ in parts)
    rebuilt = []
    for lines, new in parts:
        if new:
            rebuilt.append([])
        rebuilt[-1].extend(lines)
    assert rebuilt == docs and s0 == s1 and s1.documents == len(docs)


def test_utf8_bom_is_not_text(tmp_path):
    # A file saved with a byte-order mark (Windows editors) and CRLF line ends: the BOM is not
    # a line of its own (nor part of the first line), CRLF is removed.
    (tmp_path / "en.txt").write_bytes("\ufeff\r\n\r\nfirst doc\r\nline two\r\n\r\nsecond\r\n"
                                      .encode("utf-8"))
    (tmp_path / "fr.txt").write_bytes("\ufeffBonjour\nle monde\n".encode("utf-8"))
    st = ReadStats()
    assert list(iter_documents(tmp_path / "en.txt", st)) == [["first doc", "line two"],
                                                              ["second"]]
    assert st.lines == 3 and st.documents == 2 and st.bytes == len("first docline twosecond")
    assert list(iter_documents(tmp_path / "fr.txt")) == [["Bonjour", "le monde"]]


@pytest.mark.parametrize("suffix", [".txt.xz", ".txt.gz"])
def test_corrupt_compressed_file_named(tmp_path, suffix):
    text = "".join(f"line {i} with some words\n" for i in range(5000)).encode()
    data = lzma.compress(text) if suffix == ".txt.xz" else gzip.compress(text)
    p = tmp_path / f"sw{suffix}"
    p.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(CorpusError, match=f"sw{suffix}.*truncated or corrupt"):
        list(iter_documents(list_languages(tmp_path)["sw"]))
    p.write_bytes(b"this is not compressed data at all" * 10)
    with pytest.raises(CorpusError, match=f"sw{suffix}"):
        list(iter_documents(p))


def test_shard_writer_index_memory_and_continuation(tmp_path):
    # The document index costs 8 bytes per document while writing, not a Python int each
    # (CC-100 languages have 10^8 documents: ~4 GB per worker otherwise).
    n = 200_000
    one = np.array([5], dtype=np.uint32)
    tracemalloc.start()
    try:
        with ShardWriter(tmp_path / "a.bin", 100) as w:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(n):
                w.add_document(one, 1)
            grew = tracemalloc.get_traced_memory()[0] - before
            w.close()
    finally:
        tracemalloc.stop()
    assert grew < 16 * n, f"{grew / n:.1f} bytes per document"
    sh = open_shard(tmp_path / "a.bin")
    assert sh.n_docs == n and np.array_equal(sh.doc_index, np.arange(n + 1))
    # a document written in parts is one document
    with ShardWriter(tmp_path / "b.bin", 100) as w:
        w.add_document(np.array([7, 2], dtype=np.uint32), 1)
        w.add_document(np.array([8, 9, 2], dtype=np.uint32), 1, new_document=False)
        w.add_document(np.array([6, 2], dtype=np.uint32), 1)
        w.close()
    sh = open_shard(tmp_path / "b.bin")
    assert sh.doc_index.tolist() == [0, 5, 7] and sh.tokens.tolist() == [7, 2, 8, 9, 2, 6, 2]
    assert sh.n_lines == 3


def test_prefetch_thread_ends_after_producer_error(tmp_path):
    # The producer failed while the queue was full and the consumer then stopped: the thread
    # must end (it used to block forever in queue.put, after a 5 s join timeout on close).
    with ShardWriter(tmp_path / "en.bin", 100) as w:
        w.add_document(np.full(5000, 7, dtype=np.uint32), 1)
        entry = w.close()
    write_meta(tmp_path, {"format": FORMAT, "version": 1,
                          "tokenizer": {"vocab_size": 100, "sha256": "0" * 64},
                          "languages": {"en": entry}})
    ld = BlockLoader(tmp_path, batch_size=2, block_size=17, prefetch=1, backend="numpy")
    orig, calls = ld._make, []

    def make(step, cur):
        calls.append(step)
        if len(calls) >= 3:
            raise RuntimeError("boom")
        return orig(step, cur)

    ld._make = make
    it = iter(ld)
    next(it)
    deadline = time.monotonic() + 10
    while len(calls) < 3 and time.monotonic() < deadline:  # producer has failed, queue full
        time.sleep(0.01)
    time.sleep(0.2)
    it.close()
    deadline = time.monotonic() + 10  # generous: a loaded 2-core CI machine is slow
    while time.monotonic() < deadline:
        if not any(t.name == "xlmr_fast-BlockLoader" and t.is_alive()
                   for t in threading.enumerate()):
            break
        time.sleep(0.01)
    assert not any(t.name == "xlmr_fast-BlockLoader" and t.is_alive()
                   for t in threading.enumerate())


def test_batch_with_string_pair_is_refused(tmp_path):
    # tok(["a", "b"], "xy") used to pair each text with one character of "xy" (list("xy")),
    # silently; Hugging Face raises a TypeError.
    import io

    import sentencepiece as spm

    from xlmr_fast.tokenizer import MODEL_FILE, Tokenizer
    buf = io.BytesIO()
    words = "the cat sat on a mat and the dog ran to it over there".split()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 5),
        model_writer=buf, model_type="unigram", vocab_size=40, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    (tmp_path / MODEL_FILE).write_bytes(buf.getvalue())
    tok = Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="text_pair"):
        tok(["the cat", "a dog"], "xy")
    assert tok("the cat", "a dog")["input_ids"] == tok.encode_pair("the cat", "a dog")
    assert tok(["the cat"], ["a dog"])["input_ids"] == [tok.encode_pair("the cat", "a dog")]


def test_dedup_hashes_equal_a_set_through_merges():
    """_SeenHashes answers exactly as a Python set would, across many merges into its sorted
    array, with hashes over the whole uint64 range (above 2**63 too) and repeats of both fresh
    and merged hashes."""
    rng = np.random.default_rng(0)
    keys = [int(k) for k in rng.integers(0, 2**64, size=3000, dtype=np.uint64)]
    keys = keys + keys[::7] + [0, 2**64 - 1, 0, 2**64 - 1]
    rng.shuffle(keys)
    seen, ref = C._SeenHashes(merge_min=16), set()
    for k in keys:
        assert seen.add(k) == (k not in ref), k
        ref.add(k)
    assert len(seen) == len(ref)
    assert seen._sorted.size > len(ref) // 2  # merges happened


_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")  # the dedup key maps digits to 0


def test_dedup_memory_per_unique_line():
    """The dedup filter holds ~8-13 bytes per unique line (a Python set of digests: ~75), so a
    CC-100-sized language (~2e8 unique lines) fits a preprocess worker."""
    n = 400_000
    tracemalloc.start()
    try:
        seen = C._SeenHashes(merge_min=1 << 12)  # the default (65,536) matters below ~1e6
        for i in range(n):
            seen.add(C._dedup_key(f"line {i:x} text".translate(_NO_DIGITS)))
        cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(seen) == n
    assert cur / n < 16, cur / n
    assert peak / n < 40, peak / n


def test_dedup_output_unchanged(tmp_path):
    """iter_documents with dedup drops exactly the repeated normalised lines."""
    words = [f"{i:x}".translate(_NO_DIGITS) for i in range(50)]
    lines = [f"Line {words[i % 50]} here" for i in range(400)] + ["x 1", "X 2", "x   3"]
    (tmp_path / "en.txt").write_text("\n".join(lines) + "\n")
    stats = ReadStats()
    docs = list(iter_documents(tmp_path / "en.txt", stats, C.CleanConfig(dedup=True)))
    kept = [ln for d in docs for ln in d]
    assert kept == [f"Line {w} here" for w in words] + ["x 1"]
    assert stats.removed["dedup"] == 352


def test_meta_json_is_fsynced_before_rename(tmp_path, monkeypatch):
    """meta.json is written like the shards (fsync, then rename): unsynced, a power loss can
    leave it empty, and every later preprocess run then fails reading it."""
    import os

    from xlmr_fast import _io
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                      else fd)
        return real_fsync(fd)
    monkeypatch.setattr(_io.os, "fsync", spy)
    write_meta(tmp_path, {"format": FORMAT, "languages": {}})
    assert (tmp_path / "meta.json").read_text().startswith("{")
    assert synced, "meta.json was not fsynced"
    assert not [p for p in tmp_path.iterdir() if p.name != "meta.json"]


def test_whitespace_and_dedup_key_equal_the_regex_versions(shared_data_dir):
    """The per-line cleaning uses str.split / join where it used regular expressions (3x
    faster): the same strings and dedup keys. "\\s" is exactly str.isspace() over all of Unicode,
    and real lines of every cc100-mini language give the same normalised text and keys."""
    import re
    import sys
    ws = re.compile(r"\s")
    assert [cp for cp in range(sys.maxunicode + 1)
            if bool(ws.match(chr(cp))) != chr(cp).isspace()] == []

    def old_norm(x):
        return re.sub(r"\s+", " ", x).strip()

    def old_key(x):
        norm = old_norm(re.sub(r"\d", "0", x.lower()))
        return int.from_bytes(C.hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest(),
                              "little")
    lines = ["  a\u00a0\u2003b\t\x1c c  ", "Ünïcödé ١٢٣ 456 ＡＢＣ",
             "\u3000全角\u3000空白\u3000", ""]
    for p in sorted((shared_data_dir / "cc100-mini").glob("*.txt*")):
        with C.open_text(p) as f:
            lines += [ln.rstrip("\n") for _, ln in zip(range(300), f)]
    for x in lines:
        assert C._normalize_ws(x) == old_norm(x), repr(x)
        assert C._dedup_key(x) == old_key(x), repr(x)
        assert C._dedup_key(C._normalize_ws(x), ws_normalized=True) == old_key(x), repr(x)


def test_iter_lines_streams_a_long_document(tmp_path):
    """iter_lines (the tokenizer's sampler reads every language through it) holds at most a
    part of a document, not the whole one: a file without an empty line is one document, and
    its first line comes before the file is read to the end (here: a truncated download)."""
    text = "".join(f"line {i} of one long document\n" for i in range(100_000)).encode()
    data = lzma.compress(text)
    p = tmp_path / "sw.txt.xz"
    p.write_bytes(data[: len(data) // 2])
    it = C.iter_lines(p)
    assert next(it) == "line 0 of one long document"
    with pytest.raises(CorpusError, match="truncated or corrupt"):
        list(it)
    p.write_bytes(data)
    s0, s1 = ReadStats(), ReadStats()
    assert list(C.iter_lines(p, s0)) == [ln for d in iter_documents(p, s1) for ln in d]
    assert s0 == s1 and s0.documents == 1 and s0.lines == 100_000


def test_min_chars_keeps_a_line_of_exactly_min_chars(tmp_path):
    """Catches an off-by-one in the min_chars filter: "shorter than min_chars" is dropped, a line
    of exactly min_chars characters is kept."""
    from xlmr_fast.data.corpus import CleanConfig, ReadStats, iter_lines
    p = tmp_path / "en.txt"
    p.write_text("123456789\n1234567890\n12345678901\n")
    st = ReadStats()
    kept = list(iter_lines(p, st, CleanConfig(min_chars=10, dedup=False)))
    assert kept == ["1234567890", "12345678901"] and st.removed["min_chars"] == 1

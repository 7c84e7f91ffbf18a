"""xlmr_fast.data.preprocess: shards equal a re-encoding with transformers, resume, errors, CLI."""
import gzip
import json
import logging
import lzma
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from xlmr_fast.data import preprocess as pp
from xlmr_fast.data.corpus import CleanConfig, CorpusError, iter_documents, list_languages
from xlmr_fast.data.shards import ShardError, open_shard, read_meta, verify, write_meta

# a subset of cc100-mini (fast): several scripts; one plain .txt (with invalid UTF-8 added), one
# .txt.gz, the rest .txt.xz as shipped
LANGS = ["ar", "de", "en", "hi", "ru", "sw", "zh"]
AS_TXT, AS_GZ = "de", "sw"
BAD_UTF8_LINES = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # (the function-scoped shared_data fixture cannot feed a module fixture; same lookup)
    root = Path(__file__).resolve().parents[2]
    src = Path(os.environ.get("XLMR_FAST_SHARED_DATA", root / ".." / "shared" / "data"))
    src = src / "cc100-mini"
    if not src.is_dir():
        pytest.skip(f"shared data not found at {src}")
    d = tmp_path_factory.mktemp("corpus")
    for lang in LANGS:
        raw = lzma.open(src / f"{lang}.txt.xz", "rb").read()
        if lang == AS_TXT:
            # invalid UTF-8 inside lines of the first documents: replaced and counted, not fatal
            lines = raw.split(b"\n")
            for i in range(BAD_UTF8_LINES):
                lines[i * 3] = b"caf\xe9 \xff\xfe " + lines[i * 3] + b" bad"
            (d / f"{lang}.txt").write_bytes(b"\n".join(lines))
        elif lang == AS_GZ:
            (d / f"{lang}.txt.gz").write_bytes(gzip.compress(raw))
        else:
            shutil.copy(src / f"{lang}.txt.xz", d / f"{lang}.txt.xz")
    return d


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
    from xlmr_fast.tokenizer import train_tokenizer
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus, d, vocab_size=2000, sentences=3000, character_coverage=0.99,
                    hard_vocab_limit=False, threads=2, progress=False)
    return d


@pytest.fixture(scope="module")
def out1(corpus, tok_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out1")
    pp.preprocess(corpus, tok_dir, out, workers=1, progress=False)
    return out


def _copy(out, tmp_path) -> Path:
    d = tmp_path / "out"
    shutil.copytree(out, d)
    return d


def _docs(corpus, lang):
    return list(iter_documents(list_languages(corpus)[lang]))


def test_tokens_equal_transformers(corpus, tok_dir, out1):
    from transformers import XLMRobertaTokenizer
    hf = XLMRobertaTokenizer.from_pretrained(str(tok_dir))
    meta = read_meta(out1)
    assert sorted(meta["languages"]) == LANGS
    for lang in LANGS:
        lines = [ln for d in _docs(corpus, lang) for ln in d]
        ids = hf(lines, add_special_tokens=False)["input_ids"]
        sh = open_shard(out1 / f"{lang}.bin", meta["tokenizer"]["vocab_size"])
        # every line's pieces followed by </s>
        assert sh.n_tokens == sum(len(x) + 1 for x in ids), lang
        assert meta["languages"][lang]["tokens"] == sh.n_tokens
        if lang in ("en", "zh", "ar"):
            want = np.fromiter((t for x in ids for t in (*x, 2)), dtype=np.uint32)
            np.testing.assert_array_equal(np.asarray(sh.tokens), want, err_msg=lang)
        assert sh.tokens.max() < meta["tokenizer"]["vocab_size"] - 1  # never <mask>
        assert (np.asarray(sh.tokens) > 3).mean() > 0.5  # not all <unk>/specials


def test_doc_index_counts_and_checksums(corpus, out1):
    meta = read_meta(out1)
    for lang in LANGS:
        e = meta["languages"][lang]
        docs = _docs(corpus, lang)
        sh = open_shard(out1 / e["file"])
        assert sh.n_docs == e["documents"] == e["read"]["documents"] == len(docs)
        assert sh.n_lines == e["lines"] == sum(len(d) for d in docs) == e["read"]["lines"]
        tok = np.asarray(sh.tokens)
        idx = np.asarray(sh.doc_index)
        assert (np.diff(idx) > 0).all()
        assert (tok[idx[1:] - 1] == 2).all()          # every document ends with </s>
        # </s> count per document = its line count
        eos = np.cumsum(tok == 2)
        per_doc = np.diff(np.concatenate([[0], eos[idx[1:] - 1]]))
        np.testing.assert_array_equal(per_doc, [len(d) for d in docs])
        assert e["bytes_text"] > 0 and e["mb_per_s"] > 0 and e["seconds"] > 0
        verify(out1, lang, meta)
    assert meta["tokenizer"]["sha256"] and meta["throughput"]["mb_per_s_per_worker"] > 0


def test_invalid_utf8_counted_and_all_formats(corpus, out1):
    langs = list_languages(corpus)
    assert {p.name.split(".", 1)[1] for p in langs.values()} == {"txt", "txt.gz", "txt.xz"}
    meta = read_meta(out1)
    assert meta["languages"][AS_TXT]["read"]["invalid_utf8_lines"] == BAD_UTF8_LINES
    assert sum(meta["languages"][x]["read"]["invalid_utf8_lines"] for x in LANGS) \
        == BAD_UTF8_LINES


def test_rerun_skips_everything(corpus, tok_dir, out1, tmp_path, caplog, capsys):
    out = _copy(out1, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    caplog.set_level(logging.DEBUG, logger="xlmr_fast.data.preprocess")
    t = time.perf_counter()
    pp.preprocess(corpus, tok_dir, out, workers=2)
    assert time.perf_counter() - t < 15  # loose: CI machines are loaded
    assert f"{len(LANGS)} of {len(LANGS)} languages already done" in capsys.readouterr().out
    assert sum("already done" in r.message for r in caplog.records) == len(LANGS) + 1
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}


def test_workers2_identical(corpus, tok_dir, out1, tmp_path):
    out = tmp_path / "w2"
    meta = pp.preprocess(corpus, tok_dir, out, workers=2, progress=False)
    assert meta["throughput"]["workers"] == 2
    for lang in LANGS:
        assert (out / f"{lang}.bin").read_bytes() == (out1 / f"{lang}.bin").read_bytes(), lang
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.entry.json"))


def test_leftover_tmp_and_orphan_bin(corpus, tok_dir, out1, tmp_path, caplog):
    out = _copy(out1, tmp_path)
    meta = read_meta(out)
    # killed mid-language: only a .tmp of "ar"
    (out / "ar.bin").unlink()
    (out / "ar.bin.tmp").write_bytes(b"partial")
    # killed between the rename and the meta write: "de" as .bin without an entry, no sidecar
    # (redone); "ru" the same but with the worker's sidecar (entry rebuilt, shard kept)
    e_ru = meta["languages"]["ru"]
    side = {k: e_ru[k] for k in ("file", "tokens", "lines", "documents", "sha256")}
    side["tokenizer_sha256"] = meta["tokenizer"]["sha256"]
    (out / "ru.bin.entry.json").write_text(json.dumps({"entry": side, "read": e_ru["read"]}))
    ru_mtime = (out / "ru.bin").stat().st_mtime_ns
    for lang in ("ar", "de", "ru"):
        del meta["languages"][lang]
    write_meta(out, meta)
    caplog.set_level(logging.INFO, logger="xlmr_fast.data.preprocess")
    new = pp.preprocess(corpus, tok_dir, out, workers=1, progress=False)
    msgs = " | ".join(r.message for r in caplog.records)
    assert "ar.bin.tmp" in msgs and "rebuilt" in msgs and "redoing" in msgs
    assert new["throughput"]["languages"] == 2  # ar and de encoded again, ru rebuilt
    assert not (out / "ar.bin.tmp").exists() and not list(out.glob("*.entry.json"))
    assert (out / "ru.bin").stat().st_mtime_ns == ru_mtime
    old = read_meta(out1)
    for lang in LANGS:
        assert (out / f"{lang}.bin").read_bytes() == (out1 / f"{lang}.bin").read_bytes()
        assert new["languages"][lang]["sha256"] == old["languages"][lang]["sha256"]
        assert new["languages"][lang]["read"] == old["languages"][lang]["read"]
        verify(out, lang)


def test_truncated_shard_named_and_redone(corpus, tok_dir, out1, tmp_path):
    out = _copy(out1, tmp_path)
    p = out / "zh.bin"
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size - 13)
    with pytest.raises(ShardError, match="zh.bin.*truncated"):
        open_shard(p)
    with open(p, "r+b") as f:
        f.truncate(40)
    with pytest.raises(ShardError, match="zh.bin.*truncated"):
        open_shard(p)
    meta = pp.preprocess(corpus, tok_dir, out, workers=1, languages=["zh", "en"], progress=False)
    assert meta["throughput"]["languages"] == 1
    assert p.read_bytes() == (out1 / "zh.bin").read_bytes()


def test_other_tokenizer_or_cleaning_refused(corpus, tok_dir, out1, tmp_path):
    out = _copy(out1, tmp_path)
    meta = read_meta(out)
    meta["tokenizer"]["sha256"] = "0" * 64
    write_meta(out, meta)
    with pytest.raises(ShardError, match="another tokenizer.*new --out"):
        pp.preprocess(corpus, tok_dir, out, workers=1, progress=False)
    out = _copy(out1, tmp_path / "b")
    with pytest.raises(ShardError, match="clean.*new --out"):
        pp.preprocess(corpus, tok_dir, out, workers=1, clean=CleanConfig(), progress=False)


def test_bad_inputs(corpus, tok_dir, tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not a language\n")
    with pytest.raises(CorpusError, match=r"empty has no <lang>\.txt, \.txt\.xz or \.txt\.gz"):
        pp.preprocess(empty, tok_dir, tmp_path / "o0", progress=False)
    with pytest.raises(FileNotFoundError, match=r"notok.*sentencepiece\.bpe\.model"):
        pp.preprocess(corpus, tmp_path / "notok", tmp_path / "o1", progress=False)
    with pytest.raises(CorpusError, match="xx"):
        pp.preprocess(corpus, tok_dir, tmp_path / "o2", languages=["xx"], progress=False)
    # a language with no line left after cleaning: warned about by name, no shard
    small = tmp_path / "small"
    small.mkdir()
    (small / "yo.txt").write_text("ab\ncd\n\nef\n")
    (small / "en.txt").write_text("a long enough line of English text here\n\nand another one "
                                  "that is long enough too\n")
    caplog.set_level(logging.WARNING, logger="xlmr_fast.data.preprocess")
    meta = pp.preprocess(small, tok_dir, tmp_path / "o3", clean=CleanConfig(min_chars=10),
                         progress=False)
    assert any("yo" in r.message and "no tokens" in r.message and "yo.txt" in r.message
               for r in caplog.records)
    assert not (tmp_path / "o3" / "yo.bin").exists() and "yo" not in meta["languages"]
    assert meta["empty_languages"]["yo"]["read"]["removed"]["min_chars"] == 3
    assert open_shard(tmp_path / "o3" / "en.bin").n_docs == 2


def test_corpus_without_text(tok_dir, tmp_path, caplog):
    """Language files that exist but hold no text (empty, blank lines only): each is warned
    about by file name, and a run that leaves no shard at all is an error naming the files,
    also when rerun (not a silent success with an unusable output)."""
    d = tmp_path / "blank"
    d.mkdir()
    (d / "yo.txt").write_bytes(b"")
    (d / "zu.txt.gz").write_bytes(gzip.compress(b"\n\n  \n\n"))
    caplog.set_level(logging.WARNING, logger="xlmr_fast.data.preprocess")
    for _ in range(2):  # the rerun finds both languages done-and-empty
        with pytest.raises(CorpusError, match=r"blank has any text \(yo\.txt, zu\.txt\.gz: no "
                                              r"tokens\); check the corpus files"):
            pp.preprocess(d, tok_dir, tmp_path / "o", workers=1, progress=False)
    warned = " | ".join(r.message for r in caplog.records)
    assert "yo.txt has no text" in warned and "zu.txt.gz has no text" in warned
    assert not list((tmp_path / "o").glob("*.bin"))


def test_corrupt_or_changed_shard(corpus, tok_dir, out1, tmp_path, caplog):
    """A finished shard overwritten with garbage of the same size is named and redone on rerun;
    one changed in place (same size and header) is caught by verify() with the fix."""
    out = _copy(out1, tmp_path)
    p = out / "en.bin"
    p.write_bytes(b"\0" * p.stat().st_size)
    with pytest.raises(ShardError, match=r"en\.bin is not an xlmr_fast token shard.*rerun "
                                         r"`xlmr-fast preprocess`"):
        open_shard(p)
    caplog.set_level(logging.WARNING, logger="xlmr_fast.data.preprocess")
    meta = pp.preprocess(corpus, tok_dir, out, workers=1, languages=["en"], progress=False)
    assert any("en.bin is not an xlmr_fast token shard" in r.message and "redoing" in r.message
               for r in caplog.records)
    assert meta["throughput"]["languages"] == 1
    assert p.read_bytes() == (out1 / "en.bin").read_bytes()
    b = bytearray(p.read_bytes())
    b[64 + 4 * 10] ^= 0x01  # one token, size and header unchanged
    p.write_bytes(bytes(b))
    open_shard(p)  # structurally fine: only the checksum can tell
    with pytest.raises(ShardError, match=r"checksum mismatch for \S*en\.bin.*delete it and "
                                         r"rerun `xlmr-fast preprocess`"):
        verify(out, "en")


def test_shard_checks_itself_by_its_header(out1, tmp_path):
    """Version 2 shards record BLAKE2b-64 of everything after the header (DESIGN.md: a header
    with a checksum), so a shard copied without its meta.json can still be checked."""
    import hashlib
    import struct

    from xlmr_fast.data.shards import verify_shard
    out = _copy(out1, tmp_path)
    p = out / "en.bin"
    raw = p.read_bytes()
    sh = open_shard(p)
    assert sh.version == 2
    want = int.from_bytes(hashlib.blake2b(raw[64:], digest_size=8).digest(), "little")
    assert sh.body_checksum == want == struct.unpack_from("<Q", raw, 56)[0]
    (out / "meta.json").unlink()
    assert verify_shard(p) is True
    b = bytearray(raw)
    b[-20] ^= 0x10  # inside the document index: size and header unchanged
    p.write_bytes(bytes(b))
    with pytest.raises(ShardError, match=r"checksum mismatch for \S*en\.bin: its header records "
                                         r"[0-9a-f]{16} .*rerun `xlmr-fast preprocess`"):
        verify_shard(p)
    shutil.copy(out1 / "meta.json", out / "meta.json")
    with pytest.raises(ShardError, match=r"its header records"):
        verify(out, "en")  # the header's checksum is checked, before meta.json's


def test_writer_hashes_the_index_without_copying_it(tmp_path):
    """close() writes and hashes the packed document index in place: joined copies of it
    (np.append + tobytes) held it three times at once, GBs for a CC-100-sized language."""
    import tracemalloc

    from xlmr_fast.data.shards import ShardWriter, verify_shard
    n = 2_000_000
    w = ShardWriter(tmp_path / "x.bin", 100)
    one = np.asarray([5], dtype=np.uint32)
    for _ in range(n):
        w.add_document(one, 1)
    tracemalloc.start()
    try:
        w.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.75 * 8 * n, peak  # the index is 8 * n bytes (file_sha256 reads 4 MB chunks)
    assert verify_shard(tmp_path / "x.bin") is True
    assert open_shard(tmp_path / "x.bin").n_docs == n


def test_verify_shards_command(out1, tmp_path, capsys):
    from xlmr_fast.cli import main
    out = _copy(out1, tmp_path)
    assert main(["verify-shards", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "en: ok (" in printed and "header and meta.json checksums" in printed
    assert printed.strip().endswith("all ok")
    b = bytearray((out / "de.bin").read_bytes())
    b[70] ^= 0x04
    (out / "de.bin").write_bytes(bytes(b))
    assert main(["verify-shards", str(out), "--langs", "en,de,xx"]) == 1
    printed = capsys.readouterr().out
    assert "en: ok" in printed and "de: FAILED: checksum mismatch" in printed
    assert "xx: FAILED: language 'xx' is not in" in printed
    assert "2 of 3 shards failed" in printed


def test_version_1_shards_still_read(out1, tmp_path):
    """A shard written before the header checksum (version 1: 8 zero bytes there) opens and is
    checked against meta.json only; an unknown version is refused by name."""
    import struct

    from xlmr_fast.data.shards import file_sha256, verify_shard
    out = _copy(out1, tmp_path)
    p = out / "en.bin"
    b = bytearray(p.read_bytes())
    struct.pack_into("<I", b, 8, 1)
    struct.pack_into("<Q", b, 56, 0)
    p.write_bytes(bytes(b))
    meta = read_meta(out)
    meta["languages"]["en"]["sha256"] = file_sha256(p)
    write_meta(out, meta)
    sh = open_shard(p)
    assert (sh.version, sh.body_checksum) == (1, None)
    assert verify_shard(p) is False
    verify(out, "en")
    b[64 + 4 * 3] ^= 0x01
    p.write_bytes(bytes(b))
    with pytest.raises(ShardError, match=r"checksum mismatch .*meta\.json records"):
        verify(out, "en")
    struct.pack_into("<I", b, 8, 3)
    p.write_bytes(bytes(b))
    with pytest.raises(ShardError, match=r"en\.bin has format version 3, this xlmr_fast reads "
                                         r"versions 1, 2"):
        open_shard(p)


def test_cli(corpus, tok_dir, out1, tmp_path, capsys):
    from xlmr_fast.cli import main
    out = tmp_path / "cli"
    rc = main(["preprocess", "--corpus", str(corpus), "--tokenizer", str(tok_dir), "--out",
               str(out), "--workers", "2", "--langs", "sw,hi"])
    assert rc == 0
    assert "preprocessed 2 languages" in capsys.readouterr().out
    assert sorted(read_meta(out)["languages"]) == ["hi", "sw"]
    for lang in ("sw", "hi"):
        assert (out / f"{lang}.bin").read_bytes() == (out1 / f"{lang}.bin").read_bytes()
    rc = main(["preprocess", "--corpus", str(tmp_path / "nope"), "--tokenizer", str(tok_dir),
               "--out", str(out)])
    assert rc == 1 and "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_full_cc100_mini(shared_data, tok_dir, tmp_path):
    src = Path(shared_data) / "cc100-mini"
    meta = pp.preprocess(src, tok_dir, tmp_path / "full", workers=os.cpu_count(), progress=False)
    langs = list_languages(src)
    assert sorted(meta["languages"]) == sorted(langs)
    for lang in langs:
        sh = open_shard(tmp_path / "full" / f"{lang}.bin")
        assert sh.n_docs == meta["languages"][lang]["documents"] > 0


def test_rerun_skips_a_language_left_empty_by_cleaning(tok_dir, tmp_path, capsys):
    """Catches a finished language without tokens (meta.json's empty_languages) being read and
    cleaned again by every rerun: only languages with shards were checked for skipping."""
    small = tmp_path / "small"
    small.mkdir()
    (small / "yo.txt").write_text("ab\ncd\n")
    (small / "en.txt").write_text("a long enough line of English text here\n")
    out = tmp_path / "o"
    pp.preprocess(small, tok_dir, out, clean=CleanConfig(min_chars=10), workers=1)
    capsys.readouterr()
    meta = pp.preprocess(small, tok_dir, out, clean=CleanConfig(min_chars=10), workers=1)
    assert "2 of 2 languages already done" in capsys.readouterr().out
    assert "yo" in meta["empty_languages"] and list(meta["languages"]) == ["en"]

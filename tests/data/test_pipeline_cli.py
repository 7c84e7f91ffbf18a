"""End to end through the `xlmr-fast` CLI on all of cc100-mini (94 languages, about 41 MB of text):
`train-tokenizer` -> `preprocess` -> BlockLoader, the way a user runs it (cli.main, in process).

What is checked against something independent of xlmr_fast:
  * the text is re-read here with lzma + str.split (not xlmr_fast.data.corpus), and line and
    document counts are compared with the corpus's own MANIFEST.tsv;
  * every shard equals raw sentencepiece's encoding of its text with the fairseq id mapping and
    one </s> per line, token for token (fairseq's binarizer: the reference);
  * meta.json's token count per language equals re-encoding with
    transformers.XLMRobertaTokenizer.from_pretrained(<our tokenizer dir>), on all 94 languages,
    up to a bounded, explained exception (see test_token_counts_equal_transformers).

transformers 5.x has no slow XLM-R tokenizer any more: XLMRobertaTokenizer *is*
XLMRobertaTokenizerFast (the `tokenizers` backend), so the one full pass with it covers both.
Budget: about 30 s on 2 cores (train 5 s, preprocess 5 s, the transformers pass 15 s).
"""
from __future__ import annotations

import contextlib
import csv
import io
import lzma
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from xlmr_fast import cli
from xlmr_fast.data.loader import BlockLoader
from xlmr_fast.data.shards import open_shard, read_meta
from xlmr_fast.tokenizer import Tokenizer

VOCAB, SENTENCES = 3000, 4000  # spm pieces; the corpus needs > 2385 at coverage 0.9995
BLOCK = 512
EOS = 2


@pytest.fixture(scope="module")
def corpus():
    # Module-scoped fixtures cannot use tests/conftest.py's function-scoped `shared_data`; this
    # is the same lookup (relative to the repository root) and the same skip rule.
    root = Path(__file__).resolve().parents[2]
    d = Path(os.environ.get("XLMR_FAST_SHARED_DATA", root / ".." / "shared" / "data"))
    d = d / "cc100-mini"
    if not d.is_dir():
        pytest.skip(f"cc100-mini not found at {d}")
    return d


def _cli(argv) -> tuple[int, str, str]:
    """cli.main(argv) with its stdout and stderr (tqdm's bars) captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def pipeline(corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    tok, out = base / "tok", base / "shards"
    train = _cli(["train-tokenizer", "--corpus", str(corpus), "--out", str(tok),
                  "--vocab-size", str(VOCAB), "--sentences", str(SENTENCES), "--threads", "2",
                  "--no-hard-vocab-limit"])
    assert train[0] == 0, train
    prep = _cli(["preprocess", "--corpus", str(corpus), "--tokenizer", str(tok), "--out",
                 str(out), "--workers", "2"])
    assert prep[0] == 0, prep
    return {"corpus": corpus, "tok": tok, "out": out, "train": train, "prep": prep}


@pytest.fixture(scope="module")
def texts(corpus):
    """{lang: (lines, n_documents)} read independently of xlmr_fast.data.corpus: CC-100 format,
    a paragraph per line, documents separated by blank lines; invalid UTF-8 replaced."""
    out = {}
    for p in sorted(corpus.glob("*.txt.xz")):
        raw = lzma.open(p, "rb").read().decode("utf-8", errors="replace")
        lines, docs, in_doc = [], 0, False
        for ln in raw.split("\n"):
            ln = ln.rstrip("\r")
            if ln.strip():
                lines.append(ln)
                docs += not in_doc
                in_doc = True
            else:
                in_doc = False
        out[p.name[: -len(".txt.xz")]] = (lines, docs)
    assert len(out) >= 90, sorted(out)
    return out


def _flat(ids) -> np.ndarray:
    """Per-line id lists -> one uint32 stream with </s> after every line (the shard layout)."""
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    out = np.full(int(lens.sum() + len(ids)), EOS, dtype=np.uint32)
    keep = np.ones(out.shape[0], dtype=bool)
    keep[np.cumsum(lens + 1) - 1] = False
    out[keep] = np.fromiter((t for x in ids for t in x), dtype=np.uint32, count=int(lens.sum()))
    return out


def test_cli_progress_and_throughput(pipeline, corpus, texts):
    _, out, err = pipeline["train"]
    # train-tokenizer: its two tqdm passes over the languages and a summary line
    assert "count lines" in err and "sample lines" in err, err[-2000:]
    m = re.search(r"trained \S*sentencepiece\.bpe\.model: (\d+) pieces \(fairseq vocab (\d+)\) "
                  r"on (\d+) lines from (\d+) languages", out)
    assert m, out
    pieces, vocab, n_lines, n_langs = map(int, m.groups())
    assert pieces <= VOCAB and vocab == pieces + 2 and n_langs == len(texts)
    assert 0.5 * SENTENCES < n_lines <= SENTENCES + len(texts)  # rounding of per-language draws

    _, out, err = pipeline["prep"]
    # the progress bar (compressed input: MB done and the rate) and the throughput line
    assert re.search(rf"preprocess: [\d.]+ MB, {len(texts)}/{len(texts)} langs \[[^\]]*"
                     r"[\d.]+MB/s\]", err), err[-2000:]
    m = re.search(rf"preprocessed {len(texts)} languages, ([\d.]+) MB of text in [\d.]+ s with 2 "
                  r"workers: ([\d.]+) MB/s overall, ([\d.]+) MB/s per worker", out)
    assert m, out
    mb, overall, per_worker = map(float, m.groups())
    text_mb = sum(len(x.encode("utf-8")) for lines, _ in texts.values() for x in lines) / 1e6
    assert mb == pytest.approx(text_mb, abs=0.06)
    assert overall > 0 and per_worker > 0
    meta = read_meta(pipeline["out"])
    assert meta["throughput"]["workers"] == 2 and meta["throughput"]["mb_per_s_per_worker"] > 0
    assert all(e["mb_per_s"] > 0 for e in meta["languages"].values())


def test_counts_match_manifest(pipeline, corpus, texts):
    meta = read_meta(pipeline["out"])
    assert sorted(meta["languages"]) == sorted(texts) and not meta["empty_languages"]
    for lang, (lines, docs) in texts.items():
        e = meta["languages"][lang]
        assert (e["lines"], e["documents"]) == (len(lines), docs), lang
    manifest = corpus / "MANIFEST.tsv"
    if manifest.is_file():  # the corpus's own counts, written when it was built
        with open(manifest, encoding="utf-8") as f:
            rows = {r["lang"]: r for r in csv.DictReader(f, delimiter="\t")}
        assert set(rows) == set(texts)
        for lang, r in rows.items():
            e = meta["languages"][lang]
            assert (e["lines"], e["documents"]) == (int(r["lines"]), int(r["documents"])), lang


def test_shards_equal_raw_sentencepiece(pipeline, texts):
    """Token for token: raw sentencepiece (what fairseq binarizes with), spm id + 1, unk 0 -> 3,
    </s> after every line. Independent of xlmr_fast.tokenizer's mapping code."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(pipeline["tok"] / "sentencepiece.bpe.model"))
    meta = read_meta(pipeline["out"])
    V = meta["tokenizer"]["vocab_size"]
    assert V == sp.get_piece_size() + 2
    for lang, (lines, _) in texts.items():
        ids = [[i + 1 if i else 3 for i in x] for x in sp.encode(lines, num_threads=2)]
        sh = open_shard(pipeline["out"] / f"{lang}.bin", V)
        np.testing.assert_array_equal(np.asarray(sh.tokens), _flat(ids), err_msg=lang)
        assert meta["languages"][lang]["tokens"] == sh.n_tokens


def test_token_counts_equal_transformers(pipeline, texts):
    """meta.json's token count per language == transformers.XLMRobertaTokenizer's re-encoding
    (+ one </s> per line), on every language, except where transformers' own normaliser differs
    from sentencepiece's.

    With the tokenizer trained here that exception is 5 of 94 languages (bn, mr, ta, my, din:
    131, 42, 16, 1 and 5 lines; at most 0.04% of a language's tokens). The `tokenizers` port of
    the spm model normalises some Indic vowel signs and combining marks differently (e.g. it
    splits BENGALI VOWEL SIGN O into E + AA, which raw sentencepiece keeps as one piece, and it
    drops a COMBINING DIAERESIS after ë), and breaks a few Viterbi ties differently ('0','00' vs
    '00','0'). The shards follow raw sentencepiece exactly, as fairseq does (the test above), so
    the exception is bounded here rather than hidden: few languages, few lines, few tokens."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")  # transformers needs it to read the spm model
    hf = transformers.XLMRobertaTokenizer.from_pretrained(str(pipeline["tok"]))
    meta = read_meta(pipeline["out"])
    differ = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sequence longer than 512" is irrelevant here
        for lang, (lines, _) in texts.items():
            ids = hf(lines, add_special_tokens=False)["input_ids"]
            n_hf = sum(len(x) + 1 for x in ids)
            n_ours = meta["languages"][lang]["tokens"]
            if n_hf != n_ours:
                sh = np.asarray(open_shard(pipeline["out"] / f"{lang}.bin").tokens)
                ours = np.split(sh, np.flatnonzero(sh == EOS)[:-1] + 1)
                assert len(ours) == len(lines), lang
                bad = sum(list(o[:-1]) != x for o, x in zip(ours, ids))
                differ[lang] = (n_ours, n_hf, bad, len(lines))
    assert len(differ) <= 8, differ
    for lang, (n_ours, n_hf, bad, n_lines) in differ.items():
        assert abs(n_ours - n_hf) <= 1e-3 * n_hf, (lang, differ[lang])
        assert 0 < bad <= 0.05 * n_lines, (lang, differ[lang])


def test_rerun_skips_finished_languages(pipeline, capsys):
    out = pipeline["out"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    meta_before = read_meta(out)["languages"]
    rc = cli.main(["preprocess", "--corpus", str(pipeline["corpus"]), "--tokenizer",
                   str(pipeline["tok"]), "--out", str(out), "--workers", "2"])
    assert rc == 0
    n = len(before)
    assert f"{n} of {n} languages already done in {out}, skipping them" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")} == before
    assert read_meta(out)["languages"] == meta_before


def test_loader_over_cli_output(pipeline):
    out = pipeline["out"]
    meta = read_meta(out)
    tok = Tokenizer.from_pretrained(pipeline["tok"])
    big = sorted(x for x, e in meta["languages"].items() if e["tokens"] >= BLOCK - 1)
    B, steps = 16, 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ld = BlockLoader(out, batch_size=B, block_size=BLOCK, seed=0, prefetch=2,
                         vocab_size=tok.vocab_size, tokenizer_sha256=tok.model_sha256)
    # every language with at least one block is used; any other is named in a warning
    assert ld.languages == big
    for x in sorted(set(meta["languages"]) - set(big)):
        assert any(f"'{x}'" in str(w.message) for w in caught), x
    q = np.array([ld.probs[x][1] for x in ld.languages])
    assert q.sum() == pytest.approx(1.0) and (q > 0).all()

    plans = ld.plan(steps)  # the rows the next batches are made of (does not advance)
    shards = {x: np.asarray(open_shard(out / f"{x}.bin").tokens) for x in ld.languages}
    seen = set()
    for k, (ids, langs) in enumerate(ld):
        assert ids.shape == (B, BLOCK) and ids.dtype == torch.int32
        assert langs.shape == (B,) and langs.dtype == torch.int64
        assert torch.equal(langs, torch.from_numpy(plans[k]["lang"]))
        assert (ids[:, 0] == 0).all()  # <s>
        body = ids[:, 1:].numpy()
        assert body.min() >= 0 and body.max() < tok.mask_id  # real pieces, never <mask>
        for r in range(B):
            lang = ld.languages[int(langs[r])]
            _, start, length = (int(v) for v in plans[k]["rows"][r])
            assert length == BLOCK - 1  # the default mode crosses documents: no padding
            # the row is a contiguous block of that language's token stream
            np.testing.assert_array_equal(body[r], shards[lang][start:start + length])
            seen.add(lang)
        if k + 1 == steps:
            break
    assert ld.step == steps
    # alpha = 0.3 over 94 languages: 128 rows reach many of them, not a few big ones
    assert len(seen) >= 20, sorted(seen)


def test_train_tokenizer_cli_error_is_clear(tmp_path):
    """sentencepiece's RuntimeError ("Vocabulary size is smaller than required_chars") becomes
    a one-line CLI error naming the corpus and the options to change, not a traceback."""
    d = tmp_path / "c"
    d.mkdir()
    chars = [chr(0x4E00 + i) for i in range(300)]  # 300 distinct characters
    (d / "zh.txt").write_text("\n".join("".join(chars[i:i + 30]) for i in range(0, 300, 3)),
                              encoding="utf-8")
    rc, out, err = _cli(["train-tokenizer", "--corpus", str(d), "--out", str(tmp_path / "t"),
                         "--vocab-size", "50", "--character-coverage", "1.0", "--threads", "1"])
    assert rc == 1, (out, err)
    assert "Traceback" not in err
    assert re.search(rf"error: sentencepiece training on \d+ sampled lines of {re.escape(str(d))} "
                     r"with vocab_size=50.*raise --vocab-size or lower --character-coverage",
                     err), err
    assert not (tmp_path / "t").exists()  # the failed run left no empty output folder

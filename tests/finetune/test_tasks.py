"""xlmr_fast.finetune.tasks: features from examples and predictions back, on real multilingual data.

One small tokenizer is trained per module (en, zh, ar, hi, de, es of cc100-mini: 3000 sampled
lines, up to 2000 pieces, about 5 s on 2 cores). A vocabulary this small cuts words into many
short pieces, which is the hard case for offsets and word alignment.

The data is read here with tiny stand-in readers (json / csv-free line splitting), so these
tests do not depend on xlmr_fast.finetune.readers; one smoke test runs the real readers when
they import.

Offsets are checked as exact string equalities on the original text: decoding the gold
start/end tokens of an answer gives back the answer with its leading/trailing blank characters
removed (whitespace and the characters sentencepiece turns into whitespace, such as U+200B).
"""
import itertools
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from xlmr_fast.finetune import readers as R
from xlmr_fast.finetune import tasks as T
from xlmr_fast.tokenizer import Tokenizer, train_tokenizer

LANGS = ("en", "zh", "ar", "hi", "de", "es")
QA_LANGS = ("en", "zh", "ar", "hi")


# the readers' example types (short names for the hand-made cases below)
Pair, Tokens, QA = R.PairExample, R.TokenExample, R.QAExample


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(shared_data_dir):
    return shared_data_dir


@pytest.fixture(scope="module")
def tok(data_dir, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    for lang in LANGS:
        os.symlink(data_dir / "cc100-mini" / f"{lang}.txt.xz", corpus / f"{lang}.txt.xz")
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus, out, vocab_size=2000, sentences=3000, threads=2, seed=0,
                    hard_vocab_limit=False, progress=False)
    return Tokenizer.from_pretrained(out)


def read_squad_json(path, lang):
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for art in doc["data"]:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                out.append(QA(qa["id"], qa["question"], para["context"],
                              tuple((a["text"], a["answer_start"]) for a in qa["answers"]),
                              lang))
    return out


def read_panx_tsv(path, lang, limit):
    out, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if words:
                    out.append(Tokens(f"{lang}-{len(out)}", tuple(words), tuple(tags), lang))
                    words, tags = [], []
                    if len(out) == limit:
                        break
                continue
            w, t = line.split("\t")
            words.append(w)
            tags.append(t)
    if words and len(out) < limit:
        out.append(Tokens(f"{lang}-{len(out)}", tuple(words), tuple(tags), lang))
    return out


XNLI = {"entailment": 0, "neutral": 1, "contradiction": 2}


def read_xnli_tsv(path, lang, limit):
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            a, b, lab = line.rstrip("\n").split("\t")
            out.append(Pair(f"{lang}-{i}", a, b, XNLI[lab], lang))
            if len(out) == limit:
                break
    return out


@pytest.fixture(scope="module")
def xquad(data_dir):
    return {lang: read_squad_json(data_dir / "xquad" / f"xquad.{lang}.json", lang)
            for lang in QA_LANGS}


@pytest.fixture(scope="module")
def panx(data_dir):
    return {lang: read_panx_tsv(data_dir / "panx" / f"dev-{lang}.tsv", lang, 300)
            for lang in QA_LANGS}


LABELS = ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]


# --------------------------------------------------------------------- offsets
def _visible(tok, text):
    blank = T._Blank(tok.sp)
    return "".join(ch for ch in text if not blank(ch))


def test_offsets_are_characters_and_partition_the_text(tok, xquad):
    """Visible piece spans are in order, disjoint, and cover every non-blank character of
    the original text exactly once; ids equal tok.encode. Checked on all contexts of XQuAD
    en/zh/ar/hi and on strings where bytes != characters or NFKC changes the text."""
    texts = [ex.context for lang in QA_LANGS for ex in xquad[lang]]
    texts = list(dict.fromkeys(texts)) + [
        "你好，世界", "مرحبا بالعالم", "नमस्ते दुनिया", "Hello  world, naïve café!",
        "ﬁne ① ＡＢＣ", "ab\u200bcd \u200bx\u200c y\ufeff", "  lead and trail  ", "", " ",
        "<mask> is text here", "tab\tand\nnewline",
    ]
    blank = T._Blank(tok.sp)
    for text in texts:
        ids, spans = T._encode_with_offsets(tok.sp, text, blank)
        if "<mask>" not in text:
            assert ids == tok.encode(text, add_special_tokens=False)
        assert len(spans) == len(ids)
        covered = [0] * len(text)
        last = 0
        for b, e in spans:
            assert 0 <= b <= e <= len(text)
            if b < e:
                assert b >= last, (text[:40], b, last)
                last = e
                for k in range(b, e):
                    covered[k] += 1
                assert not blank(text[b]) and not blank(text[e - 1])
        for k, ch in enumerate(text):
            assert covered[k] == (0 if blank(ch) else 1), (text[:40], k, ch)
        assert "".join(text[b:e] for b, e in spans) == _visible(tok, text)


def test_offsets_same_through_every_sentencepiece_api(tok, xquad):
    """Every offset API this sentencepiece offers (each in its own unit, bytes or characters,
    measured by _probe_units) gives the same character spans, and they agree with
    sentencepiece's own character offsets where it has them."""
    sp = tok.sp
    texts = list(dict.fromkeys(ex.context for lang in QA_LANGS for ex in xquad[lang][:150]))
    texts += ["ﬁne ① ＡＢＣ", "نمس\u200cته", "नमस्ते दुनिया", "aé 你b", "😀 emoji 𝔘"]
    apis = {api: u for api in ("offset_mapping", "immutable_proto", "proto")
            if (u := T._probe_units(sp, api)) is not None}
    assert apis and T._offset_api(sp)[0] in apis
    for text in texts:
        ref = None
        for api, in_bytes in apis.items():
            ids, raw = T._raw_spans_with(sp, text, api)
            assert ids == list(sp.encode(text))
            chars = T._char_spans(text, raw, in_bytes)
            assert ref is None or chars == ref, api
            ref = chars
        if "offset_mapping" in apis:  # sentencepiece's own characters (return_bytes=False)
            own = sp.encode(text, return_type="offset_mapping")["offsets"]
            assert [tuple(o) for o in own] == ref


def test_offsets_hand_checked(tok):
    # Devanagari: 13 characters, 37 UTF-8 bytes; the last span must end at 13, not 37.
    text = "नमस्ते दुनिया"
    _, spans = T._encode_with_offsets(tok.sp, text)
    assert max(e for _, e in spans) == len(text)
    words = {text[b:e] for b, e in spans if b < e}
    assert "".join(text[b:e] for b, e in spans) == text.replace(" ", "")
    assert all(w in text for w in words)
    # NFKC expansion: the ligature's character goes to one piece, the other gets nothing
    _, spans = T._encode_with_offsets(tok.sp, "ﬁ")
    assert max(spans) == (0, 1) and all(s in ((0, 0), (0, 1)) for s in spans)


# --------------------------------------------------------------------- sentence pairs
def _truncate_loop(la, lb, budget):
    """Token by token from the longer side; the odd token stays with the side that was longer
    (the second on a tie): the `tokenizers` rule."""
    first_keeps_odd = la > lb
    while la + lb > budget:
        if la > lb or (la == lb and not first_keeps_odd):
            la -= 1
        else:
            lb -= 1
    return la, lb


def test_longest_first_matches_loop():
    for la in range(25):
        for lb in range(25):
            for budget in range(40):
                assert T._longest_first(la, lb, budget) == _truncate_loop(la, lb, budget)


def test_encode_pairs_real_xnli(tok, data_dir):
    exs = [ex for lang in QA_LANGS
           for ex in read_xnli_tsv(data_dir / "xnli" / f"dev-{lang}.tsv", lang, 120)]
    feats = T.encode_pairs(tok, exs, max_length=512)
    assert len(feats) == len(exs)
    for i, (f, ex) in enumerate(zip(feats, exs)):
        assert f["input_ids"] == tok.encode_pair(ex.premise, ex.hypothesis)
        assert (f["label"], f["lang"], f["index"], f["truncated"]) == (ex.label, ex.lang, i, False)

    max_length = 24
    feats = T.encode_pairs(tok, exs, max_length=max_length)
    n_trunc = 0
    for f, ex in zip(feats, exs):
        full = tok.encode_pair(ex.premise, ex.hypothesis)
        ids = f["input_ids"]
        assert len(ids) == min(len(full), max_length)
        assert ids == tok(ex.premise, ex.hypothesis, truncation=True,
                          max_length=max_length)["input_ids"]
        a = tok.encode(ex.premise, add_special_tokens=False)
        b = tok.encode(ex.hypothesis, add_special_tokens=False)
        la, lb = _truncate_loop(len(a), len(b), max_length - 4)
        assert ids == [0, *a[:la], 2, 2, *b[:lb], 2]
        assert f["truncated"] == (len(full) > max_length)
        n_trunc += f["truncated"]
    assert n_trunc > len(exs) // 2  # the truncation path really ran


# --------------------------------------------------------------------- token classification
def _check_token_features(tok, feats, exs, max_length):
    lab = {t: k for k, t in enumerate(LABELS)}
    by_ex = {}
    for f in feats:
        by_ex.setdefault(f["example_index"], []).append(f)
    assert sorted(by_ex) == list(range(len(exs)))
    n_windows = 0
    for ei, ex in enumerate(exs):
        fs = by_ex[ei]
        n_windows += len(fs)
        ids_full, wid_full = T.word_pieces(tok, ex.words)
        assert ids_full == tok.encode(" ".join(ex.words), add_special_tokens=False)
        # windows: consecutive word ranges covering all words, whole words only
        assert fs[0]["word_start"] == 0 and fs[-1]["word_end"] == len(ex.words)
        for f0, f1 in itertools.pairwise(fs):
            assert f0["word_end"] == f1["word_start"]
        ids_cat, wid_cat = [], []
        for f in fs:
            ids, labels, wid = f["input_ids"], f["labels"], f["word_ids"]
            assert len(ids) == len(labels) == len(wid) <= max_length
            assert ids[0] == 0 and ids[-1] == 2 and wid[0] is None and wid[-1] is None
            assert labels[0] == labels[-1] == -100
            assert f["lang"] == ex.lang
            inner = wid[1:-1]
            assert all(f["word_start"] <= w < f["word_end"] for w in inner)
            for k in range(1, len(ids) - 1):
                first = wid[k] != wid[k - 1]
                assert labels[k] == (lab[ex.tags[wid[k]]] if first else -100)
            ids_cat += ids[1:-1]
            wid_cat += inner
        # the windows hold exactly the sentence's pieces, each word in one window
        assert ids_cat == ids_full and wid_cat == wid_full
        # a word starts with its "▁" piece and has no other (sentencepiece splits at spaces),
        # so a lone "▁" piece went to the word it marks, not the one before it
        blank = T._Blank(tok.sp)
        for w, word in enumerate(ex.words):
            pieces = [tok.id_to_piece(i) for i, ww in zip(ids_full, wid_full) if ww == w]
            if _visible(tok, word) and not any(blank(ch) for ch in word):
                assert [p.startswith("\u2581") for p in pieces] == \
                    [True] + [False] * (len(pieces) - 1), (ex.guid, word, pieces)
        # every word is recovered exactly from the character spans of its pieces
        text = " ".join(ex.words)
        _, spans = T._encode_with_offsets(tok.sp, text)
        pos = 0
        for w, word in enumerate(ex.words):
            got = "".join(text[b:e] for (b, e), ww in zip(spans, wid_full) if ww == w)
            assert got == _visible(tok, word), (ex.guid, word)
            assert all(pos <= b and e <= pos + len(word)
                       for (b, e), ww in zip(spans, wid_full) if ww == w and b < e)
            pos += len(word) + 1
    return n_windows


def test_encode_tokens_real_panx(tok, panx):
    exs = [ex for lang in QA_LANGS for ex in panx[lang]]
    feats = T.encode_tokens(tok, exs, LABELS, max_length=256)
    _check_token_features(tok, feats, exs, 256)
    n_first = sum(sum(1 for x in f["labels"] if x != -100) for f in feats)
    # every word is labelled once, except words of blank characters only (zh has two U+200B)
    n_blank = sum(1 for ex in exs for w in ex.words if not _visible(tok, w))
    assert n_first == sum(len(ex.words) for ex in exs) - n_blank and n_blank < 5


def test_encode_tokens_windows_and_merge(tok, panx):
    exs = [ex for lang in QA_LANGS for ex in panx[lang][:100]]
    max_length = 16
    feats = T.encode_tokens(tok, exs, LABELS, max_length=max_length)
    n_windows = _check_token_features(tok, feats, exs, max_length)
    assert n_windows > 1.5 * len(exs)  # many sentences were split
    # one-hot logits at the gold labels, padded and stacked: merging gives the gold tags back
    width = max(len(f["input_ids"]) for f in feats) + 3
    logits = torch.randn(len(feats), width, len(LABELS))
    for i, f in enumerate(feats):
        for k, y in enumerate(f["labels"]):
            if y != -100:
                logits[i, k, y] = 100.0
    merged = T.merge_token_predictions(feats, logits, exs, LABELS)
    assert merged == [list(ex.tags) for ex in exs]
    # a list of unpadded per-feature arrays, and predicted ids, give the same
    rows = [logits[i, :len(f["input_ids"])].numpy() for i, f in enumerate(feats)]
    assert T.merge_token_predictions(feats, rows, exs, LABELS) == merged
    ids = [r.argmax(-1) for r in rows]
    assert T.merge_token_predictions(feats, ids, exs, LABELS) == merged


def test_encode_tokens_windows_are_full(tok, panx):
    # A sentence of exactly max_length - 2 pieces fits one window, and a split sentence's
    # windows are as full as whole words allow (catches `used + c >= budget`, which splits
    # one piece early and makes more, shorter windows).
    exs = [ex for ex in panx["en"][:60] if len(ex.words) > 1]
    for ex in exs:
        n = len(T.word_pieces(tok, ex.words)[0])
        one = T.encode_tokens(tok, [ex], LABELS, max_length=n + 2)
        assert len(one) == 1 and len(one[0]["input_ids"]) == n + 2, ex.guid
        two = T.encode_tokens(tok, [ex], LABELS, max_length=n + 1)
        assert len(two) == 2, ex.guid
    feats = T.encode_tokens(tok, exs, LABELS, max_length=12)
    for f0, f1 in itertools.pairwise(feats):
        if f0["example_index"] == f1["example_index"]:  # the next word did not fit
            wid = T.word_pieces(tok, exs[f1["example_index"]].words)[1]
            assert len(f0["input_ids"]) - 2 + wid.count(f1["word_start"]) > 10


def test_encode_tokens_edge_words(tok):
    exs = [
        # a word that normalises to nothing (zero-width space), an NFKC ligature, CJK with a
        # lone "▁" piece, a word far longer than the window
        Tokens("g0", ("ﬁne", "\u200b", "你好", "x", "Bank"), ("B-ORG", "O", "B-LOC", "O", "I-LOC"),
               "xx"),
        Tokens("g1", (), (), "xx"),
        Tokens("g2", ("a" * 40, "b"), ("B-PER", "I-PER"), "xx"),
    ]
    feats = T.encode_tokens(tok, exs, LABELS, max_length=8)
    f0 = [f for f in feats if f["example_index"] == 0]
    wid = [w for f in f0 for w in f["word_ids"][1:-1]]
    assert 1 not in wid and set(wid) == {0, 2, 3, 4}  # the blank word has no piece
    # with this vocabulary "你好" is "▁" "你" "好": the lone "▁" is the word's first piece and
    # carries its label
    pieces = [(tok.id_to_piece(i), w, y) for f in f0
              for i, w, y in zip(f["input_ids"], f["word_ids"], f["labels"])]
    k = next(k for k, p in enumerate(pieces) if p[0] == "你")
    assert pieces[k - 1] == ("\u2581", 2, LABELS.index("B-LOC")) and pieces[k][1:] == (2, -100)
    assert _check_token_features(tok, feats[:len(f0)], exs[:1], 8) == len(f0)
    f1 = [f for f in feats if f["example_index"] == 1]
    assert len(f1) == 1 and f1[0]["input_ids"] == [0, 2] and f1[0]["labels"] == [-100, -100]
    f2 = [f for f in feats if f["example_index"] == 2]
    assert all(len(f["input_ids"]) <= 8 for f in f2)
    assert [(f["word_start"], f["word_end"]) for f in f2] == [(0, 1), (1, 2)]
    logits = [np.eye(len(LABELS))[[max(y, 0) for y in f["labels"]]] for f in feats]
    merged = T.merge_token_predictions(feats, logits, exs, LABELS)
    assert merged == [["B-ORG", "O", "B-LOC", "O", "I-LOC"], [], ["B-PER", "I-PER"]]

    with pytest.raises(ValueError, match="not in label_list"):
        T.encode_tokens(tok, [Tokens("bad", ("a",), ("B-MISC",), "en")], LABELS)
    with pytest.raises(ValueError, match="2 words but 1 tags"):
        T.encode_tokens(tok, [Tokens("bad", ("a", "b"), ("O",), "en")], LABELS)


# --------------------------------------------------------------------- extractive QA
def _blank_trim(tok, text):
    blank = T._Blank(tok.sp)
    b, e = 0, len(text)
    while b < e and blank(text[b]):
        b += 1
    while e > b and blank(text[e - 1]):
        e -= 1
    return text[b:e]


def _check_qa_features(tok, feats, exs, max_length, doc_stride, max_query_length):
    """Structure of every window, and the gold span through the offsets. Returns
    (features holding the answer, of which exactly recovered)."""
    by_ex = {}
    for f in feats:
        by_ex.setdefault(f["example_index"], []).append(f)
    assert sorted(by_ex) == list(range(len(exs)))
    inside = exact = 0
    encoded = {}
    for ei, ex in enumerate(exs):
        fs = by_ex[ei]
        q = tok.encode(ex.question.strip(), False)[:max_query_length]
        if ex.context not in encoded:
            encoded[ex.context] = (tok.encode(ex.context, False),
                                   T._encode_with_offsets(tok.sp, ex.context)[1])
        c_ids, c_off = encoded[ex.context]
        ctx0 = len(q) + 3
        covered = set()
        starts = []
        for f in fs:
            ids, offs = f["input_ids"], f["offsets"]
            assert len(ids) == len(offs) <= max_length
            assert ids[:ctx0] == [0, *q, 2, 2] and ids[-1] == 2
            assert all(o is None for o in offs[:ctx0]) and offs[-1] is None
            n = len(ids) - ctx0 - 1
            assert n >= 1 and all(o is not None for o in offs[ctx0:-1])
            # window k is the slice of the context's pieces (offsets included) starting at
            # piece k * doc_stride
            s = len(starts) * doc_stride
            assert ids[ctx0:-1] == c_ids[s:s + n] and offs[ctx0:-1] == c_off[s:s + n]
            starts.append(s)
            covered.update(range(s, s + n))
            assert f["qid"] == ex.qid and f["lang"] == ex.lang
            a_text, a_start = ex.answers[0]
            sp_, ep_ = f["start_position"], f["end_position"]
            # the answer's characters, blank-trimmed, against this window's visible pieces
            gold = _blank_trim(tok, a_text)
            cs = a_start + a_text.index(gold)
            ce = cs + len(gold)
            vis = [(b, e) for b, e in offs[ctx0:-1] if b < e]
            fully_inside = bool(vis) and vis[0][0] <= cs and ce <= vis[-1][1]
            if sp_ == 0:
                assert ep_ == 0 and not fully_inside
                continue
            assert fully_inside and ctx0 <= sp_ <= ep_ < len(ids) - 1
            inside += 1
            b, e = offs[sp_][0], offs[ep_][1]
            got = ex.context[b:e]
            # the gold tokens are the smallest run of visible pieces covering the answer
            assert b <= cs and ce <= e and gold in got
            assert offs[sp_][0] < offs[sp_][1] and offs[ep_][0] < offs[ep_][1]
            assert not any(bb < ee and ee > cs for bb, ee in offs[ctx0:sp_])
            assert not any(bb < ee and bb < ce for bb, ee in offs[ep_ + 1:-1])
            aligned = not any(bb < cs < ee or bb < ce < ee for bb, ee in vis)
            if aligned:
                assert got == gold, (ex.qid, got, gold)
            exact += got == gold
        # the windows cover the whole context, the last one ending at its end
        assert covered == set(range(len(c_ids)))
        assert starts[-1] + len(fs[-1]["input_ids"]) - ctx0 - 1 == len(c_ids)
    return inside, exact


def _one_hot(feats, width=None):
    width = width or max(len(f["input_ids"]) for f in feats)
    s = torch.full((len(feats), width), -5.0)
    e = torch.full((len(feats), width), -5.0)
    for i, f in enumerate(feats):
        s[i, f["start_position"]] = 10.0
        e[i, f["end_position"]] = 10.0
    return s, e


@pytest.mark.parametrize("lang", QA_LANGS)
def test_qa_real_xquad(tok, xquad, lang):
    exs = xquad[lang]
    feats = T.encode_qa(tok, exs)  # 384 / 128 / 64
    inside, exact = _check_qa_features(tok, feats, exs, 384, 128, 64)
    assert inside >= len(exs)  # every answer is inside at least one window
    assert exact >= 0.99 * inside
    # decoding one-hot logits at the gold tokens gives the answer for >= 99% of questions
    s, e = _one_hot(feats)
    pred = T.decode_qa(feats, s, e, exs, max_answer_length=384)
    ok = sum(pred[ex.qid] == _blank_trim(tok, ex.answers[0][0]) for ex in exs)
    assert ok >= 0.99 * len(exs), (lang, ok, len(exs))


def test_qa_small_windows_and_blank_answers(tok, data_dir, xquad):
    """Many short windows (en), and MLQA Spanish, whose answers end in U+200B."""
    exs = xquad["en"][:300]
    feats = T.encode_qa(tok, exs, max_length=64, doc_stride=20, max_query_length=16)
    inside, exact = _check_qa_features(tok, feats, exs, 64, 20, 16)
    assert len(feats) > 8 * len(exs) and inside > 0 and exact >= 0.99 * inside

    es = read_squad_json(data_dir / "mlqa" / "dev-context-es-question-es.json", "es")
    with_zwsp = [ex for ex in es if ex.answers[0][0][-1:] == "\u200b"]
    assert len(with_zwsp) >= 5
    feats = T.encode_qa(tok, es)
    inside, exact = _check_qa_features(tok, feats, es, 384, 128, 64)
    assert exact >= 0.95 * inside
    s, e = _one_hot(feats)
    pred = T.decode_qa(feats, s, e, es, max_answer_length=384)
    for ex in with_zwsp:
        gold = ex.answers[0][0].rstrip("\u200b")
        assert pred[ex.qid] in (gold, "") or gold in pred[ex.qid]


def test_decode_qa_rules(tok):
    ctx = "The Amazon rainforest covers much of the Amazon basin of South America."
    exs = [QA("q1", "What covers the basin?", ctx, (("The Amazon rainforest", 0),), "en"),
           QA("q2", "Where?", ctx, (("South America", ctx.index("South")),), "en")]
    feats = T.encode_qa(tok, exs, max_length=40, doc_stride=8, max_query_length=8)
    assert len({f["example_index"] for f in feats}) == 2 and len(feats) > 2
    s, e = _one_hot(feats, width=48)  # padded wider than any feature
    pred = T.decode_qa(feats, s, e, exs, max_answer_length=40)
    assert pred == {"q1": "The Amazon rainforest", "q2": "South America"}
    # as per-feature lists of different lengths: the same
    rows_s = [s[i, :len(f["input_ids"])] for i, f in enumerate(feats)]
    rows_e = [e[i, :len(f["input_ids"])] for i, f in enumerate(feats)]
    assert T.decode_qa(feats, rows_s, rows_e, exs, max_answer_length=40) == pred
    # max_answer_length: the gold span of q1 has several pieces; with room for one piece only
    # the best single-piece span wins instead
    g = next(f for f in feats if f["example_index"] == 0 and f["start_position"])
    assert g["end_position"] > g["start_position"]
    short = T.decode_qa(feats, s, e, exs, max_answer_length=1)["q1"]
    assert short != "The Amazon rainforest" and short and short in ctx
    # the limit counts pieces inclusively: a span of exactly max_answer_length pieces is
    # allowed, one more is not (catches an off-by-one such as `j - i > max_answer_length`)
    n = g["end_position"] - g["start_position"] + 1
    assert T.decode_qa(feats, s, e, exs, max_answer_length=n)["q1"] == "The Amazon rainforest"
    assert T.decode_qa(feats, s, e, exs, max_answer_length=n - 1)["q1"] != "The Amazon rainforest"
    # the highest end logit on the final </s> (no offsets): skipped, never sliced with
    # (catches a decoder that checks only the start token for offsets and crashes or reads
    # past the window on real model outputs)
    e4 = e.clone()
    for i, f in enumerate(feats):
        e4[i, len(f["input_ids"]) - 1] = 50.0
    assert T.decode_qa(feats, s, e4, exs, max_answer_length=40) == pred
    # spans starting or ending outside the context are never returned: the best start and
    # end sit on a question token, yet a (lower-scoring) context span comes back
    z = torch.zeros_like(s)
    s2, e2 = z.clone(), z.clone()
    s2[:, 1] = e2[:, 1] = 50.0
    out = T.decode_qa(feats, s2, e2, exs)
    assert all(v and v in ctx for v in out.values())
    # n_best = 1 with the best start after the best end: nothing valid
    s3, e3 = z.clone(), z.clone()
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        s3[i, n - 2] = 9.0
        e3[i, f["offsets"].index(next(o for o in f["offsets"] if o))] = 9.0
    assert T.decode_qa(feats, s3, e3, exs, n_best=1) == {"q1": "", "q2": ""}


# --------------------------------------------------------------------- batching
def test_collate_shapes_and_padding():
    feats = [{"input_ids": [0, 5, 6, 2], "labels": [-100, 1, 2, -100], "label": 2,
              "start_position": 1, "w": 0.5},
             {"input_ids": [0, 7, 2], "labels": [-100, 3, -100], "label": 0,
              "start_position": 0, "w": 1.0}]
    b = T.collate(feats, ["input_ids", "labels", "label", "start_position", "w"])
    assert b["input_ids"].shape == (2, 8) and b["input_ids"].dtype == torch.long
    assert b["input_ids"][1].tolist() == [0, 7, 2, 1, 1, 1, 1, 1]
    assert b["attention_mask"].tolist() == [[1] * 4 + [0] * 4, [1] * 3 + [0] * 5]
    assert b["labels"][1].tolist() == [-100, 3, -100] + [-100] * 5
    assert b["label"].tolist() == [2, 0] and b["start_position"].tolist() == [1, 0]
    assert b["w"].dtype == torch.float32
    b = T.collate(feats, ["input_ids"], pad_id=9, multiple_of=1)
    assert b["input_ids"].shape == (2, 4) and b["input_ids"][1, 3] == 9
    long = [{"input_ids": list(range(17))}]
    assert T.collate(long, ["input_ids"])["input_ids"].shape == (1, 24)
    b = T.collate(feats, ["input_ids", "labels"], pad_values={"labels": -1})
    assert b["labels"][1, -1] == -1
    with pytest.raises(ValueError):
        T.collate([], ["input_ids"])


def test_length_batches():
    rng = random.Random(1)
    lengths = [rng.randint(3, 300) for _ in range(1037)]
    bs = 16
    b1 = T.length_batches(lengths, bs, shuffle=True, seed=3)
    assert b1 == T.length_batches(lengths, bs, shuffle=True, seed=3)  # deterministic
    assert b1 != T.length_batches(lengths, bs, shuffle=True, seed=4)
    flat = [i for b in b1 for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every index once
    assert all(1 <= len(b) <= bs for b in b1)
    assert sum(len(b) < bs for b in b1) <= -(-len(lengths) // (50 * bs))  # one short per chunk
    # less padding than random batches, and the batch order is shuffled
    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)
    perm = list(range(len(lengths)))
    random.Random(0).shuffle(perm)
    rand = [perm[k:k + bs] for k in range(0, len(perm), bs)]
    assert padded(b1) < 0.8 * padded(rand)
    maxes = [max(lengths[i] for i in b) for b in b1]
    assert maxes != sorted(maxes, reverse=True) and maxes != sorted(maxes)
    # evaluation: all indices sorted by length, longest first, ties in index order
    ev = T.length_batches(lengths, bs, shuffle=False)
    flat = [i for b in ev for i in b]
    assert flat == sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    assert [len(b) for b in ev] == [bs] * (len(lengths) // bs) + [len(lengths) % bs]
    assert T.length_batches([], 4, shuffle=True) == []
    with pytest.raises(ValueError):
        T.length_batches(lengths, 0, shuffle=False)


def test_collate_batches_of_real_features(tok, panx):
    exs = panx["zh"][:64]
    feats = T.encode_tokens(tok, exs, LABELS, max_length=64)
    for b in T.length_batches([len(f["input_ids"]) for f in feats], 8, shuffle=True, seed=0):
        batch = T.collate([feats[i] for i in b], ["input_ids", "labels"])
        L = batch["input_ids"].shape[1]
        assert L % 8 == 0 and L - max(len(feats[i]["input_ids"]) for i in b) < 8
        assert (batch["attention_mask"].sum(1).tolist()
                == [len(feats[i]["input_ids"]) for i in b])
        assert ((batch["labels"] != -100) <= batch["attention_mask"].bool()).all()


# --------------------------------------------------------------------- with the real readers
def test_with_project_readers(tok, data_dir):
    readers = pytest.importorskip("xlmr_fast.finetune.readers")
    if not all(hasattr(readers, n) for n in ("read_squad", "read_panx", "read_xnli")):
        pytest.skip("readers.py does not have read_squad/read_panx/read_xnli yet")
    qa = readers.read_squad(data_dir / "xquad" / "xquad.hi.json")[:300]
    feats = T.encode_qa(tok, qa)
    s, e = _one_hot(feats)
    pred = T.decode_qa(feats, s, e, qa, max_answer_length=384)
    assert sum(pred[ex.qid] == _blank_trim(tok, ex.answers[0][0]) for ex in qa) >= 0.99 * len(qa)
    ner = readers.read_panx(data_dir / "panx" / "dev-ar.tsv")[:200]
    labels = sorted({t for ex in ner for t in ex.tags}, key=lambda t: (t != "O", t))
    feats = T.encode_tokens(tok, ner, labels)
    logits = [np.eye(len(labels))[[max(y, 0) for y in f["labels"]]] for f in feats]
    assert T.merge_token_predictions(feats, logits, ner, labels) == [list(x.tags) for x in ner]
    pairs = readers.read_xnli(data_dir / "xnli" / "dev-ar.tsv")[:100]
    feats = T.encode_pairs(tok, pairs)
    assert [f["input_ids"] for f in feats] == [
        tok(x.premise, x.hypothesis, truncation=True, max_length=128)["input_ids"] for x in pairs]

"""Fine-tuning tasks: examples -> model features, model outputs -> predictions.

Three task shapes (xlmr-spec.md §1.3 heads, §2.3 encoding):

* sentence pairs (XNLI, PAWS-X): `<s> A </s></s> B </s>`, exactly `Tokenizer.encode_pair`;
  too-long pairs lose tokens from the longer side first (HF "longest_first").
* token classification (NER): the words are joined with single spaces and the sentence is
  encoded once (so every id equals `tok.encode(" ".join(words))`); each piece is mapped back
  to its word through sentencepiece's offsets. The label goes on the first piece of each
  word, -100 elsewhere. Long sentences are split into windows at word boundaries.
* extractive QA (XQuAD, MLQA, SQuAD): `<s> question </s></s> context-window </s>`, sliding
  windows over the context tokens (BERT's SQuAD code: a new window every `doc_stride`
  tokens), character offsets of every context token, best span decoded back to the context.

Offsets. sentencepiece reports, for every piece, the span of the *original* (unnormalised)
input it came from, but the units depend on version and API: return_type="offset_mapping"
(0.2.1+) gives characters, or UTF-8 bytes with return_bytes=True (used here); parsed protos
(return_type="proto", 0.2.1+) give bytes; the 0.1.99-0.2.0 binding converts
out_type="immutable_proto" spans to characters for str input. `_offset_api` therefore probes
the installed version once with a non-ASCII string, measures the unit, and
`_encode_with_offsets` converts bytes to Python string (code point) indices itself. Two
properties matter below:
  - a word-initial piece ("▁foo") spans the whitespace before the word; a lone "▁" piece
    spans only whitespace, or nothing at all at the start of the text (e.g. before Chinese);
  - where NFKC normalisation expands one character into several pieces ("ﬁ" -> "▁f" "i"),
    all of the character goes to the last piece and the others get an empty span.
So character offsets given out here are the piece's span with surrounding whitespace
removed, and may be empty (start == end) for pieces that cover no visible character.

A literal "<mask>" in the text is encoded as plain text here (task text is never masked),
whereas `Tokenizer.encode` turns it into the mask token; that is the only case where the
ids of encode_tokens/encode_qa differ from tok.encode.
"""
from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of the pieces that carry no loss (torch cross_entropy default)
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


# ------------------------------------------------------------------------ sentencepiece offsets
_OFFSET_API: dict[type, tuple[str, bool]] = {}
_PROBE = "aé 你b"  # 5 characters, 8 UTF-8 bytes


def _offset_api(sp) -> tuple[str, bool]:
    """(API name, whether its spans count UTF-8 bytes) for this sentencepiece, probed once.

    The units differ between versions and APIs: serialized protos count bytes, while the
    0.1.99-0.2.0 binding converts immutable_proto spans to characters
    (ConvertToUnicodeSpans) for str input. So the units are measured, not assumed: the last
    piece of the probe ends at 8 in bytes and at 5 in characters."""
    key = type(sp)
    if key not in _OFFSET_API:
        for api in ("offset_mapping", "immutable_proto", "proto"):
            in_bytes = _probe_units(sp, api)
            if in_bytes is not None:
                _OFFSET_API[key] = (api, in_bytes)
                break
        else:
            raise RuntimeError("this sentencepiece version gives no usable piece offsets (tried "
                               "return_type='offset_mapping', out_type='immutable_proto' and "
                               "return_type='proto'); install sentencepiece>=0.1.99")
    return _OFFSET_API[key]


def _probe_units(sp, api: str) -> bool | None:
    """True: `api` gives byte spans, False: character spans, None: unusable here."""
    try:
        ids, spans = _raw_spans_with(sp, _PROBE, api)
    except Exception:  # noqa: BLE001 - an API this version lacks, in any form
        return None
    if ids != list(sp.encode(_PROBE)) or len(spans) != len(ids) or not spans:
        return None
    end = spans[-1][1]
    if end == len(_PROBE):
        return False
    if end == len(_PROBE.encode("utf-8")):
        return True
    return None


def _raw_spans_with(sp, text: str, api: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(spm ids, spans as the API gives them: bytes or characters, see _offset_api)."""
    if api == "offset_mapping":  # sentencepiece >= 0.2.1, no protobuf needed
        r = sp.encode(text, return_type="offset_mapping", return_bytes=True)
        return list(r["ids"]), [tuple(o) for o in r["offsets"]]
    if api == "immutable_proto":  # sentencepiece 0.1.99 - 0.2.0
        pieces = sp.encode(text, out_type="immutable_proto").pieces
    else:  # "proto": parsed with protobuf (sentencepiece >= 0.2.1)
        pieces = sp.encode(text, return_type="proto").pieces
    return [p.id for p in pieces], [(p.begin, p.end) for p in pieces]


def _byte_to_char(text: str) -> list[int] | None:
    """b2c[k] = index of the character holding UTF-8 byte k (len+1 entries); None for ASCII."""
    if text.isascii():
        return None
    b2c = []
    for i, ch in enumerate(text):
        b2c.extend([i] * len(ch.encode("utf-8")))
    b2c.append(len(text))
    return b2c


class _Blank:
    """ch -> True when sentencepiece treats the character as whitespace or drops it.

    nmt_nfkc normalisation turns more than str.isspace() into a space: U+200B ZERO WIDTH
    SPACE, U+200C ZWNJ and U+FEFF among others (MLQA's Spanish contexts are full of U+200B
    after citation marks); such characters end up inside "▁" pieces and must be trimmed
    from spans like spaces. Answered by sentencepiece itself (a blank character alone
    encodes to no piece) and memoised."""

    def __init__(self, sp):
        self.sp = sp
        self.memo: dict[str, bool] = {}

    def __call__(self, ch: str) -> bool:
        if ch.isascii():
            return ch.isspace() or (not ch.isprintable() and self._spm(ch))
        return self._spm(ch)

    def _spm(self, ch: str) -> bool:
        r = self.memo.get(ch)
        if r is None:
            r = self.memo[ch] = ch.isspace() or not self.sp.encode(ch)
        return r


def _char_spans(text: str, spans, in_bytes: bool) -> list[tuple[int, int]]:
    """Spans in characters of `text`, from spans in UTF-8 bytes (in_bytes) or characters."""
    b2c = _byte_to_char(text) if in_bytes else None
    if b2c is None:
        return [(b, e) for b, e in spans]
    out = []
    for b, e in spans:
        # A span starts and ends on a character boundary unless byte fallback splits a
        # character into byte pieces: then every such piece gets the whole character.
        on_boundary = e == 0 or e == len(b2c) - 1 or b2c[e] != b2c[e - 1]
        out.append((b2c[b], b2c[e] if on_boundary else b2c[e] + 1))
    return out


def _encode_with_offsets(sp, text: str, blank: _Blank | None = None
                         ) -> tuple[list[int], list[tuple[int, int]]]:
    """fairseq ids of `text` (no specials) and each piece's (start, end) character span in
    `text`, blank characters (see _Blank) at the span's ends removed; a span may be empty
    (start == end) for pieces that cover only blanks or nothing."""
    blank = blank or _Blank(sp)
    api, in_bytes = _offset_api(sp)
    spm_ids, raw = _raw_spans_with(sp, text, api)
    ids = [i + 1 if i else UNK_ID for i in spm_ids]  # fairseq: spm id + 1, spm <unk> 0 -> 3
    spans = []
    n = len(text)
    for b, e in _char_spans(text, raw, in_bytes):
        b, e = min(b, n), min(e, n)
        while b < e and blank(text[b]):
            b += 1
        while e > b and blank(text[e - 1]):
            e -= 1
        spans.append((b, e))
    return ids, spans


# ------------------------------------------------------------------------ sentence pairs
def _longest_first(la: int, lb: int, budget: int) -> tuple[int, int]:
    """Lengths kept by HF's "longest_first" truncation of a pair to `budget` tokens.

    Tokens leave the longer side until both are equally long, then both sides alternately;
    when the budget is odd, the side that was longer keeps the odd token (the second side on
    a tie). This is the `tokenizers` library's rule (HF fast tokenizers, and
    xlmr_fast.Tokenizer.__call__); HF's slow Python tokenizers differ only in which side keeps
    that odd token."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if la + lb <= budget:
        return la, lb
    swap = la > lb
    short, long_ = (lb, la) if swap else (la, lb)
    if short + short >= budget:  # both sides are cut, to about budget / 2 each
        short, long_ = budget // 2, budget - budget // 2
    else:  # only the longer side is cut
        long_ = budget - short
    return (long_, short) if swap else (short, long_)


def encode_pairs(tok, examples, max_length: int = 128) -> list[dict]:
    """Sentence-pair features: {"input_ids", "label", "lang", "index", "truncated"}.

    input_ids = tok.encode_pair(premise, hypothesis) when it fits in max_length; otherwise
    the longer side loses tokens from its end first (HF "longest_first"), keeping the four
    special tokens, so the result equals tok(a, b, truncation=True, max_length=max_length).
    The number of truncated pairs is logged."""
    if max_length < 5:
        raise ValueError(f"max_length must be at least 5 (4 special tokens + 1), got {max_length}")
    feats, n_trunc = [], 0
    for i, ex in enumerate(examples):
        a = tok.encode(ex.premise, add_special_tokens=False)
        b = tok.encode(ex.hypothesis, add_special_tokens=False)
        la, lb = _longest_first(len(a), len(b), max_length - 4)
        trunc = (la, lb) != (len(a), len(b))
        n_trunc += trunc
        feats.append({"input_ids": [BOS_ID, *a[:la], EOS_ID, EOS_ID, *b[:lb], EOS_ID],
                      "label": int(ex.label), "lang": getattr(ex, "lang", None), "index": i,
                      "truncated": trunc})
    if n_trunc:
        log.info("encode_pairs: %d of %d pairs truncated to %d tokens", n_trunc, len(feats),
                 max_length)
    return feats


# ------------------------------------------------------------------------ token classification
def word_pieces(tok, words: Sequence[str], blank: _Blank | None = None
                ) -> tuple[list[int], list[int]]:
    """ids of " ".join(words) (no specials) and the word index of every piece.

    A piece belongs to the word whose characters it covers; a piece covering none (a lone
    "▁" before a word, or the empty-span pieces of an NFKC expansion) belongs to the word
    that follows it (the "▁" marks that word's start), or, at the very end, to the word
    before it. Words that normalise to nothing (e.g. only zero-width characters) get no
    piece."""
    text = " ".join(words)
    ids, spans = _encode_with_offsets(tok.sp, text, blank)
    char_word = [None] * len(text)
    pos = 0
    for w, word in enumerate(words):
        for k in range(pos, pos + len(word)):
            char_word[k] = w
        pos += len(word) + 1
    wid: list[int | None] = []
    for b, e in spans:
        w = next((char_word[k] for k in range(b, e) if char_word[k] is not None), None)
        wid.append(w)
    # Empty pieces: the next piece's word; trailing ones: the previous piece's word.
    nxt = None
    for k in range(len(wid) - 1, -1, -1):
        if wid[k] is None:
            wid[k] = nxt
        else:
            nxt = wid[k]
    prev = None
    for k in range(len(wid)):
        if wid[k] is None:
            wid[k] = prev
        else:
            prev = wid[k]
    return ids, wid


def _label_map(label_list) -> dict[str, int]:
    labels = list(label_list)
    if len(set(labels)) != len(labels):
        raise ValueError(f"label_list has duplicates: {labels}")
    return {t: k for k, t in enumerate(labels)}


def encode_tokens(tok, examples, label_list, max_length: int = 256) -> list[dict]:
    """Token-classification features, one or more per example.

    Per feature: "input_ids" (<s> pieces </s>), "labels" (label id on the first piece of each
    word, -100 on its other pieces and on <s>/</s>), "word_ids" (word index within the
    example for every token, None for <s>/</s>), "example_index", "word_start"/"word_end"
    (the example's words [word_start, word_end) this feature holds), "lang".

    The pieces are those of tok.encode(" ".join(words)). A sentence with more than
    max_length - 2 pieces is cut into consecutive windows of whole words; a single word
    longer than a window keeps only its first max_length - 2 pieces (logged)."""
    if max_length < 3:
        raise ValueError(f"max_length must be at least 3, got {max_length}")
    lab = _label_map(label_list)
    budget = max_length - 2
    blank = _Blank(tok.sp)
    feats, n_split, n_cut = [], 0, 0
    for ei, ex in enumerate(examples):
        words, tags = tuple(ex.words), tuple(ex.tags)
        if len(words) != len(tags):
            raise ValueError(f"example {ex.guid!r}: {len(words)} words but {len(tags)} tags")
        try:
            tag_ids = [lab[t] for t in tags]
        except KeyError as e:
            raise ValueError(f"example {ex.guid!r}: tag {e.args[0]!r} is not in label_list "
                             f"{list(lab)}") from None
        ids, wid = word_pieces(tok, words, blank)
        # first piece index of every word and its piece count
        first: dict[int, int] = {}
        count = [0] * len(words)
        for k, w in enumerate(wid):
            first.setdefault(w, k)
            count[w] += 1
        # windows of whole words
        windows, w0, used = [], 0, 0
        for w in range(len(words)):
            c = count[w]
            if used + c > budget and w > w0:
                windows.append((w0, w))
                w0, used = w, 0
            used += c
        windows.append((w0, len(words)))
        n_split += len(windows) > 1
        lang = getattr(ex, "lang", None)
        for ws, we in windows:
            ks = [k for k in range(len(ids)) if ws <= wid[k] < we]
            if len(ks) > budget:  # one word longer than a whole window
                n_cut += 1
                ks = ks[:budget]
            f_ids = [BOS_ID] + [ids[k] for k in ks] + [EOS_ID]
            f_wid = [None] + [wid[k] for k in ks] + [None]
            f_lab = [IGNORE_INDEX] + [tag_ids[wid[k]] if first[wid[k]] == k else IGNORE_INDEX
                                      for k in ks] + [IGNORE_INDEX]
            feats.append({"input_ids": f_ids, "labels": f_lab, "word_ids": f_wid,
                          "example_index": ei, "word_start": ws, "word_end": we,
                          "lang": lang})
    if n_split:
        log.info("encode_tokens: %d sentences longer than %d tokens split into windows",
                 n_split, max_length)
    if n_cut:
        log.warning("encode_tokens: %d words longer than a %d-token window cut", n_cut,
                    max_length)
    return feats


def _rows(x) -> list:
    """Per-feature rows of a list of arrays/tensors or of one stacked array/tensor."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return [r.detach().float().cpu().numpy() if hasattr(r, "detach") else r for r in x]


def merge_token_predictions(features, logits_list, examples, label_list) -> list[list[str]]:
    """One tag per word for every example: argmax of the logits at each word's first piece.

    logits_list: per feature, [seq_len(+padding), num_labels] logits (list of arrays/tensors
    or one stacked [n_features, L, num_labels] array), or [seq_len] predicted label ids.
    A word with no piece (it normalised to nothing) gets "O" (label_list[0] without "O")."""
    import numpy as np

    labels = list(label_list)
    default = "O" if "O" in labels else labels[0]
    out = [[None] * len(ex.words) for ex in examples]
    rows = _rows(logits_list)
    if len(rows) != len(features):
        raise ValueError(f"logits_list has {len(rows)} rows for {len(features)} features")
    for f, r in zip(features, rows):
        r = np.asarray(r)
        pred = r if r.ndim == 1 else r.argmax(-1)
        wid = f["word_ids"]
        tags = out[f["example_index"]]
        prev = None
        for k, w in enumerate(wid):
            if w is not None and w != prev and tags[w] is None:  # the word's first piece
                tags[w] = labels[int(pred[k])]
            prev = w
    missing = 0
    for tags in out:
        for k, t in enumerate(tags):
            if t is None:
                tags[k] = default
                missing += 1
    if missing:
        log.info("merge_token_predictions: %d words without pieces tagged %r", missing,
                 default)
    return out


# ------------------------------------------------------------------------ extractive QA
def _answer_span(context: str, text: str, start: int, blank: _Blank) -> tuple[int, int]:
    """(char_start, char_end) of an answer, blank characters at its ends left out."""
    end = min(start + len(text), len(context))
    while start < end and blank(context[start]):
        start += 1
    while end > start and blank(context[end - 1]):
        end -= 1
    return start, end


def encode_qa(tok, examples, max_length: int = 384, doc_stride: int = 128,
              max_query_length: int = 64) -> list[dict]:
    """Extractive-QA features, one per context window.

    `<s> question </s></s> window </s>`: the question keeps its first max_query_length
    pieces; the context pieces (those of tok.encode(context)) are cut into windows of
    max_length - len(question) - 4 pieces, a new window starting every doc_stride pieces
    (BERT's run_squad and XTREME's convention: doc_stride is the step, so consecutive windows
    overlap by window - doc_stride pieces), the last window ending at the context's end.

    Per feature: "input_ids"; "offsets" (per token: (char_start, char_end) in the context for
    context tokens, None otherwise; blank characters at both ends left out, so a lone "▁"
    piece has an empty span at the start of the text that follows it); "example_index";
    "qid"; "start_position"/"end_position" (token indices of the first answer's first and
    last piece when the whole answer lies in this window, else 0/0, the <s> token: the
    training target); "lang". The gold span starts at the first piece with visible characters
    ending after the answer's start and ends at the last one starting before its end."""
    if doc_stride < 1:
        raise ValueError(f"doc_stride must be >= 1, got {doc_stride}")
    if max_query_length < 1:
        raise ValueError(f"max_query_length must be >= 1, got {max_query_length}")
    feats = []
    cache: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    n_bad = 0
    blank = _Blank(tok.sp)
    for ei, ex in enumerate(examples):
        q = tok.encode(ex.question.strip(), add_special_tokens=False)[:max_query_length]
        win = max_length - len(q) - 4
        if win < 1:
            raise ValueError(f"max_length {max_length} leaves no room for the context after a "
                             f"{len(q)}-piece question (max_query_length {max_query_length})")
        ctx = ex.context
        if ctx not in cache:
            # examples come grouped by context: one entry is enough
            cache = {ctx: _encode_with_offsets(tok.sp, ctx, blank)}
        c_ids, c_off = cache[ctx]

        # Gold pieces of the first answer (for training; evaluation ignores them).
        g0 = g1 = None
        if ex.answers:
            a_text, a_start = ex.answers[0]
            if ctx[a_start:a_start + len(a_text)] != a_text:
                n_bad += 1
            cs, ce = _answer_span(ctx, a_text, a_start, blank)
            vis = [k for k, (b, e) in enumerate(c_off) if b < e]
            starts = [k for k in vis if c_off[k][1] > cs]
            ends = [k for k in vis if c_off[k][0] < ce]
            if starts and ends and starts[0] <= ends[-1] and cs < ce:
                g0, g1 = starts[0], ends[-1]

        n = len(c_ids)
        s = 0
        while True:
            length = min(win, n - s)
            off0 = len(q) + 3  # context starts after <s> q </s></s>
            ids = [BOS_ID, *q, EOS_ID, EOS_ID, *c_ids[s:s + length], EOS_ID]
            offsets = [None] * off0 + c_off[s:s + length] + [None]
            if g0 is not None and s <= g0 and g1 < s + length:
                sp_, ep_ = g0 - s + off0, g1 - s + off0
            else:
                sp_ = ep_ = 0
            feats.append({"input_ids": ids, "offsets": offsets, "example_index": ei,
                          "qid": ex.qid, "start_position": sp_, "end_position": ep_,
                          "lang": getattr(ex, "lang", None)})
            if s + length >= n:
                break
            s += min(length, doc_stride)
    if n_bad:
        log.warning("encode_qa: %d answers whose text differs from context[answer_start:...]",
                    n_bad)
    return feats


def decode_qa(features, start_logits, end_logits, examples, n_best: int = 20,
              max_answer_length: int = 30) -> dict[str, str]:
    """{qid: answer text}: the best span over all windows of each example.

    In every window the n_best highest start and end logits are paired; a span is valid when
    both ends are context tokens, start <= end, end - start + 1 <= max_answer_length and its
    text is not empty; its score is start_logit + end_logit (as HF run_qa). The text is
    context[offsets[start][0]:offsets[end][1]]. An example without a valid span gets "".
    start_logits/end_logits: per feature [L] (list, or one stacked [n_features, L] array;
    positions past len(offsets) are padding and ignored)."""
    import numpy as np

    srows, erows = _rows(start_logits), _rows(end_logits)
    if not len(srows) == len(erows) == len(features):
        raise ValueError(f"{len(srows)} start and {len(erows)} end logit rows for "
                         f"{len(features)} features")
    best: dict[int, tuple[float, str]] = {}
    for f, sl, el in zip(features, srows, erows):
        offs = f["offsets"]
        L = len(offs)
        sl, el = np.asarray(sl, dtype=np.float64)[:L], np.asarray(el, dtype=np.float64)[:L]
        ctx = examples[f["example_index"]].context
        s_idx = np.argsort(-sl, kind="stable")[:n_best]
        e_idx = np.argsort(-el, kind="stable")[:n_best]
        cur = best.get(f["example_index"], (-math.inf, ""))
        for i in s_idx:
            if offs[i] is None:
                continue
            for j in e_idx:
                if offs[j] is None or j < i or j - i + 1 > max_answer_length:
                    continue
                score = float(sl[i] + el[j])
                if score <= cur[0]:
                    continue
                text = ctx[offs[i][0]:offs[j][1]]
                if text.strip():
                    cur = (score, text)
        best[f["example_index"]] = cur
    return {ex.qid: best.get(k, (0.0, ""))[1] for k, ex in enumerate(examples)}


# ------------------------------------------------------------------------ batching
_PAD_DEFAULTS = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0}


def collate(features, keys, pad_id: int = 1, multiple_of: int = 8,
            pad_values: dict | None = None) -> dict:
    """A batch of tensors from feature dicts.

    Per key: list values are right-padded to the batch's longest row rounded up to
    multiple_of (tensor-core friendly shapes) - input_ids with pad_id, "attention_mask"
    and "token_type_ids" with 0, anything else (labels) with -100, or pad_values[key];
    scalar values become a [B] tensor. With "input_ids" among the keys, "attention_mask"
    (1 on real tokens) is added."""
    import torch

    if not features:
        raise ValueError("collate needs at least one feature")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
    pads = {**_PAD_DEFAULTS, **(pad_values or {})}
    pads["input_ids"] = pad_id
    out = {}
    seq_keys = [k for k in keys if isinstance(features[0][k], (list, tuple))]
    width = 0
    if seq_keys:
        width = max(len(f[k]) for f in features for k in seq_keys)
        width = -(-width // multiple_of) * multiple_of
    for k in keys:
        v0 = features[0][k]
        if isinstance(v0, (list, tuple)):
            p = pads.get(k, IGNORE_INDEX)
            rows = [list(f[k]) + [p] * (width - len(f[k])) for f in features]
            out[k] = torch.tensor(rows, dtype=torch.long)
        elif isinstance(v0, float):
            out[k] = torch.tensor([f[k] for f in features], dtype=torch.float32)
        else:
            out[k] = torch.tensor([int(f[k]) for f in features], dtype=torch.long)
    if "input_ids" in out and "attention_mask" not in keys:
        lens = torch.tensor([len(f["input_ids"]) for f in features])
        out["attention_mask"] = (torch.arange(width)[None, :] < lens[:, None]).long()
    return out


def length_batches(lengths: Sequence[int], batch_size: int, *, shuffle: bool,
                   seed: int = 0, chunk_batches: int = 50) -> list[list[int]]:
    """Batches of indices into `lengths` with similar lengths (less padding).

    shuffle=True (training): shuffle all indices, cut them into chunks of chunk_batches
    batches, sort each chunk by length (longest first), cut it into batches and shuffle the
    order of all batches; the same seed gives the same batches. shuffle=False (evaluation):
    all indices sorted by length, longest first (ties in index order), then cut; every index
    appears once, so predictions map back through it."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = list(lengths)
    idx = list(range(len(lengths)))

    def by_len(ix):
        return sorted(ix, key=lambda i: -lengths[i])  # stable: ties keep their order

    if not shuffle:
        idx = by_len(idx)
        return [idx[k:k + batch_size] for k in range(0, len(idx), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(idx)
    chunk = batch_size * chunk_batches
    batches = []
    for c in range(0, len(idx), chunk):
        part = by_len(idx[c:c + chunk])
        batches.extend(part[k:k + batch_size] for k in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches

"""Evaluation metrics for fine-tuning, in plain Python (no numpy / seqeval dependency).

- :func:`accuracy` for XNLI / PAWS-X (a fraction in [0, 1]).
- :func:`entity_spans` / :func:`span_f1`: entity-level micro precision / recall / F1 by the CoNLL
  ``conlleval`` chunk rules, the same as ``seqeval``'s default (non-strict) mode (fractions in [0, 1]).
- :func:`normalize_answer`, :func:`squad_f1`, :func:`exact_match`, :func:`squad_scores`: SQuAD-style
  answer F1 / exact match with MLQA's language-aware normalisation (rules="mlqa", MLQA's files) or the
  SQuAD v1.1 script's (rules="squad", XQuAD and other SQuAD-format files); :func:`squad_scores`
  returns percent, as the official SQuAD and MLQA scripts print.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "MLQA_LANGS",
    "accuracy",
    "entity_spans",
    "exact_match",
    "normalize_answer",
    "span_f1",
    "squad_f1",
    "squad_scores",
]


def accuracy(preds: Iterable, labels: Iterable) -> float:
    """Fraction of positions where ``preds[i] == labels[i]``. Lengths must match and be non-zero."""
    preds, labels = list(preds), list(labels)
    if len(preds) != len(labels):
        raise ValueError(f"accuracy: {len(preds)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy: no examples (accuracy of an empty set is undefined)")
    return sum(1 for p, y in zip(preds, labels) if p == y) / len(labels)


# ----------------------------------------------------------------------------------------------------
# entity-level F1 (CoNLL)


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[0] in "BIES" and tag[1] == "-":
        return tag[0], tag[2:]
    raise ValueError(f"tag {tag!r} is not 'O' or '<B|I|E|S>-<type>'")


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entities in one tag sequence as ``(type, start, end)`` with ``end`` exclusive (``tags[start:end]``).

    Chunk boundaries follow conlleval's ``endOfChunk`` / ``startOfChunk`` (also seqeval's default mode):
    a chunk starts at ``B-X`` / ``S-X``, at an ``I-X`` / ``E-X`` after ``O`` (or after a chunk that ended),
    and wherever the type changes; it ends before ``B``, ``S``, ``O``, a type change, and after ``E`` / ``S``.
    So IOB2 and IOB1 (``I-X I-X B-X``) both work and an ``I-X`` without ``B-X`` is an entity, not an error.
    IOBES tags are accepted too. Anything else raises ``ValueError``.
    """
    spans: set[tuple[str, int, int]] = set()
    prev_p, prev_t = "O", ""
    begin = 0
    tags = list(tags)
    for i, tag in enumerate(tags + ["O"]):  # the sentinel "O" closes an entity at the sentence end
        p, t = _split_tag(tag)
        ends = prev_p != "O" and (p in "BSO" or prev_p in "ES" or t != prev_t)
        starts = p != "O" and (p in "BS" or prev_p in "ESO" or t != prev_t)
        if ends:
            spans.add((prev_t, begin, i))
        if starts:
            begin = i
        prev_p, prev_t = p, t
    return spans


def span_f1(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict:
    """Micro-averaged entity precision / recall / F1 over all sentences, as conlleval and seqeval's default.

    An entity counts as correct only when type, start and end all match a gold entity of the same sentence.
    Returns ``{"precision", "recall", "f1"}`` in [0, 1] plus the counts ``"n_true"``, ``"n_pred"``,
    ``"n_correct"``. Conventions for the degenerate cases (conlleval's): precision is 0 when nothing is
    predicted, recall is 0 when there is no gold entity, F1 is 0 when precision + recall is 0 (so all-O
    gold with all-O predictions scores 0, not 1).
    """
    true_seqs, pred_seqs = list(true_seqs), list(pred_seqs)
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"span_f1: {len(true_seqs)} gold sequences but {len(pred_seqs)} predicted")
    n_true = n_pred = n_correct = 0
    for k, (gold, pred) in enumerate(zip(true_seqs, pred_seqs)):
        gold, pred = list(gold), list(pred)
        if len(gold) != len(pred):
            raise ValueError(
                f"span_f1: sentence {k} has {len(gold)} gold tags but {len(pred)} predicted"
            )
        g, p = entity_spans(gold), entity_spans(pred)
        n_true += len(g)
        n_pred += len(p)
        n_correct += len(g & p)
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n_true": n_true,
        "n_pred": n_pred,
        "n_correct": n_correct,
    }


# ----------------------------------------------------------------------------------------------------
# SQuAD / MLQA answer scores
#
# Rules from MLQA's official script, facebookresearch/MLQA mlqa_evaluation_v1.py (read via the code search;
# this is our own code): lowercase -> drop every character in a Unicode P* category or in
# string.punctuation -> replace the language's articles (whole words) by a space -> tokenise, by
# whitespace, or for zh by "mixed segmentation" (every CJK ideograph U+4E00..U+9FA5 its own token,
# runs of other characters split on whitespace). Exact match compares the joined tokens; F1 is over the
# token multisets and is 0 when they share no token (also when both are empty). Quirk kept on purpose:
# the Arabic rule removes the substring "ال" everywhere, not only as a word-initial article, exactly as
# the script's regex does (its first alternative `\sال^` can never match).

# string.punctuation includes $ + < = > ^ ` | ~, which are Unicode S*, not P*
_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punct(ch: str) -> bool:
    # MLQA builds the set of every P* code point up front; testing the category per character is the
    # same set without a 1.1M-iteration import cost.
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


_ARTICLES = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "ar": re.compile(r"ال"),
}
MLQA_LANGS = ("en", "es", "de", "vi", "ar", "hi", "zh")
_MLQA_CJK = re.compile(r"[\u4e00-\u9fa5]")
# Our extension beyond MLQA (which has no Japanese): kana as well as ideographs are single tokens.
_JA_CHARS = re.compile(r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]")


def _base_lang(lang: str) -> str:
    return re.split(r"[-_]", lang.strip())[0].lower()


def _mixed_segmentation(text: str, single: re.Pattern) -> list[str]:
    tokens: list[str] = []
    run = []
    for ch in text:
        if single.match(ch) or _is_punct(ch):
            if run:
                tokens.extend("".join(run).split())
                run = []
            tokens.append(ch)
        else:
            run.append(ch)
    if run:
        tokens.extend("".join(run).split())
    return tokens


RULES = ("mlqa", "squad")


def _answer_tokens(s: str, lang: str, rules: str = "mlqa") -> list[str]:
    if rules == "squad":  # the SQuAD v1.1 script, whatever the language
        text = "".join(ch for ch in s.lower() if ch not in _ASCII_PUNCT)
        return _ARTICLES["en"].sub(" ", text).split()
    if rules != "mlqa":
        raise ValueError(f"answer normalisation rules must be one of {RULES}, got {rules!r}")
    lang = _base_lang(lang)
    text = "".join(ch for ch in s.lower() if not _is_punct(ch))
    articles = _ARTICLES.get(lang)
    if articles is not None:
        text = articles.sub(" ", text)
    if lang == "zh":
        return _mixed_segmentation(text, _MLQA_CJK)
    if lang == "ja":
        return _mixed_segmentation(text, _JA_CHARS)
    return text.split()


def normalize_answer(s: str, lang: str, rules: str = "mlqa") -> str:
    """An answer string normalised for scoring (tokens joined by single spaces).

    rules="mlqa": MLQA's rules for ``lang``. en/es/de/vi/ar/hi/zh are exactly MLQA's (see the comment
    above): Unicode punctuation removed, per-language articles, character tokens for Chinese. Other
    languages get the same lowercase + Unicode punctuation removal, no article removal and whitespace
    tokens (MLQA raises on them). ``ja`` is segmented like ``zh`` with kana included (our extension).
    Region suffixes are ignored (``zh-Hans`` -> ``zh``).
    rules="squad": the SQuAD v1.1 script whatever ``lang``: lowercase, ASCII punctuation removed,
    English articles removed, whitespace tokens. XTREME and the XQuAD authors score XQuAD with it; on
    Chinese or Arabic it gives markedly different numbers from MLQA's rules (no character tokens, no
    "ال" removal), so published XQuAD figures compare only with these.
    """
    return " ".join(_answer_tokens(s, lang, rules))


def squad_f1(pred: str, gold: str, lang: str = "en", rules: str = "mlqa") -> float:
    """Token-overlap F1 between one prediction and one gold answer after :func:`normalize_answer`;
    0.0 when they share no token (including an empty prediction, and both normalising to empty)."""
    p, g = _answer_tokens(pred, lang, rules), _answer_tokens(gold, lang, rules)
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, gold: str, lang: str = "en", rules: str = "mlqa") -> float:
    """1.0 if the normalised strings are equal, else 0.0 (two answers normalising to "" are equal)."""
    return float(normalize_answer(pred, lang, rules) == normalize_answer(gold, lang, rules))


def squad_scores(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], lang: str = "en",
    rules: str = "mlqa",
) -> dict:
    """Dataset F1 and exact match in percent, as MLQA's (rules="mlqa") / SQuAD v1.1's
    (rules="squad") ``evaluate``; see :func:`normalize_answer`.

    ``references`` maps every question id to its gold answer texts; each question scores the max over its
    golds. A question without a prediction scores 0 and still counts in the denominator; predictions for
    ids not in ``references`` are ignored. Returns ``{"f1", "exact_match", "total", "missing"}``.
    """
    if not references:
        raise ValueError("squad_scores: references is empty")
    f1 = em = 0.0
    missing = 0
    for qid, golds in references.items():
        if isinstance(golds, str):
            raise TypeError(
                f"squad_scores: references[{qid!r}] must be a list of answer strings, not a str"
            )
        golds = list(golds)
        if not golds:
            raise ValueError(f"squad_scores: question {qid!r} has no gold answers")
        if qid not in predictions:
            missing += 1
            continue
        pred = predictions[qid]
        f1 += max(squad_f1(pred, g, lang, rules) for g in golds)
        em += max(exact_match(pred, g, lang, rules) for g in golds)
    total = len(references)
    return {
        "f1": 100.0 * f1 / total,
        "exact_match": 100.0 * em / total,
        "total": total,
        "missing": missing,
    }

"""Readers for the fine-tuning data sets: XNLI / PAWS-X TSV, PAN-X (WikiANN) TSV, CoNLL-2002/2003
NER columns and SQuAD v1.1 JSON (XQuAD, MLQA, TyDiQA-GoldP).

Every reader validates what it reads and raises :class:`DataFormatError` (a ``ValueError``) naming
the file and where in it the problem is: the 1-based line for text formats, the JSON path
(``data[3].paragraphs[0].qas[7]``) for JSON. A typo in a 100 MB file should cost seconds to find.

The TSV/column readers are generators underneath (``iter_xnli``, ``iter_panx``, ``iter_conll2002``)
so a large training file can be streamed; ``read_*`` are the list-returning conveniences.

Languages: when ``lang`` is None it is taken from the file name (``dev-en.tsv``, ``xquad.de.json``,
``dev-context-zh-question-zh.json`` -> the context language, ``multinli.train.fr.tsv``,
``esp.train`` -> ``es``); pass ``lang`` explicitly when the name does not carry it.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .metrics import RULES  # the answer normalisations QAExample.scoring names

__all__ = [
    "PAWSX_LABELS",
    "XNLI_LABELS",
    "DataFormatError",
    "PairExample",
    "QAExample",
    "TokenExample",
    "iter_conll2002",
    "iter_panx",
    "iter_xnli",
    "lang_from_filename",
    "read_conll2002",
    "read_panx",
    "read_squad",
    "read_xnli",
    "tag_set",
    "xnli_premise_split",
]


class DataFormatError(ValueError):
    """A data file does not have the expected layout. ``str(err)`` is ``"<path>:<where>: <problem>"``;
    the parts are also available as ``err.path``, ``err.where`` (e.g. ``"line 12"``) and ``err.problem``."""

    def __init__(self, path: str, where: str, problem: str):
        self.path, self.where, self.problem = str(path), where, problem
        super().__init__(f"{self.path}:{where}: {problem}")


@dataclass(frozen=True)
class PairExample:
    guid: str
    premise: str
    hypothesis: str
    label: int
    lang: str


@dataclass(frozen=True)
class TokenExample:
    guid: str
    words: tuple[str, ...]
    tags: tuple[str, ...]
    lang: str


@dataclass(frozen=True)
class QAExample:
    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (answer text, character offset of its start in context)
    lang: str
    scoring: str = "squad"  # answer normalisation: "mlqa" (MLQA's per-language rules) or "squad"


# Label strings used by ../shared/data/xnli (XTREME layout) and the XNLI 1.0 release; the index is
# the class id. "contradictory" is the spelling in the XNLI-MT machine-translated MultiNLI train files
# (transformers' XnliProcessor maps it the same way).
XNLI_LABELS = ("entailment", "neutral", "contradiction")
_XNLI_ALIASES = {"contradictory": "contradiction"}
PAWSX_LABELS = ("0", "1")  # PAWS-X: 1 = paraphrase


# ----------------------------------------------------------------------------------------------------
# shared helpers


# CoNLL file prefixes that are language names rather than ISO codes.
_CONLL_PREFIX_LANG = {"esp": "es", "ned": "nl", "eng": "en", "deu": "de", "ger": "de"}


def lang_from_filename(path: str | os.PathLike) -> str | None:
    """The language code a file name carries, or None.

    The first component of the base name (split on ``.``, ``-``, ``_``) that is a two-letter lowercase
    code wins, so ``dev-context-ar-question-de.json`` gives the context language ``ar`` (MLQA answers
    are spans of the context). CoNLL's ``esp``/``ned``/``eng``/``deu`` prefixes map to es/nl/en/de.
    """
    parts = [p for p in re.split(r"[.\-_]", os.path.basename(os.fspath(path))) if p]
    if parts and parts[0] in _CONLL_PREFIX_LANG:
        return _CONLL_PREFIX_LANG[parts[0]]
    for p in parts:
        if re.fullmatch(r"[a-z]{2}", p):
            return p
    return None


def _resolve_lang(path, lang: str | None) -> str:
    if lang is not None:
        return lang
    found = lang_from_filename(path)
    if found is None:
        raise _no_lang(path)
    return found


def _no_lang(path) -> ValueError:
    return ValueError(f"cannot tell the language of {os.fspath(path)!r} from its name: name the file "
                      f"with its two-letter code as one part (e.g. dev-de.tsv, de.train) or pass lang=...")


def _detect_encoding(path) -> str:
    """'utf-8' if the whole file decodes as UTF-8, else 'latin-1' (never fails: every byte is latin-1).
    Decodes incrementally in 1 MiB chunks so a large file is never held in memory."""
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                dec.decode(chunk)
            dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def _lines(path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end-of-line) for every line; tolerates CRLF and a BOM."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {os.fspath(path)}")
    with open(path, encoding=encoding, newline="") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if n == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield n, line


_IOB_TAG = re.compile(r"O|[BI]-\S+")


def _check_tag(path, n: int, tag: str) -> None:
    if not _IOB_TAG.fullmatch(tag):
        raise DataFormatError(
            path,
            f"line {n}",
            f"tag {tag!r} is not an IOB2 tag (expected 'O', 'B-<type>' or 'I-<type>')",
        )


# ----------------------------------------------------------------------------------------------------
# XNLI / PAWS-X

# Header column names understood when the file starts with a header line.
_PREMISE_COLS = ("premise", "sentence1", "sentence_a", "text_a", "premo")
_HYPOTHESIS_COLS = ("hypothesis", "hypo", "sentence2", "sentence_b", "text_b")
_LABEL_COLS = ("label", "gold_label")
_LANG_COLS = ("language", "lang")


def _header_columns(fields: list[str]) -> dict[str, int] | None:
    """Column indices if ``fields`` is a header line (it names a label column), else None."""
    low = [f.strip().lower() for f in fields]
    if not any(c in low for c in _LABEL_COLS):
        return None

    def find(names):
        for name in names:
            if name in low:
                return low.index(name)
        return None

    cols = {
        "premise": find(_PREMISE_COLS),
        "hypothesis": find(_HYPOTHESIS_COLS),
        "label": find(_LABEL_COLS),
    }
    if cols["premise"] is None or cols["hypothesis"] is None:
        # a header naming a label column but not the texts: the default 3-column order applies
        cols["premise"], cols["hypothesis"] = 0, 1
    cols["lang"] = find(_LANG_COLS)
    return cols


def iter_xnli(
    path, lang: str | None = None, labels: Sequence[str] = XNLI_LABELS
) -> Iterator[PairExample]:
    """Stream :class:`PairExample` from an XNLI / PAWS-X style TSV file. See :func:`read_xnli`."""
    labels = tuple(labels)
    index = {lab.lower(): i for i, lab in enumerate(labels)}
    if labels == XNLI_LABELS:
        index.update({alias: index[target] for alias, target in _XNLI_ALIASES.items()})
    cols = None  # set when the file has a header
    ncols = 3
    file_lang = None
    counts: dict[
        str, int
    ] = {}  # pair index per language (files with a language column mix languages)
    for n, line in _lines(path):
        if not line.strip():
            continue  # blank lines (e.g. a trailing one) carry no pair
        fields = line.split("\t")
        if cols is None and n == 1:
            cols = _header_columns(fields)
            if cols is not None:
                ncols = len(fields)
                if cols["lang"] is None:
                    file_lang = _resolve_lang(path, lang)
                continue
        if cols is None and file_lang is None:
            file_lang = _resolve_lang(path, lang)
        if len(fields) != ncols:
            raise DataFormatError(
                path, f"line {n}", f"expected {ncols} tab-separated columns, found {len(fields)}"
            )
        if cols is None:
            premise, hypothesis, label_str = fields
            row_lang = file_lang
        else:
            premise, hypothesis = fields[cols["premise"]], fields[cols["hypothesis"]]
            label_str = fields[cols["label"]]
            row_lang = file_lang if cols["lang"] is None else fields[cols["lang"]].strip()
            if cols["lang"] is not None and lang is not None and row_lang != lang:
                continue  # multi-language file (XNLI 1.0 xnli.dev.tsv): keep the requested language
        key = label_str.strip().lower()
        if key not in index:
            raise DataFormatError(
                path, f"line {n}", f"unknown label {label_str!r}; expected one of {list(labels)}"
            )
        if not premise.strip():
            raise DataFormatError(path, f"line {n}", "empty premise / first sentence")
        if not hypothesis.strip():
            raise DataFormatError(path, f"line {n}", "empty hypothesis / second sentence")
        i = counts.get(row_lang, 0)
        counts[row_lang] = i + 1
        yield PairExample(f"{row_lang}-{i}", premise, hypothesis, index[key], row_lang)


def read_xnli(
    path, lang: str | None = None, labels: Sequence[str] = XNLI_LABELS
) -> list[PairExample]:
    """Sentence pairs from a TSV file in the XTREME XNLI / PAWS-X layout: ``premise<TAB>hypothesis<TAB>label``.

    - ``labels``: the label strings in class-id order (``XNLI_LABELS``, or ``PAWSX_LABELS`` for PAWS-X).
      Matching is case-insensitive; for XNLI ``contradictory`` (XNLI-MT train files) means contradiction.
      Any other label raises :class:`DataFormatError` with the line number.
    - A header line is recognised when line 1 names a label column (``label`` / ``gold_label``); the
      columns are then found by name (premise/sentence1, hypothesis/sentence2, label/gold_label and an
      optional language column). That also reads the XNLI 1.0 release's ``xnli.dev.tsv``: with a language
      column, ``lang`` selects the rows of one language, or with ``lang=None`` every row keeps its own.
    - ``guid`` is ``f"{lang}-{i}"`` with ``i`` the 0-based pair index in file order within the language;
      :func:`xnli_premise_split` relies on that order.
    - Blank lines are skipped; a CRLF line end and a UTF-8 BOM are tolerated. Columns are split on tabs
      only (no quoting), as the XTREME files are written.
    """
    return list(iter_xnli(path, lang, labels))


def xnli_premise_split(
    examples: Sequence[PairExample], n_train_premises: int = 600, n_eval_premises: int | None = 230
) -> tuple[list[PairExample], list[PairExample]]:
    """Split one language's XNLI dev pairs by premise, as ../shared/data/README.md prescribes.

    XNLI dev is 830 premises x 3 hypotheses, consecutive, in the same order in every language. Pairs of
    premises ``0 .. n_train_premises-1`` are the training set (1800 pairs), the next ``n_eval_premises``
    premises (230 -> 690 pairs) the evaluation set, so no premise is on both sides. ``n_eval_premises=None``
    takes all remaining premises. The layout is checked, not assumed: the examples must be one language in
    file order, a multiple of 3, each triple sharing its premise text, and exactly the expected number of
    premises; otherwise ``ValueError`` says what differs.
    """
    examples = list(examples)
    if n_train_premises < 0 or (n_eval_premises is not None and n_eval_premises < 0):
        raise ValueError("n_train_premises and n_eval_premises must be >= 0")
    if not examples:
        raise ValueError("xnli_premise_split: no examples")
    langs = {ex.lang for ex in examples}
    if len(langs) != 1:
        raise ValueError(
            f"xnli_premise_split: expected the pairs of one language, got {sorted(langs)}"
        )
    lang = examples[0].lang
    for i, ex in enumerate(examples):
        if ex.guid != f"{lang}-{i}":
            raise ValueError(
                f"xnli_premise_split: example {i} has guid {ex.guid!r}, expected {lang}-{i}: pass the pairs "
                "in file order, unfiltered and unshuffled (the split is defined by pair position)"
            )
    if len(examples) % 3:
        raise ValueError(
            f"xnli_premise_split: {len(examples)} pairs is not a multiple of 3 (3 hypotheses per premise)"
        )
    n_prem = len(examples) // 3
    for p in range(n_prem):
        a, b, c = examples[3 * p : 3 * p + 3]
        if not (a.premise == b.premise == c.premise):
            raise ValueError(
                f"xnli_premise_split: pairs {3 * p}-{3 * p + 2} ({lang}) do not share one premise, so the file "
                f"is not laid out as 3 consecutive hypotheses per premise: {a.premise[:60]!r} / "
                f"{b.premise[:60]!r} / {c.premise[:60]!r}"
            )
    want = n_prem if n_eval_premises is None else n_train_premises + n_eval_premises
    if n_prem != want or n_train_premises > n_prem:
        raise ValueError(
            f"xnli_premise_split: the {lang} file has {n_prem} premises ({len(examples)} pairs), expected "
            f"{want} = {n_train_premises} train + {n_eval_premises} eval"
        )
    cut = 3 * n_train_premises
    return examples[:cut], examples[cut:]


# ----------------------------------------------------------------------------------------------------
# NER: PAN-X and CoNLL


def iter_panx(
    path, lang: str | None = None, strip_lang_prefix: bool | None = None
) -> Iterator[TokenExample]:
    """Stream :class:`TokenExample` from a PAN-X / WikiANN TSV file. See :func:`read_panx`."""
    lang = lang if lang is not None else lang_from_filename(path)
    prefix = None  # "xx:" when tokens carry a language prefix that is to be stripped
    decided = strip_lang_prefix is not None
    if strip_lang_prefix:
        if lang is None:
            raise ValueError(
                f"strip_lang_prefix=True needs a language for {os.fspath(path)!r}; pass lang="
            )
        prefix = f"{lang}:"
    words: list[str] = []
    tags: list[str] = []
    i = 0
    for n, line in _lines(path):
        if not line.strip():
            if words:
                yield TokenExample(f"{lang}-{i}", tuple(words), tuple(tags), lang)
                i += 1
                words, tags = [], []
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataFormatError(
                path,
                f"line {n}",
                f"expected 'token<TAB>tag' (2 columns), found {len(fields)} column(s)",
            )
        word, tag = fields
        if not decided:
            # Auto mode: the raw WikiANN dumps write every token as "en:Paris"; the XTREME files do not.
            # Decide on the first token only, then hold every token to that decision: a token such as
            # "bar:24" in the middle of an unprefixed file is real text and stays as it is.
            decided = True
            m = re.match(r"([a-z]{2,3}(?:-[a-z]+)?):.", word)
            if m and (lang is None or m.group(1) == lang):
                lang = lang or m.group(1)
                prefix = m.group(1) + ":"
            if lang is None:
                raise _no_lang(path)
        if prefix is not None:
            if not word.startswith(prefix) or len(word) == len(prefix):
                raise DataFormatError(
                    path,
                    f"line {n}",
                    f"token {word!r} lacks the {prefix!r} prefix the other tokens carry",
                )
            word = word[len(prefix) :]
        if not word:
            raise DataFormatError(path, f"line {n}", "empty token")
        _check_tag(path, n, tag)
        words.append(word)
        tags.append(tag)
    if words:
        yield TokenExample(f"{lang}-{i}", tuple(words), tuple(tags), lang)


def read_panx(
    path, lang: str | None = None, strip_lang_prefix: bool | None = None
) -> list[TokenExample]:
    """Sentences from a PAN-X / WikiANN file: ``token<TAB>tag`` per line, a blank line between sentences.

    - Tags must be IOB2 tag strings (``O``, ``B-X``, ``I-X``); anything else raises
      :class:`DataFormatError` with the line number. The reader does not demand that an ``I-X`` follow a
      ``B-X``/``I-X`` (the zh/ja dev files have ~500 such tags each, where a ``#`` space placeholder tagged
      ``O`` splits an entity); :func:`xlmr_fast.finetune.metrics.entity_spans` handles them by CoNLL rules.
    - ``strip_lang_prefix``: the raw WikiANN dumps prefix every token with its language (``en:Paris``);
      the XTREME files in ../shared/data do not (checked: no file is prefixed; ``bar:24`` in dev-en is a real
      token). ``None`` (default) strips only when the first token carries ``<lang>:``, and then requires
      every token to; ``True`` always strips (missing prefix = error); ``False`` never strips.
    - ``guid`` is ``f"{lang}-{i}"``, ``i`` the 0-based sentence index.
    """
    return list(iter_panx(path, lang, strip_lang_prefix))


def iter_conll2002(path, lang: str | None = None) -> Iterator[TokenExample]:
    """Stream :class:`TokenExample` from a CoNLL-2002/2003 column file. See :func:`read_conll2002`."""
    lang = _resolve_lang(path, lang)
    encoding = _detect_encoding(path)
    words: list[str] = []
    tags: list[str] = []
    ncols = None
    i = 0
    for n, line in _lines(path, encoding):
        fields = line.split()
        if not fields:
            if words:
                yield TokenExample(f"{lang}-{i}", tuple(words), tuple(tags), lang)
                i += 1
                words, tags = [], []
            continue
        if fields[0] == "-DOCSTART-":
            # Article boundary. In the Dutch files it is the first line of a sentence block (no blank line
            # after it), so it is dropped without ending the sentence.
            continue
        if not 2 <= len(fields) <= 5:
            raise DataFormatError(
                path,
                f"line {n}",
                f"expected 'word [POS ...] tag' (2 to 5 columns), found {len(fields)} column(s)",
            )
        if ncols is None:
            ncols = len(fields)
        elif len(fields) != ncols:
            raise DataFormatError(
                path,
                f"line {n}",
                f"found {len(fields)} columns where the file's earlier lines have {ncols}",
            )
        _check_tag(path, n, fields[-1])
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        yield TokenExample(f"{lang}-{i}", tuple(words), tuple(tags), lang)


def read_conll2002(path, lang: str | None = None) -> list[TokenExample]:
    """Sentences from a CoNLL-2002 (or CoNLL-2003) NER file: ``word [POS ...] tag`` per line, whitespace
    separated, the NE tag last; a blank line between sentences; ``-DOCSTART-`` lines are skipped.

    - Column count 2 to 5 (CoNLL-2002 es/nl: 3, CoNLL-2003 en: 4, de: 5), constant within a file.
    - Encoding: the original 2002 distribution is latin-1, the NLTK copy in ../shared/data is UTF-8. The file
      is decoded as UTF-8 when all of it is valid UTF-8, otherwise as latin-1 (which never fails).
    - Tags are IOB tag strings (``O``/``B-X``/``I-X``; CoNLL-2003's IOB1 uses the same strings), else
      :class:`DataFormatError` with the line number.
    - ``lang`` defaults from the file name: ``esp.*`` -> es, ``ned.*`` -> nl, ``eng.*`` -> en, ``deu.*`` -> de.
    """
    return list(iter_conll2002(path, lang))


def tag_set(examples: Iterable[TokenExample]) -> list[str]:
    """The label list for token classification: ``"O"`` first, then ``B-X`` and ``I-X`` for every entity
    type X seen, sorted (``["O", "B-LOC", "B-ORG", ..., "I-LOC", ...]``).

    Both ``B-X`` and ``I-X`` are included as soon as either occurs, so the label ids depend only on the
    entity types: a small evaluation file that happens to lack ``I-MISC`` gets the same ids as train."""
    types = set()
    for ex in examples:
        for t in ex.tags:
            if t != "O":
                if not _IOB_TAG.fullmatch(t):
                    raise ValueError(f"tag_set: {ex.guid} has tag {t!r}, not an IOB2 tag")
                types.add(t[2:])
    return ["O"] + sorted([f"B-{t}" for t in types] + [f"I-{t}" for t in types])


# ----------------------------------------------------------------------------------------------------
# SQuAD v1.1 JSON


def _get(obj, key, path, where, kind):
    if not isinstance(obj, dict):
        raise DataFormatError(path, where, f"expected a JSON object, found {type(obj).__name__}")
    if key not in obj:
        raise DataFormatError(path, where, f"missing {key!r} (not SQuAD v1.1 JSON?)")
    val = obj[key]
    if not isinstance(val, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataFormatError(path, where, f"{key!r} should be {names}, is {type(val).__name__}")
    return val


_MLQA_NAME = re.compile(r"(dev|test)-context-[a-z]{2}-question-[a-z]{2}\.json$")


def read_squad(path, lang: str | None = None, scoring: str | None = None) -> list[QAExample]:
    """Questions from a SQuAD v1.1 JSON file (XQuAD ``xquad.<l>.json``, MLQA
    ``dev-context-<l>-question-<q>.json``, TyDiQA-GoldP), in file order.

    ``scoring`` (QAExample.scoring): how answers are normalised when scored. "mlqa" for MLQA's
    files (by name, ``(dev|test)-context-<l>-question-<q>.json``): MLQA's evaluation script,
    Unicode punctuation and per-language articles and segmentation; "squad" for every other file:
    the SQuAD v1.1 script, which XTREME and the XQuAD authors score XQuAD (and TyDiQA-GoldP) with
    whatever the language. Pass it to override the name.

    Validation, with errors naming the file and the JSON path ``data[a].paragraphs[p].qas[q]``:
    missing or mistyped keys, duplicate question ids, a question with no answers (SQuAD v2 unanswerable
    questions are not supported), an empty answer text, and an answer text that does not occur in its
    context at all.

    ``answer_start`` policy: when ``context[start:start+len(text)] != text`` but the text does occur in the
    context, the start is moved to the occurrence nearest the given offset and the example is kept; one
    ``UserWarning`` per file reports how many answers were moved. (An off-by-a-few offset is a known
    artefact of some translated sets; the answer text is what the metrics score, so dropping the question
    would bias the evaluation.) None of the XQuAD / MLQA files in ../shared/data needs it.
    """
    lang = _resolve_lang(path, lang)
    if scoring is None:
        scoring = "mlqa" if _MLQA_NAME.search(os.path.basename(os.fspath(path))) else "squad"
    if scoring not in RULES:
        raise ValueError(f"read_squad: scoring must be 'mlqa' or 'squad', got {scoring!r}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"data file not found: {os.fspath(path)}") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(
            path, f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"byte {e.start}", "not UTF-8") from None
    data = _get(doc, "data", path, "top level", list)
    out: list[QAExample] = []
    seen: set[str] = set()
    moved = 0
    for a, article in enumerate(data):
        for p, para in enumerate(_get(article, "paragraphs", path, f"data[{a}]", list)):
            where_p = f"data[{a}].paragraphs[{p}]"
            context = _get(para, "context", path, where_p, str)
            for q, qa in enumerate(_get(para, "qas", path, where_p, list)):
                where = f"{where_p}.qas[{q}]"
                qid = _get(qa, "id", path, where, (str, int))
                qid = str(qid)
                where = f"{where} (id {qid})"
                if qid in seen:
                    raise DataFormatError(path, where, f"duplicate question id {qid!r}")
                seen.add(qid)
                question = _get(qa, "question", path, where, str)
                answers_json = _get(qa, "answers", path, where, list)
                if not answers_json:
                    raise DataFormatError(
                        path,
                        where,
                        "question has no answers (SQuAD v2 unanswerable questions are not supported)",
                    )
                answers = []
                for k, ans in enumerate(answers_json):
                    where_k = f"{where}.answers[{k}]"
                    text = _get(ans, "text", path, where_k, str)
                    start = _get(ans, "answer_start", path, where_k, int)
                    if isinstance(start, bool):
                        raise DataFormatError(
                            path, where_k, "'answer_start' should be int, is bool"
                        )
                    if not text.strip():
                        raise DataFormatError(path, where_k, "empty answer text")
                    if start < 0 or context[start : start + len(text)] != text:
                        found = _nearest_occurrence(context, text, start)
                        if found is None:
                            raise DataFormatError(
                                path,
                                where_k,
                                f"answer text {text[:80]!r} does not occur in the context",
                            )
                        start = found
                        moved += 1
                    answers.append((text, start))
                out.append(QAExample(qid, question, context, tuple(answers), lang, scoring))
    if moved:
        warnings.warn(
            f"{os.fspath(path)}: {moved} answer_start value(s) did not match the context; moved to the "
            "nearest occurrence of the answer text",
            stacklevel=2,
        )
    return out


def _nearest_occurrence(context: str, text: str, start: int) -> int | None:
    best = None
    pos = context.find(text)
    while pos != -1:
        if best is None or abs(pos - start) < abs(best - start):
            best = pos
        pos = context.find(text, pos + 1)
    return best

"""Streaming reader for CC-100-format corpora, with an optional CCNet-style cleaning stage.

A corpus directory holds one file per language: `<lang>.txt`, `<lang>.txt.xz` or
`<lang>.txt.gz` (UTF-8, one paragraph per line, documents separated by an empty line).
Nothing is held in memory beyond one document: files are decompressed as streams.

    langs = list_languages("cc100/")                 # {"af": Path(".../af.txt.xz"), ...}
    stats = ReadStats()
    for doc in iter_documents(langs["sw"], stats, clean=CleanConfig()):
        ...                                          # doc: list[str] of paragraphs
    print(stats.summary())

Invalid UTF-8 is replaced (U+FFFD) and counted in stats.invalid_utf8_lines, never raised.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

SUFFIXES = (".txt.xz", ".txt.gz", ".txt")
# A language code (ISO 639-1/3, optionally with a script/region: zh-Hans, sr_Latn, pt-BR); other
# .txt files in the directory (README.txt, SOURCES.txt) are not corpus files.
_LANG = re.compile(r"[a-z]{2,3}(?:[_-][A-Za-z0-9]{2,8})*")
_DIGIT = re.compile(r"\d")


class CorpusError(ValueError):
    """A corpus directory or file that cannot be used (the message names it)."""


def list_languages(corpus_dir) -> dict[str, Path]:
    """{language: file} for every <lang>.txt[.xz|.gz] in corpus_dir, sorted by language.

    Raises CorpusError for a missing directory, a directory with no corpus file, or a language
    present twice (e.g. sw.txt and sw.txt.xz)."""
    d = Path(corpus_dir)
    if not d.is_dir():
        raise CorpusError(f"corpus directory {d} does not exist (or is not a directory)")
    out: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        for suf in SUFFIXES:
            if p.name.endswith(suf) and p.is_file():
                lang = p.name[: -len(suf)]
                if not _LANG.fullmatch(lang):
                    break
                if lang in out:
                    raise CorpusError(f"language {lang!r} has two files in {d}: {out[lang].name} "
                                      f"and {p.name}; keep one")
                out[lang] = p
                break
    if not out:
        raise CorpusError(f"corpus directory {d} has no <lang>.txt, .txt.xz or .txt.gz files")
    return out


def open_text(path) -> io.TextIOBase:
    """Text stream of a .txt / .txt.xz / .txt.gz file; invalid UTF-8 becomes U+FFFD and a
    UTF-8 byte-order mark at the start of the file is dropped (it is not text)."""
    p = Path(path)
    if p.name.endswith(".xz"):
        raw = lzma.open(p, "rb")
    elif p.name.endswith(".gz"):
        raw = gzip.open(p, "rb")
    else:
        raw = open(p, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="\n")


@dataclass
class CleanConfig:
    """CCNet-spirit line filters (each off when its value is falsy).

    normalize_whitespace: collapse runs of whitespace to one space and strip the line.
    dedup:                drop a line whose normalised text (lower-cased, digits -> 0, spaces
                          collapsed) was already seen in this language (a 64-bit hash per
                          unique line is kept: 8-13 bytes each, see _SeenHashes).
    min_chars:            drop lines shorter than this many characters (after normalisation).
    """
    normalize_whitespace: bool = True
    dedup: bool = True
    min_chars: int = 0


@dataclass
class ReadStats:
    bytes: int = 0                    # UTF-8 bytes of the lines read (before cleaning)
    lines: int = 0                    # non-empty lines read
    documents: int = 0                # documents yielded
    empty_documents: int = 0          # documents with no line left (skipped)
    invalid_utf8_lines: int = 0       # lines that contained invalid UTF-8 (replaced)
    removed: dict = field(default_factory=lambda: {"dedup": 0, "min_chars": 0})

    def summary(self) -> str:
        rm = ", ".join(f"{k} {v}" for k, v in self.removed.items())
        return (f"{self.documents} documents, {self.lines} lines, {self.bytes / 1e6:.2f} MB; "
                f"removed: {rm}; empty documents {self.empty_documents}; "
                f"lines with invalid UTF-8 {self.invalid_utf8_lines}")


# " ".join(x.split()) == re.sub(r"\s+", " ", x).strip(), 3x faster on the per-line path: "\s"
# matches exactly the str.isspace() code points (checked over all of Unicode in tests/data).
def _normalize_ws(line: str) -> str:
    return " ".join(line.split())


def _dedup_key(line: str, ws_normalized: bool = False) -> int:
    """64-bit hash of the line lower-cased, digits as 0, whitespace runs as one space (lower()
    and the digit map make no whitespace: a line already normalised skips that step)."""
    norm = _DIGIT.sub("0", line.lower())
    if not ws_normalized:
        norm = _normalize_ws(norm)
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest(), "little")


class _SeenHashes:
    """The dedup filter's set of 64-bit line hashes, at 8-13 bytes per hash.

    A Python set costs ~75 bytes per 8-byte hash (object + table slot), ~15 GB for the ~2e8
    unique lines of a CC-100 language the size of English, in each preprocess worker. Here new
    hashes go to a small set, merged into a sorted uint64 array whenever the set reaches 1/16
    of the array (at least `merge_min`; for a moment during a merge the array is there twice).
    The array grows by 1/16 per merge, so each hash is copied ~17 times in all; a lookup is a
    set probe plus one binary search (~1 us, against ~10 us to encode the line)."""

    def __init__(self, merge_min: int = 1 << 16):
        self._sorted = np.empty(0, np.uint64)
        self._recent: set[int] = set()
        self._merge_min = merge_min

    def __len__(self) -> int:
        return self._sorted.size + len(self._recent)

    def add(self, key: int) -> bool:
        """Insert key; False when it was already there."""
        if key in self._recent:
            return False
        s = self._sorted
        if s.size:
            k = np.uint64(key)  # a Python int above 2**63 would make searchsorted go via object
            i = int(s.searchsorted(k))
            if i < s.size and s[i] == k:
                return False
        self._recent.add(key)
        if len(self._recent) >= max(self._merge_min, s.size >> 4):
            new = np.fromiter(self._recent, np.uint64, len(self._recent))
            new.sort()
            self._sorted = np.insert(s, s.searchsorted(new), new)
            self._recent.clear()
        return True


def iter_document_parts(path, stats: ReadStats | None = None, clean: CleanConfig | None = None,
                        max_lines: int | None = None) -> Iterator[tuple[list[str], bool]]:
    """Yield (lines, starts_document) for one language file: each document as one part, or,
    with max_lines, in parts of at most max_lines lines (starts_document is True for a
    document's first part). Memory then stays bounded by max_lines even for a file with no
    empty line at all (the whole file one document).

    Empty documents (also: documents whose every line a filter removed) are skipped and
    counted. With clean=None lines are only stripped of their newline. A corrupt or truncated
    .xz/.gz file raises CorpusError naming it.
    """
    stats = stats if stats is not None else ReadStats()
    seen = _SeenHashes()
    doc: list[str] = []
    first = True      # the next part yielded starts a document
    read_any = False  # this document had lines before the filters
    kept_any = False  # this document has kept lines (some perhaps already yielded)

    def close():
        if kept_any:
            stats.documents += 1
        elif read_any:
            stats.empty_documents += 1
        return bool(doc)

    try:
        with open_text(path) as f:
            for raw in f:
                line = raw.rstrip("\n").rstrip("\r")
                if not line.strip():  # a separator (several blank lines count as one)
                    if close():
                        yield doc, first
                    doc, first, read_any, kept_any = [], True, False, False
                    continue
                read_any = True
                stats.lines += 1
                stats.bytes += len(line.encode("utf-8", errors="replace"))
                if "\ufffd" in line:
                    stats.invalid_utf8_lines += 1
                if clean is not None:
                    if clean.normalize_whitespace:
                        line = _normalize_ws(line)
                    if clean.min_chars and len(line) < clean.min_chars:
                        stats.removed["min_chars"] += 1
                        continue
                    if clean.dedup:
                        if not seen.add(_dedup_key(line, clean.normalize_whitespace)):
                            stats.removed["dedup"] += 1
                            continue
                doc.append(line)
                kept_any = True
                if max_lines and len(doc) >= max_lines:
                    yield doc, first
                    doc, first = [], False
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile, zlib.error) as e:
        raise CorpusError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); "
                          f"download or decompress it again") from e
    if close():
        yield doc, first


def iter_documents(path, stats: ReadStats | None = None,
                   clean: CleanConfig | None = None) -> Iterator[list[str]]:
    """Yield each document of one language file as a list of its lines (no newlines).

    Empty documents (also: documents whose every line a filter removed) are skipped and
    counted. With clean=None lines are only stripped of their newline.
    """
    for doc, _ in iter_document_parts(path, stats, clean):
        yield doc


def iter_lines(path, stats: ReadStats | None = None,
               clean: CleanConfig | None = None) -> Iterator[str]:
    """Every kept line of one language file, in order (documents flattened). Streams: at most
    a part of a document is held (a file without an empty line is one document)."""
    for part, _ in iter_document_parts(path, stats, clean, max_lines=4096):
        yield from part

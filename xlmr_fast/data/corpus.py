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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

SUFFIXES = (".txt.xz", ".txt.gz", ".txt")
# A language code (ISO 639-1/3, optionally with a script/region: zh-Hans, sr_Latn, pt-BR); other
# .txt files in the directory (README.txt, SOURCES.txt) are not corpus files.
_LANG = re.compile(r"[a-z]{2,3}(?:[_-][A-Za-z0-9]{2,8})*")
_WS = re.compile(r"\s+")


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
    """Text stream of a .txt / .txt.xz / .txt.gz file; invalid UTF-8 becomes U+FFFD."""
    p = Path(path)
    if p.name.endswith(".xz"):
        raw = lzma.open(p, "rb")
    elif p.name.endswith(".gz"):
        raw = gzip.open(p, "rb")
    else:
        raw = open(p, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="\n")


@dataclass
class CleanConfig:
    """CCNet-spirit line filters (each off when its value is falsy).

    normalize_whitespace: collapse runs of whitespace to one space and strip the line.
    dedup:                drop a line whose normalised text (lower-cased, digits -> 0, spaces
                          collapsed) was already seen in this language (a 64-bit hash per line
                          is kept: ~16 bytes x unique lines of memory).
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


def _dedup_key(line: str) -> bytes:
    norm = _WS.sub(" ", re.sub(r"\d", "0", line.lower())).strip()
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest()


def iter_documents(path, stats: ReadStats | None = None,
                   clean: CleanConfig | None = None) -> Iterator[list[str]]:
    """Yield each document of one language file as a list of its lines (no newlines).

    Empty documents (also: documents whose every line a filter removed) are skipped and
    counted. With clean=None lines are only stripped of their newline.
    """
    stats = stats if stats is not None else ReadStats()
    seen: set[bytes] = set()
    doc: list[str] = []
    read_any = False  # this document had lines before the filters

    def close():
        if doc:
            stats.documents += 1
            return True
        if read_any:
            stats.empty_documents += 1
        return False

    with open_text(path) as f:
        for raw in f:
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():  # a separator (several blank lines count as one)
                if close():
                    yield doc
                doc, read_any = [], False
                continue
            read_any = True
            stats.lines += 1
            stats.bytes += len(line.encode("utf-8", errors="replace"))
            if "\ufffd" in line:
                stats.invalid_utf8_lines += 1
            if clean is not None:
                if clean.normalize_whitespace:
                    line = _WS.sub(" ", line).strip()
                if clean.min_chars and len(line) < clean.min_chars:
                    stats.removed["min_chars"] += 1
                    continue
                if clean.dedup:
                    k = _dedup_key(line)
                    if k in seen:
                        stats.removed["dedup"] += 1
                        continue
                    seen.add(k)
            doc.append(line)
    if close():
        yield doc


def iter_lines(path, stats: ReadStats | None = None,
               clean: CleanConfig | None = None) -> Iterator[str]:
    """Every kept line of one language file, in order (documents flattened)."""
    for doc in iter_documents(path, stats, clean):
        yield from doc

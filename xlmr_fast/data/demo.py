"""The embedded demo corpus: 28 languages of dialogue from the pip package `chatterbot-corpus`.

`xlmr-fast pretrain` with no arguments needs a multilingual corpus on a fresh install with no data
from the user. `demo_corpus()` builds one, once, in CC-100 format (the format corpus.py reads):

    <cache>/demo-corpus-v1/
        en.txt  fr.txt  zh.txt  zh-Hant.txt  hi_rom.txt ...   a paragraph per line, documents
                                                              separated by one empty line
        manifest.json                                         source package + version, and per
                                                              language: file, lines, documents,
                                                              bytes, sha256

    path = demo_corpus()             # builds on the first call (~0.3 s), then returns the cache
    langs = corpus.list_languages(path)

Source: chatterbot-corpus (BSD-3-Clause, github.com/gunthercox/chatterbot-corpus), 1.7 MB of YAML
under chatterbot_corpus/data/<language name>/*.yml, each `{categories: [...], conversations:
[[utterance, reply, ...], ...]}`.

Mapping (why this shape):
- One document per conversation, one utterance per line. Conversations are unrelated to each
  other (a file is only a loose topic), so a conversation is the natural document. A document per
  YAML file would leave five languages (hi_rom, te, th, ur, yo) with a single document, and the
  loader's held-out split takes whole documents from the end of each language: those languages
  would have nothing left to train on. Conversations are short (mostly a question and an answer),
  which is fine for the default RoBERTa "stream of text" blocks (cross_documents=True) that pack
  documents together; with cross_documents=False each short document wastes block positions.
- Whitespace inside an utterance (runs of spaces, the newlines of the English code samples) is
  collapsed to one space, so an utterance is exactly one line and never creates a document break.
  Empty utterances are dropped; a conversation left empty is dropped.
- Exact duplicate conversations within a language (after normalisation) are kept once: the
  package repeats some (Persian jokes 8 times, English coding answers), and duplicates would
  leak from the training region into the held-out documents.
- YAML is read with the BaseLoader, so every scalar stays the text that was written (`yes`,
  `3.10`, `null` are utterances, not bool/float/None). Odd shapes are repaired where the text is
  unambiguous and skipped otherwise, and every case is counted in manifest["repaired"] and
  manifest["skipped"]: a conversation given as one string (Ukrainian has several) is a
  one-utterance conversation; a nested list of strings inside a conversation is flattened; a
  mapping where an utterance or conversation should be, a file that is not valid YAML or has no
  `conversations` list, and a language folder missing from DEMO_LANGUAGES are skipped.
- Output is deterministic (folders, files and conversations in sorted/file order; no time stamps),
  so two builds from the same package version give the same sha256 for every file.

Caching and concurrency: the corpus is built in a fresh temporary directory beside the final one,
the manifest is written last, and the directory is renamed into place with os.replace. The cache
is taken as complete only when manifest.json parses, names this builder's format version, and
every file it lists exists with the recorded size and sha256 (and no other file is there); anything
else (an interrupted build, a hand-edited file) is rebuilt. Two processes building at once (two
ranks) each build their own temporary directory; the first rename wins and the other uses the
winner's. A cached corpus is used as it is even if the installed chatterbot-corpus has another
version (pass force=True to rebuild); chatterbot_corpus is imported only to build.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from .._io import sha256_file

log = logging.getLogger(__name__)

FORMAT = "xlmr_fast-demo-corpus"
FORMAT_VERSION = 1
DEMO_DIRNAME = f"demo-corpus-v{FORMAT_VERSION}"
MANIFEST = "manifest.json"
_STALE_S = 3600.0  # a temporary or set-aside directory older than this belongs to a dead process

# chatterbot language folder -> the language code a CC-100 file would carry (and that
# corpus._LANG accepts). Same codes as ../shared/data/cc100-mini, which also holds this package.
DEMO_LANGUAGES: dict[str, str] = {
    "bengali": "bn",
    "chinese": "zh",               # simplified script (CC-100 calls it zh-Hans; cc100-mini: zh)
    "dutch": "nl",
    "english": "en",
    "french": "fr",
    "german": "de",
    "hebrew": "he",                # ISO 639-1 since 1989 (not the old "iw"); CC-100 uses he
    "hindi": "hi",
    "hinglish": "hi_rom",          # Hindi in Latin script: CC-100's name for romanised Hindi
    "indonesian": "id",
    "italian": "it",
    "japanese": "ja",
    "korean": "ko",
    "marathi": "mr",
    "oriya": "or",                 # Odia (formerly spelled Oriya)
    "persian": "fa",
    "portuguese": "pt",
    "russian": "ru",
    "spanish": "es",
    "swedish": "sv",
    "tamil": "ta",
    "telugu": "te",
    "thai": "th",
    "traditionalchinese": "zh-Hant",  # CC-100 spells it with a hyphen: zh-Hant.txt.xz
    "turkish": "tr",
    "ukrainian": "uk",
    "urdu": "ur",
    "yoruba": "yo",
}

SOURCE = {"package": "chatterbot-corpus", "module": "chatterbot_corpus", "license": "BSD-3-Clause",
          "url": "https://github.com/gunthercox/chatterbot-corpus"}
_INSTALL_HINT = "pip install chatterbot-corpus pyyaml"


class DemoCorpusError(RuntimeError):
    """The demo corpus cannot be built or placed (the message says why and what to do)."""


def default_cache_dir() -> Path:
    """$XLMR_FAST_CACHE, else $XDG_CACHE_HOME/xlmr_fast, else ~/.cache/xlmr_fast."""
    env = os.environ.get("XLMR_FAST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "xlmr_fast"


def demo_corpus(cache_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Path to the demo corpus directory (CC-100 format); builds it on the first call.

    cache_dir: parent directory of the cache (default: default_cache_dir()); the corpus is
               <cache_dir>/demo-corpus-v1/.
    force:     rebuild even when a complete corpus is cached.
    Prints one summary line to stderr when it built the corpus; logs at INFO when cached.
    Raises DemoCorpusError (chatterbot-corpus or pyyaml missing, naming the pip command; or the
    directory cannot be written).
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / DEMO_DIRNAME
    if not force:
        manifest = read_manifest(final)
        if manifest is not None:
            log.info("demo corpus: using cached %s (%d languages)", final,
                     len(manifest["languages"]))
            return final
        if final.exists():
            log.warning("demo corpus: %s is incomplete or was modified; rebuilding it", final)
    data_dir, version, yaml = _source()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoCorpusError(f"cannot create the cache directory {root} for the demo corpus "
                              f"({e}); set XLMR_FAST_CACHE to a writable directory") from e
    _remove_stale(root)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_DIRNAME}.tmp-", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private (0700); the cache may be shared by users
        manifest = _build(data_dir, tmp, {**SOURCE, "version": version}, yaml)
        won = _publish(tmp, final, replace=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left there once renamed into place
    if won:
        t = manifest["totals"]
        print(f"xlmr_fast: built the demo corpus in {final}: {t['languages']} languages, "
              f"{t['bytes'] / 1e6:.2f} MB, {t['lines']} lines, {t['documents']} documents "
              f"(chatterbot-corpus {version}, BSD-3-Clause; {time.perf_counter() - t0:.1f} s)",
              file=sys.stderr, flush=True)
    else:
        log.info("demo corpus: another process built %s first; using it", final)
    return final


def read_manifest(corpus_dir: str | os.PathLike) -> dict | None:
    """The manifest of a complete demo corpus in corpus_dir, or None when it is not complete.

    Complete: manifest.json parses, has this builder's format and version, and every file it lists
    exists with its recorded size and sha256, with no other file in the directory."""
    d = Path(corpus_dir)
    try:
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            return None
        langs = manifest["languages"]
        files = {e["file"] for e in langs.values()}
        if not langs or {p.name for p in d.iterdir()} != files | {MANIFEST}:
            return None
        for e in langs.values():
            p = d / e["file"]
            if not p.is_file() or p.stat().st_size != e["bytes"] or _sha256(p) != e["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


# ---------------------------------------------------------------------------------------------
# building


def _source():
    """(data dir, package version, yaml module) of the installed chatterbot-corpus."""
    try:
        import yaml
        import chatterbot_corpus
    except ImportError as e:
        raise DemoCorpusError(f"the demo corpus is built from the pip packages chatterbot-corpus "
                              f"and pyyaml ({e}); install them with `{_INSTALL_HINT}`, or pass "
                              f"your own corpus directory") from e
    data_dir = Path(chatterbot_corpus.__file__).resolve().parent / "data"
    if not data_dir.is_dir():
        raise DemoCorpusError(f"chatterbot_corpus at {data_dir.parent} has no data/ directory; "
                              f"reinstall it: `pip install --force-reinstall chatterbot-corpus`")
    try:
        from importlib.metadata import version as _version
        version = _version("chatterbot-corpus")
    except Exception:  # metadata missing (e.g. vendored copy): fall back to the module attribute
        version = str(getattr(chatterbot_corpus, "__version__", "unknown"))
    return data_dir, version, yaml


def _build(data_dir: Path, out_dir: Path, source: dict, yaml) -> dict:
    """Write <code>.txt for every mapped language folder of data_dir, then manifest.json, into
    out_dir (which exists and is empty). Returns the manifest."""
    skipped, repaired = Counter(), Counter()
    for key in ("files", "conversations", "utterances", "empty_utterances", "empty_conversations",
                "duplicate_conversations", "unmapped_languages"):
        skipped[key] = 0
    for key in ("string_conversations", "nested_utterances"):
        repaired[key] = 0
    loader = getattr(yaml, "CBaseLoader", None) or yaml.BaseLoader  # same result, 10x faster
    languages = {}
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name[:1] not in "_.")
    for folder in folders:
        code = DEMO_LANGUAGES.get(folder.name)
        yml = sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())
        if code is None:
            if yml:
                skipped["unmapped_languages"] += 1
                log.warning("demo corpus: no language code for chatterbot folder %r; skipped "
                            "(add it to DEMO_LANGUAGES)", folder.name)
            continue
        docs: list[list[str]] = []
        seen: set[tuple[str, ...]] = set()
        for path in yml:
            for conv in _conversations(path, yaml, loader, skipped, repaired):
                key = tuple(conv)
                if key in seen:
                    skipped["duplicate_conversations"] += 1
                    continue
                seen.add(key)
                docs.append(conv)
        if not docs:
            continue
        data = "\n\n".join("\n".join(d) for d in docs).encode("utf-8") + b"\n"
        name = f"{code}.txt"
        (out_dir / name).write_bytes(data)
        languages[code] = {"source": folder.name, "file": name, "yaml_files": len(yml),
                           "documents": len(docs), "lines": sum(len(d) for d in docs),
                           "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if not languages:
        raise DemoCorpusError(f"no usable conversation in {data_dir}; reinstall chatterbot-corpus "
                              f"(`pip install --force-reinstall chatterbot-corpus`)")
    languages = dict(sorted(languages.items()))
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "source": source,
        "document": "one conversation; one utterance per line",
        "totals": {"languages": len(languages), **{k: sum(e[k] for e in languages.values())
                                                   for k in ("documents", "lines", "bytes")}},
        "languages": languages, "skipped": dict(skipped), "repaired": dict(repaired),
    }
    # written last: a directory without it is never taken as complete
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                                    encoding="utf-8")
    return manifest


def _conversations(path: Path, yaml, loader, skipped: Counter, repaired: Counter):
    """Yield each conversation of one YAML file as a list of normalised, non-empty lines."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=loader)
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        skipped["files"] += 1
        log.warning("demo corpus: skipped %s (not readable YAML: %s)", path, str(e).splitlines()[0])
        return
    convs = doc.get("conversations") if isinstance(doc, dict) else None
    if not isinstance(convs, list):
        skipped["files"] += 1
        log.warning("demo corpus: skipped %s (no `conversations:` list)", path)
        return
    for conv in convs:
        if isinstance(conv, str):  # a missing "- " in the YAML: the whole exchange on one line
            repaired["string_conversations"] += 1
            conv = [conv]
        elif not isinstance(conv, list):
            skipped["conversations"] += 1
            continue
        lines = []
        for utt in conv:
            for text in _texts(utt, skipped, repaired):
                text = " ".join(text.split())  # also removes \r, tabs, \x85, \u2028 (line breaks to
                if text:                       # other readers)
                    lines.append(text)
                else:
                    skipped["empty_utterances"] += 1
        if lines:
            yield lines
        else:
            skipped["empty_conversations"] += 1


def _texts(utt, skipped: Counter, repaired: Counter, depth: int = 0):
    """The strings of one utterance: itself, or a nested list's strings in order."""
    if isinstance(utt, str):
        yield utt
    elif isinstance(utt, list) and depth < 8:
        if depth == 0:
            repaired["nested_utterances"] += 1
        for u in utt:
            yield from _texts(u, skipped, repaired, depth + 1)
    elif utt is None:  # unreachable with the BaseLoader (an empty item is ""), kept for safety
        skipped["empty_utterances"] += 1
    else:  # a mapping: keys and values are not an utterance we can order
        skipped["utterances"] += 1


# ---------------------------------------------------------------------------------------------
# placing the directory


def _publish(tmp: Path, final: Path, replace: bool) -> bool:
    """Rename tmp to final. True when ours was placed; False when a complete corpus from another
    process was there first (and replace is False)."""
    for _ in range(8):
        try:
            os.replace(tmp, final)  # atomic; succeeds when final is absent (or an empty dir)
            return True
        except OSError:
            pass  # final exists and is not empty (or is a file)
        if not replace and read_manifest(final) is not None:
            return False
        # final is incomplete, or force: set it aside (atomic too), delete it, try again
        aside = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(final, aside)
        except FileNotFoundError:
            continue  # another process moved it first
        except OSError as e:
            raise DemoCorpusError(f"cannot replace {final} ({e}); remove it by hand") from e
        _rmtree(aside)
        replace = False  # the old one is gone; one placed meanwhile by a concurrent caller is fine
    raise DemoCorpusError(f"could not place the demo corpus at {final} (other processes kept "
                          f"replacing it); remove it and retry")


def _remove_stale(root: Path) -> None:
    """Delete temporary / set-aside directories left by processes that died long ago."""
    now = time.time()
    for p in root.glob(f".{DEMO_DIRNAME}.*"):
        try:
            if now - p.stat().st_mtime > _STALE_S:
                _rmtree(p)
        except OSError:
            pass


def _rmtree(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except OSError:
            pass


_sha256 = sha256_file

"""xlmr_fast.data.demo: the chatterbot-corpus demo corpus (format, cache, atomic rebuild, races)."""
import hashlib
import importlib.util
import json
import shutil
import sys
import threading
from pathlib import Path

import pytest

from xlmr_fast.data import corpus
from xlmr_fast.data import demo
from xlmr_fast.data.corpus import ReadStats, iter_documents, list_languages
from xlmr_fast.data.demo import DEMO_DIRNAME, DEMO_LANGUAGES, MANIFEST, demo_corpus, read_manifest

needs_pkg = pytest.mark.skipif(importlib.util.find_spec("chatterbot_corpus") is None
                               or importlib.util.find_spec("yaml") is None,
                               reason="chatterbot-corpus / pyyaml not installed")


def _state(d: Path) -> dict:
    """{name: (inode, mtime_ns)} of every entry of d, and of d itself under ''."""
    out = {"": (d.stat().st_ino, d.stat().st_mtime_ns)}
    for p in d.iterdir():
        st = p.stat()
        out[p.name] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("demo-cache")
    return demo_corpus(cache)


def test_codes_are_corpus_language_codes():
    # every mapped code must be one corpus.list_languages accepts, else that language would vanish
    for folder, code in DEMO_LANGUAGES.items():
        assert corpus._LANG.fullmatch(code), (folder, code)
    assert len(set(DEMO_LANGUAGES.values())) == len(DEMO_LANGUAGES)
    assert DEMO_LANGUAGES["traditionalchinese"] == "zh-Hant"
    assert DEMO_LANGUAGES["hinglish"] == "hi_rom"


@needs_pkg
def test_corpus_readable_and_manifest_consistent(built):
    assert built.name == DEMO_DIRNAME
    m = read_manifest(built)
    assert m is not None
    langs = list_languages(built)
    assert len(langs) >= 20 and set(langs) == set(m["languages"])
    assert m["source"]["package"] == "chatterbot-corpus" and m["source"]["version"]
    assert {"en", "zh", "zh-Hant", "hi_rom", "ja", "ru", "fa", "yo"} <= set(langs)
    tot = {"documents": 0, "lines": 0, "bytes": 0}
    for code, path in langs.items():
        e = m["languages"][code]
        raw = path.read_bytes()
        assert len(raw) == e["bytes"] and hashlib.sha256(raw).hexdigest() == e["sha256"]
        # exact CC-100 shape: no leading/trailing/double blank line, no whitespace-only line,
        # no line with surrounding or repeated whitespace, one final newline
        text = raw.decode("utf-8")
        assert text.endswith("\n") and not text.endswith("\n\n") and not text.startswith("\n")
        assert "\n\n\n" not in text and "\r" not in text
        stats = ReadStats()
        docs = list(iter_documents(path, stats))
        assert stats.documents == e["documents"] == len(docs) > 0
        assert stats.lines == e["lines"] and stats.empty_documents == 0
        assert stats.invalid_utf8_lines == 0
        for d in docs:
            for line in d:
                assert line and line == " ".join(line.split()), (code, line)
        # conversations were deduplicated within the language
        assert len({tuple(d) for d in docs}) == len(docs)
        for k in tot:
            tot[k] += e[k]
    assert m["totals"] == {"languages": len(langs), **tot}
    assert m["skipped"]["duplicate_conversations"] > 0   # tech_support.yml repeats itself
    assert m["skipped"]["unmapped_languages"] == 0        # every folder of the package is mapped


@needs_pkg
def test_cached_call_does_not_rebuild(built, capsys, monkeypatch):
    before = _state(built)
    # a cached corpus needs neither the package nor pyyaml
    monkeypatch.setitem(sys.modules, "chatterbot_corpus", None)
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert demo_corpus(built.parent) == built
    assert _state(built) == before
    assert "built the demo corpus" not in capsys.readouterr().err


@needs_pkg
def test_force_rebuilds_same_bytes(tmp_path, capsys):
    path = demo_corpus(tmp_path)
    capsys.readouterr()
    m1, before = read_manifest(path), _state(path)
    assert demo_corpus(tmp_path, force=True) == path
    assert "built the demo corpus" in capsys.readouterr().err
    after = _state(path)
    assert after[""][0] != before[""][0]   # a new directory was renamed into place
    assert read_manifest(path) == m1       # deterministic: same files, same sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_DIRNAME]  # no temp dirs left


@needs_pkg
def test_deterministic_across_builds(built, tmp_path):
    other = demo_corpus(tmp_path / "second")
    assert (other / MANIFEST).read_bytes() == (built / MANIFEST).read_bytes()
    for p in built.glob("*.txt"):
        assert (other / p.name).read_bytes() == p.read_bytes()


@needs_pkg
@pytest.mark.parametrize("damage", ["no-manifest", "truncated", "edited", "extra-file",
                                    "bad-json", "empty-dir", "old-format"])
def test_incomplete_dir_is_rebuilt(built, tmp_path, damage):
    d = tmp_path / DEMO_DIRNAME
    shutil.copytree(built, d)
    good = read_manifest(d)
    assert good is not None
    en = d / "en.txt"
    if damage == "no-manifest":          # an interrupted build that was renamed somehow
        (d / MANIFEST).unlink()
    elif damage == "truncated":
        en.write_bytes(en.read_bytes()[:100])
    elif damage == "edited":              # same size, different content
        raw = bytearray(en.read_bytes())
        raw[0] = ord("X") if raw[0] != ord("X") else ord("Y")
        en.write_bytes(bytes(raw))
    elif damage == "extra-file":          # list_languages would pick it up as a language
        (d / "xx.txt").write_text("stray\n", encoding="utf-8")
    elif damage == "bad-json":
        (d / MANIFEST).write_text('{"format": ', encoding="utf-8")
    elif damage == "empty-dir":
        shutil.rmtree(d)
        d.mkdir()
    elif damage == "old-format":
        m = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        m["version"] = 0
        (d / MANIFEST).write_text(json.dumps(m), encoding="utf-8")
    assert read_manifest(d) is None
    assert demo_corpus(tmp_path) == d
    assert read_manifest(d) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_DIRNAME]


@needs_pkg
def test_concurrent_callers_agree(tmp_path, capsys):
    # four callers (think: ranks) start on an empty cache at once; all get the one complete corpus
    n, barrier, results, errors = 4, threading.Barrier(4), [], []

    def call():
        try:
            barrier.wait()
            results.append(demo_corpus(tmp_path))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == [tmp_path / DEMO_DIRNAME] * n
    assert read_manifest(results[0]) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_DIRNAME]
    assert capsys.readouterr().err.count("built the demo corpus") == 1  # only the winner says so


@needs_pkg
def test_publish_loses_race_to_complete_winner(built, tmp_path):
    final = tmp_path / DEMO_DIRNAME
    shutil.copytree(built, final)
    before = _state(final)
    mine = tmp_path / "mine"
    shutil.copytree(built, mine)
    assert demo._publish(mine, final, replace=False) is False   # the winner is kept
    assert _state(final) == before and mine.is_dir()             # (the caller deletes its own)
    assert demo._publish(mine, final, replace=True) is True      # force: ours replaces it
    assert not mine.exists() and read_manifest(final) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_DIRNAME]


def test_missing_package_error_names_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "chatterbot_corpus", None)  # import raises ImportError
    with pytest.raises(demo.DemoCorpusError, match="pip install chatterbot-corpus"):
        demo_corpus(tmp_path)
    assert not (tmp_path / DEMO_DIRNAME).exists()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XLMR_FAST_CACHE", str(tmp_path / "c"))
    assert demo.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("XLMR_FAST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert demo.default_cache_dir() == tmp_path / "x" / "xlmr_fast"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert demo.default_cache_dir() == Path.home() / ".cache" / "xlmr_fast"


def test_odd_yaml_shapes_are_repaired_or_skipped_and_counted(tmp_path):
    yaml = pytest.importorskip("yaml")
    data = tmp_path / "data"
    (data / "english").mkdir(parents=True)
    (data / "thai").mkdir()
    (data / "klingon").mkdir()
    (data / "__pycache__").mkdir()
    (data / "english" / "a.yml").write_text(
        "categories:\n- test\n"
        "conversations:\n"
        "- - Hello   there,\n     friend\n"           # folded onto one line; spaces collapsed
        "  - \"Line one\\nline two\\r\\n\\ttabbed\"\n"  # escaped newlines become spaces
        "- - yes\n  - 3.10\n  - null\n  - ~\n"        # BaseLoader: these stay text
        "- Just one string - with an answer\n"        # a conversation given as a string: kept
        "- - q\n  - - nested a\n    - - deeper b\n"   # nested lists: flattened
        "- - {key: value}\n  - kept\n"                # a mapping utterance: skipped
        "- {not: a conversation}\n"                   # a mapping conversation: skipped
        "- - '   '\n  - ''\n"                         # only empty utterances: conversation dropped
        "- - Hello there, friend\n  - Line one line two tabbed\n",  # duplicate: dropped
        encoding="utf-8")
    (data / "english" / "b.yml").write_text('conversations: [["b file", second]]\n',
                                            encoding="utf-8")
    (data / "english" / "bad.yml").write_text("conversations: [[unclosed\n", encoding="utf-8")
    (data / "english" / "list.yml").write_text("- - a\n  - b\n", encoding="utf-8")
    (data / "english" / "notes.txt").write_text("not yaml, ignored\n", encoding="utf-8")
    # a language with nothing left gets no file
    (data / "thai" / "t.yml").write_text("conversations:\n- - ''\n", encoding="utf-8")
    (data / "klingon" / "k.yml").write_text("conversations:\n- - nuqneH\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    m = demo._build(data, out, {"package": "test"}, yaml)
    assert sorted(p.name for p in out.iterdir()) == ["en.txt", MANIFEST]
    assert (out / "en.txt").read_text(encoding="utf-8") == (
        "Hello there, friend\nLine one line two tabbed\n\n"
        "yes\n3.10\nnull\n~\n\n"
        "Just one string - with an answer\n\n"
        "q\nnested a\ndeeper b\n\n"
        "kept\n\n"
        "b file\nsecond\n")
    assert m["skipped"] == {"files": 2, "conversations": 1, "utterances": 1, "empty_utterances": 3,
                            "empty_conversations": 2, "duplicate_conversations": 1,
                            "unmapped_languages": 1}
    assert m["repaired"] == {"string_conversations": 1, "nested_utterances": 1}
    e = m["languages"]["en"]
    assert (e["documents"], e["lines"], e["yaml_files"]) == (6, 13, 4)
    assert json.loads((out / MANIFEST).read_text(encoding="utf-8")) == m
    assert read_manifest(out) == m
    stats = ReadStats()
    assert len(list(iter_documents(out / "en.txt", stats))) == 6 and stats.lines == 13


def test_nothing_usable_is_an_error(tmp_path):
    yaml = pytest.importorskip("yaml")
    (tmp_path / "data" / "english").mkdir(parents=True)
    (tmp_path / "data" / "english" / "a.yml").write_text("conversations: []\n", encoding="utf-8")
    (tmp_path / "out").mkdir()
    with pytest.raises(demo.DemoCorpusError, match="no usable conversation"):
        demo._build(tmp_path / "data", tmp_path / "out", {}, yaml)
    assert not (tmp_path / "out" / MANIFEST).exists()

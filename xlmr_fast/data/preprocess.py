"""Binarize a CC-100-format corpus into per-language token shards (`xlmr-fast preprocess`).

    preprocess("cc100/", "tok/", "shards/", workers=8)

For every language file of the corpus (see corpus.py) every kept line is encoded with the
tokenizer (fairseq ids) and followed by </s> (= 2), as fairseq's binarizer does
(`encode_line(append_eos=True)`); documents stay units in the shard's document index. The result
is OUT/<lang>.bin (shards.py format) plus OUT/meta.json, which is rewritten atomically after each
finished language, so a killed run resumes where it stopped:

- a language whose .bin and meta entry exist (same tokenizer, same cleaning) is skipped;
- a leftover <lang>.bin.tmp (killed mid-language) is removed and the language redone;
- a <lang>.bin without a meta entry (killed between the rename and the meta write) is checked
  (open_shard + its sidecar <lang>.bin.entry.json, written right after the rename) and its
  entry rebuilt, else the language is redone;
- an OUT made with another tokenizer or cleaning setting is an error (use a new --out).

A language file with no text (or none left after cleaning) gets no shard and a warning naming the
file; a corpus in which no language has any text is an error (CorpusError naming the files).

Parallelism: a process pool over languages (largest first), each worker loads the tokenizer
once. When fewer languages are left than workers, the workers still busy use more sentencepiece
threads per batch, so the last large languages do not run on one core. Output does not depend
on the number of workers or threads (byte-identical shards).
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .corpus import CleanConfig, CorpusError, ReadStats, iter_document_parts, list_languages
from .shards import (FORMAT, META, META_VERSION, ShardError, ShardWriter, file_sha256, open_shard,
                     read_meta, verify, write_meta)

log = logging.getLogger(__name__)

EOS = 2                      # fairseq </s>, appended to every line
SPM_FILE = "sentencepiece.bpe.model"
ENTRY_SUFFIX = ".entry.json"  # sidecar written by the worker right after the shard's rename


# ---------------------------------------------------------------- worker side
_WORKER: dict = {}  # per-process state: tokenizer (loaded once), progress queue, shared counter


def _load_tokenizer(tokenizer_dir):
    from ..tokenizer import Tokenizer  # imported lazily: the CLI parser must not need it
    return Tokenizer.from_pretrained(tokenizer_dir)


def _worker_init(tokenizer_dir, queue, unfinished, cores):
    _WORKER.update(tok=_load_tokenizer(tokenizer_dir), queue=queue, unfinished=unfinished,
                   cores=cores)


def _threads() -> int:
    """sentencepiece threads for the next batch: with fewer languages left than cores, the
    busy workers share the idle cores (the largest languages are the tail of the run)."""
    u = _WORKER.get("unfinished")
    left = max(1, u.value) if u is not None else 1
    return max(1, _WORKER["cores"] // left)


def join_lines(flat: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encoded lines (flat ids, per-line lengths) as fairseq binarizes them: every line followed
    by </s>, in one uint32 array. Line i occupies out[ends[i] - lens[i] - 1 : ends[i] - 1] and its
    </s> sits at ends[i] - 1."""
    ends = np.cumsum(lens + 1)
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint32)
    is_eos = np.zeros(out.shape[0], dtype=bool)
    is_eos[ends - 1] = True
    out[is_eos] = EOS
    out[~is_eos] = flat
    return out, ends


def _encode(tok, lines: list[str], threads: int):
    tok.threads = threads  # Tokenizer.encode_ids_flat runs sentencepiece with tok.threads threads
    return tok.encode_ids_flat(lines)


def _encode_language(lang: str, src: str, out_path: str, vocab_size: int, tok_sha: str,
                     clean: dict | None, batch_lines: int) -> dict:
    """Encode one language file into out_path; returns {"entry": meta entry or None, ...}."""
    t0 = time.perf_counter()
    tok, queue = _WORKER["tok"], _WORKER.get("queue")
    report = _WORKER.get("report")  # in-process runs report straight to the progress bar
    stats = ReadStats()
    cfg = CleanConfig(**clean) if clean is not None else None
    docs: list[tuple[list[str], bool]] = []  # (lines, starts a document): parts of documents
    n_batch = 0
    reported = 0

    def flush(w: ShardWriter):
        nonlocal docs, n_batch, reported
        if not docs:
            return
        out, ends = join_lines(*_encode(tok, [ln for d, _ in docs for ln in d], _threads()))
        i = 0
        for d, new in docs:  # documents as units: slice at their first/last line boundaries
            start = int(ends[i - 1]) if i else 0
            i += len(d)
            w.add_document(out[start:int(ends[i - 1])], len(d), new_document=new)
        docs, n_batch = [], 0
        done = stats.bytes - reported
        reported = stats.bytes
        if report is not None:
            report(done)
        elif queue is not None:
            queue.put(done)

    w = ShardWriter(out_path, vocab_size)
    try:
        # a document longer than batch_lines comes in parts (one index entry all the same), so
        # memory is bounded by batch_lines even for a file without a single empty line
        for part in iter_document_parts(src, stats, cfg, max_lines=batch_lines):
            docs.append(part)
            n_batch += len(part[0])
            if n_batch >= batch_lines:
                flush(w)
        flush(w)
        if w.n_tokens == 0:
            w.abort()
            entry = None
        else:
            entry = w.close()
            entry["tokenizer_sha256"] = tok_sha
            # sidecar: lets a rerun rebuild the meta entry if we are killed before meta.json
            side = Path(out_path + ENTRY_SUFFIX)
            tmp = side.with_name(side.name + ".tmp")
            tmp.write_text(json.dumps({"entry": entry, "read": asdict(stats)}))
            os.replace(tmp, side)
    except BaseException:
        w.abort()
        raise
    finally:
        u = _WORKER.get("unfinished")
        if u is not None:
            with u.get_lock():
                u.value -= 1
    return {"lang": lang, "entry": entry, "read": asdict(stats),
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- driver
def _lang_entry(res: dict) -> dict:
    e = dict(res["entry"])
    e.pop("tokenizer_sha256", None)
    sec = res["seconds"]
    e.update(bytes_text=res["read"]["bytes"], read=res["read"], seconds=round(sec, 3),
             mb_per_s=round(res["read"]["bytes"] / 1e6 / sec, 3) if sec > 0 else None)
    return e


def _check_tokenizer_dir(tokenizer_dir) -> Path:
    d = Path(tokenizer_dir)
    if not (d / SPM_FILE).is_file():
        raise FileNotFoundError(f"tokenizer directory {d} has no {SPM_FILE} (train one with "
                                f"`xlmr-fast train-tokenizer` or point --tokenizer at an XLM-R "
                                f"model directory)")
    return d


def _resume_state(out: Path, langs: dict, tok_info: dict, clean: dict | None) -> tuple[dict, list]:
    """Read/validate an existing OUT; returns (meta, languages still to do)."""
    if (out / META).exists():
        meta = read_meta(out)
        old = meta.get("tokenizer", {})
        if (old.get("sha256"), old.get("vocab_size")) != (tok_info["sha256"],
                                                          tok_info["vocab_size"]):
            raise ShardError(f"{out} was preprocessed with another tokenizer (sha256 "
                             f"{str(old.get('sha256'))[:12]}..., vocab {old.get('vocab_size')}); "
                             f"this one is {tok_info['sha256'][:12]}..., vocab "
                             f"{tok_info['vocab_size']}. Use a new --out or delete {out}")
        if meta.get("clean", None) != clean:
            raise ShardError(f"{out} was preprocessed with clean={meta.get('clean')}, this run "
                             f"asks clean={clean}. Use a new --out or delete {out}")
    else:
        meta = {"format": FORMAT, "version": META_VERSION, "tokenizer": tok_info, "clean": clean,
                "languages": {}, "empty_languages": {}}
    meta.setdefault("languages", {})
    meta.setdefault("empty_languages", {})
    todo, changed = [], False
    for lang in langs:
        bin_ = out / f"{lang}.bin"
        tmp = out / f"{lang}.bin.tmp"
        side = out / f"{lang}.bin{ENTRY_SUFFIX}"
        if tmp.exists():
            log.warning("%s: removing %s left by an interrupted run; redoing it", lang, tmp)
            tmp.unlink()
        entry = meta["languages"].get(lang)
        if entry is not None and bin_.is_file():
            try:
                sh = open_shard(bin_, tok_info["vocab_size"])
                ok = sh.n_tokens == entry["tokens"] and sh.n_docs == entry["documents"]
            except ShardError as e:
                log.warning("%s: %s; redoing it", lang, e)
                ok = False
            if ok:
                log.debug("%s: already done (%d tokens), skipping", lang, entry["tokens"])
                side.unlink(missing_ok=True)
                continue
        if lang in meta["empty_languages"] and not bin_.exists():
            log.debug("%s: already done (no tokens after cleaning), skipping", lang)
            continue
        if entry is None and bin_.is_file():
            # killed between the shard's rename and the meta write: rebuild from the sidecar
            rebuilt = False
            try:
                s = json.loads(side.read_text())
                e = s["entry"]
                sh = open_shard(bin_, tok_info["vocab_size"])
                rebuilt = (e.get("tokenizer_sha256") == tok_info["sha256"]
                           and sh.n_tokens == e["tokens"] and file_sha256(bin_) == e["sha256"])
            except (OSError, ValueError, KeyError) as err:
                log.info("%s: cannot rebuild its meta entry (%s)", lang, err)
            if rebuilt:
                log.warning("%s: %s had no meta.json entry; checked it and rebuilt the entry",
                            lang, bin_)
                meta["languages"][lang] = _lang_entry(
                    {"entry": e, "read": s["read"], "seconds": 0.0})
                changed = True
                side.unlink(missing_ok=True)
                continue
            log.warning("%s: %s has no usable meta.json entry; redoing it", lang, bin_)
        meta["languages"].pop(lang, None)
        meta["empty_languages"].pop(lang, None)
        bin_.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        todo.append(lang)
    if changed:
        write_meta(out, meta)
    return meta, todo


def _check_some_text(meta: dict, corpus_dir, langs: dict, clean: dict | None) -> None:
    """An output without a single shard is an error here, naming the files, rather than later in
    the loader ("lists no languages")."""
    if meta["languages"]:
        return
    names = ", ".join(langs[x].name for x in langs if x in meta["empty_languages"])
    raise CorpusError(f"no language of {corpus_dir} has any text"
                      + (" left after cleaning" if clean is not None else "")
                      + f" ({names}: no tokens); check the corpus files"
                      + (" or the --clean settings" if clean is not None else ""))


def preprocess(corpus_dir, tokenizer_dir, out_dir, *, workers: int | None = None,
               clean: CleanConfig | None = None, languages=None, batch_lines: int = 2048,
               progress: bool = True) -> dict:
    """Binarize corpus_dir into out_dir (see the module docstring); returns meta.json's content.

    workers:     cores to use (default os.cpu_count()): one process per language up to this,
                 and sentencepiece threads for the busy ones when fewer languages are left.
    clean:       CleanConfig for corpus.iter_document_parts (None: lines as they are).
    languages:   iterable of language codes to do (default all in corpus_dir).
    batch_lines: lines per encode call (sentencepiece batch; fewer than 2 x batch_lines even
                 for long documents, which are encoded in parts): bounds memory per worker.
                 Shards do not depend on it.
    """
    t_start = time.perf_counter()
    langs = list_languages(corpus_dir)
    if languages is not None:
        want = [languages] if isinstance(languages, str) else list(languages)
        missing = [x for x in want if x not in langs]
        if missing:
            raise CorpusError(f"languages {missing} have no file in {corpus_dir} "
                              f"(it has: {', '.join(langs)})")
        langs = {k: langs[k] for k in want}
    if batch_lines < 1:
        raise ValueError(f"batch_lines must be >= 1, got {batch_lines}")
    tok_dir = _check_tokenizer_dir(tokenizer_dir)
    tok = _load_tokenizer(tok_dir)
    tok_info = {"vocab_size": int(tok.vocab_size), "sha256": tok.model_sha256}
    clean_d = asdict(clean) if clean is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    meta, todo = _resume_state(out, langs, tok_info, clean_d)
    skipped = len(langs) - len(todo)
    if skipped:
        msg = f"{skipped} of {len(langs)} languages already done in {out}, skipping them"
        log.info(msg)
        if progress:
            print(msg)
    if not todo:
        write_meta(out, meta)
        _check_some_text(meta, corpus_dir, langs, clean_d)
        return meta
    # largest first, so the long ones start early (file size is a proxy for text size)
    todo.sort(key=lambda x: (-langs[x].stat().st_size, x))
    total = sum(langs[x].stat().st_size for x in todo)
    compressed = any(not str(langs[x]).endswith(".txt") for x in todo)
    cores = max(1, int(workers or os.cpu_count() or 1))  # the requested worker count
    workers = min(cores, len(todo))                        # processes: at most one per language

    from tqdm.auto import tqdm
    bar = tqdm(total=None if compressed else total / 1e6, unit="MB", unit_scale=False,
               desc="preprocess", disable=not progress, dynamic_ncols=True,
               bar_format="{desc}: {n:.1f} MB{postfix} [{elapsed}, {rate_fmt}]" if compressed
               else None)
    results = []

    def finish(res):
        lang = res["lang"]
        if res["entry"] is None:
            log.warning("%s: no tokens: %s has no text%s (%s); no shard written, the language "
                        "is left out", lang, langs[lang],
                        " left after cleaning" if clean_d is not None else "",
                        ReadStats(**res["read"]).summary())
            meta["empty_languages"][lang] = {"read": res["read"]}
        else:
            meta["languages"][lang] = _lang_entry(res)
        meta["languages"] = dict(sorted(meta["languages"].items()))
        write_meta(out, meta)
        (out / f"{lang}.bin{ENTRY_SUFFIX}").unlink(missing_ok=True)
        results.append(res)
        bar.set_postfix_str(f"{len(results)}/{len(todo)} langs", refresh=True)

    args = {x: (x, str(langs[x]), str(out / f"{x}.bin"), tok_info["vocab_size"],
                tok_info["sha256"], clean_d, batch_lines) for x in todo}
    try:
        if workers == 1:
            _WORKER.update(tok=tok, queue=None, unfinished=None, cores=cores,
                           report=lambda n: bar.update(n / 1e6))
            try:
                for x in todo:
                    finish(_encode_language(*args[x]))
            finally:
                _WORKER.clear()
        else:
            # fork: workers start in milliseconds (spawn would re-import torch in each, ~5 s)
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            queue = ctx.Queue()
            unfinished = ctx.Value("i", len(todo))
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(str(tok_dir), queue, unfinished, cores)) as ex:
                futs = {ex.submit(_encode_language, *args[x]) for x in todo}
                while futs:
                    done, futs = wait(futs, timeout=0.2, return_when=FIRST_COMPLETED)
                    while not queue.empty():
                        bar.update(queue.get() / 1e6)
                    for f in done:
                        finish(f.result())
                while not queue.empty():
                    bar.update(queue.get() / 1e6)
    finally:
        bar.close()

    _check_some_text(meta, corpus_dir, langs, clean_d)
    wall = time.perf_counter() - t_start
    mb = sum(r["read"]["bytes"] for r in results) / 1e6
    busy = sum(r["seconds"] for r in results)
    meta["throughput"] = {"languages": len(results), "workers": workers, "mb_text": round(mb, 3),
                          "seconds": round(wall, 3),
                          "mb_per_s": round(mb / wall, 3) if wall > 0 else None,
                          "mb_per_s_per_worker": round(mb / busy, 3) if busy > 0 else None}
    write_meta(out, meta)
    msg = (f"preprocessed {len(results)} languages, {mb:.1f} MB of text in {wall:.1f} s with "
           f"{workers} workers: {mb / max(wall, 1e-9):.2f} MB/s overall, "
           f"{mb / max(busy, 1e-9):.2f} MB/s per worker")
    log.info(msg)
    if progress:
        print(msg)
    return meta


# ---------------------------------------------------------------- CLI
def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, help="corpus directory of <lang>.txt[.xz|.gz]")
    p.add_argument("--tokenizer", required=True, help="directory with sentencepiece.bpe.model")
    p.add_argument("--out", required=True, help="output directory (resumes if it exists)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--clean", action="store_true",
                   help="CCNet-style cleaning: normalise whitespace, drop duplicate lines")
    p.add_argument("--langs", default=None, help="comma-separated languages (default: all)")
    p.add_argument("--batch-lines", type=int, default=2048, help="lines per encode batch")


def _run(a: argparse.Namespace) -> int:
    langs = [x.strip() for x in a.langs.split(",") if x.strip()] if a.langs else None
    preprocess(a.corpus, a.tokenizer, a.out, workers=a.workers,
               clean=CleanConfig() if a.clean else None, languages=langs,
               batch_lines=a.batch_lines)
    return 0


def verify_dir(out_dir, languages=None, meta: dict | None = None) -> dict[str, str | None]:
    """Check every shard of a preprocessed directory (or `languages`) in full: its header, the
    checksum in it (format 2) and meta.json's sha256. {lang: None if whole, else the error}."""
    meta = meta or read_meta(out_dir)
    langs = list(languages) if languages else sorted(meta["languages"])
    res = {}
    for lang in langs:
        try:
            verify(out_dir, lang, meta)
            res[lang] = None
        except (ShardError, OSError) as e:  # an unreadable file fails its language only
            res[lang] = str(e)
    return res


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a directory written by `xlmr-fast preprocess`")
    p.add_argument("--langs", default=None, help="comma-separated languages (default: all)")


def _verify_run(a: argparse.Namespace) -> int:
    langs = [x.strip() for x in a.langs.split(",") if x.strip()] if a.langs else None
    meta = read_meta(a.out)
    bad = 0
    for lang, err in verify_dir(a.out, langs, meta).items():
        e = meta["languages"].get(lang, {})
        if err is None:
            v = open_shard(Path(a.out) / e["file"]).version
            print(f"{lang}: ok ({e['tokens']:,} tokens, {e['documents']:,} documents; "
                  + ("header and meta.json checksums)" if v >= 2 else
                     "meta.json checksum: format 1 has none in its header)"))
        else:
            bad += 1
            print(f"{lang}: FAILED: {err}")
    print(f"{bad} of {len(langs or meta['languages'])} shards failed" if bad else "all ok")
    return 1 if bad else 0


def _register() -> None:
    from .. import cli
    if "preprocess" not in cli.COMMANDS:
        cli.register("preprocess", "binarize a corpus into per-language token shards", _args, _run)
    if "verify-shards" not in cli.COMMANDS:
        cli.register("verify-shards", "check preprocessed shards in full (header, checksums): "
                     "e.g. after copying them to another machine", _verify_args, _verify_run)


_register()

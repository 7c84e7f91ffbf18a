"""Token shard format: one binary file per language plus one meta.json per output directory.

Layout of OUT/ (written by xlmr_fast.data.preprocess, read by xlmr_fast.data.loader):

    OUT/meta.json          {"format": "xlmr_fast.shards", "version": 1,
                            "tokenizer": {"vocab_size": V, "sha256": <of sentencepiece.bpe.model>},
                            "languages": {lang: {"file": "<lang>.bin", "tokens": int, "lines": int,
                                                 "documents": int, "sha256": <of the .bin>,
                                                 "bytes_text": int, "read": {...ReadStats}}}}
    OUT/<lang>.bin         HEADER (64 bytes) | tokens (uint32 LE, n_tokens) | doc_index (uint64 LE,
                           n_docs + 1: token offset of each document start, then n_tokens)

    HEADER: magic b"XLMRTOK1" (8) | version u32 | vocab_size u32 | n_tokens u64 | n_docs u64 |
            n_lines u64 | tokens_offset u64 (= 64) | index_offset u64 | body_checksum u64

body_checksum (format version 2) is BLAKE2b-64 (little-endian) of every byte after the header
(tokens and index), computed while writing: a shard checks itself without its meta.json
(verify_shard). Version 1 shards (8 zero bytes there) are still read; only meta.json's sha256
checks them.

Tokens are fairseq ids (<s>=0, <pad>=1, </s>=2, <unk>=3, piece = spm id + 1); every line is
followed by </s> (= 2) as fairseq's binarizer does (encode_line(append_eos=True)). A shard is
written under a temporary name and renamed when complete, so a file named <lang>.bin is always
whole; meta.json is rewritten atomically after each finished language.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import atomic_write

MAGIC = b"XLMRTOK1"
VERSION = 2            # what ShardWriter writes
READS = (1, 2)         # shard versions open_shard reads (1: no body checksum)
META_VERSION = 1       # meta.json's own format
HEADER = struct.Struct("<8sIIQQQQQQ")  # 64 bytes
assert HEADER.size == 64
META = "meta.json"
FORMAT = "xlmr_fast.shards"


class ShardError(ValueError):
    """A shard or meta.json that cannot be used; the message names the file and the fix."""


def file_sha256(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _body_hash():
    return hashlib.blake2b(digest_size=8)


def _digest_u64(h) -> int:
    return int.from_bytes(h.digest(), "little")


class ShardWriter:
    """Append documents (token arrays) to OUT/<lang>.bin.tmp; close() renames it into place.

        with ShardWriter(path, vocab_size) as w:
            w.add_document(np.asarray(ids, np.uint32), n_lines)
            w.add_document(more_ids, n_lines, new_document=False)  # the same document, continued
    Leaving the block by an exception removes the temporary file. The document index is kept as
    a packed uint64 array (8 bytes per document in memory, not a Python int per document).
    """

    def __init__(self, path, vocab_size: int):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.vocab_size = int(vocab_size)
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * HEADER.size)
        self.doc_starts = array("Q")  # token offset of each document start
        self.body = _body_hash()      # of everything after the header, as it is written
        self.n_tokens = 0
        self.n_lines = 0

    def add_document(self, tokens: np.ndarray, n_lines: int, new_document: bool = True) -> None:
        """Append tokens as a new document, or (new_document=False) to the last document, so a
        long document can be written in parts without holding it whole."""
        t = np.ascontiguousarray(tokens, dtype="<u4")
        if t.size == 0:
            return
        if new_document or not self.doc_starts:
            self.doc_starts.append(self.n_tokens)
        b = t.tobytes()
        self.f.write(b)
        self.body.update(b)
        self.n_tokens += int(t.size)
        self.n_lines += int(n_lines)

    def close(self) -> dict:
        """Finish the file (index + header), fsync, rename; returns its meta entry."""
        index_offset = HEADER.size + 4 * self.n_tokens
        # Written and hashed from the packed array itself: a joined copy (np.append, tobytes)
        # would hold the index two more times at once, GBs for a CC-100-sized language.
        for part in (np.frombuffer(self.doc_starts, dtype=np.uint64).astype("<u8", copy=False),
                     np.asarray([self.n_tokens], dtype="<u8")):
            self.f.write(part)
            self.body.update(part)
        self.f.seek(0)
        self.f.write(HEADER.pack(MAGIC, VERSION, self.vocab_size, self.n_tokens,
                                 len(self.doc_starts), self.n_lines, HEADER.size, index_offset,
                                 _digest_u64(self.body)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        return {"file": self.path.name, "tokens": self.n_tokens, "lines": self.n_lines,
                "documents": len(self.doc_starts), "sha256": file_sha256(self.path)}

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


@dataclass
class Shard:
    """A memory-mapped shard: tokens (uint32, n_tokens) and doc_index (uint64, n_docs + 1)."""
    path: Path
    vocab_size: int
    tokens: np.ndarray
    doc_index: np.ndarray
    n_lines: int
    version: int = VERSION
    body_checksum: int | None = None  # None: a version 1 shard has none

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_docs(self) -> int:
        return int(self.doc_index.shape[0]) - 1


def open_shard(path, vocab_size: int | None = None) -> Shard:
    """Memory-map one shard after checking its header, size and index (no full read)."""
    p = Path(path)
    if not p.is_file():
        raise ShardError(f"shard {p} does not exist; rerun `xlmr-fast preprocess` (it resumes)")
    size = p.stat().st_size
    if size < HEADER.size:
        raise ShardError(f"shard {p} is truncated ({size} bytes, header alone is {HEADER.size}); "
                         f"delete it and rerun `xlmr-fast preprocess`")
    with open(p, "rb") as f:
        magic, ver, vs, n_tok, n_docs, n_lines, t_off, i_off, body_sum = \
            HEADER.unpack(f.read(HEADER.size))
    if magic != MAGIC:
        raise ShardError(f"{p} is not an xlmr_fast token shard (bad magic {magic!r}, expected "
                         f"{MAGIC!r}): it is corrupt or another program's file; delete it and "
                         f"rerun `xlmr-fast preprocess` (it redoes missing languages)")
    if ver not in READS:
        raise ShardError(f"shard {p} has format version {ver}, this xlmr_fast reads versions "
                         f"{', '.join(map(str, READS))}; re-run `xlmr-fast preprocess` with this "
                         f"version (or read it with the xlmr_fast that wrote it)")
    want = HEADER.size + 4 * n_tok + 8 * (n_docs + 1)
    if t_off != HEADER.size or i_off != HEADER.size + 4 * n_tok or size != want:
        raise ShardError(f"shard {p} is truncated or corrupt: {size} bytes on disk, the header "
                         f"says {want}; delete it and rerun `xlmr-fast preprocess`")
    if vocab_size is not None and vs != vocab_size:
        raise ShardError(f"shard {p} was made with a vocabulary of {vs} ids, the tokenizer has "
                         f"{vocab_size}; re-run `xlmr-fast preprocess` with this tokenizer")
    tokens = np.memmap(p, dtype="<u4", mode="r", offset=t_off, shape=(n_tok,)) if n_tok else \
        np.zeros(0, dtype="<u4")
    index = np.memmap(p, dtype="<u8", mode="r", offset=i_off, shape=(n_docs + 1,))
    if index[0] != 0 or index[-1] != n_tok:
        raise ShardError(f"shard {p} has a corrupt document index; delete it and rerun "
                         f"`xlmr-fast preprocess`")
    return Shard(p, vs, tokens, index, n_lines, ver, body_sum if ver >= 2 else None)


def write_meta(out_dir, meta: dict) -> None:
    """Atomic, durable write of OUT/meta.json (fsynced before the rename, like the shards: after
    a power loss it is the old file or the new one, never an empty one that every later run
    would refuse to read)."""
    text = json.dumps(meta, indent=1, sort_keys=True)
    atomic_write(Path(out_dir) / META, lambda f: f.write(text), binary=False)


def read_meta(out_dir) -> dict:
    p = Path(out_dir) / META
    if not p.is_file():
        raise ShardError(f"{p} not found: {out_dir} is not a preprocessed corpus (run "
                         f"`xlmr-fast preprocess --corpus ... --out {out_dir}`)")
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{p} is not valid JSON ({e}); re-run `xlmr-fast preprocess`") from e
    if meta.get("format") != FORMAT:
        raise ShardError(f"{p} is not an xlmr_fast shard index (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r}); point at a directory written by `xlmr-fast "
                         f"preprocess`")
    return meta


def data_summary(meta: dict) -> str:
    """What a corpus directory holds, in one line that only equal data share: its languages,
    tokens and a digest of the tokenizer and every shard's checksum (meta.json's timings and
    paths left out: two nodes that preprocessed the same corpus agree)."""
    langs = meta.get("languages", {})
    key = json.dumps([meta.get("tokenizer"), {k: [e.get("sha256"), e.get("tokens"),
                                                  e.get("documents")] for k, e in langs.items()}],
                     sort_keys=True)
    tokens = sum(int(e.get("tokens", 0)) for e in langs.values())
    return (f"{len(langs)} languages, {tokens:,} tokens, digest "
            f"{hashlib.sha256(key.encode()).hexdigest()[:12]}")


def _hash_file(path, chunk: int = 1 << 22) -> tuple[str, int, bytes]:
    """One read of the file: (sha256 hex of all of it, BLAKE2b-64 of the bytes after the
    header, the header's bytes)."""
    whole, body = hashlib.sha256(), _body_hash()
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
        whole.update(head)
        while True:
            b = f.read(chunk)
            if not b:
                return whole.hexdigest(), _digest_u64(body), head
            whole.update(b)
            body.update(b)


def _recorded_body_sum(head: bytes) -> int | None:
    """The body checksum a header records; None for a version 1 shard or a header that is not
    one (open_shard names what is wrong with it)."""
    if len(head) != HEADER.size:
        return None
    magic, ver, *_, body_sum = HEADER.unpack(head)
    return body_sum if magic == MAGIC and ver >= 2 else None


def _mismatch(p: Path, what: str, want: str, got: str) -> ShardError:
    return ShardError(f"checksum mismatch for {p}: {what} records {want}, the file hashes to "
                      f"{got}; the shard changed after it was written: delete it and rerun "
                      f"`xlmr-fast preprocess`")


def verify_shard(path) -> bool:
    """Check a shard against the checksum in its own header (reads the whole file; no
    meta.json needed). Returns False for a version 1 shard, which has none; raises ShardError
    on a mismatch or a bad header."""
    sh = open_shard(path)
    if sh.body_checksum is None:
        return False
    got = _hash_file(sh.path)[1]
    if got != sh.body_checksum:
        raise _mismatch(sh.path, "its header", f"{sh.body_checksum:016x} (BLAKE2b-64 of the "
                        f"tokens and index)", f"{got:016x}")
    return True


def verify(out_dir, lang: str, meta: dict | None = None) -> None:
    """Full check of one language (reads the whole shard once): the body checksum in its
    header (version 2 shards) and the file's sha256 in meta.json."""
    meta = meta or read_meta(out_dir)
    entry = meta["languages"].get(lang)
    if entry is None:
        raise ShardError(f"language {lang!r} is not in {Path(out_dir) / META}")
    p = Path(out_dir) / entry["file"]
    if not p.is_file():
        open_shard(p)  # raises, naming the file and the fix
    got, body, head = _hash_file(p)
    want_body = _recorded_body_sum(head)
    if want_body is not None and body != want_body:
        raise _mismatch(p, "its header", f"{want_body:016x} (BLAKE2b-64 of the tokens and "
                        f"index)", f"{body:016x}")
    if got != entry["sha256"]:
        raise _mismatch(p, "meta.json", entry["sha256"][:12] + "...", got[:12] + "...")

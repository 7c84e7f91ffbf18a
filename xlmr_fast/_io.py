"""Small file helpers shared by every writer of the package: atomic writes and file hashes.

atomic_write(path, write) calls write(f) on a hidden temporary file beside path (same
directory, so os.replace is a rename on one file system), fsyncs it and renames it over path:
a reader never sees a half-written file, and a crash leaves at worst a stray hidden .tmp file
(never listed by anything that looks for complete files). The temporary file is opened with
"x" rather than made by mkstemp, so it gets the umask's permissions, not mkstemp's 0600.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Callable


def tmp_name(final: Path) -> Path:
    """A hidden name, unique per writer, beside final."""
    final = Path(final)
    return final.parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def fsync_dir(path: Path) -> None:
    """Make a rename in directory path durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable, *, binary: bool = True, durable: bool = True) -> Path:
    """Write path through write(file object) atomically; durable=True also fsyncs the file
    and its directory (checkpoints, models), False skips that (plots, logs)."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

"""prepare_corpus run by several processes at once on one work dir (every rank of `torchrun ...
pretrain --corpus DIR`): they take turns on a lock file, the first prepares, the others find
the work done. Without the lock, preprocess in one process could delete the other's partial
files (it clears a language's leftovers before writing it). That race depends on timing and did
not show at this test's size (3 unlocked processes, 3 tries: all fine), so the lock itself is
what the second test checks; the first checks that concurrent runs end with complete shards."""
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from xlmr_fast.train.prepare import prepare_corpus
shards, tok = prepare_corpus(sys.argv[1], sys.argv[2], vocab_size=300, sentences=2000,
                             workers=1, progress=False)
from xlmr_fast.data.shards import open_shard, read_meta, verify
meta = read_meta(shards)
for lang in ("en", "de"):
    verify(shards, lang, meta)  # header, size, checksum: a complete, undamaged shard
print("tokens", sum(open_shard(shards / f"{lang}.bin").n_tokens for lang in ("en", "de")))
"""


def _corpus(root: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir()
    words = {"en": "the cat sat on a mat and the dog ran far away",
             "de": "der hund lief weit weg und die katze sass auf der matte"}
    for lang, text in words.items():
        w = text.split()
        docs = ["\n".join(" ".join(w[(i + j) % len(w):] + w[:(i + j) % len(w)])
                          for j in range(5)) for i in range(300)]
        (corpus / f"{lang}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return corpus


def test_concurrent_preparations_take_turns(tmp_path):
    corpus, work = _corpus(tmp_path), tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(corpus), str(work)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    counts = {line for out, _ in outs for line in out.splitlines() if line.startswith("tokens")}
    assert len(counts) == 1, counts  # every process sees the same, complete shards


def test_a_second_process_waits_for_the_lock(tmp_path):
    from xlmr_fast.train.prepare import _exclusive
    lock = tmp_path / ".prepare.lock"
    code = ("import sys, time; from pathlib import Path; "
            "from xlmr_fast.train.prepare import _exclusive\n"
            "with _exclusive(Path(sys.argv[1])):\n    print('got it', time.time(), flush=True)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with _exclusive(lock):
        p = subprocess.Popen([sys.executable, "-c", code, str(lock)], env=env,
                             stdout=subprocess.PIPE, text=True)
        # Hold the lock until the child has tried it: its first line is either the wait message
        # or (a bug) 'got it'. A fixed sleep raced the child's import on a loaded CI machine.
        first = p.stdout.readline()
        time.sleep(0.5)
        released = time.time()
    rest, _ = p.communicate(timeout=60)
    assert "waiting for another process preparing" in first, first
    assert float(rest.split("got it")[1]) >= released


def test_a_filesystem_without_locks_prepares_unlocked(tmp_path, monkeypatch):
    # e.g. Lustre mounted without flock: ENOSYS. Preparing goes on (with a warning) rather than
    # failing on every rank.
    import errno
    import fcntl

    import pytest

    from xlmr_fast.train.prepare import _exclusive

    def no_flock(f, op):
        raise OSError(errno.ENOSYS, "Function not implemented")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    ran = []
    with pytest.warns(RuntimeWarning, match="no file locks"):
        with _exclusive(tmp_path / ".prepare.lock"):
            ran.append(1)
    assert ran == [1]

    def broken(f, op):
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="I/O error"):
        with _exclusive(tmp_path / ".prepare.lock"):
            pass

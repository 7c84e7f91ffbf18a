"""Raw corpus -> tokenizer + token shards, once: what `xlmr-fast pretrain --corpus DIR` (and the
demo default) runs before training.

    shards_dir, tokenizer_dir = prepare_corpus(corpus, work_dir, vocab_size=8000)

work_dir/prepare.json records the corpus and the tokenizer arguments; a second call with the same
ones reuses the tokenizer and lets `preprocess` skip its finished languages (it is resumable), so
an interrupted preparation continues where it stopped. Other arguments for the same work_dir are
an error rather than a silent mix of two tokenizers. Processes preparing one work_dir at once
(every rank of `torchrun ... pretrain --corpus DIR`) take turns on a lock file: the first does
the work, the others then find it done (preprocess deletes a language's leftover partial files
before writing it, so two at once could delete each other's).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import warnings
from pathlib import Path

from .._io import atomic_write
from ..data.demo import default_cache_dir

log = logging.getLogger(__name__)


def default_work_dir(corpus, vocab_size: int, sentences: int, tokenizer_sha256: str = ""
                     ) -> Path:
    """A cache folder per (corpus path, tokenizer arguments or given tokenizer):
    prepared/<corpus name>-<hash> in the cache the demo corpus uses
    (data.demo.default_cache_dir)."""
    root = default_cache_dir()
    corpus = Path(corpus).resolve()
    key = f"{corpus}|{vocab_size}|{sentences}" + (f"|{tokenizer_sha256}" if tokenizer_sha256
                                                  else "")
    h = hashlib.sha256(key.encode()).hexdigest()[:10]
    return root / "prepared" / f"{corpus.name}-{h}"


def prepare_corpus(corpus, work_dir=None, *, vocab_size: int = 8000, sentences: int = 2_000_000,
                   alpha: float = 0.3, workers: int | None = None, seed: int = 0,
                   progress: bool = True, tokenizer=None) -> tuple[Path, Path]:
    """Train a tokenizer (unless done) and preprocess the corpus (resumable) into work_dir;
    returns (shards dir, tokenizer dir). vocab_size counts sentencepiece pieces; on a small
    corpus sentencepiece may return fewer (hard_vocab_limit off), the real size is in the meta.
    tokenizer: a directory with an existing sentencepiece.bpe.model (e.g. the model pretraining
    continues from) to encode with instead; vocab_size and sentences are then unused."""
    from ..data.corpus import list_languages
    from ..data.shards import file_sha256
    from ..tokenizer import MODEL_FILE, Tokenizer

    corpus = Path(corpus)
    list_languages(corpus)  # a clear error for a missing or empty corpus, before any work
    tok_sha = ""
    if tokenizer is not None:
        Tokenizer.from_pretrained(tokenizer)  # a clear error for a missing / unreadable model
        tok_sha = file_sha256(Path(tokenizer) / MODEL_FILE)
    work = Path(work_dir) if work_dir is not None else default_work_dir(corpus, vocab_size,
                                                                         sentences, tok_sha)
    work.mkdir(parents=True, exist_ok=True)
    with _exclusive(work / ".prepare.lock"):
        return _prepare(corpus, work, vocab_size, sentences, alpha, workers, seed, progress,
                        Path(tokenizer) if tokenizer is not None else None, tok_sha)


_NO_FLOCK = (errno.ENOSYS, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An exclusive advisory lock (flock) on lock_path for the block; a process that has to
    wait says so. Where fcntl is missing (not POSIX) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process preparing {lock_path.parent} ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            # e.g. Lustre mounted without flock: as before the lock, one process at a time is
            # then the caller's to arrange (prepare once, then launch the ranks)
            warnings.warn(f"{lock_path.parent}: this filesystem has no file locks ({e}); "
                          f"preparing without one", RuntimeWarning, stacklevel=3)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare(corpus: Path, work: Path, vocab_size, sentences, alpha, workers, seed, progress,
             given_tok: Path | None = None, tok_sha: str = ""):
    from ..data.preprocess import preprocess
    from ..tokenizer import META_FILE, train_tokenizer

    args = ({"corpus": str(corpus.resolve()), "vocab_size": vocab_size, "sentences": sentences,
             "alpha": alpha, "seed": seed} if given_tok is None else
            {"corpus": str(corpus.resolve()), "tokenizer_sha256": tok_sha})
    record = work / "prepare.json"
    if record.exists():
        old = json.loads(record.read_text())
        if old != args:
            diff = {k: (old.get(k), v) for k, v in args.items() if old.get(k) != v}
            raise ValueError(f"{work} was prepared with other arguments {diff} (old, new); "
                             f"delete it or choose another folder")
    else:
        atomic_write(record, lambda f: f.write(json.dumps(args, indent=1)), binary=False)

    tok_dir, shards = work / "tokenizer", work / "shards"
    if given_tok is not None:
        tok_dir = given_tok
    elif not (tok_dir / META_FILE).exists():  # written last by train_tokenizer: complete
        print(f"training a {vocab_size}-piece tokenizer on {corpus} ...", flush=True)
        train_tokenizer(corpus, tok_dir, vocab_size=vocab_size, alpha=alpha, sentences=sentences,
                        seed=seed, hard_vocab_limit=False, progress=progress)
    else:
        log.info("tokenizer %s exists: reused", tok_dir)
    preprocess(corpus, tok_dir, shards, workers=workers, progress=progress)
    return shards, tok_dir

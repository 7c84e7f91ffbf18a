"""A small real corpus, prepared once per session: 4 languages of ../shared/data/cc100-mini
(different scripts and sizes), a 500-piece tokenizer, token shards."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = os.environ.get("XLMR_FAST_SHARED_DATA", str(ROOT.parent / "shared" / "data"))

LANGS = ("en", "de", "sw", "ru")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    src = Path(SHARED_DATA) / "cc100-mini"
    if not src.is_dir():
        pytest.skip(f"shared data not found at {src}")
    from xlmr_fast.train.prepare import prepare_corpus
    root = tmp_path_factory.mktemp("prepared")
    corpus = root / "corpus"
    corpus.mkdir()
    n = 0
    for lang in LANGS:
        for f in src.glob(f"{lang}.txt*"):
            os.symlink(f.resolve(), corpus / f.name)
            n += 1
    if n < 3:
        pytest.skip(f"cc100-mini lacks the test languages {LANGS}")
    shards, tok = prepare_corpus(corpus, root / "work", vocab_size=500, sentences=4000,
                                 workers=1, progress=False)
    return shards, tok

import os
from pathlib import Path

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("XLMR_FAST_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# The ops' built-in choices, whatever `xlmr-fast tune` left in this user's cache (tests of the
# tuning files set their own XLMR_FAST_TUNING).
os.environ.setdefault("XLMR_FAST_TUNING", "off")
# The device plan's soft deadline is for its benches: tests that time things must not stop
# early because the plan's pytest step runs close to its limit.
os.environ.pop("XLMR_FAST_BENCH_DEADLINE", None)


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    no_interp = pytest.mark.skip(
        reason="Triton-on-CPU test: run with TRITON_INTERPRET=1 -m interpret")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "interpret" in item.keywords and not INTERPRET:
            item.add_marker(no_interp)


@pytest.fixture(scope="session")
def shared_data_dir():
    """../shared/data as a Path, for module- and session-scoped fixtures (skips when absent)."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return Path(SHARED_DATA)


@pytest.fixture
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    # Random inputs differ between tests (seeded from the test id) but are reproducible, so a
    # rare tolerance miss in CI can be replayed exactly. XLMR_FAST_TEST_SEED shifts all seeds.
    import zlib

    base = int(os.environ.get("XLMR_FAST_TEST_SEED", "0"))
    torch.manual_seed(base + zlib.crc32(request.node.nodeid.encode()))


# A small real corpus prepared once per session (tests/train, tests/finetune): 4 languages of
# ../shared/data/cc100-mini (Latin and Cyrillic scripts, different sizes), a 500-piece
# tokenizer, token shards.
PREPARED_LANGS = ("en", "de", "sw", "ru")


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
    for lang in PREPARED_LANGS:
        for f in src.glob(f"{lang}.txt*"):
            os.symlink(f.resolve(), corpus / f.name)
            n += 1
    if n < 3:
        pytest.skip(f"cc100-mini lacks the test languages {PREPARED_LANGS}")
    shards, tok = prepare_corpus(corpus, root / "work", vocab_size=500, sentences=4000,
                                 workers=1, progress=False)
    return shards, tok


@pytest.fixture
def rank1_elsewhere(tmp_path):
    """A torchrun entry point whose rank 1 runs `python -m xlmr_fast ARGS` from the directory
    given as its first argument (rank 0 from the working directory): relative paths then name
    other files on each rank, as each node's local disk would."""
    script = tmp_path / "rank1_elsewhere.py"
    script.write_text(
        "import os, runpy, sys\n"
        "if os.environ['RANK'] == '1':\n"
        "    os.chdir(sys.argv[1])\n"
        "sys.argv = ['xlmr_fast', *sys.argv[2:]]\n"
        "runpy.run_module('xlmr_fast', run_name='__main__')\n")
    return script

"""BlockLoader: block contents, language sampling, determinism/resume, ranks, held-out split,
C++ == numpy gather, document-bounded blocks, and bad inputs.

Synthetic shards encode where every token came from: token = (language_index + 1) << 24 | position
in that language's stream, so a row's origin and contiguity are read back from its values.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from xlmr_fast.data import loader as LD
from xlmr_fast.data.loader import BlockLoader
from xlmr_fast.data.shards import FORMAT, ShardError, ShardWriter, open_shard, write_meta

V = 250002
SHIFT = 24
POS_MASK = (1 << SHIFT) - 1


def make_corpus(root, sizes: dict, *, seed=0, max_doc=300):
    """Shards with documents of random length (1..max_doc tokens) per language."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    langs = {}
    for li, (name, n) in enumerate(sizes.items()):
        with ShardWriter(root / f"{name}.bin", V) as w:
            pos = 0
            while pos < n:
                d = int(min(n - pos, rng.integers(1, max_doc + 1)))
                toks = ((li + 1) << SHIFT) + np.arange(pos, pos + d, dtype=np.uint32)
                w.add_document(toks.astype(np.uint32), n_lines=1)
                pos += d
            langs[name] = w.close()
    write_meta(root, {"format": FORMAT, "version": 1,
                      "tokenizer": {"vocab_size": V, "sha256": "0" * 64}, "languages": langs})
    return root


SIZES = {"en": 300_000, "fr": 60_000, "sw": 12_000, "yo": 3_000, "zu": 800}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), SIZES)


def decode(ids: torch.Tensor):
    t = ids.numpy().astype(np.int64)
    return (t >> SHIFT) - 1, t & POS_MASK


def take(loader, n):
    out = []
    for i, b in enumerate(loader):
        out.append((b[0].clone(), b[1].clone()))
        if i + 1 == n:
            break
    return out


def test_shapes_and_contiguity(corpus):
    B, T = 16, 33
    ld = BlockLoader(corpus, batch_size=B, block_size=T, seed=3, prefetch=0)
    assert ld.languages == sorted(SIZES)
    for ids, langs in take(ld, 20):
        assert ids.shape == (B, T) and ids.dtype == torch.int32
        assert langs.shape == (B,) and langs.dtype == torch.int64
        assert (ids[:, 0] == 0).all()
        lang_of, pos = decode(ids[:, 1:])
        for r in range(B):
            li = langs[r].item()
            name = ld.languages[li]
            assert (lang_of[r] == list(SIZES).index(name)).all()
            assert (np.diff(pos[r]) == 1).all()
            assert pos[r, 0] % (T - 1) == 0  # blocks are consecutive cuts of the stream
            assert pos[r, -1] < SIZES[name]


def _chi_free_z(counts, probs, n):
    return (counts - n * probs) / np.sqrt(n * probs * (1 - probs))


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_language_frequencies_match_q(corpus, alpha):
    ld = BlockLoader(corpus, batch_size=512, block_size=65, alpha=alpha, seed=11, prefetch=0)
    n_tok = np.array([SIZES[x] for x in ld.languages], dtype=np.float64)
    p = n_tok / n_tok.sum()
    q = p ** alpha / (p ** alpha).sum()
    for x, pi, qi in zip(ld.languages, p, q):
        assert ld.probs[x][0] == pytest.approx(pi) and ld.probs[x][1] == pytest.approx(qi)
    if alpha == 1.0:
        np.testing.assert_allclose(q, p)
    langs = np.concatenate([pl["lang"] for pl in ld.plan(40)])
    counts = np.bincount(langs, minlength=len(ld.languages))
    z = _chi_free_z(counts, q, langs.size)
    assert np.abs(z).max() < 5, (counts, langs.size * q)
    assert counts.min() > 0  # alpha=0.3 must sample even the smallest language


def test_determinism(corpus):
    a = take(BlockLoader(corpus, batch_size=8, block_size=33, seed=5), 5)
    b = take(BlockLoader(corpus, batch_size=8, block_size=33, seed=5, prefetch=0), 5)
    c = take(BlockLoader(corpus, batch_size=8, block_size=33, seed=6), 5)
    for (x, lx), (y, ly) in zip(a, b):
        assert torch.equal(x, y) and torch.equal(lx, ly)
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, c))


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_bit_exact(corpus, prefetch):
    kw = dict(batch_size=8, block_size=33, seed=1, prefetch=prefetch)
    full = take(BlockLoader(corpus, **kw), 7)
    ld = BlockLoader(corpus, **kw)
    first = take(ld, 3)
    state = json.loads(json.dumps(ld.state_dict()))  # must survive a JSON checkpoint
    assert state["step"] == 3
    for (x, _), (y, _) in zip(first, full[:3]):
        assert torch.equal(x, y)
    ld2 = BlockLoader(corpus, **kw)
    ld2.load_state_dict(state)
    rest = take(ld2, 4)
    for (x, lx), (y, ly) in zip(rest, full[3:]):
        assert torch.equal(x, y) and torch.equal(lx, ly)


def test_resume_rejects_other_config_or_data(corpus, tmp_path):
    ld = BlockLoader(corpus, batch_size=8, block_size=33, prefetch=0)
    take(ld, 2)
    st = ld.state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        BlockLoader(corpus, batch_size=4, block_size=33).load_state_dict(st)
    other = make_corpus(tmp_path / "other", {"en": 300_000, "fr": 60_000, "sw": 12_000,
                                             "yo": 3_000, "zu": 800}, seed=9)
    with pytest.raises(ValueError, match="data"):
        BlockLoader(other, batch_size=8, block_size=33).load_state_dict(st)
    with pytest.raises(ValueError, match="not a BlockLoader state"):
        ld.load_state_dict({"step": 3})


@pytest.mark.parametrize("change, key", [
    (dict(world_size=2), "world_size"), (dict(seed=1), "seed"), (dict(alpha=1.0), "alpha"),
    (dict(cross_documents=False), "cross_documents"),
    (dict(heldout_fraction=0.05), "heldout_fraction"), (dict(heldout_docs=2), "heldout_docs"),
    (dict(languages=["en", "fr"]), "languages"),
])
def test_resume_rejects_each_config_field(corpus, change, key):
    # Every field the draw sequence depends on is part of the fingerprint: a state saved
    # with a different one must be refused, naming the field (catches a field left out of
    # BlockLoader.config, which would resume silently into a different sequence).
    kw = dict(batch_size=8, block_size=33, seed=0, prefetch=0)
    ld = BlockLoader(corpus, **kw)
    take(ld, 2)
    with pytest.raises(ValueError, match=key):
        BlockLoader(corpus, **{**kw, **change}).load_state_dict(ld.state_dict())


def test_ranks_disjoint_and_without_replacement(corpus):
    B, T, W, steps = 32, 33, 2, 60
    plans = [BlockLoader(corpus, batch_size=B, block_size=T, seed=2, rank=r, world_size=W)
             .plan(steps) for r in range(W)]
    seen = [set(), set()]
    for r in range(W):
        for pl in plans[r]:
            for li, e, b in zip(pl["lang"], pl["epoch"], pl["block"]):
                key = (int(li), int(e), int(b))
                assert key not in seen[r], "a block repeated within a language epoch"
                seen[r].add(key)
    assert not (seen[0] & seen[1]), "two ranks drew the same block in the same epoch"
    # A small language wraps several epochs in this window: each finished epoch covered all
    # of its blocks exactly once across ranks (sampling without replacement).
    ld = BlockLoader(corpus, batch_size=B, block_size=T, seed=2, world_size=W)
    li = ld.languages.index("zu")
    nb = int(ld._n_blocks[li])
    allk = seen[0] | seen[1]
    e0 = sorted(b for (l, e, b) in allk if l == li and e == 0)
    assert len(e0) == nb and e0 == list(range(nb))
    # and the permutation really shuffles: epochs 0 and 1 draw in different orders
    order = {e: [int(b) for pl in plans[0] for l, ee, b in zip(pl["lang"], pl["epoch"],
                                                              pl["block"]) if l == li and ee == e]
             for e in (0, 1)}
    assert order[0] != sorted(order[0]) or order[0][:5] != order[1][:5]


def test_each_epoch_has_a_new_permutation(corpus):
    # Catches a permutation key that ignores the epoch: every epoch of a language would then
    # repeat the first epoch's block order (the model sees the same order again and again).
    ld = BlockLoader(corpus, batch_size=32, block_size=33, seed=2)
    li = ld.languages.index("zu")
    nb = int(ld._n_blocks[li])
    order = {}
    for pl in ld.plan(60):  # world_size 1: plan order is the global draw order
        for lg, e, b in zip(pl["lang"], pl["epoch"], pl["block"]):
            if lg == li:
                order.setdefault(int(e), []).append(int(b))
    assert len(order.get(1, [])) == nb, "zu should finish at least two epochs here"
    assert sorted(order[0]) == sorted(order[1]) == list(range(nb))
    assert order[0] != order[1], "epoch 1 repeats epoch 0's block order"


def test_heldout_is_at_least_one_block(tmp_path):
    # heldout_fraction * n_tokens is far below one block here (5 tokens): the held-out split
    # must still take the last documents summing to >= block_size - 1 tokens, and no more
    # documents than needed. Catches dropping the max(..., block_size - 1) floor (the language
    # would then be dropped for want of a held-out block) and an off-by-one in the count.
    root = make_corpus(tmp_path / "c", {"en": 5000, "fr": 3000}, max_doc=10)
    kw = dict(batch_size=4, block_size=33, heldout_fraction=0.001, prefetch=0)
    va = BlockLoader(root, split="valid", **kw)
    assert va.languages == ["en", "fr"] and len(va) >= 1
    for name, reg in zip(va.languages, va._valid):
        di = np.asarray(open_shard(root / f"{name}.bin").doc_index, dtype=np.int64)
        k = len(di) - 1 - int(np.searchsorted(di, reg.lo))  # held-out documents
        assert reg.lo == di[-1 - k] and reg.hi == di[-1]  # whole documents at the end
        assert reg.tokens >= 32 and di[-1] - di[-k] < 32, (name, k, reg.tokens)


def test_heldout_docs_takes_exactly_the_last_documents(corpus):
    # heldout_docs=k reserves exactly the last k documents of every language (catches an
    # off-by-one in k), and training never reads them.
    kw = dict(batch_size=16, block_size=33, seed=4, heldout_docs=3, prefetch=0)
    tr = BlockLoader(corpus, **kw)
    va = BlockLoader(corpus, split="valid", **kw)
    starts = {}
    for li, name in enumerate(tr.languages):
        di = np.asarray(open_shard(corpus / f"{name}.bin").doc_index, dtype=np.int64)
        assert (tr._train[li].hi, tr._valid[li].lo, tr._valid[li].hi) == (di[-4], di[-4], di[-1])
        starts[name] = int(di[-4])
    rows = va.valid_rows()
    for li, name in enumerate(tr.languages):
        assert rows[rows[:, 0] == li, 1].min() == starts[name]
    for ids, langs in take(tr, 30):
        _, pos = decode(ids[:, 1:])
        for r in range(ids.shape[0]):
            assert pos[r].max() < starts[tr.languages[langs[r].item()]]


def test_heldout_disjoint(corpus):
    kw = dict(batch_size=16, block_size=33, seed=4, heldout_fraction=0.05, prefetch=0)
    tr = BlockLoader(corpus, **kw)
    va = BlockLoader(corpus, split="valid", **kw)
    assert va.languages == tr.languages
    vmin = {}
    n_valid = 0
    for ids, langs in va:
        lang_of, pos = decode(ids[:, 1:])
        for r in range(ids.shape[0]):
            x = tr.languages[langs[r].item()]
            vmin[x] = min(vmin.get(x, 1 << 30), int(pos[r].min()))
            n_valid += 1
    assert n_valid == sum(r.n_blocks for r in tr._valid) and set(vmin) == set(tr.languages)
    for x in tr.languages:  # at least 5% (and one block) of each language is held out
        assert SIZES[x] - vmin[x] >= max(0.05 * SIZES[x], 32)
    for ids, langs in take(tr, 60):
        _, pos = decode(ids[:, 1:])
        for r in range(ids.shape[0]):
            assert pos[r].max() < vmin[tr.languages[langs[r].item()]]
    # valid rows are split over ranks without overlap and without loss
    parts = [BlockLoader(corpus, split="valid", rank=r, world_size=3, **kw).valid_rows()
             for r in range(3)]
    allrows = np.concatenate(parts)
    assert allrows.shape[0] == n_valid
    assert len({tuple(x) for x in allrows.tolist()}) == n_valid


def test_no_cross_documents(corpus):
    T = 65
    ld = BlockLoader(corpus, batch_size=32, block_size=T, seed=8, cross_documents=False,
                     prefetch=0)
    docidx = {x: np.asarray(open_shard(corpus / f"{x}.bin").doc_index, dtype=np.int64)
              for x in ld.languages}
    padded = 0
    for ids, langs in take(ld, 20):
        for r in range(ids.shape[0]):
            row = ids[r, 1:].numpy()
            n = int((row != 1).sum())
            assert n >= 1 and (row[n:] == 1).all()  # tokens, then only padding
            padded += n < T - 1
            _, pos = decode(torch.from_numpy(row[:n]))
            assert (np.diff(pos) == 1).all()
            di = docidx[ld.languages[langs[r].item()]]
            d_first = np.searchsorted(di, pos[0], side="right")
            d_last = np.searchsorted(di, pos[-1], side="right")
            assert d_first == d_last, "block crosses a document boundary"
            # a block starts at its document's start or a multiple of T-1 tokens after it
            assert (pos[0] - di[d_first - 1]) % (T - 1) == 0
    assert padded > 0


@pytest.mark.skipif(not LD.cpp_available(), reason="xlmr_fast._C without gather_blocks")
@pytest.mark.parametrize("cross", [True, False])
def test_cpp_matches_numpy(corpus, cross):
    kw = dict(batch_size=24, block_size=47, seed=13, cross_documents=cross, threads=2)
    a = take(BlockLoader(corpus, backend="cpp", **kw), 6)
    b = take(BlockLoader(corpus, backend="numpy", **kw), 6)
    for (x, lx), (y, ly) in zip(a, b):
        assert torch.equal(x, y) and torch.equal(lx, ly)
    # direct call with hand-made rows, including empty and full rows
    rng = np.random.default_rng(0)
    streams = [rng.integers(4, 1 << 30, n, dtype=np.int64).astype(np.int32) for n in (50, 7)]
    rows = np.array([[0, 0, 9], [1, 0, 7], [0, 41, 9], [1, 3, 0], [0, 10, 4]], dtype=np.int64)
    o1 = torch.empty((5, 10), dtype=torch.int32)
    o2 = torch.empty((5, 10), dtype=torch.int32)
    LD.gather_blocks([torch.from_numpy(s) for s in streams], streams, rows, o1, backend="cpp",
                     threads=2)
    LD.gather_blocks(None, streams, rows, o2, backend="numpy", threads=1)
    assert torch.equal(o1, o2)
    with pytest.raises(RuntimeError, match="past the end"):
        LD.gather_blocks([torch.from_numpy(s) for s in streams], streams,
                         np.array([[1, 3, 9]], dtype=np.int64), o1[:1], backend="cpp", threads=1)


def test_permutation_is_bijection():
    for n in (1, 2, 3, 17, 64, 1000, 4097):
        pos = np.arange(n, dtype=np.int64)
        out = LD._permute(pos, np.full(n, n, dtype=np.int64), np.full(n, 12345, dtype=np.uint64))
        assert sorted(out.tolist()) == list(range(n))
        if n >= 17:
            assert (out != pos).any()


@pytest.mark.gpu
def test_pinned_output(corpus):
    ids, _ = next(iter(BlockLoader(corpus, batch_size=4, block_size=33, pin_memory=True)))
    assert ids.is_pinned()


# ------------------------------------------------------------------------------- bad inputs
def test_missing_meta(tmp_path):
    with pytest.raises(ShardError, match="meta.json"):
        BlockLoader(tmp_path, batch_size=4)


RERUN = r"delete it and rerun `xlmr-fast preprocess`"


def test_truncated_shard_named(tmp_path):
    root = make_corpus(tmp_path / "c", {"en": 5000, "fr": 3000})
    p = root / "fr.bin"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ShardError, match=r"fr\.bin is truncated or corrupt.*" + RERUN):
        BlockLoader(root, batch_size=4, block_size=33)


def test_corrupt_shard_named(tmp_path):
    """Right size, wrong content: a bad magic, then a document index that does not end at
    n_tokens (both caught by open_shard without reading the tokens)."""
    root = make_corpus(tmp_path / "c", {"en": 5000, "fr": 3000})
    p = root / "fr.bin"
    good = p.read_bytes()
    p.write_bytes(b"NOTASHRD" + good[8:])
    with pytest.raises(ShardError, match=r"fr\.bin is not an xlmr_fast token shard.*" + RERUN):
        BlockLoader(root, batch_size=4, block_size=33)
    b = bytearray(good)
    b[-8:] = (10**6).to_bytes(8, "little")  # last index entry must equal n_tokens
    p.write_bytes(bytes(b))
    with pytest.raises(ShardError, match=r"fr\.bin has a corrupt document index.*" + RERUN):
        BlockLoader(root, batch_size=4, block_size=33)
    (root / "meta.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ShardError, match=r"meta\.json is not an xlmr_fast shard index.*"
                                         r"xlmr-fast preprocess"):
        BlockLoader(root, batch_size=4, block_size=33)


def test_checksum_mismatch(tmp_path):
    root = make_corpus(tmp_path / "c", {"en": 5000, "fr": 3000})
    p = root / "en.bin"
    b = bytearray(p.read_bytes())
    b[64 + 40] ^= 0xFF  # one token byte; the size and header stay valid
    p.write_bytes(bytes(b))
    BlockLoader(root, batch_size=4, block_size=33)  # without verification it loads
    with pytest.raises(ShardError, match=r"checksum mismatch for \S*en\.bin.*" + RERUN):
        BlockLoader(root, batch_size=4, block_size=33, verify_checksums=True)


def test_vocab_mismatch(corpus):
    with pytest.raises(ShardError, match=r"meta\.json: corpus was made with a vocabulary of "
                                         r"250002 ids, vocab_size=1000 .*re-run `xlmr-fast "
                                         r"preprocess` with this tokenizer"):
        BlockLoader(corpus, batch_size=4, vocab_size=1000)
    BlockLoader(corpus, batch_size=4, block_size=33, vocab_size=V)


def test_shard_from_another_tokenizer(tmp_path):
    """A shard copied in from another tokenizer's run (its header vocabulary differs from
    meta.json's), and a corpus whose meta.json records another tokenizer hash."""
    root = make_corpus(tmp_path / "c", {"en": 5000, "fr": 3000})
    other = tmp_path / "o"
    other.mkdir()
    with ShardWriter(other / "fr.bin", 8002) as w:
        w.add_document(np.arange(4, 3004, dtype=np.uint32), 1)
        w.close()
    (root / "fr.bin").write_bytes((other / "fr.bin").read_bytes())
    with pytest.raises(ShardError, match=r"fr\.bin was made with a vocabulary of 8002 ids, but "
                                         r"\S*meta\.json records 250002.*another tokenizer.*"
                                         + RERUN):
        BlockLoader(root, batch_size=4, block_size=33)
    root2 = make_corpus(tmp_path / "c2", {"en": 5000})  # meta sha256 is "0" * 64
    with pytest.raises(ShardError, match=r"another tokenizer \(sha256 000000000000\.\.\.; this one "
                                         r"is abcdef.*xlmr-fast preprocess --tokenizer"):
        BlockLoader(root2, batch_size=4, block_size=33, tokenizer_sha256="abcdef" + "1" * 58)
    BlockLoader(root2, batch_size=4, block_size=33, tokenizer_sha256="0" * 64)


def test_no_languages(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    write_meta(root, {"format": FORMAT, "version": 1,
                      "tokenizer": {"vocab_size": V, "sha256": "0" * 64}, "languages": {}})
    with pytest.raises(ShardError, match=r"meta\.json lists no languages: run `xlmr-fast "
                                         r"preprocess`"):
        BlockLoader(root, batch_size=4)


def test_small_language_dropped_with_warning(tmp_path):
    root = make_corpus(tmp_path / "c", {"en": 5000, "tiny": 20})
    with pytest.warns(UserWarning, match=r"'tiny' dropped: 20 training tokens in "
                                         r"\S*tiny\.bin, fewer than one block of 32.*add text"):
        ld = BlockLoader(root, batch_size=4, block_size=33)
    assert ld.languages == ["en"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ShardError, match=r"no language .* enough tokens .*'tiny'.*smaller "
                                             r"block_size"):
            BlockLoader(root, batch_size=4, block_size=33, languages=["tiny"])
    with pytest.raises(ValueError, match="not in"):
        BlockLoader(root, batch_size=4, block_size=33, languages=["xx"])
    with pytest.raises(ValueError, match=r"lists \['en'\] more than once"):
        BlockLoader(root, batch_size=4, block_size=33, languages=["en", "en"])


@pytest.mark.parametrize("kw, match", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=4, block_size=1), "block_size"),
    (dict(batch_size=4.0), "batch_size"), (dict(batch_size=4, rank=2, world_size=2), "rank"),
    (dict(batch_size=4, alpha=-1), "alpha"), (dict(batch_size=4, split="test"), "split"),
    (dict(batch_size=4, heldout_fraction=1.5), "heldout_fraction"),
    (dict(batch_size=4, split="valid"), "heldout"),
])
def test_bad_arguments(corpus, kw, match):
    with pytest.raises(ValueError, match=match):
        BlockLoader(corpus, **kw)

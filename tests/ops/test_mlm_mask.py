"""xf.ops.mlm_mask: statistics of the contract, and every backend bit for bit against the reference.

* CPU, always: the contract's statistics on 10^6 tokens (reference), consistency, determinism,
  the C++ kernel (xlmr_fast._C) == reference exactly, the static variant and its overflow rule,
  torch.library.opcheck, torch.compile tracing.
* `interpret`: the Triton kernel on CPU tensors (TRITON_INTERPRET=1 -m interpret).
* `gpu`: the CUDA kernel and the Triton kernel == reference at (64, 512) and odd shapes, and
  mlm_mask_static without host syncs (sync debug mode) and under CUDA-graph capture.
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch

from xlmr_fast import _ext
from xlmr_fast.ops import _backend

# the module itself: xf.ops.mlm_mask (the attribute) is the function
M = importlib.import_module("xlmr_fast.ops.mlm_mask")

V = 250002
MASK = V - 1
PAD = 1
needs_cpp = pytest.mark.skipif(not _ext.has_kernel("mlm_mask", "CPU"),
                               reason="xlmr_fast._C not built with the mlm_mask CPU kernel")


def _ids(shape, dtype=torch.int64, vocab=V, pad_frac=0.0, gen_seed=0):
    """Random ids over the whole vocabulary (specials 0..3 and <mask> included), then padding."""
    g = torch.Generator().manual_seed(gen_seed)
    x = torch.randint(0, vocab, shape, generator=g)
    if pad_frac > 0:
        x[torch.rand(shape, generator=g) < pad_frac] = PAD
    return x.to(dtype)


def _equal(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype, (i, x.dtype, y.dtype)
        assert x.shape == y.shape, (i, x.shape, y.shape)
        assert torch.equal(x.cpu(), y.cpu()), f"output {i} differs"


def _static_from_exact(x, capacity, **kw):
    """The static variant built independently from the exact reference (overflow rule)."""
    masked, labels, pos = M.mlm_mask_reference(x, **kw)
    masked, labels = masked.clone(), labels.clone()
    dropped = pos[capacity:]
    masked.view(-1)[dropped] = x.reshape(-1)[dropped]
    labels.view(-1)[dropped] = -100
    out = torch.full((capacity,), -1, dtype=torch.int64)
    kept = pos[:capacity]
    out[: kept.numel()] = kept
    return masked, labels, out, torch.tensor([pos.numel()])


# ---------------------------------------------------------------- the definition itself
def test_vectorised_hash_equals_scalar_definition():
    g = torch.Generator().manual_seed(1)
    vals = torch.cat([torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1]),
                      torch.randint(0, 2**32, (200,), generator=g)])
    assert M.mix32(vals).tolist() == [M.mix32_int(v) for v in vals.tolist()]
    for seed, step in ((0, 0), (1234, 99), (2**40 + 7, 2**33 + 5)):
        d = M.mask_draws(300, seed, step)
        for p in (0, 1, 17, 299):
            assert tuple(d[:, p].tolist()) == M.draws_int(seed, step, p)


def test_reference_follows_contract_per_position():
    # Recompute every output position by position from draws_int and the contract's rules.
    x = _ids((3, 41), vocab=50, gen_seed=3)
    x[0, :5] = PAD
    seed, step, vocab, mask_id = 11, 4, 50, 49
    masked, labels, pos = M.mlm_mask_reference(x, vocab_size=vocab, mask_id=mask_id, seed=seed,
                                               step=step, mask_prob=0.3)
    thr = M.select_threshold(0.3)
    want_pos = []
    for p, tok in enumerate(x.view(-1).tolist()):
        r1, r2, r3 = M.draws_int(seed, step, p)
        sel = tok not in (PAD, 0, 2) and r1 < thr
        if r2 < M.THRESH_MASK:
            new = mask_id
        elif r2 < M.THRESH_RANDOM:
            new = 4 + r3 % (vocab - 5)
        else:
            new = tok
        assert masked.view(-1)[p].item() == (new if sel else tok)
        assert labels.view(-1)[p].item() == (tok if sel else -100)
        if sel:
            want_pos.append(p)
    assert pos.tolist() == want_pos and len(want_pos) > 10


# ---------------------------------------------------------------- statistics (10^6 tokens)
@pytest.fixture(scope="module")
def big_batch():
    # vocab 1005 -> random ids in [4, 1004): 1000 values; inputs never hold <mask> (1004).
    vocab, mask_id = 1005, 1004
    g = torch.Generator().manual_seed(7)
    x = torch.randint(3, vocab - 1, (2000, 500), generator=g)
    x[:, 0] = 0                                     # <s>
    x[:, -1] = 2                                    # </s>
    x[torch.rand(x.shape, generator=g) < 0.2] = PAD  # 20% padding
    out = M.mlm_mask_reference(x, vocab_size=vocab, mask_id=mask_id, seed=123, step=456)
    return x, out, vocab, mask_id


def test_selection_rate(big_batch):
    x, (masked, labels, pos), _, _ = big_batch
    eligible = (x != PAD) & (x != 0) & (x != 2)
    n, k = int(eligible.sum()), pos.numel()
    sigma = math.sqrt(n * 0.15 * 0.85)
    assert abs(k - 0.15 * n) < 5 * sigma, (k, 0.15 * n, sigma)


def test_pad_and_specials_never_selected(big_batch):
    x, (masked, labels, pos), _, _ = big_batch
    for tok in (PAD, 0, 2):
        at = x == tok
        assert at.any()
        assert (labels[at] == -100).all() and (masked[at] == tok).all()


def test_split_80_10_10(big_batch):
    x, (masked, labels, pos), vocab, mask_id = big_batch
    sel = labels != -100
    n = int(sel.sum())
    is_mask = masked[sel] == mask_id
    is_keep = masked[sel] == x[sel]
    is_rand = ~is_mask & ~is_keep
    obs = torch.stack([is_mask.sum(), is_rand.sum(), is_keep.sum()]).double()
    exp = torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64) * n
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    assert chi2 < 20.0, (obs.tolist(), exp.tolist(), chi2)  # 2 dof: p ~ 5e-5


def test_random_ids_uniform(big_batch):
    x, (masked, labels, pos), vocab, mask_id = big_batch
    sel = labels != -100
    rand = masked[sel][(masked[sel] != mask_id) & (masked[sel] != x[sel])]
    assert rand.min() >= 4 and rand.max() < vocab - 1
    bins = torch.bincount((rand - 4) // 50, minlength=20).double()  # 20 bins of 50 ids
    assert bins.numel() == 20
    exp = rand.numel() / 20
    chi2 = float(((bins - exp) ** 2 / exp).sum())
    assert rand.numel() > 10000 and chi2 < 55.0, chi2  # 19 dof: p ~ 3e-5


def test_mask_special_true_selects_specials():
    x = torch.full((400, 500), 5)
    x[:, ::3] = 0
    x[:, 1::3] = 2
    x[:, 2::7] = PAD
    masked, labels, pos = M.mlm_mask_reference(x, vocab_size=V, mask_id=MASK, seed=1, step=2,
                                               mask_special=True)
    for tok in (0, 2):
        at = x == tok
        rate = float((labels[at] != -100).double().mean())
        n = int(at.sum())
        assert abs(rate - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n), (tok, rate)
    assert (labels[x == PAD] == -100).all()


def test_labels_positions_masked_consistent(big_batch):
    x, (masked, labels, pos), _, _ = big_batch
    flat = labels.view(-1)
    assert torch.equal(pos, (flat != -100).nonzero().view(-1))
    assert torch.all(pos[1:] > pos[:-1])
    assert torch.equal(flat[pos], x.view(-1)[pos])
    unsel = flat == -100
    assert torch.equal(masked.view(-1)[unsel], x.view(-1)[unsel])


def test_steps_and_seeds_give_independent_masks():
    x = _ids((256, 512), pad_frac=0.1)
    kw = dict(vocab_size=V, mask_id=MASK)
    base = M.mlm_mask_reference(x, seed=5, step=10, **kw)[1] != -100
    for seed, step in ((5, 11), (6, 10), (2**32 + 5, 10), (5, 10 + 2**32)):
        other = M.mlm_mask_reference(x, seed=seed, step=step, **kw)[1] != -100
        # independent Bernoulli(0.15) masks overlap on ~15% of the selected positions
        overlap = float((base & other).sum()) / float(base.sum())
        assert abs(overlap - 0.15) < 0.01, (seed, step, overlap)


def test_deterministic():
    x = _ids((8, 300), pad_frac=0.2)
    kw = dict(vocab_size=V, mask_id=MASK, seed=9, step=3)
    _equal(M.mlm_mask_reference(x, **kw), M.mlm_mask_reference(x.clone(), **kw))
    _equal(M.mlm_mask(x, **kw), M.mlm_mask(x.clone(), **kw))


def test_input_errors():
    x = _ids((2, 8))
    kw = dict(vocab_size=V, mask_id=MASK, seed=0, step=0)
    with pytest.raises(ValueError, match="2-D"):
        M.mlm_mask(x.view(-1), **kw)
    with pytest.raises(ValueError, match="int32 or int64"):
        M.mlm_mask(x.float(), **kw)
    with pytest.raises(ValueError, match="mask_id"):
        M.mlm_mask(x, vocab_size=V, mask_id=V, seed=0, step=0)
    with pytest.raises(ValueError, match="vocab_size"):
        M.mlm_mask(x, vocab_size=5, mask_id=4, seed=0, step=0)
    with pytest.raises(ValueError, match="mask_prob"):
        M.mlm_mask(x, mask_prob=1.5, **kw)
    with pytest.raises(ValueError, match="seed and step"):
        M.mlm_mask(x, vocab_size=V, mask_id=MASK, seed=-1, step=0)
    with pytest.raises(ValueError, match="capacity"):
        M.mlm_mask_static(x, capacity=-1, **kw)


# ---------------------------------------------------------------- static variant (reference)
@pytest.mark.parametrize("capacity", [0, 1, 5, 40, 10000])
def test_static_reference_matches_overflow_rule(capacity):
    x = _ids((5, 97), pad_frac=0.1, gen_seed=4)
    kw = dict(vocab_size=V, mask_id=MASK, seed=3, step=8, mask_prob=0.2)
    got = M.mlm_mask_static_reference(x, capacity=capacity, **kw)
    _equal(got, _static_from_exact(x, capacity, **kw))
    assert got[3].item() > 40  # capacity 0, 1, 5 and 40 all overflow


# ---------------------------------------------------------------- C++ CPU kernel
SHAPES = [(1, 1), (3, 17), (7, 333), (64, 512), (1, 20000), (0, 5)]


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask_prob,mask_special", [(0.15, False), (0.15, True), (0.0, False),
                                                    (1.0, False), (0.5, True)])
def test_cpp_equals_reference(shape, dtype, mask_prob, mask_special, monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", "cuda")  # the extension (its CPU kernel here)
    x = _ids(shape, dtype, pad_frac=0.15, gen_seed=shape[-1])
    if shape[0] > 2:
        x[1] = PAD  # an all-padding row
    kw = dict(vocab_size=V, mask_id=MASK, seed=77, step=5, mask_prob=mask_prob,
              mask_special=mask_special)
    ref = M.mlm_mask_reference(x, **kw)
    _equal(M.mlm_mask(x, **kw), ref)
    if x.numel() and mask_prob == 1.0:
        assert ref[2].numel() == int(((x != PAD) & (x != 0) & (x != 2)).sum()) > 0


@pytest.mark.parametrize("backend", [pytest.param("cuda", marks=needs_cpp),
                                     pytest.param("triton", marks=pytest.mark.interpret)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_odd_inputs(backend, dtype, monkeypatch):
    # Non-contiguous input, small vocabulary, huge seed/step, pad_id outside the vocabulary (id
    # 1 is then an ordinary, selectable token), and a pad_id present in the input: every other
    # Triton case uses pad_id=1, so a Triton kernel that compared with XLM-R's pad id 1 instead
    # of its pad_id argument passed them.
    monkeypatch.setenv("XLMR_FAST_BACKEND", backend)
    x = _ids((40, 33), dtype, vocab=20)
    kw = dict(vocab_size=20, mask_id=7, seed=2**63 - 1, step=2**40, pad_id=-5, mask_prob=0.4)
    _equal(M.mlm_mask(x.t(), **kw), M.mlm_mask_reference(x.t(), **kw))
    _equal(M.mlm_mask(x[:, ::2], **kw), M.mlm_mask_reference(x[:, ::2], **kw))
    kw["pad_id"] = 3
    _equal(M.mlm_mask(x, **kw), M.mlm_mask_reference(x, **kw))
    _equal(M.mlm_mask_static(x, capacity=100, **kw),
           M.mlm_mask_static_reference(x, capacity=100, **kw))


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", [(3, 17), (64, 512), (1, 20000)])
def test_cpp_static_equals_reference(shape, dtype, monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", "cuda")
    x = _ids(shape, dtype, pad_frac=0.1)
    kw = dict(vocab_size=V, mask_id=MASK, seed=1, step=2)
    n_sel = M.mlm_mask_reference(x, **kw)[2].numel()
    for capacity in (0, 1, n_sel // 2, n_sel - 1, n_sel, n_sel + 3, x.numel()):
        capacity = max(capacity, 0)
        got = M.mlm_mask_static(x, capacity=capacity, **kw)
        _equal(got, M.mlm_mask_static_reference(x, capacity=capacity, **kw))
        _equal(got, _static_from_exact(x, capacity, **kw))


@needs_cpp
def test_cpp_checks_name_the_argument():
    op = _ext.require("mlm_mask_static", "CPU")
    x = _ids((2, 8))
    with pytest.raises(RuntimeError, match="key must be a uint32"):
        op(x, V, MASK, 2**32, 0, 100, PAD, False, 4)
    with pytest.raises(RuntimeError, match="threshold must be in"):
        op(x, V, MASK, 0, 0, 2**32 + 1, PAD, False, 4)
    with pytest.raises(RuntimeError, match="capacity must be >= 0"):
        op(x, V, MASK, 0, 0, 100, PAD, False, -1)
    with pytest.raises(RuntimeError, match="input_ids must be int32 or int64"):
        op(x.short(), V, MASK, 0, 0, 100, PAD, False, 4)
    with pytest.raises(RuntimeError, match="mask_id"):
        op(x, V, V, 0, 0, 100, PAD, False, 4)


# ---------------------------------------------------------------- dispatch and registration
def test_backend_choice(monkeypatch):
    x = _ids((2, 8))
    monkeypatch.setenv("XLMR_FAST_BACKEND", "reference")
    assert M.mlm_mask_backend(x)[0] == "reference"
    monkeypatch.delenv("XLMR_FAST_BACKEND")
    want = "cuda" if _ext.has_kernel("mlm_mask", "CPU") else (
        "triton" if _backend.triton_usable(x.device) else "reference")
    assert M.mlm_mask_backend(x)[0] == want
    if not _backend.interpret():
        monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")
        with pytest.raises(_backend.Unsupported, match="TRITON_INTERPRET"):
            M.mlm_mask(x, vocab_size=V, mask_id=MASK, seed=0, step=0)


def _op_args(x, backend, capacity=None):
    key, key2 = M.mask_key(3, 4)
    args = [x, V, MASK, key, key2, M.select_threshold(0.15), PAD, False]
    if capacity is not None:
        args.append(capacity)
    return tuple(args + [backend])


@pytest.mark.parametrize("backend", ["reference", pytest.param("cuda", marks=needs_cpp)])
def test_opcheck(backend):
    x = _ids((4, 37), pad_frac=0.1)
    torch.library.opcheck(M._mlm_mask_static_op, _op_args(x, backend, capacity=20))
    torch.library.opcheck(M._mlm_mask_static_op, _op_args(x.int(), backend, capacity=200))
    # data-dependent output size: only the checks that do not need a static shape
    torch.library.opcheck(M._mlm_mask_op, _op_args(x, backend),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def test_static_op_traces_under_compile():
    x = _ids((6, 50), pad_frac=0.1)
    kw = dict(vocab_size=V, mask_id=MASK, seed=2, step=9, capacity=64)

    def f(ids):
        masked, labels, pos, count = M.mlm_mask_static(ids, **kw)
        return masked, labels, pos, count

    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
    _equal(got, M.mlm_mask_static_reference(x, **kw))


# ---------------------------------------------------------------- Triton under the interpreter
@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (7, 333), (0, 4)])
def test_triton_interpret_equals_reference(shape, dtype, monkeypatch):
    from xlmr_fast.kernels.triton import mlm_mask as kern

    x = _ids(shape, dtype, pad_frac=0.15, gen_seed=shape[-1])
    if shape[0] > 2:
        x[1] = PAD
    kw = dict(vocab_size=V, mask_id=MASK, seed=8, step=6)
    monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")
    _equal(M.mlm_mask(x, **kw), M.mlm_mask_reference(x, **kw))
    # small blocks: several chunks, the carried offset, overflow across chunk edges
    key, key2 = M.mask_key(8, 6)
    n_sel = M.mlm_mask_reference(x, **kw)[2].numel()
    for capacity in sorted({0, n_sel // 2, n_sel, n_sel + 5}):
        got = kern.mlm_mask_static(x, V, MASK, key, key2, M.select_threshold(0.15), PAD, False,
                                   capacity, block=64, num_warps=1)
        _equal(got, M.mlm_mask_static_reference(x, capacity=capacity, **kw))


@pytest.mark.interpret
@pytest.mark.parametrize("mask_prob,mask_special", [(0.0, False), (1.0, False), (1.0, True),
                                                    (0.5, True)])
def test_triton_interpret_thresholds(mask_prob, mask_special, monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")
    x = _ids((5, 61), vocab=30, pad_frac=0.2)
    for seed, step in ((0, 0), (2**50 + 1, 3)):
        kw = dict(vocab_size=30, mask_id=29, seed=seed, step=step, mask_prob=mask_prob,
                  mask_special=mask_special)
        _equal(M.mlm_mask(x, **kw), M.mlm_mask_reference(x, **kw))
        _equal(M.mlm_mask_static(x, capacity=40, **kw),
               M.mlm_mask_static_reference(x, capacity=40, **kw))


# ---------------------------------------------------------------- GPU
GPU_SHAPES = [(64, 512), (256, 512), (1, 1), (3, 17), (7, 333), (2, 70001), (0, 8)]


def _gpu_backends():
    out = [pytest.param("triton")]
    out.append(pytest.param("cuda", marks=pytest.mark.skipif(
        not _ext.has_kernel("mlm_mask", "CUDA"), reason="extension built without CUDA")))
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_equals_reference(backend, shape, dtype, monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", backend)
    x = _ids(shape, dtype, pad_frac=0.1, gen_seed=shape[-1]).cuda()
    if shape[0] > 2:
        x[1] = PAD
    for mask_prob, mask_special in ((0.15, False), (1.0, True), (0.0, False)):
        kw = dict(vocab_size=V, mask_id=MASK, seed=31, step=2**35 + 1, mask_prob=mask_prob,
                  mask_special=mask_special)
        ref = M.mlm_mask_reference(x.cpu(), **kw)
        _equal(M.mlm_mask(x, **kw), ref)
        n_sel = ref[2].numel()
        for capacity in sorted({0, n_sel // 3, n_sel, n_sel + 100}):
            got = M.mlm_mask_static(x, capacity=capacity, **kw)
            assert all(t.is_cuda for t in got)
            _equal(got, M.mlm_mask_static_reference(x.cpu(), capacity=capacity, **kw))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", _gpu_backends())
def test_gpu_input_on_a_device_that_is_not_current(backend, monkeypatch):
    # ids on cuda:1 (a non-contiguous view) while cuda:0 is current: the device guard
    monkeypatch.setenv("XLMR_FAST_BACKEND", backend)
    x = _ids((16, 1000), torch.int32, pad_frac=0.1).to("cuda:1")[:, ::2]
    kw = dict(vocab_size=V, mask_id=MASK, seed=3, step=4)
    with torch.cuda.device(0):
        exact = M.mlm_mask(x, **kw)
        static = M.mlm_mask_static(x, capacity=1000, **kw)
    assert all(t.device == torch.device("cuda:1") for t in (*exact, *static))
    _equal(exact, M.mlm_mask_reference(x.cpu(), **kw))
    _equal(static, M.mlm_mask_static_reference(x.cpu(), capacity=1000, **kw))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _gpu_backends())
def test_gpu_static_has_no_host_sync_and_graph_captures(backend, monkeypatch):
    monkeypatch.setenv("XLMR_FAST_BACKEND", backend)
    x = _ids((64, 512), torch.int32, pad_frac=0.05).cuda()
    kw = dict(vocab_size=V, mask_id=MASK, seed=1, step=1, capacity=5120)
    M.mlm_mask_static(x, **kw)  # warm up (Triton compiles here)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = M.mlm_mask_static(x, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _equal(got, M.mlm_mask_static_reference(x.cpu(), **kw))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = M.mlm_mask_static(x, **kw)
    x.copy_(_ids((64, 512), torch.int32, pad_frac=0.05, gen_seed=99).cuda())
    g.replay()
    _equal(out, M.mlm_mask_static_reference(x.cpu(), **kw))

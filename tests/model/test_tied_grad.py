"""The tied token table's gradient in MLM training: one V x H buffer (.grad), not two.

XLMRForMaskedLM (training, labels, eager) has the fused loss add the decoder's dW straight into
.grad (ops.linear_cross_entropy accumulate_weight_grad) and the token lookup add its rows into
.grad in place (xlmr._LookupIntoGrad). Checked: the gradients equal the plain path's (dense
lookup, dW through autograd) for every backend, padded and unpadded, with accumulation over
micro-batches; and the backward allocates one strided V x H tensor where the plain path
allocates two or more (none at all when .grad already exists and the Triton GEMM adds into
it)."""
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import xlmr_fast as xf
from xlmr_fast import _ext

V, H = 1003, 64
lce = importlib.import_module("xlmr_fast.ops.linear_cross_entropy")  # the module, not the op
xlmr = importlib.import_module("xlmr_fast.model.xlmr")


def _model(unpad=False, seed=0):
    torch.manual_seed(seed)
    cfg = xf.XLMRConfig(vocab_size=V, hidden_size=H, num_layers=2, num_heads=4, ffn_size=96,
                        max_position_embeddings=40, hidden_dropout=0.0, attention_dropout=0.0,
                        unpad=unpad)
    return xf.XLMRForMaskedLM(cfg).train()


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V - 1, (3, 17), generator=g)
    ids[1, 12:] = 1  # padding
    labels = torch.full_like(ids, -100)
    labels[:, 3:9] = torch.randint(4, V - 1, (3, 6), generator=g)
    return ids, labels


def _plain(m):
    """The ordinary autograd path: dense lookup, dW returned through autograd."""
    orig_tokens = xlmr.XLMRModel._tokens
    orig_lce = xlmr.ops.linear_cross_entropy
    m.setattr(xlmr.XLMRModel, "_tokens", lambda self, ids, into: orig_tokens(self, ids, False))
    m.setattr(xlmr.ops, "linear_cross_entropy",
              lambda *a, accumulate_weight_grad=False, **k: orig_lce(*a, **k))


def _backend(m, name):
    if name == "fused":  # the C++ path's CPU twin: what the GPU's cuda backend runs
        if not _ext.has_kernel("linear_cross_entropy_fwd", "CPU"):
            pytest.skip("extension not built")
        m.setattr(lce, "linear_cross_entropy_backend", lambda h, w=None: ("cuda", "test"))
    elif name == "triton":
        m.setattr(lce, "linear_cross_entropy_backend", lambda h, w=None: ("triton", "test"))


def _grads(model, batches):
    model.zero_grad(set_to_none=True)
    for ids, labels in batches:
        model(ids, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(backend, unpad, monkeypatch, batches):
    model = _model(unpad)
    with monkeypatch.context() as m:
        _backend(m, backend)
        ours = _grads(model, batches)
        assert model.encoder.embed_tokens.weight.grad.layout == torch.strided
        _plain(m)
        plain = _grads(model, batches)
    assert ours.keys() == plain.keys()
    for n in plain:
        torch.testing.assert_close(ours[n], plain[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("unpad", [False, True])
def test_gradients_equal_the_plain_path(backend, unpad, monkeypatch):
    _compare(backend, unpad, monkeypatch, [_batch(1)])


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_accumulation_over_micro_batches(backend, monkeypatch):
    _compare(backend, False, monkeypatch, [_batch(1), _batch(2), _batch(3)])


@pytest.mark.interpret
def test_triton_gradients_and_accumulation(monkeypatch):
    monkeypatch.setenv("XLMR_FAST_LCE_CHUNK", "256")  # several vocabulary chunks, a partial one
    _compare("triton", False, monkeypatch, [_batch(1), _batch(2)])


def test_plain_where_no_lm_loss():
    # No labels (logits), encoder features, eval: the lookup stays dense, nothing is redirected.
    model = _model()
    ids, labels = _batch()
    model.zero_grad(set_to_none=True)
    model(ids).logits.sum().backward()
    assert model.encoder.embed_tokens.weight.grad.layout == torch.strided
    enc = model.encoder
    enc.zero_grad(set_to_none=True)
    enc(ids).last_hidden_state.sum().backward()
    assert enc.embed_tokens.weight.grad.layout == torch.strided


class _VxH(TorchDispatchMode):
    """Distinct storages of strided (V, H) tensors that aten and our ops return."""

    def __init__(self):
        super().__init__()
        self.storages = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if (isinstance(t, torch.Tensor) and t.layout == torch.strided
                    and tuple(t.shape) == (V, H)):
                self.storages.add(t.untyped_storage().data_ptr())
        return out


def _new_vxh_buffers(model, batch, keep_grad=False):
    if not keep_grad:
        model.zero_grad(set_to_none=True)
    table = model.encoder.embed_tokens.weight
    # storages that exist already (the weight, a kept .grad) show up where the interpreter
    # re-points its arguments: only new ones count
    before = {t.untyped_storage().data_ptr() for t in (table, table.grad) if t is not None}
    loss = model(*batch[:1], labels=batch[1]).loss
    with _VxH() as seen:
        loss.backward()
    assert table.grad.layout == torch.strided
    return seen.storages - before


def test_one_vxh_buffer_fused(monkeypatch):
    model = _model()
    with monkeypatch.context() as m:
        _backend(m, "fused")
        ours = _new_vxh_buffers(model, _batch())
        assert model.encoder.embed_tokens.weight.grad.untyped_storage().data_ptr() in ours
        _plain(m)
        plain = _new_vxh_buffers(model, _batch())
    assert len(ours) == 1, ours  # the op's dW, which became .grad
    assert len(plain) >= 2, plain


@pytest.mark.interpret
def test_no_vxh_buffer_when_triton_adds_into_grad(monkeypatch):
    model = _model()
    with monkeypatch.context() as m:
        _backend(m, "triton")
        first = _new_vxh_buffers(model, _batch(1))
        grad_ptr = model.encoder.embed_tokens.weight.grad.data_ptr()
        second = _new_vxh_buffers(model, _batch(2), keep_grad=True)
    assert len(first) == 1, first
    assert len(second) == 0, second  # the dW GEMM read and wrote .grad in place
    assert model.encoder.embed_tokens.weight.grad.data_ptr() == grad_ptr


@pytest.mark.interpret
def test_token_chunk_schedule(monkeypatch):
    # XLMR_FAST_LCE_SCHEDULE=tokenchunk: dW is computed in the forward (fp32) and the backward
    # only scales it into .grad: the same gradients as the plain path, over micro-batches. V x H
    # storages over forward + backward: the forward's dW, which becomes .grad (first micro-batch)
    # or is added into .grad in place and dropped (later ones: one transient V x H that the
    # recompute schedule does not need).
    monkeypatch.setenv("XLMR_FAST_LCE_SCHEDULE", "tokenchunk")
    _compare("triton", False, monkeypatch, [_batch(1), _batch(2)])
    model = _model()
    table = model.encoder.embed_tokens.weight

    def new_vxh(batch):
        before = {t.untyped_storage().data_ptr() for t in (table, table.grad) if t is not None}
        with _VxH() as seen:
            model(batch[0], labels=batch[1]).loss.backward()
        return seen.storages - before

    with monkeypatch.context() as m:
        _backend(m, "triton")
        model.zero_grad(set_to_none=True)
        first = new_vxh(_batch(1))
        grad_ptr = table.grad.untyped_storage().data_ptr()
        second = new_vxh(_batch(2))
    assert first == {grad_ptr}, first
    assert len(second) == 1 and grad_ptr not in second, second
    assert table.grad.untyped_storage().data_ptr() == grad_ptr


class _Ops(TorchDispatchMode):
    """aten ops run (with their accumulate flag, for index_put_)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append((func.overloadpacket.__name__, args[3] if len(args) > 3 else None))
        return func(*args, **(kwargs or {}))


def test_lookup_adds_rows_into_grad_without_atomics_or_syncs(monkeypatch):
    # The lookup's backward adds its rows into .grad with index_put_(accumulate=True) (sorted,
    # deterministic on CUDA) instead of autograd adding an uncoalesced sparse gradient with
    # index_add_ (atomics on CUDA), and zeroes the padding rows instead of indexing them out
    # (a boolean index is a nonzero(): a host sync on CUDA). Padding tokens give the padding row
    # no gradient from the lookup.
    w = torch.randn(V, H, requires_grad=True)
    ids = torch.tensor([[5, 7, 5, 1], [7, 7, 1, 1]])
    before = torch.randn(V, H)
    w.grad = before.clone()
    out = xlmr._LookupIntoGrad.apply(ids, w, 1)
    dout = torch.randn_like(out)
    with _Ops() as ops:
        out.backward(dout)
    names = [n for n, _ in ops.seen]
    assert ("index_put_", True) in ops.seen, names
    assert not {"index_add", "index_add_", "nonzero", "embedding_sparse_backward",
                "_coalesce"} & set(names), names
    want = before.clone()
    for b, t in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1)):  # the non-padding tokens
        want[ids[b, t]] += dout[b, t]
    torch.testing.assert_close(w.grad, want)
    assert w.grad.layout == torch.strided
    # an empty batch (B = 0, T = 0): nothing added, no error
    for shape in ((0, 5), (3, 0)):
        w.grad = before.clone()
        out = xlmr._LookupIntoGrad.apply(torch.zeros(shape, dtype=torch.long), w, 1)
        out.backward(torch.ones_like(out))
        assert torch.equal(w.grad, before)
    # torch.autograd.grad (which leaves .grad alone): the same dense gradient as the plain path
    model = _model()
    ids, labels = _batch()
    table = model.encoder.embed_tokens.weight
    model.zero_grad(set_to_none=True)
    with monkeypatch.context() as m:
        _backend(m, "fused")
        g_tied, = torch.autograd.grad(model(ids, labels=labels).loss, [table])
        assert table.grad is None
        _plain(m)
        g_plain, = torch.autograd.grad(model(ids, labels=labels).loss, [table])
    torch.testing.assert_close(g_tied, g_plain, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_table_grad_is_bitwise_reproducible_and_syncs_nothing():
    # On CUDA the tied table's gradient (LM head dW into .grad, then the lookup's rows added in
    # place) is the same bits on every run, and the backward makes no host sync. Repeated
    # tokens (a small vocabulary) are what made the old sparse path's atomics reorder sums.
    torch.manual_seed(0)  # one head of 64: our attention (deterministic backward), not SDPA's
    cfg = xf.XLMRConfig(vocab_size=V, hidden_size=H, num_layers=2, num_heads=1, ffn_size=96,
                        max_position_embeddings=40, hidden_dropout=0.0, attention_dropout=0.0)
    model = xf.XLMRForMaskedLM(cfg).cuda().train()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 40, (8, 33), generator=g).cuda()
    ids[2, 20:] = 1
    labels = torch.full_like(ids, -100)
    labels[:, 5:15] = ids[:, 5:15]
    pos = torch.nonzero(labels.reshape(-1) != -100).squeeze(1)
    runs = []
    for _ in range(5):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=labels, masked_positions=pos).loss
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        runs.append(model.encoder.embed_tokens.weight.grad.clone())
    assert all(torch.equal(runs[0], r) for r in runs[1:])

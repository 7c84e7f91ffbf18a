"""kernels/triton.on_input_device: Triton launches on the *current* CUDA device (and its current
stream), torch ops on their tensors' own, so every kernel module's entry function makes its
first argument's device current. Stand-ins for the CUDA calls: this runs on the CPU."""
import contextlib
import importlib
from types import SimpleNamespace

import pytest
import torch

kt = pytest.importorskip("xlmr_fast.kernels.triton")

ENTRIES = {
    "attention": ("attention_fwd", "attention_bwd"),
    "linear_cross_entropy": ("lce_forward", "lce_backward", "lce_fwdgrad"),
    "mlm_mask": ("mlm_mask_static",),
    "add_dropout_layernorm": ("forward", "backward"),
    "bias_gelu": ("forward", "backward"),
}


def test_entry_runs_on_its_inputs_device(monkeypatch):
    current, seen = [0], []

    @contextlib.contextmanager
    def device(dev):
        prev, current[0] = current[0], dev.index
        yield
        current[0] = prev

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", device)

    @kt.on_input_device
    def entry(x, y, *, z=None):
        seen.append(current[0])
        return y, z

    on = lambda i: SimpleNamespace(device=torch.device("cuda", i))  # noqa: E731
    assert entry(on(1), 5, z=6) == (5, 6) and seen == [1] and current == [0]
    entry(on(0), 0)  # already current: no switch
    entry(torch.zeros(1), 0)  # CPU (the interpreter): nothing to do
    entry(SimpleNamespace(device=torch.device("cuda")), 0)  # no index: the current one
    assert seen == [1, 0, 0, 0]


@pytest.mark.parametrize("module", sorted(ENTRIES))
def test_every_kernel_entry_is_guarded(module):
    mod = importlib.import_module(f"xlmr_fast.kernels.triton.{module}")
    for name in ENTRIES[module]:
        fn = getattr(mod, name)
        guarded = kt.on_input_device(lambda x: x).__code__
        assert fn.__code__ is guarded, f"{module}.{name} is not guarded by on_input_device"

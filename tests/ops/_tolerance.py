"""The 2x-of-plain-torch tolerance rule shared by the fused-op tests, and the helpers of the
layer ops' every-config tests (LaunchSpy, config_cases, with_forced_config).

ours must be no further from the fp32 reference than 2 x what plain torch at the same precision
is, plus a small floor (1e-5 relative in fp32; a fraction of an ulp in 16-bit dtypes)."""
import os

import pytest
import torch

INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"


def run_grads(fn, tensors, dy):
    """(output, grads of every input) of fn on fresh leaf copies of tensors."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, dy.to(y.dtype))
    return y.detach(), [g_.detach() for g_ in grads]


def floor(dtype, ref):
    scale = max(1.0, ref.abs().max().item())
    if dtype == torch.float32:
        return 1e-5 * scale
    # The interpreter converts fp32 -> bf16 by truncation (the GPU rounds to nearest): 1 ulp.
    c = 1.0 if (INTERP and dtype == torch.bfloat16) else 0.25
    return c * torch.finfo(dtype).eps * scale


def assert_2x(name, ours, lowp, ref, dtype):
    e_ours = (ours.float() - ref.float()).abs().max().item()
    e_torch = (lowp.float() - ref.float()).abs().max().item()
    bound = 2 * e_torch + floor(dtype, ref)
    assert e_ours <= bound, f"{name}: error {e_ours:.3g} > 2 x torch {e_torch:.3g} + floor ({bound:.3g})"


class LaunchSpy:
    """Stands in for a Triton kernel object (monkeypatched onto its module): records the
    keyword arguments (constexprs, num_warps) of each launch, then launches the kernel."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch


def config_cases(kern):
    """(device, i) cases for a layer op's every-config test: each entry of its FWD_CONFIGS /
    BWD_CONFIGS (the shorter list wraps around) on the CPU interpreter and on CUDA."""
    n = max(len(kern.FWD_CONFIGS), len(kern.BWD_CONFIGS))
    return [pytest.param(dev, i, marks=mark) for dev, mark in
            (("cpu", pytest.mark.interpret), ("cuda", pytest.mark.gpu)) for i in range(n)]


def with_forced_config(kern, i, fwd_kernel, bwd_kernel, check, monkeypatch):
    """Run check() with entry i of kern.FWD_CONFIGS / BWD_CONFIGS forced (kern.set_configs),
    then assert that every launch of the two kernels (names in kern) used the forced config."""
    cfgs = {fwd_kernel: kern.FWD_CONFIGS[i % len(kern.FWD_CONFIGS)],
            bwd_kernel: kern.BWD_CONFIGS[i % len(kern.BWD_CONFIGS)]}
    spies = {name: LaunchSpy(getattr(kern, name)) for name in cfgs}
    for name, spy in spies.items():
        monkeypatch.setattr(kern, name, spy)
    kern.set_configs(fwd=cfgs[fwd_kernel], bwd=cfgs[bwd_kernel])
    try:
        check()
    finally:
        kern.set_configs()
    for name, cfg in cfgs.items():
        got = spies[name].launches
        assert got, f"{name} was not launched"
        for kw in got:
            assert {k: kw[k] for k in cfg.kwargs} == cfg.kwargs and \
                kw["num_warps"] == cfg.num_warps, (name, kw, cfg)

"""The 2x-of-plain-torch tolerance rule shared by the fused-op tests.

ours must be no further from the fp32 reference than 2 x what plain torch at the same precision
is, plus a small floor (1e-5 relative in fp32; a fraction of an ulp in 16-bit dtypes)."""
import os

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

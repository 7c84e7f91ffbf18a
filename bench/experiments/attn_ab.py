"""A/B timing of the Triton attention kernels: the committed version vs an older copy
(kernels/triton/attention_old.py, put there by the caller), and block configs.
    git show REV:kernels/triton/attention.py > kernels/triton/attention_old.py
    python -m bench.experiments.attn_ab
"""
import itertools
import sys

import torch

from bench import harness
from xlmr_fast.kernels.triton import attention as new
from xlmr_fast.ops.attention import dropout_seed_key, dropout_threshold

try:
    from xlmr_fast.kernels.triton import attention_old as old
except ImportError:
    old = None

B, H, T, D = 64, 12, 512, 64


def make():
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
               .transpose(1, 2) for _ in range(3))
    kpm = torch.zeros(B, T, dtype=torch.bool, device="cuda")
    return q, k, v, kpm


def step(mod, q, k, v, kpm, p):
    key, thr = (dropout_seed_key(7), dropout_threshold(p)) if p else (0, 0)
    res = mod.attention_fwd(q, k, v, kpm, None, T, D ** -0.5, p, key, thr)
    out, lse = res[0], res[1]
    do = out  # any tensor of the right layout
    if mod is new:
        return mod.attention_bwd(do, q, k, v, out, res[2], lse, kpm, None, T, D ** -0.5, p,
                                 key, thr)
    return mod.attention_bwd(do, q, k, v, out, lse, kpm, None, T, D ** -0.5, p, key, thr)


def main():
    q, k, v, kpm = make()
    rows = []
    flops = 3.5 * 4 * B * T * T * H * D
    mods = [("new", new)] + ([("old", old)] if old is not None else [])
    for rnd in range(2):  # interleaved twice: clock drift shows up as round-to-round spread
        for p in (0.0, 0.1):
            for name, mod in mods:
                ms = harness.time_ms(lambda: step(mod, q, k, v, kpm, p), rep=50)
                rows.append(harness.row("attention", f"{name}_default_r{rnd}", "fwd+bwd",
                                        f"B{B}xT{T}xH{H}xD{D} p{p}", ms, flops=flops))
    for fi, bi in itertools.product(range(len(new.FWD_CONFIGS)), range(len(new.BWD_CONFIGS))):
        new.set_configs(fwd=fi, bwd=bi)
        try:
            ms = harness.time_ms(lambda: step(new, q, k, v, kpm, 0.0), rep=30)
        except Exception as e:
            print(f"fwd{fi} bwd{bi}: {type(e).__name__}")
            continue
        rows.append(harness.row("attention", f"new_f{fi}_b{bi}", "fwd+bwd",
                                f"B{B}xT{T}xH{H}xD{D} p0.0", ms, flops=flops))
    new.set_configs()
    harness.print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

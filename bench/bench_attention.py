"""Benchmark xf.ops.attention at XLM-R base shapes (12 heads of 64, bf16) against SDPA.

    python -m bench.bench_attention            # table + rows appended to bench/results/
    python -m bench.bench_attention --tune     # also sweep the Triton block configs
    python -m bench.bench_attention --quick    # one shape

Shapes: B*T = 32k tokens: (64, 512) full-length pretraining blocks, and fine-tuning batches
(128, 256), (256, 128) with ~30% random right padding (lengths uniform in [0.4T, T]).
Providers (same inputs, one process):
    sdpa_flash_nomask   SDPA flash backend ignoring the padding (a mask disqualifies it):
                        an upper bound on speed, not the same math when there is padding
    sdpa_efficient      SDPA mem-efficient backend, additive float mask
    sdpa_cudnn          SDPA cuDNN backend, additive float mask
    compile_reference   torch.compile(attention_reference) (fp32 softmax, materialised P)
    ours_mask           xf.ops.attention(key_padding_mask=...) (Triton)
    ours_varlen         xf.ops.attention on packed tokens (cu_seqlens)
    ours_mask_drop0.1   ours with attention dropout 0.1 (XLM-R pretraining recipe)
    sdpa_eff_drop0.1    SDPA mem-efficient with dropout 0.1
FLOPs are nominal for the padded shape: 4*B*T^2*H*D forward, x2.5 backward, x3.5 both
(padding is not subtracted, so varlen's real work is lower than its TFLOP/s suggests).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from bench import harness

H, D = 12, 64
SHAPES = [(64, 512, 0.0), (128, 256, 0.3), (256, 128, 0.3)]


def _lengths(B, T, pad_frac, gen):
    if pad_frac == 0:
        return torch.full((B,), T, dtype=torch.int64)
    # uniform in [lo, T] with mean T*(1 - pad_frac): lo = T*(1 - 2*pad_frac)
    lo = max(1, int(T * (1 - 2 * pad_frac)))
    return torch.randint(lo, T + 1, (B,), generator=gen)


def _providers(q, k, v, kpm, lengths, T):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import xlmr_fast as xf
    from xlmr_fast.ops.attention import attention_reference

    add_mask = torch.zeros(kpm.shape, dtype=q.dtype, device=q.device)
    add_mask = add_mask.masked_fill(kpm, torch.finfo(q.dtype).min)[:, None, None, :]
    add_mask = add_mask.expand(-1, 1, T, -1)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=q.device)
    cu[1:] = lengths.to(q.device).cumsum(0)
    keep = ~kpm
    total = int(lengths.sum())

    def packed(x):  # (B, H, T, D) -> (total, H, D) of the valid tokens, as a leaf
        return x.detach().transpose(1, 2)[keep].contiguous().requires_grad_()

    qp, kp, vp = packed(q), packed(k), packed(v)
    assert qp.shape[0] == total

    def sdpa(backend, mask, p=0.0):
        def f():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return f, (q, k, v)

    ref_c = torch.compile(attention_reference)
    provs = {
        "sdpa_flash_nomask": sdpa(SDPBackend.FLASH_ATTENTION, None),
        "sdpa_efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION, add_mask),
        "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION, add_mask),
        "compile_reference": (lambda: ref_c(q, k, v, key_padding_mask=kpm), (q, k, v)),
        "ours_mask": (lambda: xf.ops.attention(q, k, v, key_padding_mask=kpm), (q, k, v)),
        "ours_varlen": (lambda: xf.ops.attention(qp, kp, vp, cu_seqlens=cu, max_seqlen=T),
                        (qp, kp, vp)),
        "ours_mask_drop0.1": (lambda: xf.ops.attention(q, k, v, key_padding_mask=kpm,
                                                       dropout_p=0.1), (q, k, v)),
        "sdpa_eff_drop0.1": sdpa(SDPBackend.EFFICIENT_ATTENTION, add_mask, 0.1),
    }
    return provs


def _time_modes(fn, inputs):
    """(fwd ms, bwd ms, fwd+bwd ms, peak MB of fwd+bwd)."""
    def fwd():
        with torch.no_grad():
            fn()

    out = fn()
    dout = torch.randn_like(out)

    def bwd():
        torch.autograd.grad(out, inputs, dout, retain_graph=True)

    def both():
        torch.autograd.grad(fn(), inputs, dout)

    return (harness.time_ms(fwd), harness.time_ms(bwd), harness.time_ms(both),
            harness.peak_mb(both))


def run(shapes, tune=False):
    from xlmr_fast.ops.attention import attention_backend
    rows = []
    gen = torch.Generator().manual_seed(0)
    for B, T, pad_frac in shapes:
        lengths = _lengths(B, T, pad_frac, gen)
        kpm = (torch.arange(T)[None, :] >= lengths[:, None]).cuda()
        q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
                   .transpose(1, 2).requires_grad_() for _ in range(3))
        print(f"# B={B} T={T} H={H} D={D} padding={1 - lengths.float().mean().item() / T:.2f} "
              f"backend={attention_backend(q)}", flush=True)
        shape = f"B{B}xT{T}xH{H}xD{D}" + (f" pad{pad_frac:.1f}" if pad_frac else "")
        flops = 4 * B * T * T * H * D
        for name, (fn, inputs) in _providers(q, k, v, kpm, lengths, T).items():
            try:
                f_ms, b_ms, fb_ms, peak = _time_modes(fn, inputs)
            except Exception as e:  # a backend refusing the input is a result, not a crash
                print(f"  {name}: unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
                continue
            for mode, ms, fl in (("fwd", f_ms, flops), ("bwd", b_ms, 2.5 * flops),
                                 ("fwd+bwd", fb_ms, 3.5 * flops)):
                rows.append(harness.row("attention", name, mode, shape, ms, flops=fl,
                                        peak=peak if mode == "fwd+bwd" else float("nan")))
        if tune:
            rows += _tune(q, k, v, kpm, shape, flops)
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def _tune(q, k, v, kpm, shape, flops):
    """Time every FWD_CONFIGS / BWD_CONFIGS entry on the masked layout (the lead picks)."""
    import xlmr_fast as xf
    from xlmr_fast.kernels.triton import attention as kern
    rows = []
    for i, cfg in enumerate(kern.FWD_CONFIGS):
        kern.set_configs(fwd=i)
        try:
            with torch.no_grad():
                ms = harness.time_ms(lambda: xf.ops.attention(q, k, v, key_padding_mask=kpm))
            rows.append(harness.row("attention", f"ours_fwd_cfg{i}", "fwd", shape, ms, flops=flops,
                                    note=str(cfg)))
        except Exception as e:
            print(f"  fwd cfg{i} {cfg}: failed ({type(e).__name__})")
    kern.set_configs()
    out = xf.ops.attention(q, k, v, key_padding_mask=kpm)
    dout = torch.randn_like(out)
    for i, cfg in enumerate(kern.BWD_CONFIGS):
        kern.set_configs(bwd=i)
        try:
            ms = harness.time_ms(lambda: torch.autograd.grad(out, (q, k, v), dout,
                                                             retain_graph=True))
            rows.append(harness.row("attention", f"ours_bwd_cfg{i}", "bwd", shape, ms,
                                    flops=2.5 * flops, note=str(cfg)))
        except Exception as e:
            print(f"  bwd cfg{i} {cfg}: failed ({type(e).__name__})")
    kern.set_configs()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="also sweep the Triton block configs")
    ap.add_argument("--quick", action="store_true", help="only the (64, 512) shape")
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention: needs CUDA; skipping")
        return 0
    os.environ.pop("XLMR_FAST_BACKEND", None)
    rows = run(SHAPES[:1] if args.quick else SHAPES, tune=args.tune)
    harness.print_table(rows, baseline_provider=("sdpa_efficient", "sdpa_cudnn"))
    if not args.no_save:
        print("appended to", harness.append_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

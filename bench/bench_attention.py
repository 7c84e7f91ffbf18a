"""Benchmark xf.ops.attention at XLM-R shapes (12 and 16 heads of 64, bf16) against SDPA.

    python -m bench.bench_attention            # table + rows appended to bench/results/
    python -m bench.bench_attention --tune     # also sweep the Triton block configs
    python -m bench.bench_attention --quick    # (64, 512) x 12 heads only, no torch.compile
    python -m bench.bench_attention --short --tune   # the fine-tuning shapes, every config

Shapes (B*T = 32k tokens): (64, 512) pretraining blocks with 12 heads (base) and 16 (large),
each with 0%, 30% and 50% random right padding (lengths uniform with that mean; the
fine-tuning case where varlen should win), short fine-tuning batches (128, 256) and
(256, 128) with 30% padding, and a host probe (2, 16) whose eager rows are host time per call.
Providers (same inputs, one process):
    sdpa_flash_nomask   SDPA flash backend ignoring the padding (a mask disqualifies it):
                        an upper bound on speed, not the same math when there is padding
    sdpa_efficient      SDPA mem-efficient backend, additive float mask
    sdpa_cudnn          SDPA cuDNN backend, additive float mask
    sdpa_math           SDPA math backend (materialised scores), additive float mask
    torch_varlen        torch.nn.attention.varlen.varlen_attn (PyTorch >= 2.10: its vendored
                        FlashAttention-2 varlen kernels) on the same packed tokens as
                        ours_varlen: the strongest public varlen kernel in torch, no dropout
    triton_tutorial     bench/baselines/triton_tutorial_attention.py: the textbook FA2 Triton
                        kernel (no mask, no dropout), like sdpa_flash_nomask an upper bound
    compile_reference   torch.compile(attention_reference) (fp32 softmax, materialised P);
                        unpadded shapes only (one compile per shape), not with --quick
    ours_mask           xf.ops.attention(key_padding_mask=...) (Triton)
    ours_varlen         xf.ops.attention on packed tokens (cu_seqlens)
    ours_*_drop0.1      ours with attention dropout 0.1 (XLM-R pretraining recipe)
    ours_slices_of_qkv  ours_mask with q, k, v sliced from one packed (B, T, 3, H, D) leaf, as
                        the fused QKV projection makes them: autograd builds the qkv gradient
                        from three zero-filled slice gradients and sums them
    ours_qkvpacked      xf.ops.attention_qkvpacked on that leaf: one dqkv written in place
                        (the model's path); the pair's fwd+bwd and graph rows price the
                        difference
    sdpa_eff_drop0.1    SDPA mem-efficient with dropout 0.1 (the only SDPA backend that takes
                        a mask and dropout)
Modes: fwd, bwd, fwd+bwd (eager: calls enqueued back to back, the host may be the limit at
short T; the providers of a mode timed in interleaved rounds) and graph (fwd+bwd, 10 calls
replayed from one CUDA graph: device time alone) for ours and the SDPA backends, so a
host-bound provider shows as graph << fwd+bwd.
FLOPs are nominal for the padded shape: 4*B*T^2*H*D forward, x2.5 backward, x3.5 both
(padding is not subtracted, so varlen's real work is lower than its TFLOP/s suggests; the
note of each varlen row gives the real fraction sum(L^2) / (B T^2); the note of each ours_*
row at a padded shape gives the fraction of 64-key blocks the mask path still visits, since
it skips every row's trailing all-padding key blocks).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from bench import harness

D = 64
SHAPES = [  # (B, T, heads, mean padding fraction); SHAPES[:3] is --quick, SHORT is --short
    (64, 512, 12, 0.0), (64, 512, 12, 0.3), (64, 512, 12, 0.5),
    (64, 512, 16, 0.0), (64, 512, 16, 0.3), (64, 512, 16, 0.5),
    (128, 256, 12, 0.3), (256, 128, 12, 0.3),
    # host probe: so little work that the eager fwd / fwd+bwd rows are the host's time per
    # call (Python, dispatch, launches) and the graph rows the device's floor
    (2, 16, 12, 0.0),
]
SHORT = SHAPES[6:8]  # fine-tuning batches: what TUNED_BY_SEQLEN's short-sequence rows are for
GRAPH_PROVIDERS = ("sdpa_flash_nomask", "sdpa_cudnn", "torch_varlen", "ours_mask",
                   "ours_varlen", "ours_mask_drop0.1", "ours_varlen_drop0.1", "ours_slices_of_qkv",
                   "ours_qkvpacked")
GRAPH_CALLS = 10


def _lengths(B, T, pad_frac, gen):
    if pad_frac == 0:
        return torch.full((B,), T, dtype=torch.int64)
    # uniform in [lo, T] with mean T*(1 - pad_frac): lo = T*(1 - 2*pad_frac), at least 1
    lo = max(1, int(T * (1 - 2 * pad_frac)))
    return torch.randint(lo, T + 1, (B,), generator=gen)


def _tutorial():
    try:
        from bench.baselines.triton_tutorial_attention import tutorial_attention
        return tutorial_attention
    except Exception as e:  # a missing baseline is reported, not fatal
        print(f"  triton_tutorial: unavailable ({type(e).__name__}: {e})")
        return None


def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
        return varlen_attn
    except Exception as e:  # torch < 2.10
        print(f"  torch_varlen: unavailable ({type(e).__name__}: {e})")
        return None


def _providers(q, k, v, kpm, lengths, T, compile_ref):
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

    def ours_mask(p):
        return (lambda: xf.ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=p),
                (q, k, v))

    def ours_varlen(p):
        return (lambda: xf.ops.attention(qp, kp, vp, cu_seqlens=cu, max_seqlen=T, dropout_p=p),
                (qp, kp, vp))

    provs = {
        "sdpa_flash_nomask": sdpa(SDPBackend.FLASH_ATTENTION, None),
        "sdpa_efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION, add_mask),
        "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION, add_mask),
        "sdpa_math": sdpa(SDPBackend.MATH, add_mask),
    }
    varlen_attn = _torch_varlen()
    if varlen_attn is not None:
        # max_q = max_k = T, an upper bound as ours gets (no host sync for the true maximum)
        provs["torch_varlen"] = (lambda: varlen_attn(qp, kp, vp, cu, cu, T, T), (qp, kp, vp))
    tut = _tutorial()
    if tut is not None:
        provs["triton_tutorial"] = (lambda: tut(q, k, v), (q, k, v))
    if compile_ref:
        ref_c = torch.compile(attention_reference)
        provs["compile_reference"] = (lambda: ref_c(q, k, v, key_padding_mask=kpm), (q, k, v))
    # one packed leaf (B, T, 3, H, D) with the same values, for the slices / packed pair
    qkv = torch.stack([x.detach().transpose(1, 2) for x in (q, k, v)], dim=2)
    qkv = qkv.contiguous().requires_grad_()

    def slices_of_qkv():
        s = qkv.permute(2, 0, 3, 1, 4)
        return xf.ops.attention(s[0], s[1], s[2], key_padding_mask=kpm)

    provs.update({
        "ours_slices_of_qkv": (slices_of_qkv, (qkv,)),
        "ours_qkvpacked": (lambda: xf.ops.attention_qkvpacked(qkv, key_padding_mask=kpm),
                           (qkv,)),
        "ours_mask": ours_mask(0.0),
        "ours_varlen": ours_varlen(0.0),
        "ours_mask_drop0.1": ours_mask(0.1),
        "ours_varlen_drop0.1": ours_varlen(0.1),
        "sdpa_eff_drop0.1": sdpa(SDPBackend.EFFICIENT_ATTENTION, add_mask, 0.1),
    })
    return provs


MODES = ("fwd", "bwd", "fwd+bwd")


def _mode_calls(fn, inputs):
    """{mode: callable} of one provider: fwd (no autograd), bwd (the gradient of one forward,
    graph retained), fwd+bwd. Runs one forward: a backend refusing the input raises here."""
    def fwd():
        with torch.no_grad():
            fn()

    out = fn()
    dout = torch.randn_like(out)

    def bwd():
        torch.autograd.grad(out, inputs, dout, retain_graph=True)

    def both():
        torch.autograd.grad(fn(), inputs, dout)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}


def _graph_ms(fn, inputs):
    """fwd+bwd device time per call from a CUDA graph of GRAPH_CALLS calls."""
    out = fn()
    dout = torch.randn_like(out)
    del out
    return harness.device_ms(lambda: torch.autograd.grad(fn(), inputs, dout), GRAPH_CALLS)


def run(shapes, tune=False, device="cuda", save=False, warmup=5, rounds=15, compile_ref=True):
    """Rows for every shape and provider. Each mode's providers are timed in interleaved
    rounds (harness.time_interleaved: 2 calls each per round, so drift falls on all alike;
    the 1.04-1.06x margins over cuDNN of 11-23 are of the order drift can make).
    device="cpu" (with TRITON_INTERPRET=1, tiny shapes, warmup=0, rounds=1) is the smoke
    test of this file: no CUDA graphs, no compile, SDPA backends that need CUDA report
    themselves unavailable. save: append each shape's rows to bench/results as soon as it is
    done (a device call that times out keeps the shapes it finished). compile_ref=False
    leaves out compile_reference (--quick: its torch.compile costs tens of seconds of a short
    device call, and it ran at 29 TFLOP/s, far behind SDPA, on 11-23)."""
    from xlmr_fast.tune import scoped_env
    # The ours_* rows time our kernel: a tuning file that sends some lengths to SDPA (knob
    # attention.backend, `xlmr-fast tune`) must not turn them into SDPA rows.
    with scoped_env(XLMR_FAST_TUNING="off"):
        return _run(shapes, tune, device, save, warmup, rounds, compile_ref)


def _run(shapes, tune, device, save, warmup, rounds, compile_ref):
    from xlmr_fast.ops.attention import attention_backend
    cuda = device == "cuda"
    rows, done = [], 0
    gen = torch.Generator().manual_seed(0)
    for B, T, H, pad_frac in shapes:
        lengths = _lengths(B, T, pad_frac, gen)
        kpm = (torch.arange(T)[None, :] >= lengths[:, None]).to(device)
        q, k, v = (torch.randn(B, T, H, D, device=device, dtype=torch.bfloat16)
                   .transpose(1, 2).requires_grad_() for _ in range(3))
        work = (lengths.double() ** 2).sum().item() / (B * T * T)
        # the mask path skips each row's trailing all-padding key blocks (64 keys by default)
        mask_work = (lengths + 63).div(64, rounding_mode="floor").double().mean().item() / (
            -(-T // 64))
        print(f"# B={B} T={T} H={H} D={D} padding={1 - lengths.float().mean().item() / T:.2f} "
              f"varlen work={work:.2f} of padded, mask path key blocks={mask_work:.2f}, "
              f"backend={attention_backend(q)}", flush=True)
        shape = f"B{B}xT{T}xH{H}xD{D}" + (f" pad{pad_frac:.1f}" if pad_frac else "")
        flops = 4 * B * T * T * H * D
        provs = _providers(q, k, v, kpm, lengths, T,
                           compile_ref=compile_ref and cuda and pad_frac == 0 and T >= 128)
        calls = {}
        for name, (fn, inputs) in provs.items():
            try:
                calls[name] = _mode_calls(fn, inputs)
            except Exception as e:  # a backend refusing the input is a result, not a crash
                _unavailable(name, e)
        times = {mode: harness.time_interleaved({n: c[mode] for n, c in calls.items()},
                                                warmup=warmup, rounds=rounds, rep=2)
                 for mode in MODES}
        for name, (fn, inputs) in provs.items():
            if name not in calls:
                continue
            note = (f"real work {work:.2f} of padded" if "varlen" in name else
                    f"key blocks {mask_work:.2f} of padded" if "ours" in name and pad_frac
                    else "")
            ok = {m for m in MODES if not isinstance(times[m][name], Exception)}
            for m in MODES:  # a mode that failed is reported; the others keep their rows
                if m not in ok:
                    _unavailable(f"{name} {m}", times[m][name])
            if not ok:
                continue
            peak = harness.peak_mb(calls[name]["fwd+bwd"]) if "fwd+bwd" in ok else float("nan")
            for mode, fl in zip(MODES, (flops, 2.5 * flops, 3.5 * flops)):
                if mode not in ok:
                    continue
                rows.append(harness.row("attention", name, mode, shape, times[mode][name],
                                        flops=fl,
                                        peak=peak if mode == "fwd+bwd" else float("nan"),
                                        note=note))
            if cuda and name in GRAPH_PROVIDERS and "fwd+bwd" in ok:
                rows.append(harness.row("attention", name, "graph", shape, _graph_ms(fn, inputs),
                                        flops=3.5 * flops,
                                        note=("fwd+bwd device time; " + note).strip("; ")))
        if tune and cuda:
            rows += _tune(provs, shape, flops)
        if save:
            done = harness.append_new(rows, done)
        del q, k, v, provs, calls
        if cuda:
            torch.cuda.empty_cache()
    return rows


def _unavailable(name, e):
    print(f"  {name}: unavailable ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})")


def _tune(provs, shape, flops):
    """Device time (CUDA graph) of every FWD_CONFIGS / BWD_CONFIGS entry on this shape's
    layout (varlen when it is padded, the mask path when not), forward alone and fwd+bwd
    with the default forward; prints the best pair for kernels/triton/attention.py's TUNED."""
    from xlmr_fast.kernels.triton import attention as kern
    name = "ours_varlen" if "pad" in shape else "ours_mask"
    fn, inputs = provs[name]
    rows, best = [], {}

    def fwd_only():
        with torch.no_grad():
            fn()

    for kind, configs in (("fwd", kern.FWD_CONFIGS), ("bwd", kern.BWD_CONFIGS)):
        for i, cfg in enumerate(configs):
            kern.set_configs(**{kind: i})
            try:
                if kind == "fwd":
                    ms = harness.device_ms(fwd_only, GRAPH_CALLS)
                else:
                    ms = _graph_ms(fn, inputs)
                fl = flops if kind == "fwd" else 3.5 * flops
                rows.append(harness.row("attention", f"{name}_{kind}_cfg{i}",
                                        "graph" if kind == "bwd" else "fwd(graph)", shape, ms,
                                        flops=fl, note=str(cfg)))
                if ms < best.get(kind, (float("inf"), None))[0]:
                    best[kind] = (ms, i)
            except Exception as e:
                print(f"  {kind} cfg{i} {cfg}: failed ({type(e).__name__})")
            finally:
                kern.set_configs()
    if len(best) == 2:
        print(f"  best on {shape} ({name}): fwd cfg{best['fwd'][1]} {best['fwd'][0]:.4f} ms, "
              f"fwd+bwd with bwd cfg{best['bwd'][1]} {best['bwd'][0]:.4f} ms")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="also sweep the Triton block configs")
    ap.add_argument("--quick", action="store_true",
                    help="only the (64, 512) shapes with 12 heads, without compile_reference")
    ap.add_argument("--short", action="store_true",
                    help="only the fine-tuning shapes (128, 256) and (256, 128), 30%% padding, "
                         "without compile_reference; with --tune, the rows that fill "
                         "TUNED_BY_SEQLEN")
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    args = ap.parse_args(argv)
    if args.quick and args.short:
        ap.error("--quick and --short pick different shapes: give one")
    if not torch.cuda.is_available():
        print("bench_attention: needs CUDA; skipping")
        return 0
    os.environ.pop("XLMR_FAST_BACKEND", None)
    shapes = SHAPES[:3] if args.quick else SHORT if args.short else SHAPES
    rows = run(shapes, tune=args.tune, save=not args.no_save,
               compile_ref=not (args.quick or args.short))
    harness.print_table(rows, baseline_provider=("sdpa_efficient", "sdpa_cudnn"))
    if rows and not args.no_save:
        print("rows appended shape by shape to", harness.results_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())

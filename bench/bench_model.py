"""End-to-end MLM training step (forward + backward, no optimizer) of XLM-R base, bf16 autocast.

Providers (same weights, same batch, one process):
  hf_sdpa       transformers XLMRobertaForMaskedLM, attn_implementation="sdpa" (full logits)
  ours_padded   xf.XLMRForMaskedLM, padded encoder (Triton attention with key mask), plain
                torch residual/LayerNorm/GELU
  ours_unpad    the same with config.unpad=True (packed tokens, varlen attention)
  ours_fused, ours_unpad_fused
                the two above with config.fused_layer_ops=True (residual + dropout + LayerNorm
                and bias + GELU as Triton kernels): the model-level A/B of those ops
  ours_lce_tokenchunk
                ours_padded with the LM head's token-chunk schedule (XLMR_FAST_LCE_SCHEDULE=
                tokenchunk: 6NHV, grads in the forward); steps accumulate into .grad, so its
                transient fp32 V x H dW is in the peak
Batches: B x T with a padding fraction (right padding, random lengths), 15% of the real tokens
as targets. Tokens/s counts real (non-pad) tokens. Run: python -m bench.bench_model [--quick]

--profile: instead of timing, profile 3 steps of each provider and print where the device time
goes (bench/step_profile.py: kernels by category, GEMM TFLOP/s, idle time, top kernels); rows
with op model_step_profile. --providers ours_padded hf_sdpa limits either mode.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from bench import harness, step_profile
from xlmr_fast.tune import scoped_env

PROVIDERS = ("ours_padded", "ours_unpad", "ours_fused", "ours_unpad_fused",
             "ours_lce_tokenchunk", "hf_sdpa")

def _batch(B, T, pad_frac, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V - 1, (B, T), generator=g)
    ids[:, 0] = 0
    if pad_frac > 0:
        lengths = (T * (1 - 2 * pad_frac * torch.rand(B, generator=g))).long().clamp(2, T)
    else:
        lengths = torch.full((B,), T)
    for b in range(B):
        ids[b, lengths[b] - 1] = 2
        ids[b, lengths[b]:] = 1
    labels = torch.full_like(ids, -100)
    sel = (torch.rand(B, T, generator=g) < 0.15) & (ids > 3)
    labels[sel] = ids[sel]
    return ids.cuda(), labels.cuda(), int((ids != 1).sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--profile", action="store_true", help="kernel-time breakdown, no timing")
    ap.add_argument("--providers", nargs="+", metavar="NAME", choices=PROVIDERS,
                    help=f"only these providers, of {', '.join(PROVIDERS)}")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA: skipping the model benchmark")
        return 0
    import xlmr_fast as xf

    wanted = set(args.providers or PROVIDERS)  # models not asked for are not built
    cfg = xf.XLMRConfig.base(fused_layer_ops=False)  # the plain layers, whatever auto says
    torch.manual_seed(0)
    ours = xf.XLMRForMaskedLM(cfg).cuda().train()
    models = {"ours_padded": ours}
    for name, over in (("ours_unpad", dict(unpad=True)),
                       ("ours_fused", dict(fused_layer_ops=True)),
                       ("ours_unpad_fused", dict(unpad=True, fused_layer_ops=True))):
        if name in wanted:
            models[name] = xf.XLMRForMaskedLM(dataclasses.replace(cfg, **over)).cuda().train()
            models[name].load_state_dict(ours.state_dict())
    provs = {name: (lambda i, lab, m=m: m(i, labels=lab).loss) for name, m in models.items()}

    def tokenchunk(i, lab):
        with scoped_env(XLMR_FAST_LCE_SCHEDULE="tokenchunk"):
            return ours(i, labels=lab).loss  # the schedule's gradient work runs in the forward
    provs["ours_lce_tokenchunk"] = tokenchunk
    all_models = list(models.values())  # and HF's, when it loads: grads dropped per shape
    if "hf_sdpa" in wanted:
        try:
            from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM
            hf = XLMRobertaForMaskedLM(XLMRobertaConfig(**cfg.to_hf_dict()),
                                       ).cuda().train()
            hf.config._attn_implementation = "sdpa"
            all_models.append(hf)
            provs["hf_sdpa"] = lambda i, lab: hf(input_ids=i, attention_mask=(i != 1).long(),
                                                 labels=lab).loss
        except Exception as e:
            print(f"[skip] transformers: {type(e).__name__}: {e}", file=sys.stderr)
    provs = {k: v for k, v in provs.items() if k in wanted}
    shapes = [(32, 512, 0.0), (64, 256, 0.3)] if not args.quick else [(64, 256, 0.3)]
    if args.profile:
        batches = []
        for B, T, pad in shapes:
            ids, labels, _ = _batch(B, T, pad, cfg.vocab_size)
            batches.append((f"B{B}xT{T} pad{pad:.1f} base", ids, labels))
        rows = run_profile(provs, batches, cfg.vocab_size, on_done=lambda: [
            m.zero_grad(set_to_none=True) for m in all_models], save=not args.no_save)
        if rows and not args.no_save:
            print("appended to", harness.results_path())
        return 0
    rows, saved = [], 0
    for B, T, pad in shapes:
        ids, labels, real = _batch(B, T, pad, cfg.vocab_size)
        shape = f"B{B}xT{T} pad{pad:.1f} base"
        steps = {name: _step(fn, ids, labels, "cuda") for name, fn in provs.items()}
        # interleaved rounds: clock / thermal drift falls on every provider alike
        times = harness.time_interleaved(steps, warmup=3, rounds=5, rep=2)
        for name, ms in times.items():
            try:
                if isinstance(ms, Exception):
                    raise ms
                peak = harness.peak_mb(steps[name])
            except Exception as e:
                print(f"[fail] {name} {shape}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            rows.append(harness.row("model_mlm_step", name, "fwd+bwd", shape, ms, peak=peak,
                                    note=f"{real / ms:.0f}k real tok/s"))
        for m in all_models:
            m.zero_grad(set_to_none=True)
        if not args.no_save:  # shape by shape: a cut device call keeps the shapes it finished
            saved = harness.append_new(rows, saved)
    harness.print_table(rows, baseline_provider=("hf_sdpa",))
    if rows and not args.no_save:
        print("appended to", harness.results_path())
    return 0


def _step(loss_fn, ids, labels, device_type):
    """One training step of a provider: bf16-autocast forward to the loss, backward (grads
    accumulate into .grad until the caller drops them)."""
    def step():
        with torch.autocast(device_type, dtype=torch.bfloat16):
            loss = loss_fn(ids, labels)
        loss.backward()
    return step


def run_profile(provs, batches, vocab, *, steps=3, on_done=None, device=None, save=False):
    """Profile `steps` autocast fwd+bwd steps of each provider (loss_fn(ids, labels)) on each
    (shape label, ids, labels); print the breakdowns; return model_step_profile rows. save:
    append each provider's rows as soon as it is done (a cut device call keeps them)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for shape, ids, labels in batches:
        for name, fn in provs.items():
            try:
                s = step_profile.profile(_step(fn, ids, labels, device.type), steps=steps,
                                         warmup=2, vocab=vocab, device=device)
            except Exception as e:
                print(f"[fail] {name} {shape}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            finally:
                if on_done is not None:
                    on_done()
            print(step_profile.format_summary(s, f"{name} {shape}"), flush=True)
            new = step_profile.rows_for_csv(s, name, shape)
            rows += new
            if save:
                harness.append_rows(new)
    return rows


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end pretraining throughput: our Trainer vs Hugging Face XLMRobertaForMaskedLM.

Providers (one process, same device, 512-token rows, bf16 autocast, fused AdamW):
  ours            xlmr_fast.train.pretrain.Trainer: the real loop (C++ loader from synthetic
                  250k-vocabulary shards, device masking, fused attention and fused LM-head CE,
                  fairseq loss normalisation, clipping, AdamW), grad_accum micro-steps per step
  ours_compile    the same with model.compile=true
  hf_sdpa         transformers XLMRobertaForMaskedLM (attn_implementation="sdpa"), masking on the
                  CPU as DataCollatorForLanguageModeling does (Bernoulli 15%, 80/10/10), full
                  logits + F.cross_entropy, fused AdamW, clip_grad_norm_
  hf_sdpa_compile the same model under torch.compile
Reported per micro-step: ms, tokens/s, MFU (DESIGN.md formula; peak from the device table in
xlmr_fast.train.metrics or --peak-tflops) and peak memory. Then a breakdown of our step (GPU time
between CUDA events around the trainer's phases: data, mask, forward, backward, optimizer, as a
share of the wall time) and the LM head's time measured in isolation.

Run: python -m bench.bench_train [--presets base,large] [--micro 32,16] [--steps 8]
     [--kernel-profile]  (adds our step's kernels by category: bench/step_profile.py)
     python -m bench.bench_train --device cpu --presets tiny --micro 4 --seq 64   (smoke test)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import harness as H
from bench import step_profile
from bench.bench_data import make_synthetic


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_mb(dev):
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")


def bench_ours(preset, micro, seq, accum, steps, data_dir, dev, compile_model,
               kernel_profile=False):
    from xlmr_fast.train.config import load_config
    from xlmr_fast.train.pretrain import Trainer
    with tempfile.TemporaryDirectory(prefix="xlmr_bench_train_") as out:
        cfg = load_config(None, [
            f"model.preset={preset}", f"model.compile={str(compile_model).lower()}",
            f"data.data_dir={data_dir}", f"data.seq_len={seq}", f"data.micro_batch={micro}",
            "data.heldout_fraction=0.0", f"optim.grad_accum={accum}",
            f"optim.max_steps={steps + 100}", "optim.warmup_steps=10", f"run.out_dir={out}",
            f"run.device={dev}", "run.progress=false", "run.tensorboard=false",
            "run.eval_every=0", "run.save_every=0", "run.log_every=1000000"])
        tr = Trainer(cfg)
        for _ in range(2):                      # warm-up (and compilation)
            tr._train_step()
        _sync(tr.device)
        _reset_peak(tr.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            tr._train_step()                    # ends with a host sync (norm + target count)
        _sync(tr.device)
        ms = (time.perf_counter() - t0) * 1e3 / (steps * accum)
        mem = _peak_mb(tr.device)
        breakdown = _profile(tr) if tr.device.type == "cuda" else {}
        if kernel_profile:  # per optimizer step (grad_accum micro-steps), after the timing
            s = step_profile.profile(tr._train_step, steps=2, warmup=0, vocab=250002,
                                     device=tr.device)
            print(step_profile.format_summary(
                s, f"{'ours_compile' if compile_model else 'ours'} {preset} B{micro}xT{seq}, "
                   f"one optimizer step = {accum} micro-steps"), flush=True)
        fpt = tr.flops_per_token
        del tr
        return ms, mem, fpt, breakdown


def _profile(tr) -> dict:
    """Per micro-step: GPU ms of each phase of Trainer._train_step (CUDA events around the
    trainer's ranges: data, mask, forward, backward, optimizer), and the step's wall ms."""
    from xlmr_fast.train import pretrain as P
    P.EVENT_TIMING = {}
    try:
        _sync(tr.device)
        t0 = time.perf_counter()
        for _ in range(3):
            tr._train_step()
        _sync(tr.device)
        wall = (time.perf_counter() - t0) * 1e3
        n = 3 * tr.cfg.optim.grad_accum
        out = {k[6:]: sum(s.elapsed_time(e) for s, e in v) / n
               for k, v in P.EVENT_TIMING.items()}
    finally:
        P.EVENT_TIMING = None
    out["(step wall)"] = wall / n
    return out


def _hf_mask(ids, vocab, mask_id, g):
    """DataCollatorForLanguageModeling.torch_mask_tokens, on the CPU as HF runs it."""
    labels = ids.clone()
    prob = torch.full(ids.shape, 0.15)
    special = (ids == 0) | (ids == 1) | (ids == 2)
    prob.masked_fill_(special, 0.0)
    sel = torch.bernoulli(prob, generator=g).bool()
    labels[~sel] = -100
    rep = torch.bernoulli(torch.full(ids.shape, 0.8), generator=g).bool() & sel
    ids = ids.clone()
    ids[rep] = mask_id
    rnd = torch.bernoulli(torch.full(ids.shape, 0.5), generator=g).bool() & sel & ~rep
    ids[rnd] = torch.randint(vocab, ids.shape, generator=g)[rnd]
    return ids, labels


def bench_hf(preset, micro, seq, steps, dev, compile_model):
    import transformers
    import xlmr_fast as xf
    cfg = getattr(xf.XLMRConfig, preset)(vocab_size=250002)  # the shards' (and XLM-R's) size
    hf_cfg = transformers.XLMRobertaConfig(**cfg.to_hf_dict())
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.XLMRobertaForMaskedLM(hf_cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.01, fused=dev.type == "cuda" or None)
    fwd = torch.compile(model) if compile_model else model
    g = torch.Generator().manual_seed(0)
    V = cfg.vocab_size
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
           else torch.autocast("cpu", enabled=False))

    def step():
        ids = torch.randint(4, V - 1, (micro, seq), generator=g)
        ids[:, 0] = 0
        ids, labels = _hf_mask(ids, V, V - 1, g)
        if dev.type == "cuda":
            ids, labels = ids.pin_memory(), labels.pin_memory()
        ids, labels = ids.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        with amp:
            loss = fwd(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(2):
        step()
    _sync(dev)
    _reset_peak(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    ms = (time.perf_counter() - t0) * 1e3 / steps
    return ms, _peak_mb(dev)


def bench_head_share(preset, micro, seq, dev) -> float | None:
    """ms of the LM head (transform + fused 250k CE, fwd + bwd) on 15% of micro x seq rows."""
    if dev.type != "cuda":
        return None
    import xlmr_fast as xf
    cfg = getattr(xf.XLMRConfig, preset)()
    m = xf.XLMRForMaskedLM(cfg).to(dev)
    N = int(0.15 * micro * seq)
    h = torch.randn(N, cfg.hidden_size, device=dev, requires_grad=True)
    t = torch.randint(4, cfg.vocab_size, (N,), device=dev)

    def f():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            z = m.lm_head.transform(h).to(torch.bfloat16)
            loss = xf.ops.linear_cross_entropy(z, m.decoder_weight, m.lm_head.bias, t)
        loss.backward()
    return H.time_ms(f, warmup=3, rep=10)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="base,large")
    ap.add_argument("--micro", default="32,16", help="micro-batch per preset (comma list)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--accum", type=int, default=4, help="our micro-steps per optimizer step")
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--providers", default="ours,ours_compile,hf_sdpa,hf_sdpa_compile")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--tokens", type=int, default=20_000_000, help="synthetic corpus size")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--kernel-profile", action="store_true",
                    help="also print our step's kernel-time breakdown (bench/step_profile.py)")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("needs CUDA: skipping the end-to-end training benchmark (use --device cpu "
              "--presets tiny for a smoke run)")
        return 0
    from xlmr_fast.train.metrics import peak_flops
    peak = peak_flops(dev, a.peak_tflops * 1e12 if a.peak_tflops else None)
    presets = a.presets.split(",")
    micros = [int(x) for x in a.micro.split(",")]
    micros += [micros[-1]] * (len(presets) - len(micros))
    provs = a.providers.split(",")
    rows, notes, saved = [], [], 0
    with tempfile.TemporaryDirectory(prefix="xlmr_bench_shards_") as d:
        t = time.perf_counter()
        data = make_synthetic(Path(d), a.tokens)  # the real 250,002-id vocabulary
        print(f"synthetic shards ({a.tokens / 1e6:.0f}M tokens): {time.perf_counter() - t:.1f} s",
              flush=True)
        for preset, micro in zip(presets, micros):
            shape = f"{preset} B{micro}xT{a.seq}"
            tok = micro * a.seq
            fpt = None
            for prov in provs:
                try:
                    if prov.startswith("ours"):
                        ms, mem, fpt, brk = bench_ours(preset, micro, a.seq, a.accum, a.steps,
                                                       data, a.device, prov.endswith("compile"),
                                                       a.kernel_profile)
                        if brk:
                            notes.append((shape, prov, brk))
                    else:
                        ms, mem = bench_hf(preset, micro, a.seq, a.steps, dev,
                                           prov.endswith("compile"))
                except Exception as e:  # a baseline that cannot run (OOM, compile) is reported
                    print(f"[fail] {prov} {shape}: {type(e).__name__}: {str(e)[:300]}",
                          file=sys.stderr)
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                tok_s = tok / ms * 1e3
                if fpt is None:
                    from xlmr_fast.train.metrics import model_flops_per_token
                    import xlmr_fast as xf
                    fpt = model_flops_per_token(
                        getattr(xf.XLMRConfig, preset)(vocab_size=250002), a.seq)
                mfu = tok_s * fpt / peak if peak else float("nan")
                rows.append(H.row("train_step", prov, "micro-step", shape, ms, peak=mem,
                                  flops=fpt * tok,
                                  note=f"{tok_s:,.0f} tok/s, MFU {100 * mfu:.1f}%"))
                print(f"{prov:<18}{shape:<22}{ms:9.2f} ms  {tok_s:12,.0f} tok/s  MFU "
                      f"{100 * mfu:5.1f}%  peak {mem:8.0f} MB", flush=True)
            head = bench_head_share(preset, micro, a.seq, dev)
            if head is not None:
                print(f"  LM head (transform + fused CE, fwd+bwd, 15% rows) alone: {head:.2f} ms")
            if not a.no_append and dev.type == "cuda":  # per preset: a timed-out call keeps it
                saved = H.append_new(rows, saved)
    H.print_table(rows, baseline_provider=("hf_sdpa", "hf_sdpa_compile"))
    for shape, prov, brk in notes:
        wall = brk.pop("(step wall)")
        print(f"breakdown of {prov} {shape}: GPU ms per micro-step between CUDA events around "
              f"each phase (share of the {wall:.2f} ms wall time per micro-step)")
        for k, ms in sorted(brk.items(), key=lambda kv: -kv[1]):
            print(f"  {k:<10}{ms:8.2f} ms {100 * ms / max(wall, 1e-9):5.1f}%")
        print(f"  {'other':<10}{wall - sum(brk.values()):8.2f} ms (host syncs, gaps)")
    if rows and not a.no_append and dev.type == "cuda":
        print("appended to", H.results_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())

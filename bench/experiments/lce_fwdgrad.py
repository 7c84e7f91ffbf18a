"""Experiment: how fast is linear cross-entropy with 6NHV FLOPs (no recompute) on cuBLAS?

Token-chunked, gradients computed in the forward (the Liger/QuACK schedule with a sane chunk):
per chunk of C rows, logits = h_c W^T + b (cuBLAS, bf16, C x V), one Triton row kernel turns
them in place into (softmax - onehot) / n_valid and writes the row loss, then
dH_c = dZ W (cuBLAS) and dW += dZ^T h_c in fp32 (torch.mm out_dtype), db += colsum(dZ).
The backward only scales by grad_output (device scalar, no sync).
This is a measurement of the attainable speed at XLM-R shapes before building it into
xf.ops.linear_cross_entropy; run:  python -m bench.experiments.lce_fwdgrad [--breakdown]
(--breakdown: milliseconds per phase of the forward, from CUDA events, with logits rows of
V = 250,002 columns as here and with rows padded to 250,048 columns as the built-in schedule
has them: 500,004-byte rows are not 16-byte aligned, the suspected cause of the ~200 TFLOP/s
this experiment measured on 2026-11-23).
The schedule is now built in: XLMR_FAST_LCE_SCHEDULE=tokenchunk (kernels/triton/
linear_cross_entropy.py lce_fwdgrad; bench row ours-triton-tokenchunk).
"""
from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl

from bench import harness
from bench.bench_linear_cross_entropy import make, torch_eager


@triton.jit
def _softmax_grad_rows(Z, T, LOSS, INV_N, stride, V, ignore_index, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = Z + row * stride
    tgt = tl.load(T + row)
    m = -float("inf")
    s = 0.0
    for v0 in range(0, V, BLOCK):
        cols = v0 + tl.arange(0, BLOCK)
        z = tl.load(z_row + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    valid = tgt != ignore_index
    inv_n = tl.load(INV_N)
    scale = tl.where(valid, inv_n, 0.0)
    z_t = tl.load(z_row + tl.where(valid, tgt, 0)).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - z_t, 0.0))
    for v0 in range(0, V, BLOCK):
        cols = v0 + tl.arange(0, BLOCK)
        z = tl.load(z_row + cols, mask=cols < V, other=0.0).to(tl.float32)
        g = tl.exp(z - lse) - tl.where(cols == tgt, 1.0, 0.0)
        tl.store(z_row + cols, (g * scale).to(Z.dtype.element_ty), mask=cols < V)


_ACC_MODE = []


def _acc_fp32(acc, a, b):
    """acc (fp32) += a @ b with bf16 operands: cuBLAS beta=1 into fp32 if torch allows it."""
    if not _ACC_MODE:
        probe = torch.randn(64, 64, device=acc.device)
        x = torch.randn(64, 32, device=acc.device, dtype=torch.bfloat16)
        y = torch.randn(32, 64, device=acc.device, dtype=torch.bfloat16)
        want = probe + x.float() @ y.float()
        try:
            torch.addmm(probe, x, y, out_dtype=torch.float32, out=probe)
            _ACC_MODE.append("addmm_out" if torch.allclose(probe, want, atol=1e-2) else "mm")
        except Exception as e:
            print("addmm out_dtype in place unavailable:", e)
            _ACC_MODE.append("mm")
        print("fp32 accumulate mode:", _ACC_MODE[0])
    if _ACC_MODE[0] == "addmm_out":
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc += torch.mm(a, b, out_dtype=torch.float32)


class FwdGradLCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, t, chunk):
        N, H = h.shape
        V = w.shape[0]
        n_valid = (t != -100).sum()
        inv_n = (1.0 / n_valid.clamp(min=1).float()).reshape(1)
        dw = torch.zeros(V, H, dtype=torch.float32, device=h.device)
        db = torch.zeros(V, dtype=torch.float32, device=h.device) if b is not None else None
        dh = torch.empty_like(h)
        loss = torch.empty(N, dtype=torch.float32, device=h.device)
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            hc = h[s:e]
            z = torch.addmm(b, hc, w.t()) if b is not None else hc @ w.t()
            _softmax_grad_rows[(e - s,)](z, t[s:e], loss[s:e], inv_n, z.stride(0), V, -100,
                                        BLOCK=4096, num_warps=16)
            torch.mm(z, w, out=dh[s:e])
            _acc_fp32(dw, z.t(), hc)
            if db is not None:
                db += z.sum(0, dtype=torch.float32)
        ctx.save_for_backward(dh, dw, db)
        ctx.has_b = b is not None
        return loss.sum() * inv_n[0]

    @staticmethod
    def backward(ctx, g):
        dh, dw, db = ctx.saved_tensors
        return (dh * g.to(dh.dtype), dw.mul_(g),
                db.mul_(g) if ctx.has_b else None, None, None)


def breakdown(h, w, b, t, chunk, pad=False):
    """ms per phase of one FwdGradLCE forward, summed over chunks (CUDA events around each
    phase; phases serialise on the stream, so the sum is close to the whole): where the 2026-11-23
    run's 59-64 ms at N=8192 H=1024 went, against ~21 ms of GEMMs at 600 TFLOP/s."""
    N, H = h.shape
    V = w.shape[0]
    inv_n = (1.0 / (t != -100).sum().clamp(min=1).float()).reshape(1)
    dw = torch.zeros(V, H, dtype=torch.float32, device=h.device)
    dh = torch.empty_like(h)
    loss = torch.empty(N, dtype=torch.float32, device=h.device)
    names = ("logits GEMM", "softmax-grad rows", "dH GEMM", "dW GEMM fp32 +=", "db colsum")
    spent = dict.fromkeys(names, 0.0)
    vp = (V + 63) // 64 * 64 if pad else V
    buf = torch.empty(chunk, vp, dtype=h.dtype, device=h.device)
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        hc = h[s:e]
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(len(names) + 1)]
        ev[0].record()
        z = torch.addmm(b, hc, w.t(), out=buf[:e - s, :V])
        ev[1].record()
        _softmax_grad_rows[(e - s,)](z, t[s:e], loss[s:e], inv_n, z.stride(0), V, -100,
                                    BLOCK=4096, num_warps=16)
        ev[2].record()
        torch.mm(z, w, out=dh[s:e])
        ev[3].record()
        _acc_fp32(dw, z.t(), hc)
        ev[4].record()
        z.sum(0, dtype=torch.float32)
        ev[5].record()
        torch.cuda.synchronize()
        for i, n in enumerate(names):
            spent[n] += ev[i].elapsed_time(ev[i + 1])
    return spent


def main():
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 0
    rows = []
    if "--breakdown" in sys.argv:
        for N, H in ((4915, 768), (8192, 1024)):
            h, w, b, t = make(N, H, 250002, torch.bfloat16)
            for chunk, pad in ((1024, False), (1024, True), (4096, True)):
                breakdown(h, w, b, t, chunk, pad)  # warm up (Triton compile, cuBLAS heuristics)
                spent = breakdown(h, w, b, t, chunk, pad)
                print(f"N{N} H{H} chunk {chunk} {'padded' if pad else 'V-wide'} rows: "
                      + ", ".join(
                    f"{k} {v:.2f} ms" for k, v in spent.items())
                    + f"; total {sum(spent.values()):.2f} ms", flush=True)
            del h, w, b, t
            torch.cuda.empty_cache()
        return 0
    for N, H in ((4915, 768), (8192, 1024)):
        V = 250002
        h, w, b, t = make(N, H, V, torch.bfloat16)
        w32 = w.float()  # the model keeps fp32 master weights under autocast: grad is fp32
        shape = f"N{N}_H{H}_V{V}_bf16"
        ref = torch_eager(h.float(), w32, b.float(), t)
        for chunk in (1024, 2048, 4096):
            def fn(hh, ww, bb, tt, chunk=chunk):
                return FwdGradLCE.apply(hh, ww.to(torch.bfloat16), bb, tt, chunk)
            hh = h.detach().requires_grad_()
            ww = w32.detach().requires_grad_()
            bb = b.detach().requires_grad_()
            loss = fn(hh, ww, bb, t)
            loss.backward()
            print(f"{shape} chunk {chunk}: loss {loss.item():.5f} vs fp32 {ref.item():.5f}",
                  flush=True)

            def call(t=t):
                hh.grad = ww.grad = bb.grad = None
                fn(hh, ww, bb, t).backward()
            ms = harness.time_ms(call, warmup=2, rep=10)
            peak = harness.peak_mb(call)
            rows.append(harness.row("linear_cross_entropy", f"exp-fwdgrad-c{chunk}", "full",
                                    shape, ms, flops=6 * N * H * V, peak=peak,
                                    note="experiment: cuBLAS chunks, grads in forward"))
            print(rows[-1], flush=True)
        del h, w, b, t, w32
        torch.cuda.empty_cache()
    harness.print_table(rows)
    harness.append_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark xf.ops.bias_gelu at XLM-R shapes: T = 64 x 512 = 32768 rows, F = 3072 / 4096.

Standalone providers (same inputs, one process):
  eager      x + bias then F.gelu (exact erf), torch eager
  compile    torch.compile of that same function
  ours       xf.ops.bias_gelu (Triton)
  gelu_only  F.gelu(x) alone, eager: what the model pays when the bias rides in the GEMM
             (addmm's bias epilogue). Informational: ours must beat it to be worth un-fusing
             the bias from the GEMM.
In-context ("ctx" shapes): the FFN up-projection h (T x H) -> F with the activation:
  eager      F.gelu(F.linear(h, W, b))            (bias in the cuBLAS GEMM)
  compile    torch.compile of that same function
  ours       bias_gelu(F.linear(h, W), b)         (bias moved into our kernel)
Modes: fwd (inputs require grad) and fwd+bwd, each timed eagerly (calls enqueued back to back)
and as "(graph)": device time alone, 10 calls replayed from one CUDA graph. GB/s counts the
op's minimal traffic at bf16: fwd reads x, writes y (2 T F elements); bwd reads dy, x, writes
dx (3 T F elements); the note gives it as a share of the measured HBM copy bandwidth (the
issue's goal: 85%). No GB/s for the in-context rows (GEMM-bound).
The issue's rule: keep the fused op in the model only where it beats BOTH eager and compile.
Run: python -m bench.bench_bias_gelu
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import harness as H

OP = "bias_gelu"
T = 64 * 512


def _eager(x, b):
    return F.gelu(x + b)


def _ctx_eager(h, W, b):
    return F.gelu(F.linear(h, W, b))


def main():
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 0
    from xlmr_fast.ops.bias_gelu import bias_gelu

    dtype = torch.bfloat16
    elt = torch.finfo(dtype).bits // 8
    rows = []

    def bench(name, mode, shape, fn, inputs, dy, nbytes=None, flops=None):
        def fwd():
            return fn(*inputs)

        def fwdbwd():
            return torch.autograd.grad(fn(*inputs), inputs, dy)

        call = fwd if mode == "fwd" else fwdbwd
        try:
            ms = H.time_ms(call, warmup=10, rep=50)
            rows.append(H.row(OP, name, mode, shape, ms, bytes_moved=nbytes, flops=flops,
                              peak=H.peak_mb(call), note=H.hbm_note(nbytes, ms)))
            ms = H.device_ms(call)
            rows.append(H.row(OP, name, mode + "(graph)", shape, ms, bytes_moved=nbytes,
                              flops=flops, note=H.hbm_note(nbytes, ms)))
        except Exception as e:  # a provider failing must not hide the others
            print(f"{name} {mode} {shape}: failed: {type(e).__name__}: {e}")

    compiled = torch.compile(_eager)
    compiled_ctx = torch.compile(_ctx_eager)
    for Hd, Fd in ((768, 3072), (1024, 4096)):
        shape = f"T={T},F={Fd},bf16"
        x = torch.randn(T, Fd, device="cuda", dtype=dtype, requires_grad=True)
        b = (0.5 * torch.randn(Fd, device="cuda")).to(dtype).requires_grad_()
        dy = torch.randn(T, Fd, device="cuda", dtype=dtype)
        for mode, nbytes in (("fwd", 2 * T * Fd * elt), ("fwd+bwd", 5 * T * Fd * elt)):
            bench("eager", mode, shape, _eager, (x, b), dy, nbytes)
            bench("compile", mode, shape, compiled, (x, b), dy, nbytes)
            bench("ours", mode, shape, bias_gelu, (x, b), dy, nbytes)
            bench("gelu_only", mode, shape, F.gelu, (x,), dy, nbytes)
        # In context: the up-projection GEMM plus its activation.
        cshape = f"ctx T={T},H={Hd},F={Fd},bf16"
        h = torch.randn(T, Hd, device="cuda", dtype=dtype, requires_grad=True)
        W = (0.02 * torch.randn(Fd, Hd, device="cuda")).to(dtype).requires_grad_()
        gemm = 2 * T * Hd * Fd
        for mode, fl in (("fwd", gemm), ("fwd+bwd", 3 * gemm)):
            bench("eager", mode, cshape, _ctx_eager, (h, W, b), dy, flops=fl)
            bench("compile", mode, cshape, compiled_ctx, (h, W, b), dy, flops=fl)
            bench("ours", mode, cshape, lambda h, W, b: bias_gelu(F.linear(h, W), b), (h, W, b),
                  dy, flops=fl)
    H.print_table(rows, baseline_provider=("eager", "compile"))
    # the model's choice: in context, where the bias leaves the GEMM for our kernel
    H.print_keep_summary(OP, rows, extra=("gelu_only",), verdict_shapes="ctx")
    print("rows appended to", H.append_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

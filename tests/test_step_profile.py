"""bench/step_profile.py: where a step's time goes. The category rules on real kernel names
(cuBLAS, SDPA, ATen, inductor, ours), the arithmetic of the summary (busy = union of
intervals, idle, per-step division, the LM-head split, GEMM TFLOP/s), the device path's
kernel-to-op attribution on recorded events, and a real CPU profile of a small model."""
import types
from collections import Counter

import pytest
import torch

from bench import step_profile as sp

OURS = sp.our_kernels()

NAMES = {
    "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN": sp.GEMM,
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_"
    "segment_k_off_kernel__5x_cublas": sp.GEMM,
    "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8>"
    "(cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8::Params)": sp.GEMM,
    "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float>(...)": sp.GEMM,
    "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<"
    "cutlass::bfloat16_t, cutlass::arch::Sm80, true, 64, 64, 64, true, true>::Params)":
        "attention (torch SDPA)",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, "
    "false, cutlass::bfloat16_t>, false, false, false, false, true, true, false>(...)":
        "attention (torch SDPA)",
    "cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x64_4x1x1_kernel0_0":
        "attention (torch SDPA)",
    "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float, false>"
    "(int, float, float const*, float const*, float const*, float*, float*, float*)":
        "layernorm (torch)",
    "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::"
    "TensorIteratorBase&, at::native::GeluType)::{lambda()#2}::operator()() const::{lambda()#2}"
    "::operator()() const::{lambda(c10::BFloat16)#1}, std::array<char*, 2ul> >(...)":
        "gelu (torch)",
    "void at::native::(anonymous namespace)::fused_dropout_kernel_vec<c10::BFloat16, float, "
    "unsigned int, 1, 4, bool>(...)": "dropout (torch)",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::"
    "BFloat16>, std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, "
    "std::array<char*, 3ul>)": "elementwise (torch)",
    "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::"
    "TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#7}(...)":
        "copy / memset / cat",
    "Memcpy DtoD (Device -> Device)": "copy / memset / cat",
    "Memset (Device)": "copy / memset / cat",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_"
    "wrapper_t<float, at::native::sum_functor<float, float, float>::operator()(at::TensorIterator"
    "&)::{lambda(float, float)#1}>, unsigned int, float, 4, 4> >(...)": "reduction (torch)",
    "void at::native::(anonymous namespace)::cunn_SoftMaxForward<8, c10::BFloat16, float, "
    "c10::BFloat16, at::native::(anonymous namespace)::LogSoftMaxForwardEpilogue>(...)":
        "softmax / cross-entropy (torch)",
    "void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, "
    "float, long>(...)": "softmax / cross-entropy (torch)",
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous "
    "namespace)::TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor"
    "<float, 4, (at::native::ADAM_MODE)1, false>, ...>(...)": "optimizer",
    "void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, "
    "unsigned int, 2, 2, -2, true>(...)": "embedding / index",
    "triton_poi_fused_add_native_layer_norm_0": "inductor (torch.compile)",
    "triton_red_fused__to_copy_sum_3": "inductor (torch.compile)",
    "_attn_fwd": "ours: attention (Triton)",
    "_attn_bwd_dkdv": "ours: attention (Triton)",
    "_lce_fwd_kernel": "ours: linear_cross_entropy (Triton)",
    "_tc_grad_kernel": "ours: linear_cross_entropy (Triton)",
    "_mlm_mask_kernel": "ours: mlm_mask (Triton)",
    "_adln_bwd_kernel": "ours: add_dropout_layernorm (Triton)",
    "_bias_gelu_fwd_kernel": "ours: bias_gelu (Triton)",
    "void xlmr_fast::(anonymous namespace)::chunk_stats_kernel<__nv_bfloat16>(__nv_bfloat16 "
    "const*, long, float const*, long const*, long, long, int, float*, float*, float*, float*)":
        "ours: linear_cross_entropy (CUDA C++)",
    "void xlmr_fast::(anonymous namespace)::mlm_mask_kernel<long>(long const*, ...)":
        "ours: mlm_mask (CUDA C++)",
    "xlmr_fast::linear_cross_entropy_fwd": "ours: linear_cross_entropy (op)",
    "xlmr_fast_C::mlm_mask": "ours: mlm_mask (op)",
    "xlmr_fast_C::gather_blocks": "ours: gather_blocks (op)",
    "aten::mm": sp.GEMM,
    "aten::native_layer_norm": "layernorm (torch)",
    "aten::view": "views / allocation (host only)",
    "aten::add_": "elementwise (torch)",
    "some_unknown_kernel_name": "other",
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_categorize_real_kernel_names(name):
    assert sp.categorize(name, OURS) == NAMES[name]


def test_our_kernel_names_are_unique_across_ops():
    # A profiler shows a Triton kernel by its function name only: two ops with a kernel of
    # the same name (both layer ops had _fwd_kernel / _bwd_kernel) could not be told apart.
    import importlib

    from triton.runtime.jit import JITFunction
    seen = Counter()
    for op in sp.OPS:
        mod = importlib.import_module(f"xlmr_fast.kernels.triton.{op}")
        seen.update(sp.launched_kernels(mod, JITFunction))
    assert not [n for n, c in seen.items() if c > 1]
    assert "_keep" not in OURS  # an inlined @triton.jit helper, never launched
    for k in ("_attn_fwd", "_lce_dlogits_kernel", "_mlm_mask_kernel", "_adln_fwd_kernel",
              "_bias_gelu_bwd_kernel", "chunk_grad_kernel", "mlm_mask_kernel"):
        assert k in OURS, k


def _k(name, s, e, wide=False, flops=0, counted=None):
    return sp.Kernel(name, float(s), float(e), wide, flops,
                     flops > 0 if counted is None else counted)


def test_summary_arithmetic():
    # two steps; times in us. GEMM 0-100 and a vocab-wide GEMM 100-300 (2e9 FLOP), our
    # attention 250-350 overlapping it (busy is a union, not a sum), a gap 350-500, a copy.
    ks = [_k("nvjet_a", 0, 100, flops=10**9), _k("nvjet_b", 100, 300, wide=True, flops=2 * 10**9),
          _k("_attn_fwd", 250, 350), _k("Memset (Device)", 500, 510),
          _k("nvjet_a", 1000, 1100, flops=10**9),
          _k("nvjet_c", 1200, 1300, flops=0)]  # an uncounted op's GEMM: time, not rate
    s = sp.summarize(ks, steps=2, ours=OURS)
    assert s.span_ms == pytest.approx(1.3 / 2)
    assert s.busy_ms == pytest.approx((350 + 10 + 100 + 100) / 1e3 / 2)
    assert s.idle_ms == pytest.approx(s.span_ms - s.busy_ms)
    rows = {r[0]: r for r in s.rows}
    assert rows[sp.GEMM][1:] == pytest.approx((0.15, 1.5, 2 * 10**9 / 200e-6 / 1e12))
    assert rows[sp.LM_HEAD][1:] == pytest.approx((0.1, 0.5, 2 * 10**9 / 200e-6 / 1e12))
    assert rows["ours: attention (Triton)"][1:3] == pytest.approx((0.05, 0.5))
    assert rows["ours: attention (Triton)"][3] is None  # rates only for cuBLAS GEMMs
    assert [r[1] for r in s.rows] == sorted((r[1] for r in s.rows), reverse=True)
    assert s.top[0][0] == "nvjet_a" and s.top[0][2:] == pytest.approx((0.1, 1.0))
    assert s.top[-1][0] == "Memset (Device)"
    text = sp.format_summary(s, "t")
    assert "span 0.650 ms" in text
    assert [ln.split()[-1] for ln in text.splitlines() if sp.LM_HEAD in ln][0] == "10"  # TFLOP/s
    with pytest.raises(ValueError, match="steps"):
        sp.summarize(ks, steps=0, ours=OURS)
    assert sp.summarize([], steps=1, ours=OURS).busy_ms == 0.0


def test_summary_with_host_intervals():
    # CPU profiles: per-op self times as kernels, busy from the outermost ops
    ks = [_k("aten::mm", 0, 40), _k("aten::view", 50, 55), _k("aten::add", 60, 70)]
    s = sp.summarize(ks, steps=1, ours=OURS, busy_intervals=[(0, 80), (100, 120)])
    assert s.span_ms == pytest.approx(0.12) and s.busy_ms == pytest.approx(0.1)


def _ev(name, dev, s, e, kernels=(), shapes=(), flops=None, **kw):
    from torch.autograd import DeviceType
    return types.SimpleNamespace(
        name=name, device_type=DeviceType.CUDA if dev else DeviceType.CPU,
        time_range=types.SimpleNamespace(start=s, end=e), input_shapes=list(shapes),
        flops=flops, is_async=False, cpu_children=[], cpu_parent=None,
        kernels=[types.SimpleNamespace(name=n, duration=d) for n, d in kernels], **kw)


def test_device_events_take_their_launching_op():
    # The device path: each kernel takes the vocabulary flag and the FLOPs of the aten op
    # that launched it (matched by name and duration); record_function ranges mirrored on
    # the device timeline are not kernels; a Triton kernel without an op keeps neither.
    V = 250002
    events = [
        _ev("aten::mm", False, 0, 5, kernels=[("nvjet_x", 30.0)], shapes=[[8192, 768], [768, V]],
            flops=2 * 8192 * 768 * V),
        _ev("aten::mm", False, 6, 9, kernels=[("nvjet_x", 20.0)], shapes=[[8192, 768], [768, 768]],
            flops=2 * 8192 * 768 * 768),
        _ev("nvjet_x", True, 10, 40), _ev("nvjet_x", True, 40, 60),
        _ev("_lce_fwd_kernel", True, 60, 90),
        _ev("xlmr_fast.lm_head", True, 0, 100, is_user_annotation=True),
        _ev("ProfilerStep", True, 0, 100, activity_type="gpu_user_annotation"),
    ]
    prof = types.SimpleNamespace(events=lambda: events)
    ks, busy = sp.kernels_from_profile(prof, cuda=True, vocab=V)
    assert busy is None
    assert [(k.name, k.vocab_wide, k.flops, k.counted) for k in ks] == [
        ("nvjet_x", True, 2 * 8192 * 768 * V, True), ("nvjet_x", False, 2 * 8192 * 768 * 768, True),
        ("_lce_fwd_kernel", False, 0, False)]
    s = sp.summarize(ks, steps=1, ours=OURS)
    assert {r[0] for r in s.rows} == {sp.LM_HEAD, sp.GEMM, "ours: linear_cross_entropy (Triton)"}
    # one kernel name in two categories is two lines of the top list
    assert sorted(t[1] for t in s.top if t[0] == "nvjet_x") == sorted([sp.GEMM, sp.LM_HEAD])


def _tiny_model():
    import xlmr_fast as xf
    cfg = xf.XLMRConfig(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4, ffn_size=256,
                        max_position_embeddings=130)
    torch.manual_seed(0)
    m = xf.XLMRForMaskedLM(cfg).train()
    ids = torch.randint(4, 1000, (4, 64))
    ids[1, 40:] = cfg.pad_token_id
    labels = torch.full_like(ids, -100)
    labels[:, 3::7] = ids[:, 3::7]
    labels[ids == cfg.pad_token_id] = -100
    return m, ids, labels


def test_cpu_profile_of_a_small_model():
    m, ids, labels = _tiny_model()
    s = sp.profile(lambda: m(ids, labels=labels).loss.backward(), steps=2, warmup=1,
                   vocab=1000, device=torch.device("cpu"))
    rows = {r[0]: r for r in s.rows}
    assert rows[sp.GEMM][3] > 0 and rows[sp.LM_HEAD][3] > 0  # FLOPs seen, rates computed
    # self times of nested ops add up to the outermost ops' time: the busy time
    total = sum(r[1] for r in s.rows)
    assert total == pytest.approx(s.busy_ms, rel=0.05)
    assert 0 < s.busy_ms <= s.span_ms
    csv_rows = sp.rows_for_csv(s, "tiny", "B4xT64")
    assert csv_rows[0]["mode"] == "span" and {r["op"] for r in csv_rows} == {"model_step_profile"}
    assert {r["mode"] for r in csv_rows[1:]} == set(rows)


def test_bench_model_profile_runs_its_providers_on_cpu(capsys):
    from bench import bench_model
    m, ids, labels = _tiny_model()
    provs = {"tiny": lambda i, lab: m(i, labels=lab).loss}
    rows = bench_model.run_profile(provs, [("B4xT64", ids, labels)], 1000, steps=1,
                                   on_done=lambda: m.zero_grad(set_to_none=True),
                                   device=torch.device("cpu"))
    assert rows and {r["provider"] for r in rows} == {"tiny"}
    assert any(r["mode"] == sp.LM_HEAD for r in rows)
    assert "step profile: tiny B4xT64" in capsys.readouterr().out
    assert all(p.grad is None for p in m.parameters())


def test_bench_model_profile_saves_each_provider_when_done(monkeypatch, tmp_path):
    # a device call's time limit in the second provider keeps the first one's rows
    import csv

    from bench import bench_model
    out = tmp_path / "rows.csv"
    monkeypatch.setenv("XLMR_FAST_BENCH_OUT", str(out))
    m, ids, labels = _tiny_model()

    def killed(i, lab):
        raise KeyboardInterrupt("time limit")
    provs = {"tiny": lambda i, lab: m(i, labels=lab).loss, "second": killed}
    with pytest.raises(KeyboardInterrupt):
        bench_model.run_profile(provs, [("B4xT64", ids, labels)], 1000, steps=1,
                                device=torch.device("cpu"), save=True)
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert got and {r["provider"] for r in got} == {"tiny"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_profile_sees_cublas_and_ours():
    x = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(2, 4, 128, 64, device="cuda", dtype=torch.bfloat16)
    import xlmr_fast as xf

    def step():
        with torch.profiler.record_function("xf_test_range"):  # mirrored on the GPU timeline
            x @ w
            xf.ops.attention(q, q, q)
    s = sp.profile(step, steps=3, warmup=2, device=torch.device("cuda"))
    rows = {r[0]: r for r in s.rows}
    assert "xf_test_range" not in [t[0] for t in s.top]  # an annotation is not a kernel
    assert rows[sp.GEMM][2] == pytest.approx(1.0) and rows[sp.GEMM][3] > 1
    assert "ours: attention (Triton)" in rows
    assert 0 < s.busy_ms <= s.span_ms


def test_bench_train_kernel_profile_on_cpu(capsys):
    # the trainer's whole step (loader, device masking, model, clipping, AdamW) profiled
    from bench import bench_train
    assert bench_train.main(["--device", "cpu", "--presets", "tiny", "--micro", "2", "--seq", "32",
                             "--steps", "1", "--accum", "2", "--providers", "ours",
                             "--tokens", "50000", "--no-append", "--kernel-profile"]) == 0
    out = capsys.readouterr().out
    assert "step profile: ours tiny B2xT32, one optimizer step = 2 micro-steps" in out
    assert "optimizer" in out and sp.LM_HEAD in out

"""Every Triton kernel launch our ops make today compiles for Hopper (sm_90), on a machine
without a GPU: bench/compile_report.py records the launches of the host wrappers at XLM-R
shapes and compiles them with Triton's own specialisation. The interpreter tests check what
the kernels compute; this checks that the real compiler accepts them at the real configs
(the interpreter runs Python semantics and misses, e.g., layout or type errors in codegen).
Speed figures from the report (registers, spills, pipelining) are printed, never asserted; the
one code-shape property asserted is that the token-chunk passes over the stored logits use
vector accesses (a mask by V = 250,002 made them one 2-byte access per element). The fixed-config
launches are also compiled for sm_86, whose 99 KB of shared memory per block is the smallest of
the Ampere / Ada cards (A10, L4, L40S, RTX 3090 / 4090) that XLM-R fine-tuning often runs on,
and for sm_100 (B200), whose codegen differs again."""
import io
import warnings

import pytest
import torch

from bench import compile_report


def _internals():
    try:
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
        return hasattr(JITFunction, "_pack_args")
    except Exception:
        return False


@pytest.mark.skipif(not _internals(), reason="this Triton lacks the internals compile_report uses")
@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="on a GPU machine the GPU tests compile and run the kernels for real")
def test_every_default_launch_compiles_for_sm90():
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = compile_report.report(list(compile_report.OPS), defaults=True, out=out)
    # every launch sets enable_fp_fusion itself (kernels/triton LAUNCH): Triton 3.9 warns when
    # it is left to the default, which Triton 3.10 changes
    assert not [w for w in caught if "FP_FUSION" in str(w.message)]
    print(out.getvalue())
    kernels = {(r["op"], r["kernel"]) for r in rows}
    assert {("attention", k) for k in ("_attn_fwd", "_attn_bwd_pre", "_attn_bwd_dkdv",
                                       "_attn_bwd_dq")} <= kernels
    assert {("linear_cross_entropy", k) for k in ("_lce_fwd_kernel", "_lce_dlogits_kernel",
                                                  "_mm_kernel", "_tc_stats_kernel",
                                                  "_tc_grad_kernel")} <= kernels
    assert ("mlm_mask", "_mlm_mask_kernel") in kernels
    # the layer ops: every config their autotuners may pick on a GPU
    assert {("add_dropout_layernorm", "_adln_fwd_kernel"), ("add_dropout_layernorm",
            "_adln_bwd_kernel"), ("bias_gelu", "_bias_gelu_fwd_kernel"),
            ("bias_gelu", "_bias_gelu_bwd_kernel")} <= kernels
    # mask/varlen x dropout for attention, and head dims 32 and 128; both XLM-R widths and
    # dW/dX for the LM head
    assert len({r["shape"] for r in rows if r["op"] == "attention"}) == 6
    assert {r["launch"].split()[0] for r in rows if r["op"] == "linear_cross_entropy"} == {
        "fwd", "dlogits", "dW", "dX", "tc-stats", "tc-grad"}
    assert all(r["regs"] > 0 for r in rows), "ptxas did not report registers"
    # a kernel over sm_90's shared memory compiles but fails to load on the GPU
    big = [(r["op"], r["launch"], r["config"], r["smem"]) for r in rows
           if r["smem"] > compile_report.MAX_SMEM[90]]
    assert not big, big
    tc = [r for r in rows if r["kernel"] in ("_tc_stats_kernel", "_tc_grad_kernel")]
    assert tc and all(r["narrow"] <= 2 for r in tc), [(r["kernel"], r["narrow"]) for r in tc]


@pytest.mark.skipif(not _internals(), reason="this Triton lacks the internals compile_report uses")
@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="on a GPU machine the GPU tests compile and run the kernels for real")
@pytest.mark.parametrize("arch", [86, 100])
def test_fixed_config_launches_compile_and_fit_other_gpus(arch):
    """The launches whose block configs come from our tables (attention, the LM head, mlm_mask),
    at XLM-R shapes, compiled for another architecture than the H100's.
    sm_86: Triton's codegen is the same for sm_80, sm_86 and sm_89 (mma.sync, cp.async
    pipelining) and sm_86 / sm_89 allow the least shared memory per block (99 KB: A10, L4, L40S,
    RTX 3090 / 4090; an A100 163 KB). The H100-sized tiles (128 x 256 x 64, 3 stages: 144 KB on
    sm_90) would take 96 KB there (Ampere codegen keeps one stage fewer in shared memory) but
    spill 464 bytes, so the measured table is not used there.
    sm_100 (B200): Blackwell codegen (tcgen05), a different path through Triton's compiler.
    Over the limit a launch compiles, then fails with OutOfResources on the card. The layer ops
    are left out: their autotuners skip a config that does not fit (Triton's Autotuner catches
    OutOfResources) and compile the others."""
    rows = compile_report.report(["attention", "linear_cross_entropy", "mlm_mask"],
                                 defaults=True, out=io.StringIO(), arch=arch)
    assert {r["kernel"] for r in rows} >= {"_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq",
                                           "_lce_fwd_kernel", "_lce_dlogits_kernel",
                                           "_mm_kernel", "_mlm_mask_kernel"}
    assert all(r["regs"] > 0 for r in rows), "ptxas did not report registers"
    limit = compile_report.MAX_SMEM[arch]
    big = [(r["op"], r["shape"], r["launch"], r["config"], r["smem"]) for r in rows
           if r["smem"] > limit]
    assert not big, big
    # no Hopper wgmma waits: the report really compiled for this architecture
    assert all(r["mma_wait"] == "-" for r in rows)
    # the LM head's H100-measured tiles (TUNED_BY_SHAPE at N8192 H1024: BLOCK_V 256) are not
    # used off sm_90: entry 0, 128 wide
    goal = [r for r in rows if r["op"] == "linear_cross_entropy" and r["shape"] == "N8192 H1024"
            and r["launch"].endswith("default") and not r["kernel"].startswith("_tc_")]
    assert goal and all("V=128" in r["config"] or "NN=128" in r["config"] for r in goal), goal
    if arch == 86:
        assert all(r["spill"] == 0 for r in goal), goal

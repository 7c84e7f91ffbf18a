"""MFU bookkeeping units: the hint for an unknown GPU names the real config key and its unit."""
import logging

from xlmr_fast.train import metrics as M
from xlmr_fast.train.config import RunSection


def test_unknown_gpu_hint_names_the_config_key_and_unit(caplog):
    assert "peak_tflops" in RunSection.__dataclass_fields__
    with caplog.at_level(logging.WARNING, logger=M.__name__):
        assert M.peak_flops_for_name("Imaginary GPU 9001 (units test)") is None
    # the training config has run.peak_tflops (TFLOP/s), no peak_flops key: a user following
    # the hint must find it, and in the right unit (peak_flops() itself takes FLOP/s)
    assert "run.peak_tflops" in caplog.text and "TFLOP/s" in caplog.text


def test_mfu_of_one_device_and_of_w_ranks():
    fpt = 739_563_264.0  # base, T = 512
    one = M.mfu(580e3, fpt, 790e12)
    assert abs(one - 0.543) < 1e-3
    # 8 ranks at the same speed: 8x the tokens against 8x the peak, the same MFU
    assert abs(M.mfu(8 * 580e3, fpt, 8 * 790e12) - one) < 1e-12

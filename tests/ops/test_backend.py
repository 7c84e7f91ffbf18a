"""xlmr_fast.ops._backend: the environment switches every op's dispatch reads."""
import pytest
import torch

from xlmr_fast.ops import _backend
from xlmr_fast.ops.attention import attention_backend


def test_forced_parses_the_variable(monkeypatch):
    monkeypatch.delenv("XLMR_FAST_BACKEND", raising=False)
    assert _backend.forced() is None
    for raw, want in (("", None), ("  ", None), ("reference", "reference"),
                      (" Triton ", "triton"), ("CUDA", "cuda")):
        monkeypatch.setenv("XLMR_FAST_BACKEND", raw)
        assert _backend.forced() == want, raw


def test_forced_typo_raises_instead_of_running_the_default(monkeypatch):
    # A misspelt backend must not be ignored: a benchmark or test that meant to force the
    # reference would otherwise silently measure/check the default backend.
    monkeypatch.setenv("XLMR_FAST_BACKEND", "refrence")
    with pytest.raises(ValueError, match="XLMR_FAST_BACKEND='refrence': expected one of"):
        _backend.forced()
    with pytest.raises(ValueError, match="expected one of"):  # and through an op's dispatch
        attention_backend(torch.zeros(1, 1, 2, 64))


def test_interpret_only_when_set_to_1(monkeypatch):
    # TRITON_INTERPRET=0 (or unset) is not the interpreter: CPU tensors are then not Triton's.
    for raw, want in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("TRITON_INTERPRET", raw)
        assert _backend.interpret() is want, raw
        assert _backend.triton_usable(torch.device("cpu")) is (want and
                                                                _backend.triton_importable())
    monkeypatch.delenv("TRITON_INTERPRET")
    assert _backend.interpret() is False
    assert _backend.triton_usable(torch.device("meta")) is False

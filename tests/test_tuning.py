"""Tuning files (xlmr_fast.tuning) and `xlmr-fast tune` (xlmr_fast.tune): format checks, where
the ops look and in which order, the choice rules, and that each op follows a tuned choice."""
import importlib
import json

import pytest
import torch

from xlmr_fast import tuning, tune
from xlmr_fast.cli import main as cli_main
from xlmr_fast.ops import _backend

NAME = "NVIDIA H100 80GB HBM3"
GPU = torch.device("cuda", 0)
lce_mod = importlib.import_module("xlmr_fast.ops.linear_cross_entropy")


def doc(choices, device=NAME):
    return {"format": 1, "device": device, "choices": choices}


@pytest.fixture
def places(monkeypatch, tmp_path):
    """Packaged and user tuning directories in tmp_path, this 'GPU' named NAME, no override."""
    packaged, cache = tmp_path / "packaged", tmp_path / "cache"
    packaged.mkdir()
    monkeypatch.setattr(tuning, "PACKAGED_DIR", packaged)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("XLMR_FAST_TUNING", raising=False)
    monkeypatch.setattr(_backend, "_cuda_device_name", lambda index: NAME)
    tuning.clear_cache()
    yield packaged, cache / "xlmr_fast" / "tuning"
    tuning.clear_cache()


def test_slug_and_key():
    assert tuning.slug(NAME) == "NVIDIA_H100_80GB_HBM3"
    assert tuning.slug("  ") == "unknown"
    assert tuning.key(1024, torch.bfloat16, torch.float32) == "1024,bfloat16,float32"


@pytest.mark.parametrize("bad,why", [
    ([], "not a JSON object"),
    ({"format": 2, "device": NAME, "choices": {}}, "format 2"),
    ({"format": 1, "choices": {}}, "no 'device'"),
    ({"format": 1, "device": NAME}, "no 'choices'"),
    (doc({"bias_gelu": ["fused"]}), "is not an object"),
    (doc({"bias_gelu": {"768,bfloat16": "yes"}}), r"'yes', expected one of \('fused', 'torch'\)"),
])
def test_validate_names_file_and_problem(tmp_path, bad, why):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=why) as e:
        tuning.read(path)
    assert str(path) in str(e.value)
    assert not (tmp_path / "w.json").exists()
    with pytest.raises(ValueError, match=why):   # write() checks before writing anything
        tuning.write(bad, tmp_path / "w.json")
    assert not (tmp_path / "w.json").exists()


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        tuning.read(tmp_path / "absent.json")
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"t.json: unreadable \(JSONDecodeError"):
        tuning.read(tmp_path / "t.json")


def test_packaged_files_are_readable_and_named_for_their_device():
    """xlmr_fast/tuned/<slug>.json is a device run's $OUT/tuning.json, committed: one the ops
    cannot read stops every run on that GPU at its first op, and one named for another slug
    (an H200's file as the H100's) is never read."""
    for path in sorted(tuning.PACKAGED_DIR.glob("*.json")):
        d = tuning.read(path)
        assert path.name == f"{tuning.slug(d['device'])}.json", (path, d["device"])


def test_unknown_knob_is_ignored(places):
    packaged, _ = places
    tuning.write(doc({"future_op": {"x": "anything"}, "bias_gelu": {"768,bfloat16": "fused"}}),
                 packaged / "NVIDIA_H100_80GB_HBM3.json")
    assert tuning.choices(NAME) == {"bias_gelu": {"768,bfloat16": "fused"}}
    with pytest.raises(KeyError, match="unknown tuning knob"):
        tuning.choice("future_op", GPU, "x")


def test_user_file_overrides_packaged_key_by_key(places, monkeypatch, tmp_path):
    packaged, user = places
    tuning.write(doc({"bias_gelu": {"768,bfloat16": "fused", "1024,bfloat16": "fused"},
                      "linear_cross_entropy.schedule": {"1024,bfloat16": "tokenchunk"}}),
                 packaged / "NVIDIA_H100_80GB_HBM3.json")
    assert tuning.choice("bias_gelu", GPU, "1024,bfloat16") == "fused"
    tuning.write(doc({"bias_gelu": {"1024,bfloat16": "torch"}}), tuning.user_path(NAME))
    assert tuning.user_path(NAME).parent == user
    assert tuning.choice("bias_gelu", GPU, "1024,bfloat16") == "torch"      # user's
    assert tuning.choice("bias_gelu", GPU, "768,bfloat16") == "fused"       # packaged
    assert tuning.choice("linear_cross_entropy.schedule", GPU, "1024,bfloat16") == "tokenchunk"
    assert tuning.choice("bias_gelu", GPU, "512,bfloat16") is None          # not tuned
    assert tuning.choice("bias_gelu", torch.device("cpu"), "768,bfloat16") is None
    # Another GPU whose name has the same slug: its file is not this GPU's.
    tuning.write(doc({"bias_gelu": {"768,bfloat16": "torch"}}, device="NVIDIA-H100-80GB-HBM3"),
                 tuning.user_path(NAME))
    assert tuning.choice("bias_gelu", GPU, "768,bfloat16") == "fused"
    # XLMR_FAST_TUNING=off: no file; =path: only that file, which must be this GPU's.
    for off in ("off", "0", "none", "OFF"):  # not a path named "off" (that `describe` would list)
        monkeypatch.setenv("XLMR_FAST_TUNING", off)
        assert tuning.sources(NAME) == []
    monkeypatch.setenv("XLMR_FAST_TUNING", "off")
    assert tuning.choices(NAME) == {}
    one = tuning.write(doc({"bias_gelu": {"768,bfloat16": "torch"}}), tmp_path / "one.json")
    monkeypatch.setenv("XLMR_FAST_TUNING", str(one))
    assert tuning.choices(NAME) == {"bias_gelu": {"768,bfloat16": "torch"}}
    other = tuning.write(doc({}, device="NVIDIA A100-SXM4-80GB"), tmp_path / "a100.json")
    monkeypatch.setenv("XLMR_FAST_TUNING", str(other))
    with pytest.raises(ValueError, match="a100.json .* measured on 'NVIDIA A100-SXM4-80GB'"):
        tuning.choices(NAME)
    monkeypatch.setenv("XLMR_FAST_TUNING", str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        tuning.choices(NAME)


def test_lce_follows_tuned_backend_and_schedule(places, monkeypatch):
    pytest.importorskip("triton")
    packaged, _ = places
    monkeypatch.setattr(lce_mod, "PREFERENCE", [("H100", None, None, "cuda")])
    monkeypatch.delenv("XLMR_FAST_LCE_SCHEDULE", raising=False)
    assert lce_mod.preferred_gpu_backend(GPU, 1024, torch.bfloat16) == "cuda"   # the table
    kern = lce_mod._kernels()
    assert lce_mod._schedule("cuda", 0, 1024, torch.bfloat16) == kern.SCHEDULE
    tuning.write(doc({"linear_cross_entropy.backend": {"1024,bfloat16": "triton"},
                      "linear_cross_entropy.schedule": {"1024,bfloat16": "tokenchunk",
                                                        "768,bfloat16": "recompute"}}),
                 packaged / "NVIDIA_H100_80GB_HBM3.json")
    assert lce_mod.preferred_gpu_backend(GPU, 1024, torch.bfloat16) == "triton"  # tuned
    assert lce_mod.preferred_gpu_backend(GPU, 768, torch.bfloat16) == "cuda"     # not tuned
    assert lce_mod._schedule("cuda", 0, 1024, torch.bfloat16) == "tokenchunk"
    assert lce_mod._schedule("cuda", 0, 768, torch.bfloat16) == "recompute"
    assert lce_mod._schedule("cpu", None, 1024, torch.bfloat16) == kern.SCHEDULE  # CPU: no file
    monkeypatch.setenv("XLMR_FAST_LCE_SCHEDULE", "recompute")                     # env wins
    assert lce_mod._schedule("cuda", 0, 1024, torch.bfloat16) == "recompute"


def test_attention_follows_tuned_backend(places, monkeypatch):
    """attention.backend sends a (layout, length bucket, heads, dropout, dtype) to SDPA where
    `xlmr-fast tune` measured SDPA faster; everything else, and any forcing, is unchanged."""
    from types import SimpleNamespace
    attn = importlib.import_module("xlmr_fast.ops.attention")
    packaged, _ = places
    monkeypatch.delenv("XLMR_FAST_BACKEND", raising=False)
    monkeypatch.setattr(attn, "_triton_refusal", lambda q, forced=False: None)
    bf = torch.bfloat16

    def q(T, heads=12, dtype=bf):  # what attention_backend reads of a CUDA tensor
        return SimpleNamespace(device=GPU, shape=(4, heads, T, 64), dtype=dtype)
    assert attn.attention_backend(q(100)) == ("triton", "supported")   # no file
    assert attn.attention_tuning_key("padded", 100, 12, False, bf) == \
        "padded,128,12,no-dropout,bfloat16"
    tuning.write(doc({"attention.backend": {
        "padded,128,12,no-dropout,bfloat16": "sdpa",
        "varlen,256,12,dropout,bfloat16": "sdpa",
        "padded,512,12,no-dropout,bfloat16": "triton"}}), packaged / "NVIDIA_H100_80GB_HBM3.json")
    backend, why = attn.attention_backend(q(100))
    assert backend == "sdpa" and "tuning file" in why and "max_seqlen <= 128" in why
    assert attn.attention_backend(q(128))[0] == "sdpa"
    assert attn.attention_backend(q(129))[0] == "triton"                 # bucket 256: not tuned
    assert attn.attention_backend(q(100), dropout_p=0.1)[0] == "triton"  # dropout: its own key
    assert attn.attention_backend(q(100, heads=16))[0] == "triton"       # heads: their own key
    assert attn.attention_backend(q(100, dtype=torch.float16))[0] == "triton"
    assert attn.attention_backend(q(512))[0] == "triton"
    assert attn.attention_backend(q(600))[0] == "triton"                 # longer: never tuned
    d128 = SimpleNamespace(device=GPU, shape=(4, 12, 100, 128), dtype=bf)
    assert attn.attention_backend(d128)[0] == "triton"                   # tuned at head dim 64
    packed = SimpleNamespace(device=GPU, shape=(1000, 12, 64), dtype=bf)
    cu = torch.zeros(3, dtype=torch.int32)
    assert attn.attention_backend(packed, cu_seqlens=cu, max_seqlen=200, dropout_p=0.1)[0] \
        == "sdpa"
    assert attn.attention_backend(packed, cu_seqlens=cu, max_seqlen=200)[0] == "triton"
    monkeypatch.setenv("XLMR_FAST_BACKEND", "triton")                    # forcing wins
    assert attn.attention_backend(q(100)) == ("triton", "XLMR_FAST_BACKEND=triton")
    monkeypatch.delenv("XLMR_FAST_BACKEND")
    monkeypatch.setenv("XLMR_FAST_TUNING", "off")                        # files off
    assert attn.attention_backend(q(100))[0] == "triton"
    cpu = SimpleNamespace(device=torch.device("cpu"), shape=(4, 12, 100, 64), dtype=bf)
    monkeypatch.delenv("XLMR_FAST_TUNING")
    assert attn.attention_backend(cpu)[0] == "triton"                    # CPU: no file


def test_describe_reports_tuned_paths(places):
    """The trainer's start-up line: what the LM head and layer ops will run on this GPU."""
    pytest.importorskip("triton")
    packaged, _ = places
    path = packaged / "NVIDIA_H100_80GB_HBM3.json"
    tuning.write(doc({"linear_cross_entropy.schedule": {"1024,bfloat16": "tokenchunk"},
                      "add_dropout_layernorm": {"1024,bfloat16,float32": "fused"},
                      "bias_gelu": {"1024,bfloat16": "torch"}}), path)
    line = tune.describe(GPU, 1024, torch.bfloat16)
    assert "tokenchunk schedule" in line, line
    assert "residual+dropout+LayerNorm: fused; bias+GELU: torch" in line
    assert str(path) in line
    line = tune.describe(GPU, 768, torch.bfloat16, fused_layer_ops=False)
    assert "recompute schedule" in line and "LayerNorm: torch" in line
    assert "tuning files: none" in tune.describe(torch.device("cpu"), 1024, torch.bfloat16)


def test_attention_candidates_time_a_batch_of_the_buckets_length(monkeypatch):
    """The batch `xlmr-fast tune` times for length T holds one sequence of exactly T (the others
    shorter), padded and packed: its times are filed under T's bucket, so a batch whose longest
    sequence fell short of T would time a shorter length under T's key."""
    from xlmr_fast import ops
    seen = []

    def fake(qkv, *, dropout_p=0.0, key_padding_mask=None, cu_seqlens=None, max_seqlen=None):
        seen.append((qkv.shape, key_padding_mask, cu_seqlens, max_seqlen))
        return qkv[:, 0] if cu_seqlens is not None else qkv[:, :, 0].transpose(1, 2)
    monkeypatch.setattr(ops, "attention_qkvpacked", fake)
    for varlen in (False, True):
        cands = tune.attention_candidates(torch.device("cpu"), 2, torch.float32, 40, 80, varlen,
                                          0.0)
        assert set(cands) == {"triton", "sdpa"}
        cands["sdpa"]()
    (shape_p, kpm, _, _), (shape_v, _, cu, max_seqlen) = seen
    valid = (~kpm).sum(1)
    assert shape_p[1] == 40 and valid.max() == 40 and valid.min() >= 20
    assert max_seqlen == 40 and cu.diff().max() == 40 and cu[-1] == shape_v[0]


# ---------------------------------------------------------------- choice rules
def test_pick_rules():
    assert tune.fastest({"a": 2.0, "b": 1.0, "c": "error: OOM"}) == "b"
    assert tune.fastest({"a": 2.0, "b": 1.0}, among=("a",)) == "a"
    assert tune.fastest({"c": "error: x"}) is None
    lce = tune.pick_lce
    assert lce({"triton/recompute": 3.0, "triton/tokenchunk": 2.0}) == {
        "linear_cross_entropy.schedule": "tokenchunk"}          # no cuda: backend not chosen
    assert lce({"triton/recompute": 3.0, "triton/tokenchunk": 2.0, "cuda": 1.0}) == {
        "linear_cross_entropy.schedule": "tokenchunk", "linear_cross_entropy.backend": "cuda"}
    assert lce({"triton/recompute": 3.0, "triton/tokenchunk": "error: OOM", "cuda": 4.0}) == {
        "linear_cross_entropy.schedule": "recompute", "linear_cross_entropy.backend": "triton"}
    assert lce({"triton/recompute": "error: a", "triton/tokenchunk": "error: b"}) == {}
    fused = tune.pick_fused
    assert fused({"fused": 1.0, "eager": 2.0, "compile": 1.5}) == "fused"
    assert fused({"fused": 1.0, "eager": 2.0, "compile": 0.9}) == "torch"   # must beat both
    assert fused({"fused": 1.0, "eager": 2.0, "compile": "error: no compiler"}) == "fused"
    assert fused({"fused": "error: x", "eager": 2.0}) == "torch"
    assert fused({"fused": 1.0, "eager": "error: y"}) is None


def test_measure_records_failures_and_goes_on():
    def boom():
        raise RuntimeError("CUDA out of memory.\nmore")
    times = tune.measure({"bad": boom, "ok": lambda: None}, torch.device("cpu"), 0, 2,
                         timer=lambda fn, dev, w, r: (fn(), 1.5)[1])
    assert times == {"bad": "error: RuntimeError: CUDA out of memory.", "ok": 1.5}
    assert tune.time_ms(lambda: None, torch.device("cpu"), 1, 3) >= 0.0


def test_measure_interleaves_the_candidates():
    # rep=5: 3 rounds of 2 calls each (rounded up); each candidate's turn in round r comes
    # before any in round r + 1, so drift over the run falls on all of them alike
    turns = []

    def timer(fn, dev, warmup, rep):
        turns.append((fn.__name__, warmup, rep))
        return {"a": 1.0, "b": 2.0}[fn.__name__] + len(turns) / 100

    def a():
        pass

    def b():
        pass
    times = tune.measure({"a": a, "b": b}, torch.device("cpu"), 1, 5, timer=timer)
    assert turns == [("a", 0, 2), ("b", 0, 2)] * 3
    assert times == {"a": 1.03, "b": 2.04}  # medians of the rounds: (1.01, 1.03, 1.05)


def test_interleaved_stops_at_the_deadline(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(tune.time, "time", lambda: clock[0])
    cpu = torch.device("cpu")

    def timer(fn, dev, warmup, rep):  # each timed turn takes 10 s of the fake clock
        clock[0] += 10
        return [1.0]
    calls = {"a": lambda: None, "b": lambda: None}
    # round 1 runs (ends at 120), round 2 would start past the deadline (115): stop there
    got = tune.interleaved(calls, cpu, 1, 5, 2, timer, deadline=115.0)
    assert got == {"a": [[1.0]], "b": [[1.0]]}
    # a warm-up that would start past the deadline is not run; the ones before it are timed
    clock[0] = 100.0

    def slow():
        clock[0] += 20
    got = tune.interleaved({"slow": slow, "late": lambda: None}, cpu, 1, 3, 2, timer,
                           deadline=115.0)
    assert got["slow"] == [[1.0]] and isinstance(got["late"], TimeoutError)
    # no deadline: every round
    assert tune.interleaved(calls, cpu, 1, 3, 2, timer)["a"] == [[1.0]] * 3


def test_merge_keeps_unmeasured_keys():
    old = {"choices": {"bias_gelu": {"768,bfloat16": "fused", "1024,bfloat16": "fused"}},
           "timings_ms": {"bias_gelu": {"768,bfloat16": {"fused": 1.0}}}}
    new = {"format": 1, "device": NAME, "choices": {"bias_gelu": {"1024,bfloat16": "torch"}},
           "timings_ms": {"bias_gelu": {"1024,bfloat16": {"fused": 2.0}}}}
    m = tune.merge(old, new)
    assert m["choices"] == {"bias_gelu": {"768,bfloat16": "fused", "1024,bfloat16": "torch"}}
    assert set(m["timings_ms"]["bias_gelu"]) == {"768,bfloat16", "1024,bfloat16"}
    assert m["device"] == NAME


def test_cli_errors_and_unusable_paths(tmp_path, monkeypatch, capsys):
    """Without CUDA the command refuses the default device. On the CPU without the Triton
    interpreter every fused candidate fails or is skipped with its reason, and nothing is chosen
    for it; the file records why."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        assert cli_main(["tune"]) == 1
        assert "no CUDA device here" in capsys.readouterr().err
    assert cli_main(["tune", "--device", "cpu", "--rows", "0"]) == 1
    assert "--rows must be >= 1" in capsys.readouterr().err
    out = tmp_path / "t.json"
    assert cli_main(["tune", "--device", "cpu", "--hidden", "32", "--rows", "5", "--vocab", "70",
                     "--tokens", "8", "--rep", "1", "--warmup", "0", "--out", str(out)]) == 0
    d = tuning.read(out)
    assert d["device"] == "cpu" and d["choices"] == {}
    t = d["timings_ms"]["linear_cross_entropy"]["32,bfloat16"]
    assert set(t) == {"triton/recompute", "triton/tokenchunk"}
    assert all(v.startswith("error: Unsupported") for v in t.values()), t
    assert set(d["skipped"]) == {"add_dropout_layernorm", "bias_gelu", "attention"}
    assert "triton cannot run on cpu" in d["skipped"]["attention"]
    assert d["settings"]["rows"] == 5 and d["versions"]["torch"] == torch.__version__
    assert cli_main(["tune", "--device", "cpu", "--seqlens", "513"]) == 1
    assert "--seqlens must be in [2, 512]" in capsys.readouterr().err


def test_cli_keeps_what_it_measured_when_cut_short(tmp_path, monkeypatch, capsys):
    """A device call's time limit can stop `xlmr-fast tune` half-way: the file already holds
    every measurement made, merged into what it held before (same device)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "t.json"
    args = ["tune", "--device", "cpu", "--ops", "linear_cross_entropy", "--rows", "5",
            "--vocab", "70", "--rep", "1", "--warmup", "0", "--out", str(out)]
    assert cli_main(args + ["--hidden", "16"]) == 0            # an earlier run: key 16
    real, calls = tune.measure, []

    def measure_then_killed(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("time limit")
        return real(*a, **k)

    monkeypatch.setattr(tune, "measure", measure_then_killed)
    with pytest.raises(KeyboardInterrupt):
        cli_main(args + ["--hidden", "32", "48"])
    t = tuning.read(out)["timings_ms"]["linear_cross_entropy"]
    assert set(t) == {"16,bfloat16", "32,bfloat16"}             # 48 was never measured
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"], "a temporary file was left"


def test_cli_replaces_a_file_it_cannot_read(tmp_path, monkeypatch, capsys):
    """The ops' error for an unreadable or other-format tuning file says to re-run `xlmr-fast
    tune`: the command replaces such a file (said so) instead of failing on it too."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tuning.user_path("cpu")   # where it writes without --out (--device cpu: "cpu")
    out.parent.mkdir(parents=True)
    args = ["tune", "--device", "cpu", "--ops", "linear_cross_entropy", "--hidden", "16",
            "--rows", "5", "--vocab", "70", "--rep", "1", "--warmup", "0"]
    for bad in ("{not json", json.dumps(doc({}, device="cpu") | {"format": 2})):
        out.write_text(bad)
        with pytest.raises(ValueError, match="re-run `xlmr-fast tune`|unreadable"):
            tuning.read(out)
        assert cli_main(args) == 0, capsys.readouterr().err
        assert "replaced by this run's" in capsys.readouterr().out
        d = tuning.read(out)
        assert d["format"] == 1 and set(d["timings_ms"]["linear_cross_entropy"]) == {
            "16,bfloat16"}


@pytest.mark.interpret
def test_cli_runs_every_candidate_interpreter(tmp_path, monkeypatch):
    """The whole command on the CPU through the Triton interpreter (its times mean nothing):
    each LCE candidate runs its own schedule, the layer ops are timed against both baselines,
    a second run updates the file it finds."""
    kern = lce_mod._kernels()
    ran = []
    for fn in ("lce_forward", "lce_fwdgrad"):
        real = getattr(kern, fn)
        monkeypatch.setattr(kern, fn, lambda *a, _f=real, _n=fn, **k: ran.append(_n) or _f(*a, **k))
    out = tmp_path / "t.json"
    args = ["tune", "--device", "cpu", "--hidden", "32", "--rows", "9", "--vocab", "300",
            "--tokens", "16", "--rep", "1", "--warmup", "0", "--out", str(out)]
    assert cli_main(args + ["--ops", "linear_cross_entropy"]) == 0
    assert ran == ["lce_forward", "lce_fwdgrad"]      # recompute, then tokenchunk
    d = tuning.read(out)
    assert set(d["choices"]) == {"linear_cross_entropy.schedule"}
    assert d["choices"]["linear_cross_entropy.schedule"]["32,bfloat16"] in ("recompute",
                                                                            "tokenchunk")
    assert cli_main(args + ["--ops", "add_dropout_layernorm", "bias_gelu", "--no-compile-baseline"]
                    ) == 0
    d = tuning.read(out)
    assert set(d["choices"]) == {"linear_cross_entropy.schedule", "add_dropout_layernorm",
                                 "bias_gelu"}
    assert set(d["choices"]["add_dropout_layernorm"]) == {"32,bfloat16,float32",
                                                         "32,bfloat16,bfloat16"}
    assert set(d["timings_ms"]["bias_gelu"]["32,bfloat16"]) == {"fused", "eager"}
    assert not d["settings"]["compile_baseline"]
    # attention: the model's call through our kernel and through SDPA, padded and varlen,
    # without and with dropout; a length is filed under its bucket (16 -> 128); 64 wide = 1 head
    assert cli_main(["tune", "--device", "cpu", "--hidden", "64", "--tokens", "24", "--rep", "1",
                     "--warmup", "0", "--out", str(out), "--ops", "attention",
                     "--seqlens", "12"]) == 0
    d = tuning.read(out)
    keys = {f"{lay},128,1,{p},bfloat16" for lay in ("padded", "varlen")
            for p in ("dropout", "no-dropout")}
    assert set(d["choices"]["attention.backend"]) == keys
    assert set(d["choices"]["attention.backend"].values()) <= {"triton", "sdpa"}
    for k in keys:
        assert all(isinstance(v, float) for v in d["timings_ms"]["attention"][k].values()), k
        assert set(d["timings_ms"]["attention"][k]) == {"triton", "sdpa"}
    assert d["settings"]["seqlens"] == [12]
    assert "linear_cross_entropy.schedule" in d["choices"]          # the earlier runs' keys stay


@pytest.mark.gpu
def test_tune_on_gpu_every_candidate_runs(tmp_path):
    """On a GPU every candidate runs (no error entries) and a choice is made for every key."""
    dev = torch.device("cuda")
    d = tune.tune(dev, hidden=(64,), rows=70, vocab=1003, tokens=300, warmup=1, rep=2,
                  compile_baseline=False, log=lambda *a: None)
    for op, table in d["timings_ms"].items():
        for key, times in table.items():
            assert all(isinstance(v, float) for v in times.values()), (op, key, times)
    assert set(d["choices"]["linear_cross_entropy.schedule"]) == {"64,bfloat16"}
    assert set(d["choices"]["add_dropout_layernorm"]) == {"64,bfloat16,float32",
                                                          "64,bfloat16,bfloat16"}
    assert set(d["choices"]["bias_gelu"]) == {"64,bfloat16"}
    assert len(d["choices"]["attention.backend"]) == 3 * 2 * 2   # lengths x layouts x dropout
    assert d["device"] == torch.cuda.get_device_name()
    tuning.write(d, tmp_path / "t.json")

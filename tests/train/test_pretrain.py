"""The pretraining loop on a real 4-language corpus (tests/train/conftest.py), on the CPU:
run directory contents, resume == uninterrupted, SIGTERM, non-finite steps, run-dir guard."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xlmr_fast.train.checkpoint import CheckpointManager
from xlmr_fast.train.config import load_config
from xlmr_fast.train.metrics import read_metrics
from xlmr_fast.train.pretrain import Trainer, TrainingError, pretrain

ROOT = Path(__file__).resolve().parents[2]


def make_cfg(prepared, out, *over):
    shards, tok = prepared
    return load_config(None, [
        f"data.data_dir={shards}", f"data.tokenizer={tok}", f"run.out_dir={out}",
        "data.seq_len=64", "data.micro_batch=4", "data.heldout_fraction=0.01",
        "optim.max_steps=8", "optim.warmup_steps=2", "run.log_every=1", "run.eval_every=4",
        "run.save_every=4", "run.eval_batches=2", "run.progress=false", "run.tensorboard=false",
        *over])


def train_losses(run_dir):
    return {r["step"]: (r["loss"], r["loss_lang"], r["grad_norm"])
            for r in read_metrics(run_dir) if r["kind"] == "train"}


def test_run_writes_everything(prepared, tmp_path):
    out = tmp_path / "run"
    summary = pretrain(make_cfg(prepared, out, "optim.max_steps=12", "optim.lr=3e-3",
                                "run.log_every=3", "optim.grad_accum=2"))
    assert summary["step"] == 12 and summary["stopped"] is None
    for name in ("config.yaml", "metrics.jsonl", "checkpoints", "final/config.json",
                 "final/model.safetensors", "final/sentencepiece.bpe.model"):
        assert (out / name).exists(), name
    recs = read_metrics(out)
    train = [r for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [3, 6, 9, 12]
    assert train[-1]["loss"] < train[0]["loss"] - 0.2   # it learns (ln 502 = 6.2 at init)
    assert set(train[-1]["loss_lang"]) == {"de", "en", "ru", "sw"}
    assert all(math.isfinite(r["grad_norm"]) and r["tokens_per_s"] > 0 for r in train)
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert set(evals[-1]["loss_lang"]) == {"de", "en", "ru", "sw"}
    assert evals[-1]["ppl"] == pytest.approx(math.exp(evals[-1]["loss"]))
    # the exported model and tokenizer load in transformers and give our logits
    transformers = pytest.importorskip("transformers")
    import xlmr_fast as xf
    hf = transformers.XLMRobertaForMaskedLM.from_pretrained(out / "final").eval()
    ours = xf.XLMRForMaskedLM.from_pretrained(out / "final").eval()
    tok = transformers.XLMRobertaTokenizer.from_pretrained(out / "final")
    ids = torch.tensor([tok("Hello world, habari ya dunia")["input_ids"]])
    assert ids.shape[1] > 4 and (ids >= 4).sum() > 2
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)


class _SignalAt:
    """Wraps Trainer._train_step to send this process a signal after step k."""

    def __init__(self, monkeypatch, k, sig=signal.SIGTERM):
        orig = Trainer._train_step

        def step(trainer):
            orig(trainer)
            if trainer.step == k:
                os.kill(os.getpid(), sig)
        monkeypatch.setattr(Trainer, "_train_step", step)


def test_resume_equals_uninterrupted(prepared, tmp_path, monkeypatch):
    # dropout on, prefetching loader, accumulation: every source of state must be restored
    over = ("optim.grad_accum=2", "model.hidden_dropout=0.1", "model.attention_dropout=0.1")
    full = tmp_path / "full"
    pretrain(make_cfg(prepared, full, *over))
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        _SignalAt(m, 3)
        s = pretrain(make_cfg(prepared, cut, *over))
    assert s["stopped"] == "SIGTERM" and s["step"] == 3
    assert CheckpointManager(cut).latest().name == "step_00000003.pt"
    assert not (cut / "final").exists()
    s = pretrain(make_cfg(prepared, cut, *over), resume=True)
    assert s["step"] == 8 and s["stopped"] is None
    a, b = train_losses(full), train_losses(cut)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert a == b   # bit-identical losses, per-language losses and gradient norms
    evals = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d) if r["kind"] == "eval"]  # noqa
    assert evals(full) == evals(cut)


def test_resume_mid_log_interval(prepared, tmp_path, monkeypatch):
    """A stop between two log lines: the resumed run's next line averages the same steps."""
    over = ("run.log_every=3", "optim.max_steps=6", "run.save_every=0", "run.eval_every=0")
    pretrain(make_cfg(prepared, tmp_path / "full", *over))
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        _SignalAt(m, 4)
        assert pretrain(make_cfg(prepared, cut, *over))["step"] == 4
    pretrain(make_cfg(prepared, cut, *over), resume=True)
    assert train_losses(tmp_path / "full") == train_losses(cut)
    assert sorted(train_losses(cut)) == [3, 6]


def test_existing_run_needs_resume(prepared, tmp_path):
    out = tmp_path / "run"
    pretrain(make_cfg(prepared, out, "optim.max_steps=2", "optim.warmup_steps=1",
                      "run.eval_every=0"))
    before = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="already holds checkpoints.*--resume"):
        Trainer(make_cfg(prepared, out, "optim.lr=1e-3"))
    # the refused run wrote nothing over the existing one (config.yaml, metrics.jsonl)
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_non_finite_steps_are_skipped_then_stop_the_run(prepared, tmp_path, monkeypatch):
    from xlmr_fast.model.xlmr import XLMRForMaskedLM
    orig = XLMRForMaskedLM.forward
    bad_calls = {3, 4, 5, 6, 7, 8}   # forward calls (1 micro-step per step): steps 3.. are NaN

    calls = {"n": 0}

    def forward(self, *a, **k):
        out = orig(self, *a, **k)
        calls["n"] += 1
        if self.training and calls["n"] in bad_calls:
            out.loss = out.loss * float("nan")
        return out
    monkeypatch.setattr(XLMRForMaskedLM, "forward", forward)
    out = tmp_path / "run"
    trainer = Trainer(make_cfg(prepared, out, "run.max_bad_steps=2", "run.eval_every=0",
                               "run.save_every=0"))
    trainer._train_step()
    trainer._train_step()
    good = {k: v.clone() for k, v in trainer.raw.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="step 3: non-finite loss or gradient"):
        trainer._train_step()
    assert trainer.step == 3 and trainer.bad_steps == 1
    for k, v in trainer.raw.state_dict().items():   # the skipped step changed nothing
        assert torch.equal(v, good[k]), k
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingError, match="3 non-finite steps "
                                                     "in a row.*last good step"):
        trainer._train_step()
        trainer._train_step()
    ck = CheckpointManager(out).load()
    assert ck["step"] == 5
    for k, v in ck["model"].items():
        assert torch.equal(v, good[k]), k


def test_sigterm_from_outside_saves_and_resumes(prepared, tmp_path):
    """The real thing: `python -m xlmr_fast pretrain` killed with SIGTERM mid-run."""
    shards, tok = prepared
    out = tmp_path / "run"
    args = [sys.executable, "-m", "xlmr_fast", "pretrain", "--data", str(shards),
            "--tokenizer", str(tok), "--out", str(out), "data.seq_len=64", "data.micro_batch=4",
            "optim.warmup_steps=2", "run.log_every=1", "run.eval_every=0", "run.save_every=0",
            "run.progress=false", "run.tensorboard=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(args + ["optim.max_steps=100000"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (out / "metrics.jsonl").exists() and len(read_metrics(out)) >= 3:
            break
        time.sleep(0.2)
    assert p.poll() is None, p.stdout.read()
    p.send_signal(signal.SIGTERM)
    log = p.communicate(timeout=120)[0]
    assert p.returncode == 143, log
    assert "SIGTERM received" in log and "resume with" in log
    step = CheckpointManager(out).load()["step"]
    assert step >= 3
    r = subprocess.run(args + ["optim.max_steps=" + str(step + 2), "--resume"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert CheckpointManager(out).load()["step"] == step + 2


def test_main_job_with_no_data_uses_the_demo_corpus(tmp_path, monkeypatch, capsys, recwarn):
    """`xlmr-fast pretrain` with no data arguments: demo corpus -> tokenizer -> shards -> a
    short tiny run (steps cut down here) with the per-language table at the end."""
    pytest.importorskip("chatterbot_corpus")
    from xlmr_fast import cli
    monkeypatch.setenv("XLMR_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["pretrain", "optim.max_steps=40", "optim.warmup_steps=5", "run.log_every=10",
                   "run.eval_every=20", "run.save_every=20", "run.progress=false"])
    out = capsys.readouterr().out
    assert rc == 0, out
    runs = list((tmp_path / "runs").glob("tiny-*"))
    assert len(runs) == 1
    run = runs[0]
    assert "using the demo corpus" in out and "per-language masked-LM loss" in out
    train = [r for r in read_metrics(run) if r["kind"] == "train"]
    assert len(train[-1]["loss_lang"]) >= 20          # most of the 28 demo languages
    assert train[-1]["loss"] < train[0]["loss"]
    assert (run / "final" / "model.safetensors").exists()
    # the last line lists what the run wrote, and nothing it did not (plots need matplotlib)
    done = [ln for ln in out.splitlines() if ln.startswith("done:")][-1]
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "checkpoints/", "final/"):
        assert (name in done) == (run / name.rstrip("/")).exists(), (name, done)
    # a language too small for a block is warned about once (the held-out loader repeated it)
    dropped = [str(w.message) for w in recwarn if "dropped:" in str(w.message)]
    assert len(dropped) == len(set(dropped)), dropped
    # --resume without --out finds the newest run (finished: nothing left to do)
    assert cli.main(["pretrain", "--resume", "optim.max_steps=40", "optim.warmup_steps=5",
                     "run.progress=false"]) == 0


def test_activation_checkpointing_changes_nothing_but_memory(prepared, tmp_path):
    over = ("optim.max_steps=3", "optim.warmup_steps=1", "run.eval_every=0",
            "model.hidden_dropout=0.1", "model.attention_dropout=0.1")
    pretrain(make_cfg(prepared, tmp_path / "a", *over))
    pretrain(make_cfg(prepared, tmp_path / "b", *over, "model.activation_checkpointing=true"))
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert sorted(a) == [1, 2, 3]
    for s in a:   # recomputation replays the dropout RNG: the same numbers up to summation order
        assert b[s][0] == pytest.approx(a[s][0], rel=1e-6)
        assert b[s][2] == pytest.approx(a[s][2], rel=1e-5)


def test_eval_text_files_give_per_language_loss(prepared, tmp_path, shared_data):
    """data.eval_text: ud-pud-text style files (id TAB text) scored per language."""
    from xlmr_fast.tokenizer import Tokenizer
    from xlmr_fast.train.pretrain import load_eval_text
    src = Path(shared_data) / "ud-pud-text"
    texts = tmp_path / "texts"
    texts.mkdir()
    for lang in ("de", "en", "ru"):
        lines = (src / f"{lang}.pud.tsv").read_text(encoding="utf-8").splitlines()[:40]
        (texts / f"{lang}.pud.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids, langs, names = load_eval_text(texts, prepared[1], 64, 502)
    assert names == ["de", "en", "ru"] and ids.shape[1] == 64 and ids.dtype == torch.int32
    assert torch.all(ids[:, 0] == 0) and set(langs.tolist()) == {0, 1, 2}
    # the stream of each language is its lines' ids, each followed by </s>
    tok = Tokenizer.from_pretrained(prepared[1])
    first = (src / "de.pud.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t", 1)[1]
    want = (tok.encode_ids([first])[0] + [2])[:63]
    assert ids[0, 1:1 + len(want)].tolist() == want
    out = tmp_path / "run"
    pretrain(make_cfg(prepared, out, "optim.max_steps=2", "optim.warmup_steps=1",
                      "run.eval_every=2", f"data.eval_text={texts}"))
    ev = [r for r in read_metrics(out) if r["kind"] == "eval_text"]
    assert ev and set(ev[-1]["loss_lang"]) == {"de", "en", "ru"}
    assert ev[-1]["targets"] > 0.1 * int((ids != 1).sum())
    with pytest.raises(FileNotFoundError, match="no <lang>.txt"):
        load_eval_text(tmp_path / "missing", prepared[1], 64, 502)


def test_torch_compile_matches_eager(prepared, tmp_path):
    """model.compile=true (inductor on the CPU here) trains to the same losses as eager."""
    over = ("optim.max_steps=3", "optim.warmup_steps=1", "run.eval_every=0", "run.export=false",
            "model.hidden_dropout=0.0", "model.attention_dropout=0.0")
    pretrain(make_cfg(prepared, tmp_path / "eager", *over))
    pretrain(make_cfg(prepared, tmp_path / "compiled", *over, "model.compile=true"))
    a, b = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for s in a:
        assert b[s][0] == pytest.approx(a[s][0], rel=1e-5)


@pytest.mark.gpu
def test_gpu_pretrain_bf16_matches_cpu_fp32(tmp_path):
    """The real loop on CUDA (bf16 autocast; Triton/CUDA masking, attention, fused CE) against
    the same run on the CPU in fp32: same init, rows and masks, so the logged losses agree to
    bf16 precision; MFU and memory are logged and the export loads. Synthetic 250k-vocabulary
    shards: the device machine has no shared data."""
    from bench.bench_data import make_synthetic
    (tmp_path / "shards").mkdir()
    data = make_synthetic(tmp_path / "shards", 2_000_000)
    runs = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / dev
        pretrain(load_config(None, [
            f"data.data_dir={data}", f"run.out_dir={out}", f"run.device={dev}",
            "data.seq_len=128", "data.micro_batch=16", "data.heldout_fraction=0.01",
            "model.hidden_dropout=0.0", "model.attention_dropout=0.0", "optim.max_steps=8",
            "optim.warmup_steps=2", "optim.lr=1e-3", "run.log_every=4", "run.eval_every=8",
            "run.eval_batches=2", "run.progress=false", "run.tensorboard=false"]))
        runs[dev] = [r for r in read_metrics(out) if r["kind"] == "train"]
    cpu, gpu = runs["cpu"], runs["cuda"]
    assert [r["step"] for r in gpu] == [4, 8]
    for a, b in zip(cpu, gpu):
        assert math.isfinite(b["loss"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-2)
    assert gpu[-1]["peak_mem_gb"] > 0 and gpu[-1]["mask_overflow"] == 0
    assert "mfu" in gpu[-1] or "H100" not in torch.cuda.get_device_name()
    import xlmr_fast as xf
    m = xf.XLMRForMaskedLM.from_pretrained(tmp_path / "cuda" / "final")
    assert m.config.vocab_size == 250002


def test_shards_from_another_tokenizer_are_refused(prepared, tmp_path):
    """data.tokenizer must be the tokenizer the shards were made with (sha256 in meta.json)."""
    from xlmr_fast.tokenizer import train_tokenizer
    other = tmp_path / "other_tok"
    train_tokenizer(Path(prepared[0]).parent / ".." / "corpus", other, vocab_size=300,
                    sentences=500, hard_vocab_limit=False, progress=False)
    from xlmr_fast.data.shards import ShardError
    with pytest.raises(ShardError, match="preprocessed with another tokenizer"):
        Trainer(make_cfg(prepared, tmp_path / "run", f"data.tokenizer={other}"))


def test_verify_checksums_catches_flipped_bytes(prepared, tmp_path):
    """data.verify_checksums: a shard whose bytes changed (same size) is refused at start."""
    import shutil
    from xlmr_fast.data.shards import ShardError
    shards = tmp_path / "shards"
    shutil.copytree(prepared[0], shards)
    f = shards / "sw.bin"
    raw = bytearray(f.read_bytes())
    raw[-8] ^= 0xFF   # inside the token or index payload, size unchanged
    f.write_bytes(bytes(raw))
    cfg = make_cfg((shards, prepared[1]), tmp_path / "run", "data.verify_checksums=true")
    with pytest.raises(ShardError, match=r"checksum mismatch for .*sw\.bin"):
        Trainer(cfg)


def test_tokens_per_s_leaves_out_evaluation_and_checkpoints(prepared, tmp_path, monkeypatch):
    """Each log interval's tokens/s is its steps' rate: the time of evaluations and checkpoint
    saves in between is not counted (it was: the interval after each one looked slower by its
    whole duration). A fake clock: a step takes 1 s, an evaluation 50 s, a save 30 s."""
    import xlmr_fast.train.pretrain as P
    clock = [0.0]

    class FakeTime:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def perf_counter():
            return clock[0]

    def ticking(method, seconds):
        orig = getattr(Trainer, method)

        def run(self, *a, **k):
            out = orig(self, *a, **k)
            clock[0] += seconds
            return out
        monkeypatch.setattr(Trainer, method, run)
    monkeypatch.setattr(P, "time", FakeTime)
    ticking("_train_step", 1.0)
    ticking("evaluate", 50.0)
    ticking("save", 30.0)
    out = tmp_path / "run"
    pretrain(make_cfg(prepared, out, "run.log_every=2", "run.eval_every=2", "run.save_every=2"))
    rates = [r["tokens_per_s"] for r in read_metrics(out) if r["kind"] == "train"]
    assert len(rates) == 4
    assert max(rates) / min(rates) < 1.05, rates  # full blocks: the same tokens per step


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_mapped_resume_keeps_no_mapping_of_the_checkpoint(prepared, tmp_path):
    """A resume onto a GPU maps the checkpoint (torch.load mmap). What set_state_dict leaves on
    the CPU is then still the file: a non-fused AdamW's step counts on a GPU (on this CPU
    stand-in, all the optimizer state). Kept, they hold the whole file mapped for the run, and
    its disk space once the run prunes it. The device is faked as not the CPU to take the path."""
    import gc
    out = tmp_path / "run"
    pretrain(make_cfg(prepared, out, "optim.max_steps=4", "run.eval_every=0"))
    path = os.path.realpath(CheckpointManager(out).latest())
    tr = Trainer(make_cfg(prepared, out, "optim.max_steps=8", "run.eval_every=0"), resume=True)
    assert path not in open("/proc/self/maps").read()  # read, not mapped, on the CPU
    tr.device = torch.device("meta")
    tr._resume()
    gc.collect()
    assert tr.opt.state and path not in open("/proc/self/maps").read()


def test_per_language_sums_use_each_target_rows_language():
    """Catches a target's loss being added to another row's language (e.g. the next row's): the
    end-to-end runs only check which languages appear, and the total loss is the same either
    way. Rows 0..2 of a (3, 4) batch are languages 2, 0, 1; slot -1 is unused."""
    from xlmr_fast.train.pretrain import _add_per_language
    loss, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    pos = torch.tensor([0, 3, 5, 8, 11, -1])     # rows 0, 0, 1, 2, 2, unused
    loss_N = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 100.0])
    langs = torch.tensor([2, 0, 1])
    n = _add_per_language(loss, count, loss_N, pos, langs, seq_len=4)
    assert int(n) == 5
    assert loss.tolist() == [4.0, 24.0, 3.0] and count.tolist() == [1.0, 2.0, 2.0]


def test_logged_mfu_uses_the_configured_peak_and_mask_rate(prepared, tmp_path):
    """Catches MFU against a wrongly scaled peak (run.peak_tflops is TFLOP/s) or FLOPs counted
    for another mask rate: MFU = tokens/s x model_flops_per_token / peak. CPU runs report no MFU
    unless the peak is given, so no other test sees the number."""
    import json

    import xlmr_fast as xf
    from xlmr_fast.train.metrics import model_flops_per_token
    out = tmp_path / "run"
    pretrain(make_cfg(prepared, out, "optim.max_steps=2", "optim.warmup_steps=1",
                      "run.eval_every=0", "run.save_every=0", "run.peak_tflops=0.5",
                      "mask.prob=0.3"))
    m_cfg = xf.XLMRConfig.from_hf_dict(json.loads((out / "final" / "config.json").read_text()))
    fpt = model_flops_per_token(m_cfg, 64, 0.3)
    train = [r for r in read_metrics(out) if r["kind"] == "train"]
    assert train and all(r["mfu"] == pytest.approx(r["tokens_per_s"] * fpt / 0.5e12, rel=1e-9)
                         for r in train)

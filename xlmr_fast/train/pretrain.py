"""The pretraining loop: Trainer(cfg).run() reads top to bottom.

One optimizer step = grad_accum micro-steps on every rank. A micro-step:
    ids (B, T) int32 from the loader (pinned, prefetched)  -> device (non_blocking)
    ops.mlm_mask_static on the device (no host sync; keyed by (seed, global micro-step index))
    model forward under autocast: encoder on all rows, LM head + fused 250k CE on masked rows only
    per-target losses summed (fairseq's criterion: sum over targets, divided by their count)
    backward of the sum (DDP/FSDP sync only on the last micro-step)
then the gradient is divided by the global target count (one small all-reduce), clipped, and
AdamW steps. The only host syncs per optimizer step are that count and the gradient norm (to skip
non-finite steps); per-language losses stay on the device until a log line needs them.

Masking keys: micro-step m of optimizer step s on rank r uses step key (s * accum + m) * W + r,
and the loader hands rank r rows r*B .. r*B+B-1 of each global batch, so a run on W ranks with
accumulation A sees exactly the batches and masks of a run on 1 rank with accumulation A * W
(tests/train/test_distributed.py checks the losses agree).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from .. import ops
from ..config import XLMRConfig
from ..data.loader import BlockLoader
from ..data.shards import data_summary, read_meta
from ..model.xlmr import XLMRForMaskedLM
from . import distributed as D
from .checkpoint import CheckpointError, CheckpointManager, rng_state, set_rng_state
from .config import TrainConfig, save_config
from .metrics import MetricsLogger, format_log_line, model_flops_per_token, peak_flops, \
    plot_metrics
from .optim import make_optimizer, make_scheduler
from .signals import catch_stop_signals

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); a checkpoint was written."""


def model_config(cfg: TrainConfig, vocab_size: int) -> XLMRConfig:
    """The XLMRConfig of the preset, sized to the tokenizer's vocabulary."""
    over = {"vocab_size": vocab_size, "unpad": cfg.model.unpad,
            "fused_layer_ops": cfg.model.fused_layer_ops}
    for name in ("hidden_dropout", "attention_dropout"):
        if getattr(cfg.model, name) is not None:
            over[name] = getattr(cfg.model, name)
    return getattr(XLMRConfig, cfg.model.preset)(**over)


def load_init(cfg: TrainConfig, vocab_size: int, tokenizer_sha256: str | None
              ) -> XLMRForMaskedLM:
    """model.init_from: an HF directory or a fairseq model.pt (e.g. xlm-roberta-base) to
    continue pretraining from, with the model section's dropout / unpad / fused overrides. Its
    vocabulary must be the shards': same size, and the same sentencepiece model where the
    checkpoint's directory has one (a different tokenizer of the same size would silently train
    on the wrong embedding rows)."""
    from ..data.shards import file_sha256
    from ..tokenizer import MODEL_FILE
    path = Path(cfg.model.init_from)
    if not path.exists():
        raise ValueError(f"model.init_from {path} does not exist (an HF model directory or a "
                         f"fairseq model.pt)")
    over = {"unpad": cfg.model.unpad, "fused_layer_ops": cfg.model.fused_layer_ops}
    for name in ("hidden_dropout", "attention_dropout"):
        if getattr(cfg.model, name) is not None:
            over[name] = getattr(cfg.model, name)
    model = XLMRForMaskedLM.from_pretrained(path, **over)
    if model.config.vocab_size != vocab_size:
        raise ValueError(f"model.init_from {path} has a vocabulary of {model.config.vocab_size} "
                         f"ids, the shards {vocab_size}: preprocess the corpus with the "
                         f"checkpoint's tokenizer (its {MODEL_FILE}), e.g. `xlmr-fast pretrain "
                         f"--init-from {path} --corpus DIR` does")
    spm = (path if path.is_dir() else path.parent) / MODEL_FILE
    spm_sha = file_sha256(spm) if tokenizer_sha256 and spm.is_file() else None
    if spm_sha is not None and spm_sha != tokenizer_sha256:
        raise ValueError(f"model.init_from {path}: its {MODEL_FILE} is not the tokenizer the "
                         f"shards were made with (sha256 {spm_sha[:12]}... vs "
                         f"{tokenizer_sha256[:12]}...): the ids would mean other pieces")
    longest = model.config.max_position_embeddings - model.config.pad_token_id - 1
    if cfg.data.seq_len > longest:
        raise ValueError(f"data.seq_len {cfg.data.seq_len} is longer than model.init_from "
                         f"{path} has positions for ({longest})")
    return model


def mask_capacity(rows: int, seq_len: int, prob: float, sigmas: float) -> int:
    """Size of the static masked-positions buffer: mean + sigmas * std of the Binomial count
    (an overflow drops the surplus targets of that batch and is counted in the logs)."""
    n = rows * seq_len
    mean, std = n * prob, math.sqrt(n * prob * (1 - prob))
    return max(1, min(n, math.ceil(mean + sigmas * std)))


def _checkpoint_layers(layers) -> None:
    """Recompute each layer in the backward (torch.utils.checkpoint, non-reentrant; the CPU RNG
    state is replayed, so dropout and the attention-dropout seed match the forward)."""
    from torch.utils.checkpoint import checkpoint
    for layer in layers:
        fwd = layer.forward
        layer.forward = lambda *a, _f=fwd, **k: checkpoint(_f, *a, use_reentrant=False, **k)


def load_eval_text(path, tokenizer, seq_len: int, vocab_size: int):
    """Held-out raw text for per-language MLM loss: a directory of <lang>.txt (a line per
    sentence or paragraph) or <lang>.<name>.tsv (id TAB text, e.g. ../shared/data/ud-pud-text)
    files. Each language's lines are encoded, joined with </s> as the binarizer does, and cut
    into rows of <s> + seq_len - 1 tokens (the last row right-padded). Returns
    (ids (n, seq_len) int32, langs (n,) int64, language names). tokenizer: a Tokenizer or its
    directory."""
    import numpy as np
    from ..data.preprocess import join_lines
    from ..tokenizer import BOS_ID, PAD_ID, Tokenizer
    if not tokenizer:
        raise ValueError("data.eval_text needs data.tokenizer (the tokenizer of the shards)")
    root = Path(path)
    files = sorted(p for p in root.glob("*") if p.suffix in (".txt", ".tsv")) \
        if root.is_dir() else []
    if not files:
        raise FileNotFoundError(f"data.eval_text={path}: no <lang>.txt or <lang>.*.tsv files")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_pretrained(tokenizer)
    if tok.vocab_size != vocab_size:
        raise ValueError(f"data.tokenizer {tok.model_file} has {tok.vocab_size} ids, the shards "
                         f"{vocab_size}: pass the tokenizer the shards were made with")
    L = seq_len - 1
    rows, langs, names = [], [], []
    for f in files:
        lines = [ln.split("\t", 1)[-1] if f.suffix == ".tsv" else ln
                 for ln in f.read_text(encoding="utf-8", errors="replace").splitlines()]
        lines = [ln.strip() for ln in lines if ln.strip()]
        if not lines:
            continue
        stream = join_lines(*tok.encode_ids_flat(lines))[0].astype(np.int32)
        n = -(-stream.size // L)
        body = np.full(n * L, PAD_ID, dtype=np.int32)
        body[:stream.size] = stream
        block = np.empty((n, seq_len), dtype=np.int32)
        block[:, 0] = BOS_ID
        block[:, 1:] = body.reshape(n, L)
        rows.append(block)
        langs.append(np.full(n, len(names), dtype=np.int64))
        names.append(f.name.split(".")[0])
    return (torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(langs)),
            names)


def _add_per_language(loss_acc, count_acc, loss_N, pos, langs, seq_len: int) -> torch.Tensor:
    """Add per-target losses into per-language sums: target slot i (flat position pos[i] of a
    (B, seq_len) batch, -1 = unused slot) belongs to row pos[i] // seq_len, whose language is
    langs[row]. Returns the number of used slots (a device tensor: no sync)."""
    used = pos >= 0
    lang_N = langs.index_select(0, pos.clamp(min=0) // seq_len)
    loss_acc.index_add_(0, lang_N, loss_N.to(loss_acc.dtype) * used)
    count_acc.index_add_(0, lang_N, used.to(count_acc.dtype))
    return used.sum()


def _grad_norm(params) -> torch.Tensor:
    """Global L2 norm of the gradients, on the device (no sync). get_total_norm (torch >= 2.6)
    only reads the gradients; clip_grad_norm_ with an infinite bound would also rescale them
    by 1.0, a wasted pass over every gradient."""
    grads = [p.grad for p in params]
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, 2.0)
    return torch.nn.utils.clip_grad_norm_(params, float("inf"))


# bench/bench_train.py sets this to a dict to collect CUDA events around each phase of the step
# ({name: [(start, end), ...]}): the GPU time between them, read after one sync at the end.
EVENT_TIMING: dict | None = None


@contextmanager
def _range(name: str):
    """A named phase of the step: a profiler range (~1 us when idle) and, when EVENT_TIMING is
    set, a pair of CUDA events."""
    with torch.profiler.record_function(name):
        if EVENT_TIMING is None or not torch.cuda.is_available():
            yield
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        EVENT_TIMING.setdefault(name, []).append((start, end))


def _rank_within(groups):
    """k for the k-th occurrence of each value of groups (groups sorted ascending)."""
    import numpy as np
    idx = np.arange(len(groups))
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
    return idx - first


class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: bool = False):
        self.cfg = cfg
        self.dist = D.setup(cfg.run.distributed, cfg.run.device)
        self.device = self.dist.device
        self.run_dir = Path(cfg.run.out_dir)
        d = cfg.data
        if d.data_dir is None:
            raise ValueError("config: data.data_dir is not set (a directory made by "
                             "`xlmr-fast preprocess`, or pass --corpus to `xlmr-fast pretrain`)")
        meta = read_meta(d.data_dir)
        # Each rank reads its own copy of the shards: a node with another preprocessing (a stale
        # copy, a missing language) would sample other blocks, and per-language sums of other
        # lengths break the all-reduce.
        D.check_same(data_summary(meta), f"the data in {d.data_dir}", self.dist,
                     "; every node needs the same preprocessed corpus (with --corpus on "
                     "nodes of their own: prepare it once, then pass --data)")
        self.vocab_size = int(meta["tokenizer"]["vocab_size"])
        self.model_cfg = model_config(cfg, self.vocab_size)

        bf16 = cfg.run.precision == "bf16" or (cfg.run.precision == "auto"
                                               and self.device.type == "cuda")
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16
                         else nullcontext())
        self.precision = "bf16" if bf16 else "fp32"

        # Same init on every rank: seed before building the model.
        torch.manual_seed(cfg.run.seed)
        if cfg.model.init_from:  # continued pretraining: the checkpoint's architecture
            self.raw = load_init(cfg, self.vocab_size, meta["tokenizer"].get("sha256"))
            self.model_cfg = self.raw.config
            self.raw.to(self.device)
        else:
            self.raw = XLMRForMaskedLM(self.model_cfg).to(self.device)
        layers = list(self.raw.encoder.layers)
        if cfg.model.activation_checkpointing:
            _checkpoint_layers(layers)
        self.model = D.wrap(self.raw, self.dist, layers)
        # Same weights everywhere (DDP/FSDP also broadcast them), then a dropout stream per rank.
        torch.manual_seed(cfg.run.seed + 1_000_003 * self.dist.rank)
        self.forward = torch.compile(self.model) if cfg.model.compile else self.model
        self.opt = make_optimizer(self.raw, cfg.optim, self.device)
        self.sched = make_scheduler(self.opt, cfg.optim)

        # The shards' tokenizer (when given): the loader checks its sha256 against meta.json,
        # eval_text encodes with it.
        tok = None
        if d.tokenizer:
            from ..tokenizer import Tokenizer
            tok = Tokenizer.from_pretrained(d.tokenizer)
        W, r = self.dist.world_size, self.dist.rank
        common = dict(batch_size=d.micro_batch, block_size=d.seq_len, alpha=d.alpha,
                      seed=cfg.run.seed, rank=r, world_size=W,
                      cross_documents=d.cross_documents, heldout_fraction=d.heldout_fraction,
                      vocab_size=self.vocab_size, threads=d.threads,
                      tokenizer_sha256=tok.model_sha256 if tok else None)
        self.loader = BlockLoader(d.data_dir, prefetch=d.prefetch,
                                  pin_memory=self.device.type == "cuda",
                                  verify_checksums=d.verify_checksums, **common)
        # Held-out rows are listed globally and dealt out by batch in _valid_batches.
        # The train loader's languages: it has warned about (and dropped) those too small for a
        # block; the held-out loader would repeat each warning.
        self.valid = (BlockLoader(d.data_dir, split="valid", prefetch=0,
                                  languages=self.loader.languages,
                                  **{**common, "rank": 0, "world_size": 1})
                      if d.heldout_fraction > 0 else None)
        self.languages = self.loader.languages
        self.eval_text = (load_eval_text(d.eval_text, tok, d.seq_len, self.vocab_size)
                          if d.eval_text else None)
        self.capacity = mask_capacity(d.micro_batch, d.seq_len, cfg.mask.prob,
                                      cfg.mask.capacity_sigmas)

        self.ckpt = CheckpointManager(self.run_dir, cfg.run.keep_last, enabled=self.dist.is_main)
        latest = self.ckpt.latest()
        # Rank 0 writes the checkpoints and every rank reads them back: a node whose out_dir is a
        # local disk would start from scratch while the others resume, and train on apart.
        D.check_same(latest and latest.name, f"the newest checkpoint in {self.run_dir}",
                     self.dist, "; every rank must see the same run.out_dir (a directory the "
                     "nodes share)")
        if not resume and latest is not None:  # before writing anything there
            raise FileExistsError(f"{self.run_dir} already holds checkpoints "
                                  f"({latest.name}); pass --resume to continue that "
                                  f"run, or choose another run.out_dir")
        self.metrics = MetricsLogger(self.run_dir, enabled=self.dist.is_main,
                                     tensorboard=cfg.run.tensorboard)
        self.flops_per_token = model_flops_per_token(self.model_cfg, d.seq_len, cfg.mask.prob)
        self.peak = peak_flops(self.device, cfg.run.peak_tflops * 1e12
                               if cfg.run.peak_tflops else None)
        self.step = 0            # optimizer steps taken or skipped (drives loader and mask keys)
        self.bad_steps = 0       # consecutive non-finite steps
        self._reset_acc()
        # Why the run stops: _stop_request is this rank's (a signal, the time limit), _stop the
        # one every rank agreed on (the loop tests it). With several ranks the agreement rides
        # on the all-reduce each step already makes (_train_step), not on one of its own.
        self._stop_request: str | None = None
        self._stop: str | None = None
        if resume:
            self._resume()
        # After the resume: a resume that fails (another model, other data) must not replace
        # the run's own config.yaml, which `--resume --out RUN` reads to continue it.
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        cfg, dist = self.cfg, self.dist
        self._log_start()
        restore_handlers = catch_stop_signals(self._on_signal, "saving a checkpoint")
        t_start = time.monotonic()
        bar = self._progress_bar()
        try:
            while self.step < cfg.optim.max_steps and self._stop is None:
                self._train_step()
                bar.update(1)
                if self.step % cfg.run.log_every == 0:
                    self._log_train(bar)
                if cfg.run.eval_every and self.step % cfg.run.eval_every == 0:
                    self._off_the_clock(self.evaluate)
                if cfg.run.save_every and self.step % cfg.run.save_every == 0:
                    self._off_the_clock(self.save)
                if (cfg.run.max_time_minutes
                        and time.monotonic() - t_start > 60 * cfg.run.max_time_minutes):
                    self._stop_request = self._stop_request or "time limit"
                if not dist.active:
                    self._stop = self._stop_request
            self._agree_on_stop()  # a request that came after the last step's all-reduce
            bar.close()
            stopped_by_signal = self._stop not in (None, "time limit")
            # Save before logging a partial interval: the checkpoint keeps the interval's sums,
            # so a resumed run logs exactly the lines the uninterrupted run would have.
            self._off_the_clock(self.save)
            if not stopped_by_signal and self.acc["steps"] and self.step % cfg.run.log_every:
                self._log_train(bar)
            if stopped_by_signal:
                log.warning("stopped by %s at step %d; checkpoint saved in %s (resume with "
                            "--resume)", self._stop, self.step, self.ckpt.dir)
                return self._summary()
            if not (cfg.run.eval_every and self.step % cfg.run.eval_every == 0):
                self.evaluate()
            if cfg.run.export:
                self.export()
            if dist.is_main:
                self.metrics.close()
                plot_metrics(self.run_dir)
                self._print_language_table()
            return self._summary()
        finally:
            bar.close()
            self.metrics.close()
            restore_handlers()

    def _train_step(self) -> None:
        cfg, dist = self.cfg, self.dist
        A, W, T = cfg.optim.grad_accum, dist.world_size, cfg.data.seq_len
        it = self._iter()
        n_targets = torch.zeros((), dtype=torch.float32, device=self.device)
        for m in range(A):
            with _range("train/data"):
                ids, langs = next(it)
                ids = ids.to(self.device, non_blocking=True)
                langs = langs.to(self.device, non_blocking=True)
            key = (self.step * A + m) * W + dist.rank
            with _range("train/mask"):
                masked, labels, pos, count = self._mask(ids, cfg.run.seed, key, self.capacity)
            sync = (self.model.no_sync() if dist.mode == "ddp" and m < A - 1 else nullcontext())
            if dist.mode == "fsdp":
                self.model.set_requires_gradient_sync(m == A - 1)
            with sync:
                with _range("train/forward"), self.autocast:
                    loss_N = self.forward(masked, labels=labels, masked_positions=pos,
                                          reduction="none").loss
                loss_sum = loss_N.float().sum()
                with _range("train/backward"):
                    loss_sum.backward()
            acc = self.acc
            n_targets += _add_per_language(acc["loss"], acc["count"], loss_N.detach(), pos,
                                           langs, T)
            acc["overflow"] += (count - self.capacity).clamp(min=0).squeeze(0)
            acc["tokens"] += (ids != self.model_cfg.pad_token_id).sum()

        # fairseq normalisation: gradient of (sum of target losses) / (global target count).
        # DDP/FSDP averaged over ranks, hence the factor W. The ranks' stop requests ride along.
        counts = torch.cat([n_targets.reshape(1), self._stop_flags()])
        D.all_reduce_sum(counts, dist)
        params = [p for p in self.raw.parameters() if p.grad is not None]
        norm = _grad_norm(params)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        n, signals, limits, raw_norm = torch.cat([counts, norm.float().reshape(1)]).tolist()
        if dist.active:  # every rank read the same sums: they stop after this step, alike
            self._agree(signals, limits)
        scale = W / max(n, 1.0)
        grad_norm = raw_norm * scale
        if not math.isfinite(grad_norm):
            self._skip_step(grad_norm)
            return
        clip = cfg.optim.clip_norm
        factor = scale * (min(1.0, clip / (grad_norm + 1e-6)) if clip > 0 else 1.0)
        with _range("train/optimizer"):
            torch._foreach_mul_([p.grad for p in params], factor)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        self.bad_steps = 0
        self.step += 1
        self.acc["steps"] += 1
        self.acc["grad_norm"] = grad_norm

    def _skip_step(self, grad_norm: float) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.bad_steps += 1
        self.step += 1
        # the accumulators hold this step's non-finite losses: drop the interval's per-language
        # sums rather than poison the next log line (and its tokens and time, so tokens/s stays
        # the rate of the steps it counts)
        self._reset_acc()
        warnings.warn(f"step {self.step}: non-finite loss or gradient (norm {grad_norm}); step "
                      f"skipped ({self.bad_steps} in a row, limit {self.cfg.run.max_bad_steps})",
                      RuntimeWarning, stacklevel=2)
        if self.bad_steps > self.cfg.run.max_bad_steps:
            path = self.save()
            raise TrainingError(
                f"{self.bad_steps} non-finite steps in a row (run.max_bad_steps = "
                f"{self.cfg.run.max_bad_steps}): stopping. The parameters are those of the last "
                f"good step, saved in {path or self.ckpt.dir}. Lower optim.lr, raise "
                f"optim.warmup_steps or check the data, then resume with --resume.")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Masked-LM loss (nats) and perplexity per language on the held-out split (kind
        "eval") and on the data.eval_text files (kind "eval_text"); the masks are a fixed
        function of the batch index, so evaluations are comparable across steps."""
        out = None
        if self.valid is not None:
            out = self._evaluate("eval", self._valid_batches(), self.languages)
        if self.eval_text is not None:
            ids, langs, names = self.eval_text
            self._evaluate("eval_text", self._split_batches(ids, langs), names)
        return out

    @torch.no_grad()
    def _evaluate(self, kind: str, batches, languages) -> dict:
        cfg = self.cfg
        self.model.eval()
        L = len(languages)
        loss = torch.zeros(L, dtype=torch.float64, device=self.device)
        count = torch.zeros(L, dtype=torch.float64, device=self.device)
        T = cfg.data.seq_len
        for j, ids, langs in batches:
            ids, langs = ids.to(self.device), langs.to(self.device)
            capacity = mask_capacity(ids.shape[0], T, cfg.mask.prob, cfg.mask.capacity_sigmas)
            masked, labels, pos, _ = self._mask(ids, cfg.run.seed + 1, j or 0, capacity)
            with self.autocast:
                loss_N = self.forward(masked, labels=labels, masked_positions=pos,
                                      reduction="none").loss
            if j is not None:  # None: a filler batch, run only to keep the ranks in step
                _add_per_language(loss, count, loss_N, pos, langs, T)
        self.model.train()
        total, per, n = self._reduce_per_language(loss, count, languages)
        out = {"loss": total, "ppl": math.exp(min(total, 50.0)), "loss_lang": per,
               "ppl_lang": {x: math.exp(min(v, 50.0)) for x, v in per.items()},
               "targets": int(n)}
        self.metrics.log(self.step, out, kind=kind)
        if self.dist.is_main:
            log.info("%s step %d: loss %.4f ppl %.2f over %d targets", kind, self.step, total,
                     out["ppl"], out["targets"])
        return out

    def _mask(self, ids, seed: int, step: int, capacity: int):
        """ops.mlm_mask_static with this run's vocabulary, ids and masking options."""
        c = self.cfg.mask
        return ops.mlm_mask_static(ids, vocab_size=self.vocab_size,
                                   mask_id=self.model_cfg.mask_token_id, seed=seed, step=step,
                                   capacity=capacity, mask_prob=c.prob,
                                   pad_id=self.model_cfg.pad_token_id,
                                   mask_special=c.mask_special)

    def _reduce_per_language(self, loss, count, languages):
        """Sum per-language (loss, target count) over ranks (on copies) -> (mean loss over all
        targets, {language: mean loss} for languages with targets, number of targets). One host
        sync."""
        loss, count = loss.clone(), count.clone()
        D.all_reduce_sum(loss, self.dist)
        D.all_reduce_sum(count, self.dist)
        loss_l, count_l = loss.tolist(), count.tolist()
        per = {x: s / c for x, s, c in zip(languages, loss_l, count_l) if c > 0}
        n = sum(count_l)
        return sum(loss_l) / max(n, 1.0), per, n

    def _my_batches(self, n_rows: int):
        """(j, lo, hi) of the batches of micro_batch rows (of n_rows) this rank evaluates: batch
        j goes to rank j mod world_size, so the result does not depend on the number of ranks.
        Then (None, 0, B) fillers until every rank has yielded ceil(batches / world_size): with
        FSDP every forward all-gathers the parameters, so a rank that ran one forward fewer
        would leave the others waiting in that collective (an NCCL hang at, e.g., the default
        20 evaluation batches on 8 GPUs). A filler's forward is run and its loss dropped."""
        B, W = self.cfg.data.micro_batch, self.dist.world_size
        nb = (n_rows + B - 1) // B
        mine = range(self.dist.rank, nb, W)
        for j in mine:
            yield j, j * B, min(j * B + B, n_rows)
        for _ in range(-(-nb // W) - len(mine)):  # a full batch: no new shape to compile
            yield None, 0, min(B, n_rows)

    def _split_batches(self, ids, langs):
        """(j, ids, langs) of this rank's batches of in-memory rows (see _my_batches)."""
        for j, lo, hi in self._my_batches(ids.shape[0]):
            yield j, ids[lo:hi], langs[lo:hi]

    def _valid_batches(self):
        """(j, ids, langs) of the held-out batches of this rank. The rows of all ranks are
        interleaved by language (row k of every language, then row k + 1, ...) so that a
        run.eval_batches cap covers every language evenly; batch j (micro_batch rows, masked
        with key j) goes to rank j mod world_size: the evaluation does not depend on the
        number of ranks."""
        import numpy as np
        rows = self.valid.valid_rows()                        # (n, 3): lang, start, length
        lang = rows[:, 0]
        order = np.lexsort((lang, _rank_within(lang)))
        rows = rows[order]
        B, cap = self.cfg.data.micro_batch, self.cfg.run.eval_batches
        n = rows.shape[0] if not cap else min(rows.shape[0], cap * B)
        for j, lo, hi in self._my_batches(n):
            r = np.ascontiguousarray(rows[lo:hi])
            yield j, self.valid._assemble(r), torch.from_numpy(r[:, 0].copy())

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        model_sd, optim_sd = get_state_dict(
            self.raw, self.opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {"model": model_sd, "optim": optim_sd, "sched": self.sched.state_dict(),
                "loader": self.loader.state_dict(), "rng": D.gather_objects(rng_state(), self.dist),
                "step": self.step,
                "bad_steps": self.bad_steps, "config": self.cfg.to_dict(),
                "acc": {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in self.acc.items()
                        if k != "t0"}}

    def save(self) -> Path | None:
        if getattr(self, "_saved_step", None) == self.step:  # e.g. save_every hit the last step
            return self.ckpt.latest() if self.dist.is_main else None
        self._saved_step = self.step
        state = self._state()  # on every rank: gathering FSDP shards is a collective
        path = self.ckpt.save(self.step, state) if self.dist.is_main else None
        D.barrier(self.dist)
        if path is not None:
            log.info("checkpoint %s", path)
        return path

    def _resume(self) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        path = self.ckpt.latest()
        if path is None:
            log.warning("--resume: no checkpoint in %s; starting from scratch", self.run_dir)
            return
        # Mapped, not read, when the state goes to a GPU: the node's ranks then share one copy of
        # the file in the page cache instead of holding one each (CheckpointManager.load).
        mmap = self.device.type != "cpu"
        state = self.ckpt.load(path, mmap=mmap)
        self._check_architecture(state, path)
        set_state_dict(self.raw, self.opt, model_state_dict=state["model"],
                       optim_state_dict=state["optim"],
                       options=StateDictOptions(full_state_dict=True))
        if mmap:  # what stayed on the CPU (a non-fused AdamW's step counts) is still the mapped
            # file: it would hold the whole file, and its disk space once pruned, for the run
            for st in self.opt.state.values():
                for k, v in st.items():
                    if torch.is_tensor(v) and v.device.type == "cpu":
                        st[k] = v.clone()
        self.sched.load_state_dict(state["sched"])
        self.loader.load_state_dict(state["loader"])
        rngs = state["rng"]  # one per rank (each rank has its own dropout stream)
        if len(rngs) != self.dist.world_size:
            log.warning("the checkpoint was written by %d ranks, this run has %d: the random "
                        "streams (dropout) restart from rank 0's; resumed losses will not equal "
                        "an uninterrupted run's", len(rngs), self.dist.world_size)
        set_rng_state(rngs[self.dist.rank % len(rngs)])
        self.step, self.bad_steps = int(state["step"]), int(state["bad_steps"])
        for k, v in state["acc"].items():
            if k != "tokens":  # tokens/s of the first interval counts this process's time only
                self.acc[k] = v.to(self.device) if torch.is_tensor(v) else v
        log.info("resumed from %s at step %d", path, self.step)

    def _check_architecture(self, state: dict, path) -> None:
        """A resume whose model is not the checkpoint's (another preset, or a run that
        continued from model.init_from resumed without it: its architecture is the init
        model's) would fail deep inside set_state_dict; name the cause and the fix instead."""
        have = {k: tuple(v.shape) for k, v in self.raw.state_dict().items()}
        saved = {k: tuple(v.shape) for k, v in state["model"].items()}
        if have == saved:
            return
        k = next(k for k in sorted(have.keys() | saved.keys()) if have.get(k) != saved.get(k))
        init = ((state.get("config") or {}).get("model") or {}).get("init_from")
        raise CheckpointError(
            f"{path} holds another model than this run builds ({k}: {saved.get(k, 'absent')} "
            f"there, {have.get(k, 'absent')} here): "
            + (f"that run continued from model.init_from {init}; " if init and
               init != self.cfg.model.init_from else "")
            + f"resume with the run's own config: `xlmr-fast pretrain --resume --out "
              f"{self.run_dir}` reads {self.run_dir / 'config.yaml'}")

    def export(self) -> Path | None:
        """The final model in the HF layout (transformers loads it unchanged) with the
        tokenizer files beside it, in run_dir/final."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(self.raw, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))
        out = None
        if self.dist.is_main:
            out = self.run_dir / "final"
            model = XLMRForMaskedLM(dataclasses.replace(self.model_cfg, unpad=False))
            model.load_state_dict(sd)
            model.save_pretrained(out)
            tok = self.cfg.data.tokenizer
            if tok:  # the spm model and the HF tokenizer files, so from_pretrained(out) works
                from ..tokenizer import copy_tokenizer_files
                copy_tokenizer_files(tok, out)
            log.info("exported %s", out)
        D.barrier(self.dist)
        return out

    # ------------------------------------------------------------------ bookkeeping
    def _iter(self):
        if not hasattr(self, "_it"):
            self._it = iter(self.loader)
        return self._it

    def _reset_acc(self) -> None:
        L = len(self.languages)

        def z():
            return torch.zeros(L, dtype=torch.float32, device=self.device)
        self.acc = {"loss": z(), "count": z(), "steps": 0, "grad_norm": float("nan"),
                    "overflow": torch.zeros((), dtype=torch.int64, device=self.device),
                    "tokens": torch.zeros((), dtype=torch.int64, device=self.device),
                    "t0": time.perf_counter()}

    def _off_the_clock(self, fn):
        """fn() (an evaluation, a checkpoint) with its time left out of the log interval's
        tokens/s: before, the interval after each one was slower by its whole duration."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the interval's queued steps end on its clock
        t = time.perf_counter()
        try:
            return fn()
        finally:
            self.acc["t0"] += time.perf_counter() - t

    def _log_train(self, bar) -> None:
        acc, dist = self.acc, self.dist
        tokens = acc["tokens"].clone().double()
        D.all_reduce_sum(tokens, dist)
        total, per, _ = self._reduce_per_language(acc["loss"], acc["count"], self.languages)
        dt = max(time.perf_counter() - acc["t0"], 1e-9)
        tok_s = tokens.item() / dt
        m = {"loss": total, "loss_lang": per,
             "lr": self.sched.get_last_lr()[0], "grad_norm": acc["grad_norm"],
             "tokens_per_s": tok_s, "steps": acc["steps"],
             "mask_overflow": int(acc["overflow"].item())}
        if self.peak:
            m["mfu"] = tok_s * self.flops_per_token / (self.peak * dist.world_size)
        if self.device.type == "cuda":
            m["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.metrics.log(self.step, m, kind="train")
        if dist.is_main:
            bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            (bar.write if self.cfg.run.progress else print)(format_log_line(self.step, m))
        self.last_train = m
        self._reset_acc()

    def _print_language_table(self) -> None:
        """Per-language masked-LM loss: the first and last train log lines and the last
        evaluation, so a user sees every language learn."""
        from .metrics import read_metrics
        recs = read_metrics(self.run_dir)
        train = [r for r in recs if r.get("kind") == "train" and r.get("loss_lang")]
        evals = [r for r in recs if r.get("kind") == "eval" and r.get("loss_lang")]
        if not train:
            return
        first, last = train[0]["loss_lang"], train[-1]["loss_lang"]
        ev = evals[-1]["loss_lang"] if evals else {}
        print(f"\nper-language masked-LM loss (nats): train at step {train[0]['step']} -> "
              f"{train[-1]['step']}" + (f", held-out at step {evals[-1]['step']}" if ev else ""))
        print(f"  {'lang':<9}{'first':>8}{'last':>8}" + (f"{'eval':>8}{'ppl':>9}" if ev else ""))
        for x in self.languages:
            a, b = first.get(x), last.get(x)
            line = f"  {x:<9}" + "".join(f"{v:8.3f}" if v is not None else f"{'-':>8}"
                                        for v in (a, b))
            if ev:
                e = ev.get(x)
                line += f"{e:8.3f}{math.exp(min(e, 50)):9.1f}" if e is not None else ""
            print(line)

    def _summary(self) -> dict:
        return {"step": self.step, "run_dir": str(self.run_dir), "stopped": self._stop,
                "train": getattr(self, "last_train", None)}

    def _log_start(self) -> None:
        if not self.dist.is_main:
            return
        from ..model.xlmr import num_parameters
        c, d, o = self.cfg, self.cfg.data, self.cfg.optim
        batch = d.micro_batch * o.grad_accum * self.dist.world_size
        log.info("pretrain: %s model (%.1fM parameters, vocab %d) on %s x%d (%s, %s), batch %d "
                 "x %d tokens (micro %d x accum %d x ranks %d), %d steps, run dir %s",
                 f"{c.model.init_from} (continued)" if c.model.init_from else c.model.preset,
                 num_parameters(self.raw) / 1e6, self.vocab_size,
                 self.device, self.dist.world_size, self.precision, self.dist.mode, batch,
                 d.seq_len, d.micro_batch, o.grad_accum, self.dist.world_size, o.max_steps,
                 self.run_dir)
        from ..tune import describe
        log.info("kernels: %s", describe(self.device, self.model_cfg.hidden_size,
                                         torch.bfloat16 if self.precision == "bf16"
                                         else torch.float32,
                                         False if c.model.compile  # inductor fuses them itself
                                         else self.model_cfg.fused_layer_ops))
        for x in self.languages:
            p, q = self.loader.probs[x]
            log.info("  language %-8s p %.4f  q %.4f", x, p, q)

    def _progress_bar(self):
        from tqdm.auto import tqdm
        return tqdm(total=self.cfg.optim.max_steps, initial=self.step, unit="step",
                    desc="pretrain", dynamic_ncols=True,
                    disable=not (self.dist.is_main and self.cfg.run.progress))

    def _on_signal(self, name: str) -> None:  # SIGTERM / SIGINT: stop after this step, save
        self._stop_request = name

    def _stop_flags(self) -> torch.Tensor:
        """(signal requested, time limit requested) of this rank, for the ranks' sum."""
        r = self._stop_request
        return torch.tensor([float(r not in (None, "time limit")), float(r == "time limit")],
                            device=self.device)

    def _agree(self, signals: float, limits: float) -> None:
        """The stop every rank takes from the same sums: a signal anywhere wins (every rank then
        saves and returns; "another rank" where the signal did not arrive), else a time limit
        anywhere (every rank then evaluates and exports). Ranks that took different branches
        would wait for each other in different collectives."""
        if self._stop is not None:
            return
        if signals > 0:
            r = self._stop_request
            self._stop = r if r not in (None, "time limit") else "another rank"
        elif limits > 0:
            self._stop = "time limit"

    def _agree_on_stop(self) -> None:
        """After the loop: a stop requested on some rank after the last step's all-reduce (every
        rank leaves the loop at the same step, so this one collective is safe), so that all
        ranks save and return alike. During the loop the requests ride on _train_step's
        all-reduce instead: a collective of its own cost a host sync per step."""
        if not self.dist.active:
            self._stop = self._stop or self._stop_request
            return
        flags = self._stop_flags()
        D.all_reduce_sum(flags, self.dist)
        self._agree(*flags.tolist())


def pretrain(cfg: TrainConfig, *, resume: bool = False) -> dict:
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.run()
    finally:
        D.teardown(trainer.dist)

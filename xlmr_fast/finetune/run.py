"""Cross-lingual fine-tuning and evaluation: `xlmr-fast finetune {xnli,ner,qa}` and `evaluate`.

    finetune(FinetuneArgs(task="xnli", model="runs/.../final", train=[...], eval=[...]))

One loop for the three tasks (the pretraining trainer's optimizer, schedule and precision):
  read examples (finetune/readers.py) -> features (finetune/tasks.py) -> length-bucketed batches
  padded to a multiple of 8 -> bf16 autocast on CUDA, fused AdamW, linear warmup/decay, clipping
  -> after every epoch: evaluation on the joint dev set (the mean of the dev languages' scores,
  as the paper selects one model, #M = 1) keeps the best weights -> per-language scores on every
  eval file
  -> several seeds: mean and standard deviation per language -> a table shaped like the paper's
  (Markdown + JSON in the output directory).
Protocols: "transfer" trains on one language and evaluates zero-shot on all eval languages;
"translate-train-all" trains one model on the training files of all languages; "each" trains
one model per evaluation language on that language's files (selected on its own dev set: the
paper's #M = N rows).
Without --dev, no selection is made (the last epoch's weights are evaluated) rather than
selecting on the test languages.
Several GPUs: `torchrun --nproc_per_node 8 -m xlmr_fast finetune ...` (DDP). --batch-size stays
the global batch (each rank runs a slice, weighted so the gradient is the one-process one) and
evaluation batches are split over the ranks; the results are those of one process up to float
order.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..model.xlmr import XLMRForQuestionAnswering, XLMRForSequenceClassification, \
    XLMRForTokenClassification
from .._device import parse_device
from .._io import atomic_write
from ..tokenizer import Tokenizer, copy_tokenizer_files
from ..train import distributed as D
from ..train.config import OptimSection
from ..train.distributed import DistInfo
from ..train.optim import make_optimizer, make_scheduler
from ..train.signals import catch_stop_signals
from . import metrics as M
from . import readers as R
from . import tasks as K
from .resume import (CHECKPOINT_FILE, RESULT_FILE, FinetuneStopped, check_ranks_see_the_same,
                     default_out, done_before, fingerprint, get_rng, load_epoch_checkpoint,
                     save_epoch_checkpoint, set_rng, stop_agreed)

log = logging.getLogger(__name__)

TASKS = ("xnli", "ner", "qa")
# transfer: one model on one language, scored on every eval language (zero-shot);
# translate-train-all: one model on every training language; each: one model per eval language,
# trained (and, with --dev, selected) on that language only (the paper's NER "each" and XNLI
# translate-train rows, #M = N)
PROTOCOLS = ("transfer", "translate-train-all", "each")


@dataclass
class FinetuneArgs:
    task: str
    model: str                             # HF dir / fairseq model.pt (pretrained or fine-tuned)
    train: list[str] = field(default_factory=list)
    eval: list[str] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)
    out: str | None = None                 # None: runs/finetune/<task>-<hash of the arguments>
    tokenizer: str | None = None           # default: the model directory
    protocol: str = "transfer"             # transfer | translate-train-all | each
    xnli_premise_split: bool = False       # shared data: premises 0-599 train, 600-829 eval
    seeds: tuple[int, ...] = (0,)
    epochs: int = 3
    epoch_batches: int = 0                 # > 0: an "epoch" (between dev evaluations) is this
    #                                        many batches, drawn on across passes over the data
    #                                        (the paper's XNLI recipe: 5,000); 0 = one pass
    patience: int = 0                      # > 0: stop after this many epochs without a better
    #                                        joint dev score (the paper's XNLI recipe: 5)
    max_steps: int = 0                     # > 0: stop after this many updates (smoke runs)
    batch_size: int = 32
    grad_accum: int = 1                    # micro-steps per update (the batch split in parts)
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 0                    # 0 = task default (128 pair, 256 token, 384 qa)
    doc_stride: int = 128
    device: str = "auto"
    eval_batch_size: int = 64
    save_model: bool = True
    checkpoints: bool = True               # training state after every epoch (resumable)
    max_train_examples: int = 0            # > 0: first N examples of each training file
    max_eval_examples: int = 0             # > 0: first N examples of each eval / dev file


# ------------------------------------------------------------------ data per task
def read_files(task: str, paths, split: str, premise_split: bool = False, limit: int = 0
               ) -> list:
    """Examples of every file (the first `limit` of each when > 0: smoke runs); the reader finds
    each file's language from its name."""
    out = []
    for p in paths:
        name = Path(p).name
        if task == "xnli":
            ex = R.read_xnli(p)
            if premise_split:
                tr, ev = R.xnli_premise_split(ex)
                ex = tr if split == "train" else ev
        elif task == "ner":
            ex = (R.read_conll2002(p) if name.split(".")[0] in ("esp", "ned")
                  else R.read_panx(p))
        else:
            ex = R.read_squad(p)
        if not ex:
            raise ValueError(f"{p}: no examples")
        out.extend(ex[:limit] if limit > 0 else ex)
    return out


def _langs(examples) -> list[str]:
    return sorted({e.lang for e in examples})


class Task:
    """What differs between the three tasks: model class, features, batch keys, scoring."""

    def __init__(self, name: str, tok: Tokenizer, args: FinetuneArgs, train_examples):
        self.name, self.tok, self.args = name, tok, args
        if name == "xnli":
            self.model_cls, self.num_labels = XLMRForSequenceClassification, len(R.XNLI_LABELS)
            self.max_length = args.max_length or 128
        elif name == "ner":
            self.labels = R.tag_set(train_examples)
            self.model_cls, self.num_labels = XLMRForTokenClassification, len(self.labels)
            self.max_length = args.max_length or 256
        else:
            self.model_cls, self.num_labels = XLMRForQuestionAnswering, 2
            self.max_length = args.max_length or 384

    def features(self, examples) -> list[dict]:
        if self.name == "xnli":
            return K.encode_pairs(self.tok, examples, max_length=self.max_length)
        if self.name == "ner":
            return K.encode_tokens(self.tok, examples, self.labels, max_length=self.max_length)
        return K.encode_qa(self.tok, examples, max_length=self.max_length,
                           doc_stride=self.args.doc_stride)

    def batch(self, feats) -> dict:
        keys = ["input_ids"] + {"xnli": ["label"], "ner": ["labels"],
                "qa": ["start_position", "end_position"]}[self.name]
        return K.collate(feats, keys)

    def loss_count(self, feats) -> int:
        """The loss's denominator for these features (the mean is over it): labelled tokens for
        NER, features for XNLI and QA. Ranks weight their slice's mean loss by it."""
        if self.name == "ner":
            return sum(sum(t != K.IGNORE_INDEX for t in f["labels"]) for f in feats)
        return len(feats)

    def loss(self, model, b) -> torch.Tensor:
        if self.name == "xnli":
            return model(b["input_ids"], b["attention_mask"], labels=b["label"]).loss
        if self.name == "ner":
            return model(b["input_ids"], b["attention_mask"], labels=b["labels"]).loss
        return model(b["input_ids"], b["attention_mask"], start_positions=b["start_position"],
                     end_positions=b["end_position"]).loss

    def outputs(self, model, b):
        out = model(b["input_ids"], b["attention_mask"])
        if self.name == "qa":
            return list(zip(out.start_logits.float().cpu(), out.end_logits.float().cpu()))
        return list(out.logits.float().cpu())

    def score_all(self, examples, feats, outs) -> tuple[float, dict]:
        """(the task metric in percent: accuracy, entity F1 or SQuAD F1, all details)."""
        if self.name == "xnli":
            preds = [int(o.argmax()) for o in outs]
            acc = 100 * M.accuracy(preds, [f["label"] for f in feats])
            return acc, {"accuracy": acc}
        if self.name == "ner":
            logits = [o[:len(f["input_ids"])] for o, f in zip(outs, feats)]
            pred = K.merge_token_predictions(feats, logits, examples, self.labels)
            r = M.span_f1([list(e.tags) for e in examples], pred)
            # precision/recall/F1 in percent; n_true/n_pred/n_correct stay counts
            return 100 * r["f1"], {k: 100 * v if k in ("precision", "recall", "f1") else v
                                   for k, v in r.items()}
        starts = [o[0][:len(f["input_ids"])] for o, f in zip(outs, feats)]
        ends = [o[1][:len(f["input_ids"])] for o, f in zip(outs, feats)]
        pred = K.decode_qa(feats, starts, ends, examples)
        lang = examples[0].lang if examples else "en"
        rules = examples[0].scoring if examples else "squad"  # MLQA's files: MLQA's script
        refs = {e.qid: [a[0] for a in e.answers] for e in examples}
        r = M.squad_scores(pred, refs, lang=lang, rules=rules)
        r["rules"] = rules
        return r["f1"], r


# ------------------------------------------------------------------ the loop
def _device(name: str) -> torch.device:
    dev = parse_device(name, "--device")
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)  # what every later "cuda" without an index means
    return dev


def _check_numbers(args: FinetuneArgs) -> None:
    """Options that would otherwise fail deep in the loop (a division by zero, an empty run)."""
    for name in ("epochs", "batch_size", "eval_batch_size", "doc_stride", "grad_accum"):
        if int(getattr(args, name)) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got "
                             f"{getattr(args, name)}")
    for name in ("max_steps", "max_length", "max_train_examples", "max_eval_examples",
                 "epoch_batches", "patience"):
        if int(getattr(args, name)) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got "
                             f"{getattr(args, name)}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.warmup_ratio < 1:
        raise ValueError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if not args.weight_decay >= 0:
        raise ValueError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.patience and not args.dev:
        raise ValueError("--patience stops on the joint dev score: it needs --dev files")


def _amp(dev: torch.device):
    """A context factory: bf16 autocast on CUDA, plain fp32 on the CPU."""
    if dev.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return lambda: torch.autocast("cpu", enabled=False)


def _to(b: dict, dev) -> dict:
    return {k: v.to(dev, non_blocking=True) for k, v in b.items()}


@torch.no_grad()
def predict(task: Task, model, feats, dev, amp, batch_size: int, dist: DistInfo | None = None
            ) -> list:
    """Model outputs per feature, in feature order (batches sorted by length for speed). Under
    torchrun each rank runs every world_size-th batch and all ranks get all outputs, so every
    rank scores (and selects) the same."""
    model.eval()
    outs = [None] * len(feats)
    batches = K.length_batches([len(f["input_ids"]) for f in feats], batch_size, shuffle=False)
    mine = batches[dist.rank::dist.world_size] if dist is not None and dist.active else batches
    for idx in mine:
        b = _to(task.batch([feats[i] for i in idx]), dev)
        with amp():
            for i, o in zip(idx, task.outputs(model, b)):
                outs[i] = o
    if dist is not None and dist.active:
        for part in D.gather_objects([(i, outs[i]) for idx in mine for i in idx], dist):
            for i, o in part:
                outs[i] = o
    model.train()
    return outs


def evaluate_sets(task: Task, model, sets: dict, dev, amp, batch_size: int,
                  dist: DistInfo | None = None) -> dict:
    """{lang: (score, details)} for {lang: (examples, features)}."""
    res = {}
    for lang, (ex, feats) in sets.items():
        t = time.perf_counter()
        outs = predict(task, model, feats, dev, amp, batch_size, dist)
        res[lang] = task.score_all(ex, feats, outs)
        log.info("eval %s: %.2f (%d examples, %.0f examples/s)", lang, res[lang][0], len(ex),
                 len(ex) / max(time.perf_counter() - t, 1e-9))
    return res


def _by_lang(task, examples) -> dict:
    sets = {}
    for lang in _langs(examples):
        ex = [e for e in examples if e.lang == lang]
        sets[lang] = (ex, task.features(ex))
    return sets


def _examples_summary(train_ex, dev_sets, eval_sets) -> str:
    """The counts and a digest of every example (frozen dataclasses: their repr is their text):
    equal only for equal files."""
    h = hashlib.sha256()
    parts = [("train", train_ex)] + [(f"{name} {lang}", ex) for name, sets in
                                      (("dev", dev_sets), ("eval", eval_sets))
                                      for lang, (ex, _) in sorted(sets.items())]
    for name, examples in parts:
        h.update(f"{name}:{len(examples)}\n".encode())
        for e in examples:
            h.update(repr(e).encode())
    n_dev = sum(len(ex) for ex, _ in dev_sets.values())
    n_eval = sum(len(ex) for ex, _ in eval_sets.values())
    return (f"{len(train_ex)} training, {n_dev} dev, {n_eval} evaluation examples, digest "
            f"{h.hexdigest()[:12]}")


def _unpad(task_name: str, dev: torch.device) -> bool:
    """Packed tokens on CUDA, so padded fine-tuning batches waste no FLOPs; not for QA: its loss
    is a softmax over every position, pads included (as HF's), and unpadded the pads' hidden
    states are 0 rather than the encoder's, so its loss would differ from the padded path's."""
    return dev.type == "cuda" and task_name != "qa"


def batch_stream(lengths, batch_size: int, seed: int):
    """Training batches without end: pass p over the data is length_batches with seed
    seed * 1000 + p (so with epoch_batches = 0 each epoch is exactly one pass, as before)."""
    p = 0
    while True:
        yield from K.length_batches(lengths, batch_size, shuffle=True, seed=seed * 1000 + p)
        p += 1


def _my_slice(idx: list, dist: DistInfo | None) -> list:
    """This rank's part of a global batch (every world_size-th: the batch is sorted by length,
    so the parts are alike)."""
    return idx[dist.rank::dist.world_size] if dist is not None and dist.active else idx


def train_one_seed(task: Task, args: FinetuneArgs, seed: int, train_feats, dev_sets, dev,
                   dist: DistInfo | None = None, ckpt: Path | None = None):
    """One model. Under torchrun (DDP) --batch-size is the global batch: each rank runs its
    slice, its mean loss weighted by its share of the batch's loss denominator (labelled tokens
    for NER), so the averaged gradient is the single-process one.
    ckpt: written after every epoch (model, optimizer, schedule, selection state); a run that
    finds it continues after that epoch, with the same batches and dropout masks as a run that
    never stopped (each epoch reseeds and the batch stream is replayed to its position)."""
    multi = dist is not None and dist.active
    rank, world = (dist.rank, dist.world_size) if multi else (0, 1)
    torch.manual_seed(seed)
    model = task.model_cls.from_pretrained(args.model, num_labels=task.num_labels,
                                           unpad=_unpad(task.name, dev)).to(dev)
    model.train()
    net = D.wrap(model, dist) if multi else model
    batches_per_epoch = args.epoch_batches or math.ceil(len(train_feats) / args.batch_size)
    total = batches_per_epoch * args.epochs  # the LR schedule's length, early stop or not
    if args.max_steps:
        total = min(total, args.max_steps)
    optim_cfg = OptimSection(lr=args.lr, weight_decay=args.weight_decay, max_steps=max(total, 1),
                             warmup_steps=int(args.warmup_ratio * total), fused=None)
    opt = make_optimizer(model, optim_cfg, dev)
    sched = make_scheduler(opt, optim_cfg)
    amp = _amp(dev)
    best, best_state, history, step, skipped = -math.inf, None, [], 0, 0
    stale, stopped_early = 0, None
    lengths = [len(f["input_ids"]) for f in train_feats]
    stream = batch_stream(lengths, args.batch_size, seed)
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=f"{args.task} seed {seed}", unit="step", dynamic_ncols=True,
               disable=multi and dist.rank != 0)
    t0, tokens, first_epoch, in_epoch, rng = time.perf_counter(), 0, 0, 0, None
    if ckpt is not None and ckpt.is_file():
        st = load_epoch_checkpoint(ckpt, args, seed, dev)
        fused = [{k: g.get(k) for k in ("fused", "foreach")} for g in opt.param_groups]
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        for g, f in zip(opt.param_groups, fused):  # this device's choice, not the saver's
            g.update(f)
        sched.load_state_dict(st["sched"])
        first_epoch, step, history = st["epoch"], st["step"], st["history"]
        best, best_state, stale = st["best"], st["best_state"], st["stale"]
        in_epoch, rng = st.get("in_epoch", 0), st.get("rng")  # mid-epoch: a signal's stop
        del st  # its copy of the weights (on dev, as loaded) would stay allocated while training
        for _ in itertools.islice(stream, first_epoch * batches_per_epoch + in_epoch):
            pass  # replayed to where the run stopped
        bar.update(step)
        log.info("seed %d: continuing at epoch %d, batch %d (step %d) from %s", seed,
                 first_epoch + 1, in_epoch, step, ckpt)
    def state(epoch: int, **mid_epoch) -> dict:  # what a rerun needs to continue from here
        return {"epoch": epoch, "step": step, "history": history, "best": best,
                "best_state": best_state, "stale": stale, "model": model.state_dict(),
                "opt": opt.state_dict(), "sched": sched.state_dict(), **mid_epoch}

    signals = {"name": None}  # the first SIGTERM / SIGINT's name: stop after the step
    restore_handlers = catch_stop_signals(lambda name: signals.update(name=name),
                                          "saving the state")
    try:
        for epoch in range(first_epoch, args.epochs):
            # each epoch (and rank: its own dropout masks) reseeded: a resumed epoch draws the
            # masks the uninterrupted run drew
            torch.manual_seed(seed * 1000 + epoch + 1_000_003 * rank)
            start = in_epoch if epoch == first_epoch else 0
            if start and rng is not None:  # stopped mid-epoch: this rank's generators as they were
                set_rng(rng[rank] if rank < len(rng) else rng[0], dev)
            for b_i, idx in enumerate(itertools.islice(stream, batches_per_epoch - start), start):
                # micro-batches: every grad_accum-th example, then every world_size-th per rank (the
                # batch is length-sorted, so the parts are alike); a last batch too small for one
                # example per rank is skipped by every rank (they all know its size)
                n_micro = min(args.grad_accum, len(idx) // world)
                if n_micro == 0:
                    skipped += 1
                    continue
                tokens += sum(lengths[i] for i in idx)  # the global batch's, on the host: no sync
                denom = max(task.loss_count([train_feats[i] for i in idx]), 1)
                for m in range(n_micro):
                    feats = [train_feats[i] for i in _my_slice(idx[m::n_micro], dist)]
                    b = _to(task.batch(feats), dev)
                    # DDP all-reduces on the last micro-step only
                    sync = nullcontext() if not multi or m == n_micro - 1 else net.no_sync()
                    with sync:
                        with amp():
                            loss = task.loss(net, b)
                        if n_micro == 1 and not multi:
                            loss.backward()  # the plain mean (no reweighting: bitwise as before)
                        else:  # this part's share of the batch's loss denominator; DDP averages
                            # over ranks, hence the world factor
                            (loss * (task.loss_count(feats) / denom * world)).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}",
                                    tok_s=f"{tokens / (time.perf_counter() - t0):,.0f}")
                if step >= total:
                    break
                if stop_agreed(signals, step, dist, dev) and b_i + 1 < batches_per_epoch:
                    # a signal (preemption, Ctrl-C): save where this step left off, then stop
                    states = D.gather_objects(get_rng(dev), dist) if multi else [get_rng(dev)]
                    if ckpt is not None and rank == 0:
                        save_epoch_checkpoint(ckpt, args, seed,
                                              state(epoch, in_epoch=b_i + 1, rng=states))
                    if multi:
                        D.barrier(dist)  # the file is whole before any rank leaves
                    bar.close()
                    raise FinetuneStopped(signals["name"] or "a signal on another rank", seed,
                                          step, ckpt)
            if dev_sets:
                res = evaluate_sets(task, model, dev_sets, dev, amp, args.eval_batch_size, dist)
                joint = statistics.fmean(v[0] for v in res.values())
                history.append({"epoch": epoch + 1, "step": step, "dev": joint})
                if joint > best:
                    best, stale = joint, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    stale += 1
                # not after the last epoch: under torchrun skipped batches keep step below total
                if args.patience and stale >= args.patience and step < total \
                        and epoch + 1 < args.epochs:
                    stopped_early = epoch + 1
                    log.info("seed %d: no better joint dev score for %d epochs: stopping after "
                             "epoch %d", seed, stale, epoch + 1)
                    break
            if step >= total:
                break
            if ckpt is not None and rank == 0 and epoch + 1 < args.epochs:
                save_epoch_checkpoint(ckpt, args, seed, state(epoch + 1))
    finally:
        restore_handlers()
    bar.close()
    if skipped:
        log.info("seed %d: %d batch(es) smaller than the %d ranks skipped", seed, skipped,
                 dist.world_size)
    if best_state is not None:
        model.load_state_dict(best_state)
    speed = tokens / max(time.perf_counter() - t0, 1e-9)
    return model, amp, {"history": history, "best_dev": best if dev_sets else None,
                        "train_tokens_per_s": speed, "steps": step,
                        "stopped_early_after_epoch": stopped_early}


def finetune(args: FinetuneArgs) -> dict:
    if args.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {args.task!r}")
    if not args.train:
        raise ValueError("finetune: --train needs at least one file")
    if not args.eval:
        raise ValueError("finetune: --eval needs at least one file")
    if args.protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got "
                         f"{args.protocol!r}")
    _check_numbers(args)
    if len(set(args.seeds)) < len(args.seeds):  # one seed<k>/ twice: the second would reuse the
        # first (its result.json), or, under torchrun, ranks that race rank 0's write disagree
        raise ValueError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is given twice")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size < world * args.grad_accum:
        raise ValueError(f"--batch-size {args.batch_size} is the global batch, split into "
                         f"--grad-accum {args.grad_accum} micro-batches over {world} rank(s): "
                         f"it must be at least {world * args.grad_accum}")
    if world == 1:
        return _finetune(args, None, _device(args.device))
    dist = D.setup("ddp", device=args.device, option="--device")  # torchrun: one rank per GPU
    try:
        return _finetune(args, dist, dist.device)
    finally:
        D.teardown(dist)


def _finetune(args: FinetuneArgs, dist: DistInfo | None, dev: torch.device) -> dict:
    main = dist is None or dist.rank == 0
    tok = Tokenizer.from_pretrained(args.tokenizer or args.model)
    train_ex = read_files(args.task, args.train, "train", args.xnli_premise_split,
                          args.max_train_examples)
    train_langs = _langs(train_ex)
    if args.protocol == "transfer" and len(train_langs) != 1:
        raise ValueError(f"--protocol transfer trains on one language, the --train files hold "
                         f"{train_langs}; use --protocol translate-train-all")
    task = Task(args.task, tok, args, train_ex)
    lim = args.max_eval_examples
    eval_sets = _by_lang(task, read_files(args.task, args.eval, "eval", args.xnli_premise_split,
                                          lim))
    if args.protocol == "each" and set(eval_sets) - set(train_langs):
        raise ValueError(f"--protocol each trains one model per evaluation language: no --train "
                         f"file for {sorted(set(eval_sets) - set(train_langs))} (the training "
                         f"files hold {train_langs})")
    train_feats = task.features(train_ex) if args.protocol != "each" else []
    dev_sets = (_by_lang(task, read_files(args.task, args.dev, "eval", args.xnli_premise_split,
                                          lim)) if args.dev else {})
    if dist is not None and dist.active:  # each rank read its own copy of the files
        D.check_same(_examples_summary(train_ex, dev_sets, eval_sets), "the examples of --train / "
                     "--dev / --eval", dist, "; every node needs the same files")
    out = Path(args.out) if args.out else default_out(args)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    log.info("%s: %d training examples (%s) -> %d features; eval languages %s",
             args.task, len(train_ex), ",".join(train_langs), len(train_feats),
             ",".join(eval_sets))
    per_seed = []
    for seed in args.seeds:
        if args.protocol != "each":
            info, res = _fit_and_score(task, args, seed, train_feats, dev_sets, eval_sets, dev,
                                       out / f"seed{seed}", f"seed {seed}", dist)
        else:  # one model per language, trained, selected and scored on that language only
            info, res = {"per_language": {}}, {}
            for lang in eval_sets:
                if dev_sets and lang not in dev_sets:
                    log.warning("--protocol each: no --dev file for %s: its model is the last "
                                "epoch's (no selection)", lang)
                feats = task.features([e for e in train_ex if e.lang == lang])
                info["per_language"][lang], r = _fit_and_score(
                    task, args, seed, feats, {lang: dev_sets[lang]} if lang in dev_sets else {},
                    {lang: eval_sets[lang]}, dev, out / f"seed{seed}" / lang,
                    f"seed {seed} {lang}", dist)
                res.update(r)
            per = info["per_language"].values()
            info.update(steps=sum(i["steps"] for i in per),
                        train_tokens_per_s=statistics.fmean(i["train_tokens_per_s"] for i in per),
                        best_dev=None if not dev_sets else {
                            k: i["best_dev"] for k, i in info["per_language"].items()})
        per_seed.append({"seed": seed, **info,
                         "scores": {k: v[0] for k, v in res.items()},
                         "details": {k: v[1] for k, v in res.items()}})
    table = summarize(args, train_langs, per_seed)
    table["ranks"] = dist.world_size if dist is not None else 1
    if main:  # every rank has the same table (the same gathered outputs, the same scoring)
        (out / "results.json").write_text(json.dumps(table, indent=1))
        (out / "results.md").write_text(table["markdown"] + "\n")
        print(table["markdown"])
        print(f"results and models in {out}/ (the same command again reuses them)")
    return table


def _fit_and_score(task, args, seed, feats, dev_sets, eval_sets, dev, save_dir: Path,
                   name: str, dist: DistInfo | None = None):
    """Train one model (one seed), score it on eval_sets and save it with its tokenizer (what
    `evaluate` needs) in save_dir; returns (training info, {lang: (score, details)}). A model
    done by an earlier run into the same --out with the same arguments (save_dir/result.json)
    is not redone: an interrupted multi-seed run continues where it stopped."""
    main = dist is None or dist.rank == 0
    check_ranks_see_the_same(args, save_dir, name, dist)
    done = done_before(args, save_dir, name)
    if done is not None:
        if main:
            print(f"{name}: done before ({save_dir / RESULT_FILE}): reused", flush=True)
        return done
    ckpt = save_dir / CHECKPOINT_FILE if args.checkpoints else None
    model, amp, info = train_one_seed(task, args, seed, feats, dev_sets, dev, dist, ckpt)
    res = evaluate_sets(task, model, eval_sets, dev, amp, args.eval_batch_size, dist)
    if not main:
        return info, res
    print(f"{name}: {info['steps']} steps, {info['train_tokens_per_s']:,.0f} training "
          f"tokens/s on {dev}" + (f", best joint dev {info['best_dev']:.2f}"
                                  if info["best_dev"] is not None else "")
          + (f", stopped early after epoch {info['stopped_early_after_epoch']}"
             if info["stopped_early_after_epoch"] else ""), flush=True)
    if args.save_model:
        model.save_pretrained(save_dir)
        copy_tokenizer_files(args.tokenizer or args.model, save_dir)
        if task.name == "ner":  # the tag order of the classifier rows, for `evaluate`
            (save_dir / "labels.json").write_text(json.dumps(task.labels))
    rec = {"args": fingerprint(args), "info": info, "res": res}
    save_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(save_dir / RESULT_FILE, lambda f: f.write(json.dumps(rec, indent=1)),
                 binary=False)  # last: it marks the model done
    (save_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # done: its training state is not needed
    return info, res


def summarize(args, train_langs, per_seed) -> dict:
    langs = list(per_seed[0]["scores"])
    mean = {x: statistics.fmean(s["scores"][x] for s in per_seed) for x in langs}
    std = {x: (statistics.stdev([s["scores"][x] for s in per_seed]) if len(per_seed) > 1
               else 0.0) for x in langs}
    avg = [statistics.fmean(s["scores"].values()) for s in per_seed]
    metric = {"xnli": "accuracy", "ner": "entity F1", "qa": "F1"}[args.task]
    head = "| model | train | #seeds | " + " | ".join(langs) + " | Avg |"
    sep = "|" + "---|" * (len(langs) + 4)
    cell = (lambda m, s: f"{m:.1f} ± {s:.1f}") if len(per_seed) > 1 else \
        (lambda m, s: f"{m:.1f}")
    row = (f"| {Path(args.model).name} | {','.join(train_langs)} ({args.protocol}) | "
           f"{len(per_seed)} | " + " | ".join(cell(mean[x], std[x]) for x in langs)
           + f" | {cell(statistics.fmean(avg), statistics.stdev(avg) if len(avg) > 1 else 0)} |")
    title = (f"{args.task} {metric} per language ({args.protocol}; model selection: "
             + (("each language's own dev set" if args.protocol == "each" else "joint dev set")
                if args.dev else "none, last epoch") + ")")
    md = f"{title}\n\n{head}\n{sep}\n{row}"
    if args.task == "qa":
        em = {x: statistics.fmean(s["details"][x]["exact_match"] for s in per_seed)
              for x in langs}
        md += ("\n| (exact match) | | | " + " | ".join(f"{em[x]:.1f}" for x in langs)
               + f" | {statistics.fmean(em.values()):.1f} |")
    return {"task": args.task, "metric": metric, "protocol": args.protocol,
            "train_languages": train_langs, "languages": langs, "mean": mean, "std": std,
            "average": statistics.fmean(avg), "seeds": per_seed, "markdown": md,
            "args": {k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in dataclasses.asdict(args).items()}}


def evaluate(task_name: str, model_path: str, eval_files, tokenizer=None, device="auto",
             batch_size: int = 64, xnli_premise_split: bool = False, labels=None) -> dict:
    """Scores of a saved fine-tuned model per language."""
    args = FinetuneArgs(task=task_name, model=model_path, tokenizer=tokenizer, device=device)
    dev = _device(device)
    tok = Tokenizer.from_pretrained(tokenizer or model_path)
    ex = read_files(task_name, eval_files, "eval", xnli_premise_split)
    task = Task(task_name, tok, args, ex)
    if task_name == "ner":  # the tag order the model was trained with
        saved = Path(model_path) / "labels.json"
        if labels is None and saved.exists():
            labels = json.loads(saved.read_text())
        if labels is None:
            raise ValueError(f"{model_path} has no labels.json (written by `xlmr-fast finetune "
                             f"ner`): pass the tag list in training order")
        task.labels = list(labels)
    model = task.model_cls.from_pretrained(model_path).to(dev)
    amp = _amp(dev)
    res = evaluate_sets(task, model, _by_lang(task, ex), dev, amp, batch_size)
    return {k: v[1] for k, v in res.items()}


# ------------------------------------------------------------------ CLI
def _args(p) -> None:
    p.add_argument("task", choices=TASKS, help="xnli (pair classification), ner (token "
                   "classification), qa (extractive QA)")
    p.add_argument("--model", required=True, help="pretrained model: HF dir (e.g. a "
                   "pretraining run's final/) or fairseq model.pt")
    p.add_argument("--tokenizer", help="tokenizer dir (default: the model dir)")
    p.add_argument("--train", nargs="+", required=True, help="training files (XNLI TSV, PAN-X "
                   "token<TAB>tag, CoNLL-2002 esp.*/ned.*, SQuAD JSON)")
    p.add_argument("--eval", nargs="+", required=True, help="evaluation files, one language "
                   "each (the language comes from the file name)")
    p.add_argument("--dev", nargs="*", default=[], help="dev files for model selection (joint "
                   "over their languages); default: no selection")
    p.add_argument("--protocol", choices=PROTOCOLS, default="transfer", help="transfer: one "
                   "model trained on one language, scored on all; translate-train-all: one model "
                   "on all training languages; each: one model per eval language, trained (and "
                   "selected with --dev) on its own files")
    p.add_argument("--xnli-premise-split", action="store_true", help="XNLI dev files as "
                   "../shared/data/README.md: premises 0-599 for --train, 600-829 for --eval")
    p.add_argument("--out", default=None, help="output directory (default runs/finetune/"
                   "<task>-<hash of the arguments>: the same command resumes in the same place, "
                   "another one gets its own)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--epoch-batches", type=int, default=0, help="batches per epoch (between dev "
                   "evaluations), drawn on across passes; 0 = one pass over the training data "
                   "(the paper's XNLI recipe: 5000)")
    p.add_argument("--patience", type=int, default=0, help="stop after this many epochs without "
                   "a better joint dev score (needs --dev; the paper's XNLI recipe: 5)")
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="examples per update (under "
                   "torchrun the global batch, split over the ranks)")
    p.add_argument("--grad-accum", type=int, default=1, help="split each batch into this many "
                   "micro-batches (less memory, the same update)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1,
                   help="linear warmup over this fraction of the planned steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=0,
                   help="tokens per input (default 128 xnli, 256 ner, 384 qa)")
    p.add_argument("--doc-stride", type=int, default=128, help="qa: window stride in tokens")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--no-checkpoints", dest="checkpoints", action="store_false",
                   help="do not write each model's training state after every epoch (a rerun "
                        "into the same --out then restarts an unfinished model)")
    p.add_argument("--max-train-examples", type=int, default=0,
                   help="first N examples of each training file (quick runs)")
    p.add_argument("--max-eval-examples", type=int, default=0,
                   help="first N examples of each eval/dev file (quick runs)")


def _run(a) -> int:
    logging.getLogger("xlmr_fast").setLevel(logging.INFO)
    try:
        _finetune_from_cli(a)
    except FinetuneStopped as e:  # the exit codes of a process a signal ended, as pretrain's
        print(f"xlmr-fast finetune: {e}", file=sys.stderr, flush=True)
        return 130 if e.signal_name == "SIGINT" else 143
    return 0


def _finetune_from_cli(a) -> None:
    finetune(FinetuneArgs(task=a.task, model=a.model, tokenizer=a.tokenizer, train=a.train,
                          eval=a.eval, dev=a.dev, out=a.out, protocol=a.protocol,
                          xnli_premise_split=a.xnli_premise_split, seeds=tuple(a.seeds),
                          epochs=a.epochs, epoch_batches=a.epoch_batches,
                          patience=a.patience, max_steps=a.max_steps, batch_size=a.batch_size,
                          grad_accum=a.grad_accum,
                          lr=a.lr, warmup_ratio=a.warmup_ratio, weight_decay=a.weight_decay,
                          max_length=a.max_length, doc_stride=a.doc_stride, device=a.device,
                          checkpoints=a.checkpoints,
                          max_train_examples=a.max_train_examples,
                          max_eval_examples=a.max_eval_examples))


def _eval_args(p) -> None:
    p.add_argument("task", choices=TASKS)
    p.add_argument("--model", required=True, help="a fine-tuned model dir (finetune's seedN/)")
    p.add_argument("--tokenizer", help="tokenizer dir (default: the model dir)")
    p.add_argument("--eval", nargs="+", required=True, help="evaluation files, one language "
                   "each (the language comes from the file name)")
    p.add_argument("--xnli-premise-split", action="store_true", help="XNLI dev files: score "
                   "premises 600-829 only (the part finetune --xnli-premise-split holds out)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")


def _eval_run(a) -> int:
    res = evaluate(a.task, a.model, a.eval, tokenizer=a.tokenizer, device=a.device,
                   xnli_premise_split=a.xnli_premise_split)
    for lang, r in res.items():
        print(f"{lang:<8}" + "  ".join(f"{k} {v:.2f}" for k, v in r.items()))
    print(json.dumps(res))
    return 0


def _register() -> None:
    from .. import cli
    if "finetune" not in cli.COMMANDS:
        cli.register("finetune", "fine-tune on XNLI / NER / QA and print per-language tables",
                     _args, _run)
        cli.register("evaluate", "evaluate a fine-tuned model per language", _eval_args,
                     _eval_run)


_register()

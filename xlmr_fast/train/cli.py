"""`xlmr-fast pretrain`: arguments, data preparation (demo corpus or --corpus), run directory,
then pretrain.pretrain(cfg)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from .pretrain import pretrain


def _cli_args(p) -> None:
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="config overrides, e.g. optim.lr=3e-4 optim.max_steps=2000 "
                        "(sections: model, data, mask, optim, run)")
    p.add_argument("--config", help="YAML or JSON config file (see xlmr_fast/train/config.py)")
    p.add_argument("--preset", choices=("tiny", "small", "base", "large"),
                   help="starting config (default: the file's, else tiny on CPU and small with "
                        "a GPU)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", help="raw corpus dir (<lang>.txt[.xz|.gz], CC-100 format): "
                                      "a tokenizer is trained and the text preprocessed first "
                                      "(cached). Default: the embedded demo corpus")
    src.add_argument("--data", help="preprocessed shards (from `xlmr-fast preprocess`); needs "
                                    "--tokenizer")
    p.add_argument("--tokenizer", help="tokenizer dir the --data shards were made with "
                   "(default with --init-from: the model's directory)")
    p.add_argument("--init-from", help="continue pretraining from this model (HF dir, e.g. "
                   "xlm-roberta-base, or fairseq model.pt): model.init_from. With --corpus the "
                   "corpus is encoded with its tokenizer (no tokenizer is trained)")
    p.add_argument("--vocab-size", type=int, default=8000,
                   help="pieces of the tokenizer trained for --corpus / the demo (default 8000; "
                        "XLM-R has 250000)")
    p.add_argument("--sentences", type=int, default=2_000_000,
                   help="tokenizer training sample size for --corpus (default 2,000,000 lines)")
    p.add_argument("--prepared", help="where the tokenizer and shards of --corpus go (default: "
                                      "a cache folder, ~/.cache/xlmr_fast/prepared/...)")
    p.add_argument("--workers", type=int, default=None, help="preprocess processes")
    p.add_argument("--out", help="run directory (default runs/<preset>-<date>-<time>; with "
                                 "--resume, the newest run in runs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the run directory")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop after this many minutes (checkpoint, evaluation, export): "
                        "run.max_time_minutes")


def _init_tokenizer(init_from: str | None) -> Path | None:
    """The tokenizer directory beside a model to continue from (an HF dir holds
    sentencepiece.bpe.model, a fairseq model.pt sits next to it); None without one."""
    if not init_from:
        return None
    from ..tokenizer import MODEL_FILE
    p = Path(init_from)
    d = p if p.is_dir() else p.parent
    if not (d / MODEL_FILE).is_file():
        raise ValueError(f"--init-from {p}: no {MODEL_FILE} in {d} to encode the corpus with; "
                         f"preprocess it with the model's tokenizer and pass --data/--tokenizer")
    return d


def _newest_run(root: Path) -> Path | None:
    runs = [d for d in root.glob("*") if (d / "checkpoints").is_dir()] if root.is_dir() else []
    return max(runs, key=lambda d: d.stat().st_mtime) if runs else None


def _cli_run(a) -> int:
    from .config import TrainConfig, from_dict, load_config
    from .prepare import prepare_corpus

    logging.getLogger("xlmr_fast").setLevel(logging.INFO)
    gpu = torch.cuda.is_available()
    out = a.out
    if out is None and a.resume:
        newest = _newest_run(Path("runs"))
        if newest is None:
            raise FileNotFoundError("--resume without --out: no run with checkpoints in "
                                    "runs/; pass --out RUN_DIR")
        out = str(newest)
    saved = Path(out) / "config.yaml" if a.resume else None
    if saved is not None and saved.is_file():
        # Resuming continues the run's own resolved config (model, data, schedule), so the
        # printed hint `xlmr-fast pretrain --resume --out RUN` is the whole command; a preset or
        # another file would build another model or schedule. Changes go in as overrides.
        if a.config or a.preset:
            raise ValueError(f"--resume continues {saved}: give changes as overrides (e.g. "
                             f"optim.max_steps=...), not --config / --preset")
        cfg = load_config(saved, a.overrides)
    else:
        base = None
        if a.preset or not a.config:
            base = TrainConfig.preset(a.preset or ("small" if gpu else "tiny"))
            if not a.preset and gpu:  # the demo on a GPU: larger model, short blocks, more steps
                base = load_config(None, ["data.seq_len=128", "data.micro_batch=64",
                                          "optim.max_steps=2000", "optim.grad_accum=1",
                                          "optim.warmup_steps=100", "run.eval_every=500",
                                          "run.save_every=500"], base)
        cfg = load_config(a.config, a.overrides, base)
    if a.init_from:
        cfg = from_dict({"model": {"init_from": a.init_from}}, cfg)

    if a.data:
        if not a.tokenizer and not cfg.model.init_from:
            raise ValueError("--data needs --tokenizer (the tokenizer dir the shards were made "
                             "with)")
        data_dir = Path(a.data)
        tok_dir = Path(a.tokenizer) if a.tokenizer else _init_tokenizer(cfg.model.init_from)
    elif cfg.data.data_dir and not a.corpus:
        data_dir, tok_dir = Path(cfg.data.data_dir), cfg.data.tokenizer
    else:
        corpus = a.corpus
        if corpus is None:
            from ..data.demo import demo_corpus
            corpus = demo_corpus()
            print(f"no --corpus given: using the demo corpus {corpus} (chatterbot-corpus, "
                  f"28 languages)", flush=True)
        data_dir, tok_dir = prepare_corpus(corpus, a.prepared, vocab_size=a.vocab_size,
                                           sentences=a.sentences, workers=a.workers,
                                           seed=cfg.run.seed,
                                           tokenizer=_init_tokenizer(cfg.model.init_from))
    if out is None:
        out = f"runs/{cfg.model.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = {"out_dir": out}
    if a.minutes is not None:
        run["max_time_minutes"] = a.minutes

    def absolute(p):  # RUN/config.yaml keeps them: a resume may run from another directory
        return os.path.abspath(p) if p else None
    cfg = from_dict({"data": {"data_dir": absolute(data_dir), "tokenizer": absolute(tok_dir),
                              "eval_text": absolute(cfg.data.eval_text)},
                     "model": {"init_from": absolute(cfg.model.init_from)}, "run": run}, cfg)
    summary = pretrain(cfg, resume=a.resume)
    run_dir = Path(summary["run_dir"])
    if summary["stopped"] not in (None, "time limit"):
        print(f"stopped ({summary['stopped']}) at step {summary['step']}; resume with: "
              f"xlmr-fast pretrain --resume --out {run_dir}")
        return 130 if summary["stopped"] == "SIGINT" else 143
    t = summary.get("train") or {}
    wrote = [n for n in ("config.yaml", "metrics.jsonl", "loss.png", "loss_per_language.png")
             if (run_dir / n).is_file()]  # no plots without matplotlib
    wrote += [n + "/" for n in ("checkpoints", "final") if (run_dir / n).is_dir()]
    print(f"done: {summary['step']} steps, last train loss {t.get('loss', float('nan')):.3f}, "
          f"{t.get('tokens_per_s', 0):,.0f} tokens/s. Run directory {run_dir}: "
          f"{', '.join(wrote)}" + (" (HF model + tokenizer)" if "final/" in wrote else ""))
    return 0


def _register() -> None:
    from .. import cli
    if "pretrain" not in cli.COMMANDS:
        cli.register("pretrain", "pretrain XLM-R with masked LM (no arguments: a tiny model on "
                     "the embedded demo corpus)", _cli_args, _cli_run)


_register()

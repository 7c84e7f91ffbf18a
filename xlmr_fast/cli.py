"""`xlmr-fast` command line. Each subcommand is one entry of COMMANDS:

    COMMANDS[name] = Command(help, add_args(parser), run(args) -> exit code)

so another module adds one with `register("pretrain", "...", add_args, run)` (or by editing the
table below) without touching the parser code.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Command:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, add_args, run) -> None:
    if name in COMMANDS:
        raise ValueError(f"xlmr-fast: subcommand {name!r} is already registered")
    COMMANDS[name] = Command(help, add_args, run)


# ---------------------------------------------------------------- convert
def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="Hugging Face directory (config.json + model.safetensors or "
                               "pytorch_model.bin) or a fairseq model.pt")
    p.add_argument("dst", help="output: an HF directory (default) or, with --to fairseq, a "
                               "model.pt path")
    p.add_argument("--to", choices=("hf", "fairseq"), default="hf",
                   help="output layout (default hf: transformers loads it unchanged)")
    p.add_argument("--fairseq-prefix", choices=("decoder", "encoder"), default="decoder",
                   help="fairseq key prefix: decoder = release model.pt, encoder = current fairseq")
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads, when the source does not state them "
                        "(default: its config, else hidden/64)")
    p.add_argument("--head-name", default=None,
                   help="fairseq classification head to keep when there are several")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow a full pickle load of a fairseq file (only for trusted files)")


def _convert_run(a: argparse.Namespace) -> int:
    from .model import convert
    cls = convert.auto_class(a.src, unsafe_load=a.unsafe_load, head_name=a.head_name)
    over = {"num_heads": a.num_heads} if a.num_heads else {}
    model = cls.from_pretrained(a.src, unsafe_load=a.unsafe_load, head_name=a.head_name, **over)
    if a.to == "hf":
        model.save_pretrained(a.dst)
    else:
        convert.save_fairseq(model, a.dst, prefix=a.fairseq_prefix)
    c = model.config
    print(f"converted {a.src} -> {a.dst} ({a.to}): {cls.__name__}, {c.num_layers} layers, "
          f"hidden {c.hidden_size}, {c.num_heads} heads, vocab {c.vocab_size}")
    return 0


register("convert", "convert an HF or fairseq XLM-R checkpoint to the HF (or fairseq) layout",
         _convert_args, _convert_run)


# ---------------------------------------------------------------- bench
def _bench_dir():
    """The repository's bench/ folder (benchmarks are not installed with the package: they
    need the source tree, its results CSVs and optional baseline libraries)."""
    import os
    from pathlib import Path
    root = Path(os.environ.get("XLMR_FAST_REPO") or Path(__file__).resolve().parents[1])
    return root / "bench" if (root / "bench" / "harness.py").exists() else None


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="benchmarks to run, e.g. attention train "
                   "(bench/bench_<name>.py); none: list them")
    p.add_argument("--args", default="", help="extra arguments for every benchmark, quoted")


def _bench_run(a: argparse.Namespace) -> int:
    import shlex
    import subprocess
    d = _bench_dir()
    if d is None:
        raise FileNotFoundError("the benchmarks live in the repository's bench/ folder, which a "
                                "pip install does not ship: run from a clone, or set "
                                "XLMR_FAST_REPO to one")
    names = sorted(p.stem[6:] for p in d.glob("bench_*.py"))
    if not a.names:
        print("benchmarks:", " ".join(names))
        return 0
    unknown = [n for n in a.names if n not in names]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; available: {', '.join(names)}")
    rc = 0
    for n in a.names:
        cmd = [sys.executable, "-m", f"bench.bench_{n}", *shlex.split(a.args)]
        print("$", " ".join(cmd), flush=True)
        rc = max(rc, subprocess.call(cmd, cwd=d.parent))
    return rc


register("bench", "run the kernel and end-to-end benchmarks of a repository checkout",
         _bench_args, _bench_run)

from .data import preprocess as _preprocess  # noqa: E402,F401  (registers `preprocess`)
from . import tokenizer as _tokenizer  # noqa: E402,F401  (registers `train-tokenizer`)
from .train import cli as _train_cli  # noqa: E402,F401  (registers `pretrain`)
from .finetune import run as _finetune  # noqa: E402,F401  (registers `finetune`, `evaluate`)
from . import tune as _tune  # noqa: E402,F401  (registers `tune`)


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlmr-fast",
                                     description="Fast, faithful XLM-R pretraining and fine-tuning")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        rc = COMMANDS[args.command].run(args)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError; OSError: a path that
        # is a file where a directory is wanted (or the reverse), unwritable, ... (names it)
        print(f"xlmr-fast {args.command}: error: {e}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

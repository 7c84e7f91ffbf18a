"""Process-group setup and model wrapping for `torchrun` runs (DDP or FSDP2).

    dist = setup("auto", device="auto")     # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    model = wrap(model, dist)               # DDP, or fully_shard per layer + root for FSDP2
    ...
    teardown(dist)

One process per GPU (NCCL), or CPU processes with gloo (tests, and CPU clusters). Launch:

    torchrun --nproc_per_node 8 -m xlmr_fast pretrain ...                       # one node
    torchrun --nnodes 4 --node_rank $NODE --nproc_per_node 8 \\
             --rdzv_backend c10d --rdzv_endpoint $MASTER:29500 -m xlmr_fast pretrain ...

Both wrappers average gradients over ranks (DDP all-reduce, FSDP2 reduce-scatter); the trainer
multiplies by world_size / (global number of masked targets) so the gradient is that of the
fairseq-normalised loss (sum over the global batch / its target count) whatever the layout.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import nn

from .._device import parse_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    mode: str            # none | ddp | fsdp
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.mode != "none"


def _pick_device(device: str, local_rank: int, option: str = "run.device") -> torch.device:
    dev = parse_device(device, option, f"use {option}{'=' if '.' in option else ' '}cpu")
    if dev.type != "cuda":
        return dev
    if dev.index is None:
        # LOCAL_RANK counts the node's processes; a launcher that shows each process only its
        # own GPU (e.g. SLURM --gpus-per-task=1) makes cuda:0 the right one for every rank.
        n = torch.cuda.device_count()
        if n > 1 and local_rank >= n:
            raise ValueError(f"LOCAL_RANK={local_rank} but this process sees {n} GPUs: launch "
                             f"at most {n} processes per node (two ranks on one GPU make "
                             f"NCCL fail)")
        dev = torch.device("cuda", local_rank if n > 1 else 0)
    torch.cuda.set_device(dev)
    return dev


def setup(mode: str = "auto", device: str = "auto", option: str = "run.device") -> DistInfo:
    """Join the process group torchrun describes (env RANK/WORLD_SIZE/MASTER_ADDR...), if any.
    `option` names the device setting in errors (run.device, --device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if mode == "auto":
        mode = "ddp" if world > 1 else "none"
    if mode != "none" and "MASTER_ADDR" not in os.environ and world > 1:
        raise ValueError(f"WORLD_SIZE={world} but no MASTER_ADDR ({mode}): launch with torchrun "
                         "(see xlmr_fast/train/distributed.py)")
    dev = _pick_device(device, local_rank, option)
    if mode == "none":
        if world > 1:
            raise ValueError(f"WORLD_SIZE={world} but run.distributed=none: every process "
                             "would train alone on the same data; use ddp or fsdp")
        return DistInfo("none", 0, 1, 0, dev)
    if not td.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        td.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                              **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(mode, td.get_rank(), td.get_world_size(), local_rank, dev)


def wrap(model: nn.Module, dist: DistInfo, layers=None) -> nn.Module:
    """DDP, or FSDP2: each module of `layers` sharded on its own (its parameters gathered just
    before it runs, freed after), then the root (embeddings, head)."""
    if dist.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if dist.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for layer in layers or []:
            fully_shard(layer)
        fully_shard(model)
        return model
    return model


def all_reduce_sum(t: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if dist.active:
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def gather_objects(obj, dist: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled; for small state only)."""
    if not dist.active:
        return [obj]
    out = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out


def check_same(value, what: str, dist: DistInfo | None, hint: str = "") -> None:
    """Raise the same ValueError on every rank when the ranks' `value`s (small, comparable:
    what each rank found on its own disk, say) differ. Ranks that went on from different states
    would wait for each other in different collectives (a hang until the 30-minute timeout), or
    train on apart without any error (one rank resumed, another from scratch)."""
    if dist is None or not dist.active:
        return
    values = gather_objects(value, dist)
    if all(v == values[0] for v in values):
        return
    groups: dict[str, list[int]] = {}
    for r, v in enumerate(values):
        groups.setdefault(repr(v), []).append(r)
    found = "; ".join(f"{_ranks_text(rs)}: {v}" for v, rs in groups.items())
    raise ValueError(f"the ranks disagree on {what} ({found}){hint}")


def _ranks_text(ranks: list[int]) -> str:
    """[0] -> 'rank 0', [1, 2, 3, 5] -> 'ranks 1-3, 5'."""
    runs, start = [], ranks[0]
    for a, b in zip(ranks, ranks[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(runs)


def barrier(dist: DistInfo) -> None:
    if dist.active:
        td.barrier()


def teardown(dist: DistInfo) -> None:
    if dist.active and td.is_initialized():
        td.destroy_process_group()

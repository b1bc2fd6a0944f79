"""Data-parallel plumbing of the training engine: the process group, collectives, DDP.

Launched by ``torchrun`` (WORLD_SIZE > 1) each process trains a DDP replica on its share
of the batches; these helpers are what the engine and the tasks use to agree across
ranks. On one process every one of them is free (no process group is made).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from earshot.errors import TrainingError


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) data-parallel job."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout: float = 600.0) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1; a single process otherwise.
    A collective that waits ``timeout`` seconds for another rank raises (gloo) or aborts
    (NCCL) instead of hanging."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return Dist(world_size, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))


_COLLECTIVE_FAILURE = re.compile(r"timed? ?out|timeout|connection|peer|socket", re.IGNORECASE)


@contextlib.contextmanager
def collective_failures(world: Dist, timeout: float) -> Iterator[None]:
    """Turn a collective that timed out or lost its peer into a TrainingError naming this
    rank, so a dead or stalled rank ends the job (torchrun then stops the others)."""
    try:
        yield
    except RuntimeError as err:
        if world.world_size <= 1 or not _COLLECTIVE_FAILURE.search(str(err)):
            raise
        raise TrainingError(
            f"rank {world.rank}: no answer from the other ranks (another rank died, or stalled "
            f"longer than train.dist_timeout={timeout:g}s): {str(err).splitlines()[0]}") from err


def barrier(world: Dist) -> None:
    """Wait for every rank (nothing on one process)."""
    if world.world_size > 1:
        dist.barrier()


def every_rank(world: Dist, ok: bool) -> bool:
    """True when ``ok`` holds on every rank (one tiny all-reduce; free on one process)."""
    if world.world_size <= 1:
        return ok
    flag = _flag(not ok)
    dist.all_reduce(flag)
    return int(flag.item()) == 0


def broadcast_flag(world: Dist, value: bool) -> bool:
    """Rank 0's ``value`` on every rank."""
    if world.world_size <= 1:
        return value
    flag = _flag(value)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _flag(value: bool) -> torch.Tensor:
    """A one-element tensor for a collective, on the device the backend needs."""
    flag = torch.tensor([int(value)], dtype=torch.int32)
    return flag.cuda() if dist.get_backend() == "nccl" else flag


def reduce_sums(world: Dist, device: torch.device, sums: np.ndarray) -> np.ndarray:
    """Totals over every rank (unchanged on one process), added in float64 on ``device``."""
    if world.world_size <= 1:
        return sums
    totals = torch.tensor(sums.tolist(), dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.cpu().numpy()


def gather_objects(world: Dist, value: object) -> list:
    """Every rank's ``value``, in rank order (``[value]`` on one process)."""
    if world.world_size <= 1:
        return [value]
    values = [None] * world.world_size
    dist.all_gather_object(values, value)
    return values


def wrap_ddp(model: torch.nn.Module, world: Dist, device: torch.device,
             find_unused: bool) -> torch.nn.Module:
    """``model`` in a DistributedDataParallel wrapper when there are several ranks; as it is
    otherwise. ``find_unused``: some parameters may get no gradient in a step."""
    if world.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)

"""What the training engine counts and writes to ``<exp_dir>/metrics.jsonl``.

One JSON object a line. ``kind: "step"`` rows (every ``train.log_every`` optimizer steps)
hold the step's losses, learning rate, gradient norm and the throughput since the previous
row; ``kind: "epoch"`` rows hold the epoch's training averages, its dev metrics and what
it took:

- ``seconds``: wall time of the epoch in this process (training, dev pass, scheduler);
- ``train_seconds``: time spent training the epoch's batches (a resumed epoch adds the
  time trained before its mid-epoch checkpoint);
- ``dev_seconds``: time of its dev pass (0.0 when none ran);
- ``train_{AMOUNT}`` (``train_audio_seconds``, ``train_tokens``) and ``train_{ROWS}``
  (``train_utterances``, ``train_sentences``): what was trained over the epoch, all ranks,
  in the task's units (see ``Task.AMOUNT`` and ``Task.ROWS``);
- ``padding_efficiency``: the trained amount over the amount the padded batches hold
  (1.0: no padding; ASR: audio samples over batch rows x longest row);
- ``peak_rss_mb``: peak resident memory of the process so far.

>>> from earshot.train.engine import Task
>>> from earshot.train.state import TrainState
>>> stats = EpochStats(0.5, {}, 4, amount=2.5, rows=3, seconds=1.0)
>>> row = epoch_row(Task(), 1, TrainState(global_step=10), stats, {}, lr=0.1, seconds=1.5,
...                 dev_seconds=0.0, dev_skipped=0)
>>> row["train_items"], row["train_rows"], row["train_seconds"], row["dev_seconds"]
(2.5, 3, 1.0, 0.0)
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from earshot.train.distributed import reduce_sums

if TYPE_CHECKING:
    from earshot.train.engine import Run, Task
    from earshot.train.state import TrainState

log = logging.getLogger(__name__)

# Why a training row (utterance, sentence) was not trained on, as counted in an epoch.
SKIP_REASONS = {
    "unreadable": "audio did not load",
    "unusable": "unusable by the model",  # Task.UNUSABLE says which rows (ASR: too short)
    "out_of_memory": "out of memory even alone",
    "other_rank": "in a round another rank's batch could not train",
}


@dataclass(frozen=True)
class EpochStats:
    """Training-set averages over one epoch (weighted by the task's items), the loss's
    named parts (ASR: ctc, nll), the batches seen and the rows skipped, by reason (the
    keys of SKIP_REASONS; over all ranks); what was trained (the task's amount and rows,
    over all ranks), the seconds that took, and the share of the batches' padded size that
    was data."""

    loss: float
    parts: dict
    batches: int
    skipped: dict = field(default_factory=dict)
    amount: float = 0.0
    rows: int = 0
    seconds: float = 0.0
    padding_efficiency: float | None = None  # amount / (amount with padding); None: unknown


class EpochSums:
    """Running sums of one epoch on this rank, in one float64 array (``values``): the loss
    and its parts weighted by the task's items, the items, the rows skipped by reason, the
    task's amount and the rows trained. A mid-epoch checkpoint holds ``saved()``: those
    totalled over ranks, then rank 0's training seconds so far. Rank 0 carries a resumed
    epoch's sums on, the other ranks start from zero, so nothing is counted twice; entries
    a checkpoint written by an older version lacks start at 0."""

    def __init__(self, parts: int, saved: tuple[float, ...] = (), main: bool = True):
        self.n = 1 + parts  # the loss and its parts
        self.skip = {reason: self.n + 1 + i for i, reason in enumerate(SKIP_REASONS)}
        self.amount_at = self.n + 1 + len(SKIP_REASONS)
        self.rows_at = self.amount_at + 1
        self.padded_at = self.rows_at + 1
        self.values = np.zeros(self.padded_at + 1)
        self.seconds_before = 0.0  # training seconds of this epoch before a resume
        if saved and main:
            counted = saved[:len(self.values)]
            self.values[:len(counted)] = counted
            if len(saved) > len(self.values):
                self.seconds_before = float(saved[len(self.values)])
        self.start = time.monotonic()

    def add_losses(self, items: float, losses: list[float]) -> None:
        self.values[:self.n + 1] += [*(items * v for v in losses), items]

    def add_trained(self, amount: float, rows: int, padded: float | None = None) -> None:
        """``amount`` of ``rows`` trained, in a batch of ``padded`` (amount with padding)."""
        self.values[self.amount_at] += amount
        self.values[self.rows_at] += rows
        self.values[self.padded_at] += amount if padded is None else padded

    def add_skipped(self, reason: str, rows: int) -> None:
        self.values[self.skip[reason]] += rows

    def seconds(self) -> float:
        """Training seconds of the epoch so far (before a resume included)."""
        return self.seconds_before + time.monotonic() - self.start

    def saved(self, totals: np.ndarray) -> tuple[float, ...]:
        """What a mid-epoch checkpoint holds, given ``values`` totalled over ranks."""
        return (*(float(v) for v in totals), self.seconds())

    def carry_on(self, totals: np.ndarray, main: bool) -> None:
        """After a mid-epoch checkpoint: rank 0 goes on from the totals, the others from 0."""
        self.values = totals if main else np.zeros_like(self.values)

    def stats(self, totals: np.ndarray, parts: tuple[str, ...], batches: int) -> EpochStats:
        """The epoch's EpochStats from ``values`` totalled over ranks."""
        n = self.n
        loss, *part_losses = (totals[:n] / max(totals[n], 1)).tolist()
        skipped = {reason: int(totals[i]) for reason, i in self.skip.items()}
        amount, padded = float(totals[self.amount_at]), float(totals[self.padded_at])
        # a resumed checkpoint of an older version has no padded sum: efficiency unknown
        efficiency = amount / padded if padded >= amount > 0 else None
        return EpochStats(loss, dict(zip(parts, part_losses)), batches, skipped, amount,
                          int(totals[self.rows_at]), self.seconds(), efficiency)


class StepMeter:
    """Per-step numbers for ``metrics.jsonl``: losses of the last step, the task's amount
    (audio seconds, tokens) and rows per second (all ranks) since the previous row, peak
    memory."""

    def __init__(self, run: Run):
        self.run, self.task = run, run.task
        self.amount = self.items = 0.0
        self.losses = [math.nan] * (1 + len(self.task.PARTS))
        self.since = time.monotonic()

    def add(self, amount: float, rows: int, losses: list[float]) -> None:
        """A trained (part of a) batch: its amount, rows and [loss, *parts]."""
        self.amount += amount
        self.items += rows
        self.losses = losses

    def row(self, epoch: int, step: int, lr: float, norm: float, skipped: int) -> dict:
        seconds = max(time.monotonic() - self.since, 1e-9)
        amount, items = reduce_sums(self.run.dist, self.run.device,
                                    np.array([self.amount, self.items])).tolist()
        row = {"kind": "step", "epoch": epoch, "step": step, "loss": self.losses[0],
               **dict(zip(self.task.PARTS, self.losses[1:])), "lr": lr, "grad_norm": norm,
               "skipped_steps": skipped,
               f"{self.task.AMOUNT}_per_second": round(amount / seconds, 2),
               f"{self.task.ROWS}_per_second": round(items / seconds, 2),
               "max_rss_mb": max_rss_mb()}
        if self.run.device.type == "cuda":
            row["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(self.run.device) / 2**20, 1)
        self.amount = self.items = 0.0
        self.since = time.monotonic()
        return row


def max_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def epoch_row(task: Task, epoch: int, state: TrainState, stats: EpochStats, dev: dict[str, float],
              *, lr: float, seconds: float, dev_seconds: float, dev_skipped: int) -> dict:
    """The ``kind: "epoch"`` row of ``epoch`` (see the module's description), ``state``
    being the state after it."""
    return {"kind": "epoch", "epoch": epoch, "step": state.global_step, "train_loss": stats.loss,
            **stats.parts, **{f"dev_{name}": value for name, value in dev.items()}, "lr": lr,
            "skipped_steps": state.skipped_steps, "skipped_rows": sum(stats.skipped.values()),
            "skipped": stats.skipped, "dev_skipped": dev_skipped, "seconds": round(seconds, 3),
            "train_seconds": round(stats.seconds, 3), "dev_seconds": round(dev_seconds, 3),
            f"train_{task.AMOUNT}": round(stats.amount, 3), f"train_{task.ROWS}": stats.rows,
            "padding_efficiency": None if stats.padding_efficiency is None
            else round(stats.padding_efficiency, 4), "peak_rss_mb": max_rss_mb()}


def log_skips(task: Task, epoch: int, stats: EpochStats, dev_skipped: int) -> None:
    """One warning line for what the epoch left out, by reason (each was named as it was
    skipped)."""
    reasons = {**SKIP_REASONS, "unusable": task.UNUSABLE}
    parts = [f"{count} {reasons[reason]}" for reason, count in stats.skipped.items() if count]
    if parts:
        log.warning("epoch %d: %d training %s skipped (%s)", epoch, sum(stats.skipped.values()),
                    task.ROWS, ", ".join(parts))
    if dev_skipped:
        log.warning("epoch %d: %d dev %s not scored (audio did not load, or too short)", epoch,
                    dev_skipped, task.ROWS)


def append_metrics(path: Path, row: dict) -> None:
    """One JSON line: ``kind`` "step" (every ``train.log_every`` steps) or "epoch"."""
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def truncate_metrics(path: Path, last_step: int, last_epoch: int) -> None:
    """Drop the lines written after the checkpoint being resumed (that training is done
    again), and a last line cut short by a kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["step"] <= last_step and (row.get("kind") == "step" or row["epoch"] <= last_epoch):
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))

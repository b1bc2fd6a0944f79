"""The training engine: epochs of any task, checkpointed, resumable, data-parallel.

A task (``earshot.train.tasks``) makes its model and loaders, puts them in a ``Run``
(``Run.start`` adds the optimizer, schedule and grad scaler) and calls ``fit``. Each epoch
trains (mixed precision, gradient accumulation, clipping, non-finite updates skipped, a
batch out of memory split in halves), runs the dev pass when due, logs a row to
``metrics.jsonl`` (``earshot.train.meters``) and writes an atomic checkpoint, also inside
the epoch every ``train.save_every_steps`` steps or ``save_every_minutes`` minutes. Then
``export`` scores the best epoch (or the mean of the best or last few) on dev and has the
task save it. A resumed run (``begin_run(cfg, resume=True)``) goes on from the newest
readable checkpoint, inside an epoch too; every random draw of a step comes from torch's
generator seeded by (seed, rank, epoch, batch) (``seed_step``), so it ends with the
parameters of a run never stopped. Under ``torchrun`` each process trains a DDP replica on
its share of the batches; sums and dev results are reduced over ranks, rank 0 writes.

The Task contract: a task says what a batch's loss is (``forward``), which rows it can
use (``usable``, ``unreadable``), how rows are weighted and counted (``weight``, ``amount``;
``PARTS``, ``AMOUNT``, ``ROWS`` name the logged numbers), how the model does on dev
(``dev_pass``) and how exported weights are saved (``save_export``). The engine does the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from earshot.config import OptimConfig, TrainConfig, check
from earshot.errors import TrainingError
from earshot.train import checkpoint as ckpt
from earshot.train import faults
from earshot.train.distributed import (Dist, barrier, broadcast_flag, collective_failures, every_rank,
                                       init_distributed, reduce_sums, wrap_ddp)
from earshot.train.environment import (CHECKPOINT_DIR, METRICS_FILE, MODEL_DIR, RunConfig, autocast,
                                       check_precision, configure_torch, prepare_exp_dir,
                                       seed_everything, seed_step, select_device)
from earshot.train.meters import (EpochStats, EpochSums, StepMeter, append_metrics, epoch_row,
                                  log_skips, truncate_metrics)
from earshot.train.optim import build_optimization
from earshot.train.rundir import release_run_dir
from earshot.train.schedulers import Scheduler
from earshot.train.state import TrainState

log = logging.getLogger(__name__)


class Batch(Protocol):
    """A task's batch as the engine uses it (``earshot.data.batching.Batch``, ``SentenceBatch``)."""

    ids: list[str]

    def __len__(self) -> int: ...

    def to(self, device: torch.device) -> Batch: ...

    def select(self, index: torch.Tensor) -> Batch: ...


class DevResult(Protocol):
    """A task's dev result: its metrics (``loss`` and others) and the rows not scored."""

    skipped: int

    def metrics(self) -> dict[str, float]: ...


class Task:
    """What the engine trains (the module docstring's contract). Loaders must be like
    ``earshot.data.batching.make_loader``'s (an ``EpochBatches`` sampler, an ``epoch``)."""

    NAME = "model"  # what the parameter count is logged for ("language model")
    PARTS: tuple[str, ...] = ()  # named parts of the loss, logged beside it
    AMOUNT = "items"  # what throughput counts besides rows ("audio_seconds", "tokens")
    ROWS = "rows"  # what a batch's rows are ("utterances", "sentences")
    UNUSABLE = "unusable by the model"  # what ``usable`` leaves out
    find_unused_parameters = False  # DDP: some parameters may get no gradient

    def usable(self, batch: Batch) -> Batch | None:
        """The batch without rows the model cannot take (warned about); None if empty."""
        return batch

    def unreadable(self, batch: Batch) -> int:
        """Rows the loader had to drop from this batch (their data did not load)."""
        return 0

    def forward(self, model: torch.nn.Module, batch: Batch, epoch: int, step: int
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(loss tensor, [part tensors]) of a training batch through ``model``."""
        raise NotImplementedError

    def weight(self, batch: Batch) -> int:
        """The items (rows, tokens) the loss is a mean over: its weight in the epoch's."""
        return len(batch)

    def amount(self, batch: Batch) -> float:
        """The batch's size in the task's AMOUNT (audio seconds, tokens)."""
        return float(len(batch))

    def padded(self, batch: Batch) -> float | None:
        """The batch's size in AMOUNT with its padding (rows x longest row); None when
        the task does not pad."""
        return None

    def dev_pass(self, run: Run) -> DevResult:
        """The dev result of ``run.model``, over all ranks."""
        raise NotImplementedError

    def after_validation(self, run: Run, epoch: int) -> None:
        """Rank 0, after each epoch's checkpoint (plots)."""

    def save_export(self, run: Run, out: Path, epochs: list[int], dev: DevResult,
                    state: TrainState) -> None:
        """Rank 0: write ``run.model`` (the weights of ``epochs``, scored ``dev``, at the end
        of the run's ``state``) to ``out``."""
        raise NotImplementedError


@dataclass(kw_only=True)
class Run:
    """Everything the epoch loop works with; made by ``Run.start``."""

    cfg: RunConfig
    exp_dir: Path
    dist: Dist
    device: torch.device
    task: Task
    model: torch.nn.Module  # the bare model
    ddp_model: torch.nn.Module  # what forward/backward go through (DDP wrapper or the model)
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    scaler: torch.amp.GradScaler
    train_loader: torch.utils.data.DataLoader
    dev_loader: torch.utils.data.DataLoader
    tokenizer: object = None
    train_hours: float = 0.0
    tensorboard: object = None  # monitor.TensorBoard on rank 0, while fitting

    @classmethod
    def start(cls, cfg: RunConfig, exp_dir: Path, world: Dist, device: torch.device, *,
              model: torch.nn.Module, task: Task, train_loader: torch.utils.data.DataLoader,
              dev_loader: torch.utils.data.DataLoader, tokenizer: object = None,
              train_hours: float = 0.0, data: str = "") -> Run:
        """The run of ``model`` (on ``device``): its optimizer, schedule and grad scaler are
        built here; the parameter count is logged with ``data`` (what it trains on)."""
        optimizer, scheduler, scaler = build_optimization(cfg, model, device, train_loader)
        log.info("%s: %.2fM parameters; %s; device %s", task.NAME,
                 sum(p.numel() for p in model.parameters()) / 1e6, data, device)
        return cls(cfg=cfg, exp_dir=exp_dir, dist=world, device=device, task=task, model=model,
                   ddp_model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                   train_loader=train_loader, dev_loader=dev_loader, tokenizer=tokenizer,
                   train_hours=train_hours)

    def log_row(self, row: dict) -> None:
        """A metrics row to metrics.jsonl and TensorBoard (rank 0 only)."""
        if self.dist.is_main:
            append_metrics(self.exp_dir / METRICS_FILE, row)
            if self.tensorboard is not None:
                self.tensorboard.log(row)

    @property
    def ckpt_dir(self) -> Path:
        return self.exp_dir / CHECKPOINT_DIR


def fit(run: Run, state: TrainState) -> Path:
    """The epochs from ``state`` on, then ``export``: the loop every task shares."""
    run.ddp_model = wrap_ddp(run.model, run.dist, run.device, run.task.find_unused_parameters)
    if run.dist.is_main:
        from earshot.train.monitor import TensorBoard

        run.tensorboard = TensorBoard(run.exp_dir, run.cfg.train.tensorboard)
    try:
        with collective_failures(run.dist, run.cfg.train.dist_timeout):
            for epoch in range(state.epoch + 1, run.cfg.train.epochs + 1):
                state = run_epoch(run, state, epoch)
            return export(run, state)
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()
        release_run_dir(run.exp_dir)


def begin_run(cfg: RunConfig, resume: bool
              ) -> tuple[Dist, torch.device, Path, tuple[Path, ckpt.Checkpoint] | None]:
    """What every task's run starts with: check the config, join the process group, pick the
    device, check the precision, prepare the experiment directory, seed and configure
    torch. Returns (world, device, exp_dir, the checkpoint to resume or None)."""
    check(cfg)
    world = init_distributed(cfg.train.dist_timeout)
    device = select_device(cfg.train.device, world)
    check_precision(cfg.train.precision, device)
    exp_dir = Path(cfg.train.exp_dir)
    saved = prepare_exp_dir(cfg, exp_dir, resume, world)
    seed_everything(cfg.train.seed)
    configure_torch(cfg.train)
    return world, device, exp_dir, saved


def restore(run: Run, path: Path, saved: ckpt.Checkpoint) -> TrainState:
    """Load a checkpoint into the run. Its TrainState says where in the epoch to go on;
    no generator state is needed (see ``seed_step``)."""
    state = saved.train_state
    where = f"{state.epoch_batches} batches into epoch {state.epoch + 1}" if state.epoch_batches \
        else f"the end of epoch {state.epoch}"
    log.info("resuming from %s (%s, step %d)", path, where, state.global_step)
    run.model.load_state_dict(saved.model)
    run.optimizer.load_state_dict(saved.optimizer)
    run.scheduler.load_state_dict(saved.scheduler)
    if saved.scaler is not None:
        run.scaler.load_state_dict(saved.scaler)
    if run.dist.is_main:
        truncate_metrics(run.exp_dir / METRICS_FILE, state.global_step, state.epoch)
    return state


# ---------------------------------------------------------------------------
# one epoch


def run_epoch(run: Run, state: TrainState, epoch: int) -> TrainState:
    """Train (or finish training) ``epoch``, run the dev pass, log, checkpoint; the state
    after it."""
    start = time.time()
    stats, state = train_one_epoch(run, state, epoch)
    lr_used = run.scheduler.lr
    train_cfg = run.cfg.train
    dev_pass_due = has_dev_pass(train_cfg, epoch)
    dev_start = time.time()
    dev_result = run.task.dev_pass(run) if dev_pass_due else None
    dev_seconds = time.time() - dev_start if dev_pass_due else 0.0
    dev = dev_result.metrics() if dev_pass_due else {}
    lr = run.scheduler.step_epoch(dev) if dev_pass_due else run.scheduler.lr
    state = dataclasses.replace(state.record(epoch, dev.get(train_cfg.select_metric),
                                             state.global_step), lr=lr)
    seconds = time.time() - start
    shown = " ".join(f"{name} {value:.4g}" for name, value in dev.items()) or "not run"
    padding = "" if stats.padding_efficiency is None else \
        f" | padding efficiency {100 * stats.padding_efficiency:.1f}%"
    log.info("epoch %d: train loss %.4f | dev %s | lr %.3g | %.0fs%s", epoch, stats.loss, shown,
             lr_used, seconds, padding)
    dev_skipped = dev_result.skipped if dev_pass_due else 0
    log_skips(run.task, epoch, stats, dev_skipped)
    run.log_row(epoch_row(run.task, epoch, state, stats, dev, lr=lr_used, seconds=seconds,
                          dev_seconds=dev_seconds, dev_skipped=dev_skipped))
    if run.dist.is_main:
        checkpoint_run(run, state)
        if dev_pass_due:
            run.task.after_validation(run, epoch)
    barrier(run.dist)
    return state


def has_dev_pass(cfg: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` ends with a dev pass: every ``validate_every`` epochs, every epoch
    from ``validate_all_from`` on, and always the last."""
    every_epoch = 0 < cfg.validate_all_from <= epoch
    return every_epoch or epoch % cfg.validate_every == 0 or epoch == cfg.epochs


def train_one_epoch(run: Run, state: TrainState, epoch: int) -> tuple[EpochStats, TrainState]:
    """One pass over this rank's batches of ``epoch``, from ``state.epoch_batches`` on (a
    resumed epoch), checkpointing on the way when asked to; returns the epoch's averages
    and the state at its end."""
    from earshot.data.batching import batches_in_epoch, set_epoch

    cfg, world, task = run.cfg, run.dist, run.task
    run.ddp_model.train()
    total = batches_in_epoch(run.train_loader, epoch)
    done = state.epoch_batches
    set_epoch(run.train_loader, epoch, skip=done)
    sums = EpochSums(len(task.PARTS), state.epoch_sums, world.is_main)
    clock, meter = SaveClock(cfg.train), StepMeter(run)
    pending, ids, bad_in_row = 0, [], 0
    bar = tqdm(total=total, initial=done, desc=f"epoch {epoch}", unit="batch",
               disable=not world.is_main, dynamic_ncols=True)
    for batch in run.train_loader:
        index, done = done, done + 1
        bar.update()
        sums.add_skipped("unreadable", task.unreadable(batch))
        rows = len(batch)
        batch = task.usable(batch) if rows else None
        sums.add_skipped("unusable", rows - (len(batch) if batch is not None else 0))
        if not every_rank(world, batch is not None):
            # no rank trains this round, so no rank waits for another's gradient
            sums.add_skipped("other_rank", len(batch) if batch is not None else 0)
            continue
        seed_step(cfg.train.seed, world.rank, epoch, index)
        last_micro = pending + 1 == cfg.optim.accum_steps
        pending, ids, trained = pending + 1, ids + batch.ids, 0
        on_device = batch.to(run.device, non_blocking=True)  # pinned on CUDA: overlaps
        for part, losses in train_batch(run, on_device, (epoch, state.global_step), sync=last_micro):
            if math.isfinite(losses[0]):
                sums.add_losses(task.weight(part), losses)
            amount = task.amount(part)
            sums.add_trained(amount, len(part), task.padded(part))
            meter.add(amount, len(part), losses)
            trained += len(part)
        sums.add_skipped("out_of_memory", len(batch) - trained)
        if last_micro:
            state, bad_in_row = update(run, state, meter, epoch, ids, bad_in_row, bar)
            pending, ids = 0, []
            # (at the epoch's last batch the end-of-epoch checkpoint follows anyway)
            if clock.due(world, state.global_step) and done < total:
                state = checkpoint_mid_epoch(run, state, done, sums)
    if pending:  # an epoch never leaves gradients for the next one
        state, _ = update(run, state, meter, epoch, ids, bad_in_row, bar)
    bar.close()
    totals = reduce_sums(world, run.device, sums.values)
    return sums.stats(totals, task.PARTS, done), state


def update(run: Run, state: TrainState, meter: StepMeter, epoch: int, ids: list[str],
           bad_in_row: int, bar: tqdm) -> tuple[TrainState, int]:
    """One optimizer update from the accumulated gradient, its accounting (a skipped
    update is counted and warned about; too many in a row stop the run) and its metrics
    line every ``train.log_every`` steps. Returns the state and the skips in a row."""
    norm = optimizer_step(run)
    if math.isfinite(norm):
        state, bad_in_row = dataclasses.replace(state, global_step=state.global_step + 1), 0
    else:
        state, bad_in_row = dataclasses.replace(state, skipped_steps=state.skipped_steps + 1), bad_in_row + 1
        check_bad_steps(run.cfg.train, bad_in_row, norm, ids)
    faults.hit("after-step", state.global_step, run.dist.rank)
    if math.isfinite(norm) and state.global_step % run.cfg.train.log_every == 0:
        row = meter.row(epoch, state.global_step, run.scheduler.lr, norm, state.skipped_steps)
        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}")
        run.log_row(row)
    return state, bad_in_row


def check_bad_steps(cfg: TrainConfig, in_row: int, norm: float, ids: list[str]) -> None:
    """Warn about a skipped update; stop the run after ``max_bad_steps`` in a row."""
    shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
    log.warning("non-finite loss or gradient (norm %s): update skipped (%d in a row); "
                "utterances: %s", norm, in_row, shown)
    if in_row >= cfg.max_bad_steps:
        raise TrainingError(
            f"{in_row} updates in a row had a non-finite loss or gradient (train.max_bad_steps="
            f"{cfg.max_bad_steps}); last batch: {shown}. Try a lower optim.lr or "
            f"optim.grad_clip, train.precision=fp32, or check those utterances' audio and text")


class SaveClock:
    """When to write a mid-epoch checkpoint: every ``save_every_steps`` optimizer steps
    and/or ``save_every_minutes`` minutes. Rank 0's clock decides for every rank."""

    def __init__(self, cfg: TrainConfig):
        self.steps, self.seconds = cfg.save_every_steps, cfg.save_every_minutes * 60
        self.last_step, self.last_time = None, time.monotonic()

    def due(self, world: Dist, step: int) -> bool:
        if step == self.last_step:  # a skipped update: nothing new to save
            return False
        due = bool(self.steps) and step % self.steps == 0
        if self.seconds:  # (every rank takes part in the broadcast)
            due = broadcast_flag(world, time.monotonic() - self.last_time >= self.seconds) or due
        if due:
            self.last_step, self.last_time = step, time.monotonic()
        return due


# ---------------------------------------------------------------------------
# one batch, one update


def forward_backward(run: Run, batch: Batch, at: tuple[int, int], sync: bool, weight: float = 1.0
                     ) -> list[float]:
    """Loss of one micro-batch at ``at`` = (epoch, step) and its scaled gradient
    (``sync=False``: no DDP all-reduce yet); ``weight`` scales its share of the update (a
    part of a split batch). Returns [loss, *parts] as floats (one host sync)."""
    no_sync = getattr(run.ddp_model, "no_sync", None)
    skip_sync = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
    with skip_sync:
        with autocast(run.cfg.train.precision, run.device):
            loss, parts = run.task.forward(run.ddp_model, batch, *at)
        run.scaler.scale(loss * (weight / run.cfg.optim.accum_steps)).backward()
    return torch.stack([loss, *parts]).detach().float().tolist()


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is torch running out of device or host memory."""
    text = str(err)
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def train_batch(run: Run, batch: Batch, at: tuple[int, int], sync: bool, weight: float = 1.0
                ) -> list[tuple[Batch, list[float]]]:
    """``forward_backward`` of a batch, as ``[(batch, losses)]``. A batch that runs out of
    memory is retried as two halves, each weighted by its share (recursively); a single
    utterance that does not fit is skipped with a warning naming it. Gradients of the
    update so far are dropped on each failure, since a half-done backward may have added
    to some of them. With several processes an out-of-memory error ends the job (ranks
    must run the same collectives)."""
    try:
        return [(batch, forward_backward(run, batch, at, sync, weight))]
    except Exception as err:  # noqa: BLE001 (re-raised unless it is out-of-memory)
        if not is_out_of_memory(err) or run.dist.world_size > 1:
            raise
    run.optimizer.zero_grad(set_to_none=True)
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    if len(batch) == 1:
        log.warning("skipping utterance '%s' (%d samples): out of memory even alone",
                    batch.ids[0], int(batch.wav_lens[0]))
        return []
    log.warning("out of memory on a batch of %d utterances (%s, ...): retrying it in two halves "
                "(the update's gradient so far is dropped)", len(batch), batch.ids[0])
    index, half = torch.arange(len(batch)), len(batch) // 2
    parts = []
    for rows in (index[:half], index[half:]):
        parts += train_batch(run, batch.select(rows), at, sync, weight * len(rows) / len(batch))
    return parts


def optimizer_step(run: Run) -> float:
    """Unscale, clip, step; the gradient norm before clipping. A non-finite norm means
    the update was skipped: parameters, optimizer and schedule are left as they were (with
    fp16 the grad scaler lowers its scale)."""
    optim_cfg: OptimConfig = run.cfg.optim
    run.scaler.unscale_(run.optimizer)
    max_norm = optim_cfg.grad_clip if optim_cfg.grad_clip > 0 else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm, foreach=True))
    if math.isfinite(norm):
        run.scaler.step(run.optimizer)
        run.scheduler.step_batch()
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return norm


# ---------------------------------------------------------------------------
# checkpoints and export


def checkpoint_run(run: Run, state: TrainState) -> Path:
    """Atomic checkpoint of ``state`` (end of epoch, or ``state.epoch_batches`` into the
    next one), then prune: the last ``keep_last`` (or ``average_last``) epochs plus the best
    ``average_best``, and mid-epoch checkpoints only since the last epoch end."""
    path = ckpt.checkpoint_path(run.ckpt_dir, state.epoch + bool(state.epoch_batches),
                                state.epoch_batches)
    ckpt.save_checkpoint(path, run.model, run.optimizer, run.scheduler, run.scaler, state,
                         before_rename=lambda: faults.hit("in-save", state.global_step, run.dist.rank))
    train_cfg = run.cfg.train
    if not state.epoch_batches:
        by_last = train_cfg.average_last > 0
        keep = ckpt.epochs_to_keep(state, max(train_cfg.keep_last, train_cfg.average_last),
                                   0 if by_last else train_cfg.average_best)
        ckpt.prune_checkpoints(run.ckpt_dir, keep)
    ckpt.prune_mid_epoch(run.ckpt_dir, train_cfg.keep_last)
    return path


def checkpoint_mid_epoch(run: Run, state: TrainState, done: int, sums: EpochSums) -> TrainState:
    """Checkpoint ``done`` batches into the epoch, with the epoch's running sums totalled
    over ranks (rank 0 carries the total on, the others start again from zero)."""
    totals = reduce_sums(run.dist, run.device, sums.values)
    state = dataclasses.replace(state, epoch_batches=done, epoch_sums=sums.saved(totals))
    if run.dist.is_main:
        path = checkpoint_run(run, state)
        log.info("saved %s", path)
    barrier(run.dist)
    sums.carry_on(totals, run.dist.is_main)
    return state


def load_best_epochs(run: Run, state: TrainState) -> list[int]:
    """Put the best epoch's weights (the mean of the ``train.average_best`` best, or of the
    last ``train.average_last``) into ``run.model``; returns those epochs."""
    train_cfg = run.cfg.train
    epochs, weights = ckpt.best_weights(run.ckpt_dir, state, train_cfg.average_best,
                                        train_cfg.average_last)
    bad = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TrainingError(f"the weights of epoch(s) {', '.join(map(str, epochs))} hold nan or inf "
                            f"(e.g. {bad[0]}); nothing exported. Try a lower optim.lr or "
                            f"optim.grad_clip, or train.precision=fp32")
    run.model.load_state_dict(weights)
    return epochs


def export(run: Run, state: TrainState) -> Path:
    """Write the best epoch(s) as ``<exp_dir>/model``: their (averaged) weights go into
    ``run.model``, every rank runs the task's dev pass on exactly those weights, rank 0
    saves them with that result (``Task.save_export``); returns the directory."""
    epochs = load_best_epochs(run, state)
    dev = run.task.dev_pass(run)
    out = run.exp_dir / MODEL_DIR
    if run.dist.is_main:
        run.task.save_export(run, out, epochs, dev, state)
    barrier(run.dist)
    return out

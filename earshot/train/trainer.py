"""The training loop: config in, exported model directory out.

``train(cfg)`` reads like a table of contents: seed, load data, fit the tokenizer,
build the model, estimate the front end's statistics (global CMVN), then per epoch train (mixed precision,
gradient accumulation, clipping, scheduled sampling), evaluate on dev (loss and greedy
attention WER/CER), log a JSON line to ``<exp_dir>/metrics.jsonl`` and write an atomic
checkpoint. At the end the best epoch (or the average of the best K) is exported as
``<exp_dir>/model`` (see ``earshot.modeldir``).

Checkpoints are also written inside an epoch every ``train.save_every_steps`` steps or
``train.save_every_minutes`` minutes. ``train(cfg, resume=True)`` continues from the
newest readable checkpoint (model, optimizer, scheduler, scaler and the position inside
the epoch). Every random draw of a training step (dropout, SpecAugment, dither, stochastic
depth, scheduled sampling) comes from torch's generator seeded by (seed, rank, epoch,
batch) just before that batch, and speed perturbation is seeded per cut, so a run killed
anywhere and resumed ends with the same parameters as one that was never stopped.

Multi-GPU: launched by ``torchrun`` (WORLD_SIZE > 1) each process trains a DDP replica on
its share of the batches (global batch i goes to rank i % world size, equal counts per
rank); metrics and dev results are reduced over ranks and only rank 0 writes files. A
collective that waits longer than ``train.dist_timeout`` seconds ends the job.

>>> from earshot.config import load_config
>>> cfg = load_config("recipes/fsdd/crdnn.yaml", ["train.epochs=1"])  # doctest: +SKIP
>>> model_dir = train(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from earshot.config import (ExperimentConfig, ModelCard, OptimConfig, TrainConfig, load_config,
                            save_config, validate)
from earshot.errors import ConfigError, TrainingError
from earshot.losses import sampling_probability
from earshot.modeldir import build_model, check_model_dir, init_from_model_dir, save_model_dir
from earshot.train import checkpoint as ckpt
from earshot.train import faults
from earshot.train.optim import build_optimization
from earshot.train.state import TrainState

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"

# See configure_torch.
ONEDNN_CACHE_CAPACITY = 128
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) data-parallel job."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Run:
    """Everything the epoch loop works with; built once by ``train``."""

    cfg: ExperimentConfig
    exp_dir: Path
    dist: Dist
    device: torch.device
    tokenizer: object
    model: torch.nn.Module  # the bare EncoderDecoderASR
    ddp_model: torch.nn.Module  # what forward/backward go through (DDP wrapper or the model)
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    train_loader: torch.utils.data.DataLoader
    dev_loader: torch.utils.data.DataLoader
    train_hours: float
    task: object = None  # what is trained: ASRTask here, LMTask for train-lm (see Task)
    tensorboard: object = None  # monitor.TensorBoard on rank 0

    def log_row(self, row: dict) -> None:
        """A metrics row to metrics.jsonl and TensorBoard (rank 0 only)."""
        if self.dist.is_main:
            append_metrics(self.exp_dir / METRICS_FILE, row)
            if self.tensorboard is not None:
                self.tensorboard.log(row)

    @property
    def ckpt_dir(self) -> Path:
        return self.exp_dir / CHECKPOINT_DIR


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
    keys of SKIP_REASONS; over all ranks)."""

    loss: float
    parts: dict
    batches: int
    skipped: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DevResult:
    loss: float
    wer: float
    cer: float
    skipped: int = 0  # dev utterances not scored (audio did not load, too short)

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, "wer": self.wer, "cer": self.cer}


class Task:
    """What the engine trains. The engine (epochs, mid-epoch checkpoints, resume, seeding,
    precision, DDP, skipped updates, metrics) calls only these; ``ASRTask`` is
    ``earshot train``'s, ``earshot.train.lm_trainer.LMTask`` is ``earshot train-lm``'s.
    Loaders must be ``earshot.data.batching.make_loader``-like (an ``EpochBatches``
    sampler, a dataset with ``epoch``)."""

    PARTS: tuple[str, ...] = ()  # named parts of the loss, logged beside it
    AMOUNT = "items"  # what throughput counts besides rows ("audio_seconds", "tokens")
    ROWS = "rows"  # what a batch's rows are ("utterances", "sentences")
    UNUSABLE = "unusable by the model"  # what ``usable`` leaves out
    find_unused_parameters = False  # DDP: some parameters may get no gradient

    def usable(self, batch):
        """The batch without rows the model cannot take (warned about); None if empty."""
        return batch

    def unreadable(self, batch) -> int:
        """Rows the loader had to drop from this batch (their data did not load)."""
        return 0

    def forward(self, model, batch, epoch: int, step: int):
        """(loss tensor, [part tensors]) of a training batch through ``model``."""
        raise NotImplementedError

    def weight(self, batch) -> int:
        """How many items (rows, tokens) the batch's loss is a mean over: the weight of
        its loss in the epoch's average."""
        return len(batch)

    def amount(self, batch) -> float:
        return float(len(batch))

    def evaluate(self, run: "Run"):
        """Dev result with ``.metrics()`` (``loss`` and others), over all ranks."""
        raise NotImplementedError

    def after_validation(self, run: "Run", epoch: int) -> None:
        """Rank 0, after each epoch's checkpoint (plots)."""

    def export(self, run: "Run", state: TrainState) -> Path:
        raise NotImplementedError


class ASRTask(Task):
    """Joint CTC/attention training of an EncoderDecoderASR on a lhotse CutSet."""

    PARTS = ("ctc", "nll")
    AMOUNT = "audio_seconds"
    ROWS = "utterances"
    UNUSABLE = "too short for one encoder frame"

    def __init__(self, cfg: ExperimentConfig, model):
        self.cfg, self.rate = cfg, model.sample_rate
        # With alpha 0 or 1 one branch gets no gradient, nor does a frozen part; DDP must
        # be told to expect that.
        self.find_unused_parameters = (cfg.loss.ctc_weight in (0.0, 1.0)
                                       or model.may_leave_parameters_unused)
        self.model = model
        if cfg.loss.intermediate_ctc_weight > 0:  # logged beside the top block's CTC
            self.PARTS = ("ctc", "intermediate_ctc", "nll")

    def usable(self, batch):
        return drop_short_utterances(self.model, batch)

    def unreadable(self, batch) -> int:
        return len(batch.dropped)

    def forward(self, model, batch, epoch: int, step: int):
        # Scheduled sampling counts completed steps/epochs: it starts at 0 on epoch 1.
        prob = sampling_probability(self.cfg.loss.scheduled_sampling, step=step, epoch=epoch - 1)
        self.model.set_training_step(step)
        out = model(batch, self.cfg.loss, prob)
        if out.intermediate_ctc is not None:
            return out.loss, [out.ctc, out.intermediate_ctc, out.nll]
        return out.loss, [out.ctc, out.nll]

    def amount(self, batch) -> float:
        return float(batch.wav_lens.sum()) / self.rate

    def evaluate(self, run: "Run"):
        return evaluate(run)

    def after_validation(self, run: "Run", epoch: int) -> None:
        plot_dev_alignments(run, epoch)

    def export(self, run: "Run", state: TrainState) -> Path:
        return export_model(run, state)


# ---------------------------------------------------------------------------
# the table of contents


def train(cfg: ExperimentConfig, resume: bool = False) -> Path:
    """Train ``cfg`` and return the exported model directory (``<exp_dir>/model``)."""
    world, device, exp_dir, saved = begin_run(cfg, resume)
    if cfg.train.init_from and saved is None:
        check_model_dir(cfg.train.init_from, deep=True)  # before minutes of data loading
    train_cuts, dev_cuts = load_data(cfg)
    tokenizer = fit_or_load_tokenizer(cfg, exp_dir, train_cuts, saved is not None, world)
    from earshot.tokenizer import warn_unknown_chars

    warn_unknown_chars(tokenizer, [cut.supervisions[0].text for cut in dev_cuts], cfg.data.dev)
    run = build_run(cfg, exp_dir, world, device, tokenizer, train_cuts, dev_cuts)
    if saved is not None:
        state = restore(run, *saved)
    else:
        compute_cmvn(run, train_cuts)
        if cfg.train.init_from:
            init_from_model_dir(run.model, cfg, tokenizer, cfg.train.init_from)
        state = TrainState(lr=run.scheduler.lr)
    return fit(run, state)


def fit(run: Run, state: TrainState) -> Path:
    """The epochs from ``state`` on, then ``run.task.export``: the loop every task shares."""
    run.ddp_model = wrap_ddp(run.model, run.dist, run.device, run.task.find_unused_parameters)
    if run.dist.is_main:
        from earshot.train.monitor import TensorBoard

        run.tensorboard = TensorBoard(run.exp_dir, run.cfg.train.tensorboard)
    try:
        with collective_failures(run.dist, run.cfg.train.dist_timeout):
            for epoch in range(state.epoch + 1, run.cfg.train.epochs + 1):
                state = run_epoch(run, state, epoch)
            return run.task.export(run, state)
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()


# ---------------------------------------------------------------------------
# setup


def begin_run(cfg, resume: bool):
    """What every task's run starts with: validate, join the process group, pick the
    device, check the precision, prepare the experiment directory, seed and configure
    torch. Returns (world, device, exp_dir, the checkpoint to resume or None)."""
    validate(cfg)
    world = init_distributed(cfg.train.dist_timeout)
    device = select_device(cfg.train.device, world)
    check_precision(cfg.train.precision, device)
    exp_dir = Path(cfg.train.exp_dir)
    saved = prepare_exp_dir(cfg, exp_dir, resume, world)
    seed_everything(cfg.train.seed)
    configure_torch(cfg.train)
    return world, device, exp_dir, saved


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
def collective_failures(world: Dist, timeout: float):
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
    if world.world_size > 1:
        dist.barrier()


def prepare_exp_dir(cfg: ExperimentConfig, exp_dir: Path, resume: bool, world: Dist
                    ) -> tuple[Path, ckpt.Checkpoint] | None:
    """Check the experiment directory and write the resolved config; the checkpoint to
    resume (the newest that reads: a damaged newer one is warned about and passed over)."""
    ckpt_dir = exp_dir / CHECKPOINT_DIR
    if world.is_main:
        ckpt.remove_partial(ckpt_dir)
    barrier(world)
    last = ckpt.latest_checkpoint(ckpt_dir)
    if last is not None and not resume:
        raise ConfigError(f"{exp_dir} already holds checkpoints ({last.name}): resume it "
                          f"(--resume) or choose another train.exp_dir")
    if resume and last is None:
        log.warning("%s: no checkpoint to resume from; starting from scratch", ckpt_dir)
    saved = ckpt.load_latest(ckpt_dir) if last is not None else None
    if saved is not None:
        check_same_model(cfg, exp_dir / CONFIG_FILE)
    if world.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, exp_dir / CONFIG_FILE)
    barrier(world)
    return saved


def check_same_model(cfg: ExperimentConfig, saved_path: Path) -> None:
    """ConfigError naming the keys when the model or tokenizer differ from the saved run."""
    if not saved_path.is_file():
        log.warning("%s: missing; cannot check the resumed model matches", saved_path)
        return
    saved = load_config(saved_path, cls=type(cfg))
    changed = []
    for section in ("model", "tokenizer"):
        if hasattr(cfg, section):
            changed += _changed_keys(getattr(saved, section), getattr(cfg, section), section)
    if changed:
        raise ConfigError(f"cannot resume {saved_path.parent}: these keys differ from "
                          f"{saved_path}: {', '.join(changed)}")


def _changed_keys(old, new, where: str) -> list[str]:
    if dataclasses.is_dataclass(old):
        keys = []
        for f in dataclasses.fields(old):
            keys += _changed_keys(getattr(old, f.name), getattr(new, f.name), f"{where}.{f.name}")
        return keys
    return [] if old == new else [f"{where} ({old!r} -> {new!r})"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def seed_step(seed: int, rank: int, epoch: int, batch: int) -> None:
    """Seed torch's generators (CPU and CUDA) for one training batch from its position,
    so its dropout, SpecAugment, dither, stochastic depth and scheduled sampling draws
    are the same whenever that batch is trained: straight through, or after a resume."""
    state = np.random.SeedSequence([seed, rank, epoch, batch]).generate_state(2, np.uint32)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def configure_torch(cfg: TrainConfig) -> None:
    # Recurrent nets on x86 slow down by up to 10x once values turn denormal; flushing
    # them to zero changes no result that matters (see docs/DESIGN.md).
    if cfg.flush_denormal:
        torch.set_flush_denormal(True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    # oneDNN keeps every primitive it made (one per batch shape and layer, 1024 by
    # default), and shuffled duration buckets keep making new shapes: the resident set
    # grew by about 90 MB an epoch on FSDD. 128 costs no measurable speed there and stops
    # the growth early. Read when oneDNN first makes a primitive; the user's value wins.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))


def select_device(name: str, world: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world.world_size > 1:
        name = f"cuda:{world.local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'train.device': {name!r} but no CUDA device is available")
        torch.cuda.set_device(device)
    return device


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'train.precision': fp16 needs a CUDA device; use bf16 or fp32 on CPU")


def load_data(cfg: ExperimentConfig):
    """Train and dev CutSets; over-long training cuts are left out (and counted)."""
    from earshot.data.manifests import load_cuts

    for key in ("train", "dev"):
        if not getattr(cfg.data, key):
            raise ConfigError(f"config key 'data.{key}': no manifest given")
    return drop_unbatchable(load_cuts(cfg.data.train), cfg.data, cfg.data.train), load_cuts(cfg.data.dev)


def drop_unbatchable(cuts, data, where: str):
    """Training cuts without those over ``data.max_utterance_duration`` or over the batch
    budget ``data.max_duration`` (either would be a batch of its own, beyond what the
    budget was sized for): each kind is counted in a warning naming a few of them."""
    from earshot.data.batching import drop_long_cuts

    for key in ("max_utterance_duration", "max_duration"):
        limit = getattr(data, key)
        kept, dropped = drop_long_cuts(cuts, limit)
        if dropped:
            longest = sorted((c for c in cuts if c.duration > limit), key=lambda c: -c.duration)
            shown = ", ".join(f"'{c.id}' ({c.duration:.1f}s)" for c in longest[:3])
            log.warning("%s: left out %d cuts longer than data.%s=%gs: %s%s", where, dropped, key,
                        limit, shown, " ..." if dropped > 3 else "")
        cuts = kept
    return cuts


def fit_or_load_tokenizer(cfg: ExperimentConfig, exp_dir: Path, train_cuts, resuming: bool, world: Dist):
    """Train the tokenizer on the training transcripts (rank 0), or reload it on resume."""
    from earshot.tokenizer import load_tokenizer, train_tokenizer

    tok_dir = exp_dir / TOKENIZER_DIR
    if not resuming and world.is_main:
        texts = [cut.supervisions[0].text for cut in train_cuts]
        train_tokenizer(texts, cfg.tokenizer).save(tok_dir)
    barrier(world)
    tokenizer = load_tokenizer(tok_dir)
    log.info("tokenizer: %s", tokenizer)
    return tokenizer


def build_run(cfg, exp_dir, world, device, tokenizer, train_cuts, dev_cuts) -> Run:
    from earshot.data.batching import make_loader

    model = build_model(cfg, tokenizer).to(device)
    rate, data = model.sample_rate, cfg.data
    shard = {"world_size": world.world_size, "rank": world.rank}
    train_loader = make_loader(train_cuts, tokenizer, rate, data.max_duration, shuffle=True,
                               seed=cfg.train.seed, num_buckets=data.num_buckets,
                               num_workers=data.num_workers, speed_factors=data.speed_perturb,
                               keep_empty=True, **shard)
    dev_loader = make_loader(dev_cuts, tokenizer, rate, data.max_duration, shuffle=False,
                             num_buckets=data.num_buckets, num_workers=data.num_workers,
                             even=False, keep_empty=True, **shard)
    optimizer, scheduler, scaler = build_optimization(cfg, model, device, train_loader)
    hours = sum(cut.duration for cut in train_cuts) / 3600
    log.info("model: %.2fM parameters; train: %d cuts (%.2f h); dev: %d cuts; device %s",
             sum(p.numel() for p in model.parameters()) / 1e6, len(train_cuts), hours,
             len(dev_cuts), device)
    return Run(cfg, exp_dir, world, device, tokenizer, model, model, optimizer, scheduler,
               scaler, train_loader, dev_loader, hours, ASRTask(cfg, model))


def wrap_ddp(model: torch.nn.Module, world: Dist, device: torch.device, find_unused: bool):
    if world.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


@torch.no_grad()
def compute_cmvn(run: Run, train_cuts) -> None:
    """The front end's corpus statistics (global CMVN for fbank/MFCC; nothing for a front
    end that keeps none) over the training set. Each rank reads its shard; sums and counts
    are added over ranks before the mean and std are taken."""
    from earshot.data.batching import make_loader

    model, data = run.model, run.cfg.data
    acc = model.new_statistics()
    if acc is None:
        return
    loader = make_loader(train_cuts, run.tokenizer, model.sample_rate, data.max_duration,
                         shuffle=False, num_buckets=data.num_buckets, num_workers=data.num_workers,
                         world_size=run.dist.world_size, rank=run.dist.rank, even=False)
    for batch in tqdm(loader, desc="feature statistics", unit="batch", disable=not run.dist.is_main):
        model.accumulate_statistics(acc, batch.wavs.to(run.device), batch.wav_lens.to(run.device))
    acc.all_reduce()
    model.set_statistics(acc)


def drop_short_utterances(model: torch.nn.Module, batch):
    """The batch without utterances too short to give one encoder frame (warned about,
    naming each and its length); None when none is left."""
    return drop_short_rows(batch, model.encoded_lengths(batch.wav_lens), 1, "encoder frames (too short)")


def drop_short_rows(batch, frames: torch.Tensor, minimum: int, why: str):
    """The batch without the rows whose ``frames`` (B,) are below ``minimum``, each warned
    about with its id, samples and frames followed by ``why``; None when none is left."""
    short = (frames < minimum).nonzero(as_tuple=True)[0].tolist()
    if not short:
        return batch
    for i in short:
        log.warning("skipping utterance '%s': %d samples give %d %s", batch.ids[i],
                    int(batch.wav_lens[i]), int(frames[i]), why)
    keep = (frames >= minimum).nonzero(as_tuple=True)[0]
    return batch.select(keep) if len(keep) else None


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
    """Train (or finish training) ``epoch``, evaluate, log, checkpoint; the state after it."""
    start = time.time()
    stats, state = train_one_epoch(run, state, epoch)
    lr_used = run.scheduler.lr
    train_cfg = run.cfg.train
    validating = validates(train_cfg, epoch)
    dev_result = run.task.evaluate(run) if validating else None
    dev = dev_result.metrics() if validating else {}
    lr = run.scheduler.step_epoch(dev) if validating else run.scheduler.lr
    state = dataclasses.replace(state.record(epoch, dev.get(train_cfg.select_metric),
                                             state.global_step), lr=lr)
    seconds = time.time() - start
    shown = " ".join(f"{name} {value:.4g}" for name, value in dev.items()) or "not run"
    log.info("epoch %d: train loss %.4f | dev %s | lr %.3g | %.0fs", epoch, stats.loss, shown,
             lr_used, seconds)
    dev_skipped = dev_result.skipped if validating else 0
    log_skips(run, epoch, stats, dev_skipped)
    run.log_row(epoch_row(epoch, state, stats, dev, lr_used, seconds, dev_skipped))
    if run.dist.is_main:
        save_checkpoint(run, state)
        if validating:
            run.task.after_validation(run, epoch)
    barrier(run.dist)
    return state


def validates(cfg: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` ends with a dev pass: every ``validate_every`` epochs, every epoch
    from ``validate_all_from`` on, and always the last."""
    every_epoch = 0 < cfg.validate_all_from <= epoch
    return every_epoch or epoch % cfg.validate_every == 0 or epoch == cfg.epochs


def log_skips(run: Run, epoch: int, stats: EpochStats, dev_skipped: int) -> None:
    """One warning line for what the epoch left out, by reason (each was named above)."""
    reasons = {**SKIP_REASONS, "unusable": run.task.UNUSABLE}
    parts = [f"{count} {reasons[reason]}" for reason, count in stats.skipped.items() if count]
    if parts:
        log.warning("epoch %d: %d training %s skipped (%s)", epoch, sum(stats.skipped.values()),
                    run.task.ROWS, ", ".join(parts))
    if dev_skipped:
        log.warning("epoch %d: %d dev %s not scored (audio did not load, or too short)", epoch,
                    dev_skipped, run.task.ROWS)


def plot_dev_alignments(run: Run, epoch: int) -> None:
    """Attention plots of the first ``train.plot_alignments`` dev utterances (rank 0's
    first dev batch: the same ones every epoch) into ``EXP_DIR/plots/``."""
    from earshot.train import monitor

    count = run.cfg.train.plot_alignments
    batch = next(iter(run.dev_loader), None) if count else None
    batch = drop_short_utterances(run.model, batch) if batch is not None and len(batch) else None
    if batch is None:
        return
    batch = batch.select(torch.arange(min(count, len(batch)))).to(run.device)
    with autocast(run.cfg.train.precision, run.device):
        items = monitor.alignments(run.model, batch, run.tokenizer)
    monitor.plot_alignments(items, run.exp_dir / monitor.PLOTS_DIR, epoch)


def train_one_epoch(run: Run, state: TrainState, epoch: int) -> tuple[EpochStats, TrainState]:
    """One pass over this rank's batches of ``epoch``, from ``state.epoch_batches`` on (a
    resumed epoch), checkpointing on the way when asked to; returns the epoch's averages
    and the state at its end."""
    from earshot.data.batching import batches_in_epoch, set_epoch

    cfg, world = run.cfg, run.dist
    run.ddp_model.train()
    total = batches_in_epoch(run.train_loader, epoch)
    done = state.epoch_batches
    set_epoch(run.train_loader, epoch, skip=done)
    # loss and its parts (weighted by the task's items), the items, and the rows skipped
    # by reason; a mid-epoch checkpoint holds every rank's total, which rank 0 carries on
    # from (one written before skips were counted has none: they start at 0).
    n = 1 + len(run.task.PARTS)
    sums = np.zeros(n + 1 + len(SKIP_REASONS))
    if state.epoch_sums and world.is_main:
        sums[:len(state.epoch_sums)] = state.epoch_sums
    skip = {reason: n + 1 + i for i, reason in enumerate(SKIP_REASONS)}
    clock, meter = SaveClock(cfg.train), StepMeter(run)
    pending, ids, bad_in_row = 0, [], 0
    bar = tqdm(total=total, initial=done, desc=f"epoch {epoch}", unit="batch",
               disable=not world.is_main, dynamic_ncols=True)
    for batch in run.train_loader:
        index, done = done, done + 1
        bar.update()
        sums[skip["unreadable"]] += run.task.unreadable(batch)
        rows = len(batch)
        batch = run.task.usable(batch) if rows else None
        sums[skip["unusable"]] += rows - (len(batch) if batch is not None else 0)
        if not every_rank(world, batch is not None):
            # no rank trains this round, so no rank waits for another's gradient
            sums[skip["other_rank"]] += len(batch) if batch is not None else 0
            continue
        seed_step(cfg.train.seed, world.rank, epoch, index)
        last_micro = pending + 1 == cfg.optim.accum_steps
        pending, ids, trained = pending + 1, ids + batch.ids, 0
        for part, losses in train_batch(run, batch.to(run.device), (epoch, state.global_step),
                                        sync=last_micro):
            if math.isfinite(losses[0]):
                items = run.task.weight(part)
                sums[:n + 1] += [*(items * v for v in losses), items]
            meter.add(part, losses)
            trained += len(part)
        sums[skip["out_of_memory"]] += len(batch) - trained
        if last_micro:
            state, bad_in_row = update(run, state, meter, epoch, ids, bad_in_row, bar)
            pending, ids = 0, []
            # (at the epoch's last batch the end-of-epoch checkpoint follows anyway)
            if clock.due(world, state.global_step) and done < total:
                state, sums = save_mid_epoch(run, state, done, sums)
    if pending:  # an epoch never leaves gradients for the next one
        state, _ = update(run, state, meter, epoch, ids, bad_in_row, bar)
    bar.close()
    sums = reduce_sums(run, sums)
    loss, *parts = (sums[:n] / max(sums[n], 1)).tolist()
    skipped = {reason: int(sums[i]) for reason, i in skip.items()}
    return EpochStats(loss, dict(zip(run.task.PARTS, parts)), done, skipped), state


def update(run: Run, state: TrainState, meter: StepMeter, epoch: int, ids: list[str],
           bad_in_row: int, bar) -> tuple[TrainState, int]:
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


def every_rank(world: Dist, ok: bool) -> bool:
    """True when ``ok`` holds on every rank (one tiny all-reduce; free on one process)."""
    if world.world_size <= 1:
        return ok
    flag = _flag(not ok)
    dist.all_reduce(flag)
    return int(flag.item()) == 0


def _flag(value: bool) -> torch.Tensor:
    """A one-element tensor for a collective, on the device the backend needs."""
    flag = torch.tensor([int(value)], dtype=torch.int32)
    return flag.cuda() if dist.get_backend() == "nccl" else flag


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
        if self.seconds:
            late = time.monotonic() - self.last_time >= self.seconds
            if world.world_size > 1:
                flag = _flag(late)
                dist.broadcast(flag, src=0)
                late = bool(flag.item())
            due = due or late
        if due:
            self.last_step, self.last_time = step, time.monotonic()
        return due


class StepMeter:
    """Per-step numbers for ``metrics.jsonl``: losses of the last step, audio seconds
    and utterances per second (all ranks) since the previous row, peak memory."""

    def __init__(self, run: Run):
        self.run, self.task = run, run.task
        self.amount = self.items = 0.0
        self.losses = [math.nan] * (1 + len(self.task.PARTS))
        self.since = time.monotonic()

    def add(self, batch, losses: list[float]) -> None:
        self.amount += self.task.amount(batch)
        self.items += len(batch)
        self.losses = losses

    def row(self, epoch: int, step: int, lr: float, norm: float, skipped: int) -> dict:
        seconds = max(time.monotonic() - self.since, 1e-9)
        amount, items = reduce_sums(self.run, np.array([self.amount, self.items])).tolist()
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


def reduce_sums(run: Run, sums: np.ndarray) -> np.ndarray:
    """Totals over every rank (unchanged on one process)."""
    if run.dist.world_size <= 1:
        return sums
    totals = torch.tensor(sums.tolist(), dtype=torch.float64, device=run.device)
    dist.all_reduce(totals)
    return totals.cpu().numpy()


def autocast(precision: str, device: torch.device):
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def forward_backward(run: Run, batch, at: tuple[int, int], sync: bool, weight: float = 1.0
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
    text = str(err)
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def train_batch(run: Run, batch, at: tuple[int, int], sync: bool, weight: float = 1.0) -> list:
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


def evaluate(run: Run) -> DevResult:
    """The run's model on its dev loader (this rank's share; results over all ranks)."""
    return evaluate_model(run.model, run.tokenizer, run.dev_loader, run.cfg, run.device, run.dist)


@torch.no_grad()
def evaluate_model(model, tok, loader, cfg: ExperimentConfig, device: torch.device,
                   world: Dist = Dist()) -> DevResult:
    """Dev loss (teacher forced) and greedy attention WER/CER (percent)."""
    from earshot.decoding.greedy import greedy_attention
    from earshot.metrics import error_rates

    model.eval()
    loss_sum, utts, refs, hyps, skipped = 0.0, 0, [], [], 0
    for batch in loader:
        rows, skipped = len(batch), skipped + len(batch.dropped)
        batch = drop_short_utterances(model, batch) if rows else None
        skipped += rows - (len(batch) if batch is not None else 0)
        if batch is None:
            continue
        batch = batch.to(device)
        with autocast(cfg.train.precision, device):
            loss_sum += model(batch, cfg.loss, 0.0).loss.item() * len(batch)
            ids = greedy_attention(model, model.encode(batch.wavs, batch.wav_lens).memory,
                                   tok.bos_id, tok.eos_id, cfg.decode.max_len_ratio)
        utts += len(batch)
        refs += [tok.normalize(text) for text in batch.texts]
        hyps += [tok.decode(row) for row in ids]
    loss_sum, utts, refs, hyps, skipped = gather_dev(world, loss_sum, utts, refs, hyps, skipped)
    rates = error_rates(refs, hyps)
    return DevResult(loss_sum / max(utts, 1), rates.wer, rates.cer, skipped)


def gather_dev(world: Dist, loss_sum, utts, refs, hyps, skipped):
    """Combine every rank's share of the dev set (a no-op on one process)."""
    if world.world_size <= 1:
        return loss_sum, utts, refs, hyps, skipped
    parts = [None] * world.world_size
    dist.all_gather_object(parts, (loss_sum, utts, refs, hyps, skipped))
    return (sum(p[0] for p in parts), sum(p[1] for p in parts),
            [r for p in parts for r in p[2]], [h for p in parts for h in p[3]],
            sum(p[4] for p in parts))


# ---------------------------------------------------------------------------
# files


def epoch_row(epoch: int, state: TrainState, stats: EpochStats, dev: dict, lr: float,
              seconds: float, dev_skipped: int = 0) -> dict:
    return {"kind": "epoch", "epoch": epoch, "step": state.global_step, "train_loss": stats.loss,
            **stats.parts, **{f"dev_{name}": value for name, value in dev.items()}, "lr": lr,
            "skipped_steps": state.skipped_steps, "skipped_rows": sum(stats.skipped.values()),
            "skipped": stats.skipped, "dev_skipped": dev_skipped, "seconds": round(seconds, 3)}


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


def save_checkpoint(run: Run, state: TrainState) -> Path:
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


def save_mid_epoch(run: Run, state: TrainState, done: int, sums: np.ndarray
                   ) -> tuple[TrainState, np.ndarray]:
    """Checkpoint ``done`` batches into the epoch. The running sums
    are totalled over ranks into the checkpoint; rank 0 carries the total on, the others
    start again from zero, so nothing is counted twice."""
    totals = reduce_sums(run, sums)
    state = dataclasses.replace(state, epoch_batches=done,
                                epoch_sums=tuple(float(v) for v in totals))
    if run.dist.is_main:
        path = save_checkpoint(run, state)
        log.info("saved %s", path)
    barrier(run.dist)
    return state, totals if run.dist.is_main else np.zeros_like(sums)


def load_best_epochs(run: Run, state: TrainState) -> list[int]:
    """Put the best epoch's weights (the mean of the ``train.average_best`` best, or of the
    last ``train.average_last``) into ``run.model``; returns those epochs."""
    available = ckpt.list_checkpoints(run.ckpt_dir)
    train_cfg = run.cfg.train
    if train_cfg.average_last > 0:
        epochs = sorted(available)[-train_cfg.average_last:]
    else:
        epochs = [e for e in state.best_epochs(train_cfg.average_best) if e in available]
    if not epochs:
        raise ConfigError(f"{run.ckpt_dir}: no checkpoint of the best epochs to export")
    paths = [available[e] for e in epochs]
    weights = ckpt.average_checkpoints(paths) if len(paths) > 1 else ckpt.load_checkpoint(paths[0]).model
    bad = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TrainingError(f"the weights of epoch(s) {', '.join(map(str, epochs))} hold nan or inf "
                            f"(e.g. {bad[0]}); nothing exported. Try a lower optim.lr or "
                            f"optim.grad_clip, or train.precision=fp32")
    run.model.load_state_dict(weights)
    return epochs


def export_model(run: Run, state: TrainState) -> Path:
    """Write the best epoch (or the mean of the best ``average_best`` or last
    ``average_last``) as ``<exp_dir>/model``,
    with a card holding the dev WER/CER of exactly those weights (every rank evaluates its
    dev shard; rank 0 writes)."""
    epochs = load_best_epochs(run, state)
    # The exported weights, not an epoch's: evaluate_model, not the per-epoch evaluate
    # (which the peer benchmark's es_train.py wraps to time each epoch's dev pass).
    dev = evaluate_model(run.model, run.tokenizer, run.dev_loader, run.cfg, run.device, run.dist)
    out = run.exp_dir / MODEL_DIR
    if run.dist.is_main:
        card = ModelCard(corpus=corpus_name(run.cfg.data), train_hours=round(run.train_hours, 3),
                         dev_wer=round(dev.wer, 3), dev_cer=round(dev.cer, 3), epochs=state.epoch,
                         exported_epochs=tuple(epochs),
                         parameters=sum(p.numel() for p in run.model.parameters()))
        save_model_dir(out, run.cfg, run.tokenizer, copy.deepcopy(run.model).cpu(), card)
        log.info("exported epoch(s) %s to %s (dev WER %.2f CER %.2f)",
                 ", ".join(map(str, epochs)), out, dev.wer, dev.cer)
    barrier(run.dist)
    return out


def corpus_name(data) -> str:
    """``data.corpus``, else the folder holding the training manifest (data/an4/... -> an4)."""
    return data.corpus or Path(data.train).parent.name


# ---------------------------------------------------------------------------
# after training


def average_experiment(exp_dir: str | Path, best: int = 0, last: int = 0,
                       out: str | Path | None = None, device: str = "cpu") -> Path:
    """Write a model directory from a run's saved end-of-epoch checkpoints: the mean of the
    ``best`` N by the run's dev metric, or of the ``last`` N epochs. The card's dev WER/CER
    are measured on the run's dev manifest with exactly those weights."""
    from earshot.data.batching import make_loader
    from earshot.data.manifests import load_cuts
    from earshot.tokenizer import load_tokenizer

    if (best > 0) == (last > 0):
        raise ConfigError("give exactly one of --best N or --last N (N >= 1)")
    exp_dir = Path(exp_dir)
    cfg = load_config(exp_dir / CONFIG_FILE)
    ckpt_dir = exp_dir / CHECKPOINT_DIR
    available = ckpt.list_checkpoints(ckpt_dir)
    if not available:
        raise ConfigError(f"{ckpt_dir}: no end-of-epoch checkpoints to average")
    state = ckpt.load_checkpoint(available[max(available)]).train_state
    if best:
        epochs = [e for e in state.best_epochs(len(state.history)) if e in available][:best]
    else:
        epochs = sorted(available)[-last:]
    wanted = best or last
    if len(epochs) < wanted:
        raise ConfigError(f"{ckpt_dir}: {wanted} epochs asked for, but only epochs "
                          f"{', '.join(map(str, sorted(available)))} are kept (train.keep_last and "
                          f"train.average_best decide how many)")
    tokenizer = load_tokenizer(exp_dir / TOKENIZER_DIR)
    model = build_model(cfg, tokenizer).to(device)
    model.load_state_dict(ckpt.average_checkpoints([available[e] for e in epochs]))
    dev_cuts = load_cuts(cfg.data.dev)
    loader = make_loader(dev_cuts, tokenizer, model.sample_rate, cfg.data.max_duration,
                         shuffle=False, num_buckets=cfg.data.num_buckets, even=False)
    dev = evaluate_model(model, tokenizer, loader, cfg, torch.device(device))
    hours = sum(cut.duration for cut in load_cuts(cfg.data.train)) / 3600
    card = ModelCard(corpus=corpus_name(cfg.data), train_hours=round(hours, 3),
                     dev_wer=round(dev.wer, 3), dev_cer=round(dev.cer, 3), epochs=state.epoch,
                     exported_epochs=tuple(epochs),
                     parameters=sum(p.numel() for p in model.parameters()))
    out = Path(out) if out else exp_dir / f"model-{'best' if best else 'last'}{wanted}"
    save_model_dir(out, cfg, tokenizer, model.cpu(), card)
    log.info("averaged epoch(s) %s into %s (dev WER %.2f CER %.2f)",
             ", ".join(map(str, epochs)), out, dev.wer, dev.cer)
    return out

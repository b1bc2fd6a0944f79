"""The training loop: config in, exported model directory out.

``train(cfg)`` reads like a table of contents: seed, load data, fit the tokenizer,
build the model, estimate the front end's statistics (global CMVN), then per epoch train (mixed precision,
gradient accumulation, clipping, scheduled sampling), evaluate on dev (loss and greedy
attention WER/CER), log a JSON line to ``<exp_dir>/metrics.jsonl`` and write an atomic
checkpoint. At the end the best epoch (or the average of the best K) is exported as
``<exp_dir>/model`` (see ``earshot.modeldir``).

``train(cfg, resume=True)`` continues from the last epoch checkpoint, restoring model,
optimizer, scheduler, scaler, sampler and RNG states, so a run stopped after epoch N and
resumed ends with the same parameters as one that was never stopped.

Multi-GPU: launched by ``torchrun`` (WORLD_SIZE > 1) each process trains a DDP replica on
its shard (lhotse shards by rank); only rank 0 writes files.

>>> from earshot.config import load_config
>>> cfg = load_config("recipes/fsdd/crdnn.yaml", ["train.epochs=1"])  # doctest: +SKIP
>>> model_dir = train(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from earshot.config import (ExperimentConfig, ModelCard, OptimConfig, TrainConfig, load_config,
                            save_config, validate)
from earshot.errors import ConfigError
from earshot.losses import sampling_probability
from earshot.modeldir import build_model, check_model_dir, init_from_model_dir, save_model_dir
from earshot.train import checkpoint as ckpt
from earshot.train.schedulers import SCHEDULERS, build_scheduler
from earshot.train.state import TrainState

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"

OPTIMIZERS = {
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adadelta": lambda params, cfg: torch.optim.Adadelta(params, lr=cfg.lr, rho=0.95, eps=1e-8,
                                                         weight_decay=cfg.weight_decay),
}
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

    @property
    def ckpt_dir(self) -> Path:
        return self.exp_dir / CHECKPOINT_DIR


@dataclass(frozen=True)
class EpochStats:
    """Training-set averages over one epoch (weighted by utterances)."""

    loss: float
    ctc: float
    nll: float
    batches: int


@dataclass(frozen=True)
class DevResult:
    loss: float
    wer: float
    cer: float

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, "wer": self.wer, "cer": self.cer}


# ---------------------------------------------------------------------------
# the table of contents


def train(cfg: ExperimentConfig, resume: bool = False) -> Path:
    """Train ``cfg`` and return the exported model directory (``<exp_dir>/model``)."""
    validate(cfg)
    world = init_distributed()
    device = select_device(cfg.train.device, world)
    check_precision(cfg.train.precision, device)
    exp_dir = Path(cfg.train.exp_dir)
    resume_from = prepare_exp_dir(cfg, exp_dir, resume, world)
    if cfg.train.init_from and resume_from is None:
        check_model_dir(cfg.train.init_from)  # before minutes of data loading
    seed_everything(cfg.train.seed)
    configure_torch(cfg.train)
    train_cuts, dev_cuts = load_data(cfg)
    tokenizer = fit_or_load_tokenizer(cfg, exp_dir, train_cuts, resume_from is not None, world)
    warn_unknown_chars(tokenizer, dev_cuts, cfg.data.dev)
    run = build_run(cfg, exp_dir, world, device, tokenizer, train_cuts, dev_cuts)
    if resume_from is not None:
        state = restore(run, resume_from)
    else:
        compute_statistics(run, train_cuts)
        if cfg.train.init_from:
            init_from_model_dir(run.model, cfg, tokenizer, cfg.train.init_from)
        state = TrainState(lr=run.scheduler.lr)
    run.ddp_model = wrap_ddp(run.model, world, device, cfg.loss.ctc_weight)
    for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
        state = run_epoch(run, state, epoch)
    return export_model(run, state)


# ---------------------------------------------------------------------------
# setup


def init_distributed() -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1; a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(world_size, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(world: Dist) -> None:
    if world.world_size > 1:
        dist.barrier()


def prepare_exp_dir(cfg: ExperimentConfig, exp_dir: Path, resume: bool, world: Dist) -> Path | None:
    """Check the experiment directory and write the resolved config; the checkpoint to resume."""
    ckpt_dir = exp_dir / CHECKPOINT_DIR
    if world.is_main:
        ckpt.remove_partial(ckpt_dir)
    last = ckpt.latest_checkpoint(ckpt_dir)
    if last is not None and not resume:
        raise ConfigError(f"{exp_dir} already holds checkpoints ({last.name}): resume it "
                          f"(--resume) or choose another train.exp_dir")
    if resume and last is None:
        log.warning("%s: no checkpoint to resume from; starting from scratch", ckpt_dir)
    if last is not None:
        check_same_model(cfg, exp_dir / CONFIG_FILE)
    if world.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, exp_dir / CONFIG_FILE)
    barrier(world)
    return last


def check_same_model(cfg: ExperimentConfig, saved_path: Path) -> None:
    """ConfigError naming the keys when the model or tokenizer differ from the saved run."""
    if not saved_path.is_file():
        log.warning("%s: missing; cannot check the resumed model matches", saved_path)
        return
    saved = load_config(saved_path)
    changed = []
    for section in ("model", "tokenizer"):
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


def configure_torch(cfg: TrainConfig) -> None:
    # Recurrent nets on x86 slow down by up to 10x once values turn denormal; flushing
    # them to zero changes no result that matters (see docs/DESIGN.md).
    if cfg.flush_denormal:
        torch.set_flush_denormal(True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)


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
    from earshot.data.batching import drop_long_cuts
    from earshot.data.manifests import load_cuts

    for key in ("train", "dev"):
        if not getattr(cfg.data, key):
            raise ConfigError(f"config key 'data.{key}': no manifest given")
    train_cuts, dropped = drop_long_cuts(load_cuts(cfg.data.train), cfg.data.max_utterance_duration)
    if dropped:
        log.warning("%s: left out %d cuts longer than data.max_utterance_duration=%gs",
                    cfg.data.train, dropped, cfg.data.max_utterance_duration)
    return train_cuts, load_cuts(cfg.data.dev)


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


def warn_unknown_chars(tokenizer, cuts, source: str) -> int:
    """Warn (naming the manifest, characters and an example) when texts hold characters
    the tokenizer never saw: they become <unk>. Returns how many utterances do."""
    unseen: dict[str, int] = {}
    example, count = None, 0
    for cut in cuts:
        chars = tokenizer.unknown_chars(cut.supervisions[0].text)
        if chars:
            count, example = count + 1, example or cut.id
            for ch in chars:
                unseen[ch] = unseen.get(ch, 0) + 1
    if count:
        listed = ", ".join(repr(ch) for ch in sorted(unseen, key=unseen.get, reverse=True)[:10])
        log.warning("%s: %d utterance(s) contain characters the tokenizer has never seen (%s), "
                    "e.g. '%s'; they are mapped to <unk>", source, count, listed, example)
    return count


def build_run(cfg, exp_dir, world, device, tokenizer, train_cuts, dev_cuts) -> Run:
    from earshot.data.batching import make_loader

    model = build_model(cfg, tokenizer).to(device)
    optimizer = OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    rate, data = model.sample_rate, cfg.data
    train_loader = make_loader(train_cuts, tokenizer, rate, data.max_duration, shuffle=True,
                               seed=cfg.train.seed, num_buckets=data.num_buckets,
                               num_workers=data.num_workers, speed_factors=data.speed_perturb)
    dev_loader = make_loader(dev_cuts, tokenizer, rate, data.max_duration, shuffle=False,
                             num_buckets=data.num_buckets, num_workers=data.num_workers)
    scheduler = build_scheduler(cfg.optim.scheduler, optimizer, cfg.optim.lr,
                                total_steps=total_optimizer_steps(cfg, train_loader))
    hours = sum(cut.duration for cut in train_cuts) / 3600
    log.info("model: %.2fM parameters; train: %d cuts (%.2f h); dev: %d cuts; device %s",
             sum(p.numel() for p in model.parameters()) / 1e6, len(train_cuts), hours,
             len(dev_cuts), device)
    return Run(cfg, exp_dir, world, device, tokenizer, model, model, optimizer, scheduler,
               scaler, train_loader, dev_loader, hours)


def total_optimizer_steps(cfg, train_loader) -> int:
    """Optimizer steps of the whole run, for schedules that end at the last one: epochs x
    batches of the first epoch / accum_steps (epochs of a bucketed sampler differ by a few)."""
    if not getattr(SCHEDULERS[cfg.optim.scheduler.type], "NEEDS_TOTAL_STEPS", False):
        return 0
    from earshot.data.batching import batches_in_epoch

    per_epoch = math.ceil(batches_in_epoch(train_loader, 1) / cfg.optim.accum_steps)
    return max(1, cfg.train.epochs * per_epoch)


def wrap_ddp(model: torch.nn.Module, world: Dist, device: torch.device, ctc_weight: float):
    if world.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # With alpha 0 or 1 one branch gets no gradient; DDP must be told to expect that.
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=ctc_weight in (0.0, 1.0))


@torch.no_grad()
def compute_statistics(run: Run, train_cuts) -> None:
    """The front end's corpus statistics (global CMVN for fbank/MFCC) over the training
    set. Each rank reads its shard; sums and counts are added over ranks before the
    mean and std are taken."""
    from earshot.data.batching import make_loader

    model, data = run.model, run.cfg.data
    acc = model.new_statistics()
    if acc is None:
        return
    loader = make_loader(train_cuts, run.tokenizer, model.sample_rate, data.max_duration,
                         shuffle=False, num_buckets=data.num_buckets, num_workers=data.num_workers)
    for batch in tqdm(loader, desc="feature statistics", unit="batch", disable=not run.dist.is_main):
        model.accumulate_statistics(acc, batch.wavs.to(run.device), batch.wav_lens.to(run.device))
    acc.all_reduce()
    model.set_statistics(acc)


def drop_short_utterances(model: torch.nn.Module, batch):
    """The batch without utterances too short to give one encoder frame (warned about,
    naming each and its length); None when none is left."""
    lens = model.encoded_lengths(batch.wav_lens)
    short = (lens <= 0).nonzero(as_tuple=True)[0].tolist()
    if not short:
        return batch
    for i in short:
        log.warning("skipping utterance '%s': %d samples give %d encoder frames (too short)",
                    batch.ids[i], int(batch.wav_lens[i]), int(lens[i]))
    keep = (lens > 0).nonzero(as_tuple=True)[0]
    return batch.select(keep) if len(keep) else None


def restore(run: Run, path: Path) -> TrainState:
    """Load a checkpoint into the run; RNG last, so nothing after it draws numbers."""
    from earshot.data.batching import restore_sampler

    log.info("resuming from %s", path)
    saved = ckpt.load_checkpoint(path, map_location="cpu")
    run.model.load_state_dict(saved.model)
    run.optimizer.load_state_dict(saved.optimizer)
    run.scheduler.load_state_dict(saved.scheduler)
    if saved.scaler is not None:
        run.scaler.load_state_dict(saved.scaler)
    if saved.sampler is not None:
        restore_sampler(run.train_loader, saved.sampler)
    if run.dist.is_main:
        truncate_metrics(run.exp_dir / METRICS_FILE, saved.train_state.epoch)
    ckpt.restore_rng(saved.rng)
    return saved.train_state


# ---------------------------------------------------------------------------
# one epoch


def run_epoch(run: Run, state: TrainState, epoch: int) -> TrainState:
    """Train, evaluate, log, checkpoint; the state after ``epoch``."""
    start = time.time()
    stats, step = train_one_epoch(run, state, epoch)
    lr_used = run.scheduler.lr
    dev = evaluate(run)
    lr = run.scheduler.step_epoch(dev.metrics())
    metric = dev.metrics()[run.cfg.train.select_metric]
    state = dataclasses.replace(state.record(epoch, metric, step), lr=lr, batches_per_epoch=stats.batches)
    seconds = time.time() - start
    log.info("epoch %d: train loss %.4f | dev loss %.4f WER %.2f CER %.2f | lr %.3g | %.0fs",
             epoch, stats.loss, dev.loss, dev.wer, dev.cer, lr_used, seconds)
    if run.dist.is_main:
        append_metrics(run.exp_dir / METRICS_FILE, epoch, step, stats, dev, lr_used, seconds)
        save_epoch_checkpoint(run, state)
    barrier(run.dist)
    return state


def train_one_epoch(run: Run, state: TrainState, epoch: int) -> tuple[EpochStats, int]:
    """One pass over the training data; returns its averages and the new global step."""
    cfg = run.cfg
    run.ddp_model.train()
    run.train_loader.sampler.set_epoch(epoch)
    sums, utts, batches, pending, step = np.zeros(3), 0, 0, 0, state.global_step
    bar = tqdm(total=expected_batches(run, state), desc=f"epoch {epoch}", unit="batch",
               disable=not run.dist.is_main, dynamic_ncols=True)
    for batch in run.train_loader:
        batch = drop_short_utterances(run.model, batch)
        if batch is None:
            bar.update()
            continue
        # Scheduled sampling counts completed steps/epochs: it starts at 0 on epoch 1.
        prob = sampling_probability(cfg.loss.scheduled_sampling, step=step, epoch=epoch - 1)
        last_micro = pending + 1 == cfg.optim.accum_steps
        out = forward_backward(run, batch.to(run.device), prob, sync=last_micro)
        pending, batches = pending + 1, batches + 1
        if math.isfinite(out.loss.item()):
            sums += len(batch) * np.array([out.loss.item(), out.ctc.item(), out.nll.item()])
            utts += len(batch)
        if last_micro:
            step, pending = step + optimizer_step(run), 0
        bar.update()
        if batches % cfg.train.log_every == 0:
            bar.set_postfix(loss=f"{sums[0] / max(utts, 1):.3f}", lr=f"{run.scheduler.lr:.2e}")
    if pending:  # an epoch never leaves gradients for the next one
        step += optimizer_step(run)
    bar.close()
    sums, utts = reduce_sums(run, sums, utts)
    loss, ctc, nll = (sums / max(utts, 1)).tolist()
    return EpochStats(loss, ctc, nll, batches), step


def reduce_sums(run: Run, sums: np.ndarray, utts: int) -> tuple[np.ndarray, int]:
    """Totals over every rank's shard (unchanged on one process)."""
    if run.dist.world_size <= 1:
        return sums, utts
    totals = torch.tensor([*sums.tolist(), utts], dtype=torch.float64, device=run.device)
    dist.all_reduce(totals)
    return totals[:3].cpu().numpy(), int(totals[3])


def expected_batches(run: Run, state: TrainState) -> int:
    """Progress-bar length: last epoch's count, or an estimate from the total duration."""
    if state.batches_per_epoch:
        return state.batches_per_epoch
    return max(1, math.ceil(run.train_hours * 3600 / run.cfg.data.max_duration / run.dist.world_size))


def autocast(run: Run):
    dtype = AUTOCAST_DTYPES[run.cfg.train.precision]
    return torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None)


def forward_backward(run: Run, batch, sampling_prob: float, sync: bool):
    """Loss of one micro-batch and its scaled gradient (``sync=False``: no DDP all-reduce yet)."""
    no_sync = getattr(run.ddp_model, "no_sync", None)
    skip_sync = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
    with skip_sync:
        with autocast(run):
            out = run.ddp_model(batch, run.cfg.loss, sampling_prob)
        run.scaler.scale(out.loss / run.cfg.optim.accum_steps).backward()
    return out


def optimizer_step(run: Run) -> int:
    """Unscale, clip, step; 1 if the optimizer stepped, 0 if the gradient was not finite."""
    optim_cfg: OptimConfig = run.cfg.optim
    run.scaler.unscale_(run.optimizer)
    max_norm = optim_cfg.grad_clip if optim_cfg.grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)
    if not torch.isfinite(norm) and not run.scaler.is_enabled():
        log.warning("non-finite gradient norm (%s): skipping this update", norm.item())
        run.optimizer.zero_grad(set_to_none=True)
        return 0
    run.scaler.step(run.optimizer)  # with fp16 the scaler skips steps with inf/nan itself
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step_batch()
    return 1


@torch.no_grad()
def evaluate(run: Run) -> DevResult:
    """Dev loss (teacher forced) and greedy attention WER/CER (percent)."""
    from earshot.decoding.greedy import greedy_attention
    from earshot.metrics import error_rates

    model, tok = run.model, run.tokenizer
    model.eval()
    loss_sum, utts, refs, hyps = 0.0, 0, [], []
    for batch in run.dev_loader:
        batch = drop_short_utterances(model, batch)
        if batch is None:
            continue
        batch = batch.to(run.device)
        with autocast(run):
            loss_sum += model(batch, run.cfg.loss, 0.0).loss.item() * len(batch)
            ids = greedy_attention(model, model.encode(batch.wavs, batch.wav_lens).memory,
                                   tok.bos_id, tok.eos_id, run.cfg.decode.max_len_ratio)
        utts += len(batch)
        refs += [tok.normalize(text) for text in batch.texts]
        hyps += [tok.decode(row) for row in ids]
    loss_sum, utts, refs, hyps = gather_dev(run.dist, loss_sum, utts, refs, hyps)
    rates = error_rates(refs, hyps)
    return DevResult(loss_sum / max(utts, 1), rates.wer, rates.cer)


def gather_dev(world: Dist, loss_sum, utts, refs, hyps):
    """Combine every rank's share of the dev set (a no-op on one process)."""
    if world.world_size <= 1:
        return loss_sum, utts, refs, hyps
    parts = [None] * world.world_size
    dist.all_gather_object(parts, (loss_sum, utts, refs, hyps))
    return (sum(p[0] for p in parts), sum(p[1] for p in parts),
            [r for p in parts for r in p[2]], [h for p in parts for h in p[3]])


# ---------------------------------------------------------------------------
# files


def append_metrics(path: Path, epoch: int, step: int, stats: EpochStats, dev: DevResult,
                   lr: float, seconds: float) -> None:
    row = {"epoch": epoch, "step": step, "train_loss": stats.loss, "ctc": stats.ctc,
           "nll": stats.nll, "dev_loss": dev.loss, "dev_wer": dev.wer, "dev_cer": dev.cer,
           "lr": lr, "seconds": round(seconds, 3)}
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop lines of epochs after the checkpoint (they will be trained again)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and json.loads(line)["epoch"] <= last_epoch]
    path.write_text("".join(line + "\n" for line in lines))


def save_epoch_checkpoint(run: Run, state: TrainState) -> None:
    """Atomic epoch checkpoint, then prune to the last K plus the best K (for averaging)."""
    from earshot.data.batching import sampler_state

    path = ckpt.checkpoint_path(run.ckpt_dir, state.epoch)
    ckpt.save_checkpoint(path, run.model, run.optimizer, run.scheduler, run.scaler,
                         sampler_state(run.train_loader), state, ckpt.capture_rng())
    keep = ckpt.epochs_to_keep(state, run.cfg.train.keep_last, run.cfg.train.average_best)
    ckpt.prune_checkpoints(run.ckpt_dir, keep)


def export_model(run: Run, state: TrainState) -> Path:
    """Write the best epoch (or the mean of the best ``average_best``) as ``<exp_dir>/model``,
    with a card holding the dev WER/CER of exactly those weights (every rank evaluates its
    dev shard; rank 0 writes)."""
    available = ckpt.list_checkpoints(run.ckpt_dir)
    epochs = [e for e in state.best_epochs(run.cfg.train.average_best) if e in available]
    if not epochs:
        raise ConfigError(f"{run.ckpt_dir}: no checkpoint of the best epochs to export")
    paths = [available[e] for e in epochs]
    weights = ckpt.average_checkpoints(paths) if len(paths) > 1 else ckpt.load_checkpoint(paths[0]).model
    run.model.load_state_dict(weights)
    dev = evaluate(run)
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

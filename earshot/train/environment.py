"""Where a training run executes: its experiment directory, device, precision, seeds and
torch settings, set up once by ``earshot.train.engine.begin_run`` before anything else,
and the autocast context of its precision.

An experiment directory (``train.exp_dir``) holds the resolved ``config.yaml``,
``checkpoints/``, ``metrics.jsonl`` and, once trained, the exported ``model/``; the run
owns it while it runs (``earshot.train.rundir``).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from earshot.config import (ExperimentConfig, LMExperimentConfig, PretrainExperimentConfig, TrainConfig,
                            save_config)
from earshot.devices import resolve_device
from earshot.errors import ConfigError
from earshot.train import checkpoint as ckpt
from earshot.train.distributed import Dist, barrier
from earshot.train.rundir import claim_run_dir, release_run_dir

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
MODEL_DIR = "model"
# See configure_torch.
ONEDNN_CACHE_CAPACITY = 128
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# The experiment config of any task: each has train, optim and data sections.
RunConfig = ExperimentConfig | LMExperimentConfig | PretrainExperimentConfig


def prepare_exp_dir(cfg: RunConfig, exp_dir: Path, resume: bool, world: Dist
                    ) -> tuple[Path, ckpt.Checkpoint] | None:
    """Check the experiment directory and write the resolved config; the checkpoint to
    resume (the newest that reads: a damaged newer one is warned about and passed over)."""
    ckpt_dir = exp_dir / CHECKPOINT_DIR
    if world.is_main:
        claim_run_dir(exp_dir)  # (the other ranks work in the directory rank 0 holds)
    try:
        return _prepare_claimed(cfg, exp_dir, ckpt_dir, resume, world)
    except BaseException:
        release_run_dir(exp_dir)
        raise


def _prepare_claimed(cfg: RunConfig, exp_dir: Path, ckpt_dir: Path, resume: bool, world: Dist
                     ) -> tuple[Path, ckpt.Checkpoint] | None:
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
        ckpt.check_same_model(cfg, exp_dir / CONFIG_FILE)
    if world.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, exp_dir / CONFIG_FILE)
    barrier(world)
    return saved


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's generators from ``train.seed`` (a run's initial weights)."""
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
    """torch's process-wide settings of ``train``: denormals, threads, oneDNN's cache."""
    # Recurrent nets on x86 slow down by up to 10x once values turn denormal; flushing
    # them to zero changes no result that matters.
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
    """``train.device`` for this rank (``earshot.devices``; ``cuda`` and ``auto`` on a CUDA
    machine mean ``cuda:LOCAL_RANK`` in a multi-process job), made current."""
    device = resolve_device(name, "config key 'train.device'",
                            world.local_rank if world.world_size > 1 else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError when ``train.precision`` cannot run on ``device``."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'train.precision': fp16 needs a CUDA device; use bf16 or fp32 on CPU")


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """Mixed precision of ``train.precision`` on ``device`` (disabled for fp32)."""
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

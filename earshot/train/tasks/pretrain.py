"""Self-supervised wav2vec 2.0 pretraining on unlabeled audio (``earshot pretrain``).

The model is ``earshot.models.wav2vec2_pretraining.Wav2Vec2Pretrainer`` (transformers'
``Wav2Vec2ForPreTraining``, ``pip install earshot[ssl]``): contrastive and diversity
losses over masked spans of the feature encoder's frames. Its masks and negatives are
drawn from torch's generator on the CPU, which the engine seeds per batch, and torch's
deterministic kernels are on while it trains: a resumed run ends with exactly the
parameters of the uninterrupted one. Training runs on the engine
(``earshot.train.engine.fit``): checkpoints inside and between epochs, ``--resume``,
precision, DDP, skipped updates, ``metrics.jsonl`` and TensorBoard. The best epoch by
dev loss (or the mean of the best ``train.average_best``) is exported to
``<train.exp_dir>/model`` as a transformers checkpoint directory (config.json,
model.safetensors, preprocessor_config.json with the sampling rate) that
``model.encoder.path`` of an ssl encoder, or ``model.init_from`` of another pretraining
run, accepts.

Audio comes from CutSet manifests (transcripts are not needed) and/or folders of audio
files (``data.train`` lists them); without ``data.dev`` a seeded ``data.dev_fraction`` of
the pool is held out.

>>> from earshot.config import load_config, PretrainExperimentConfig   # doctest: +SKIP
>>> pretrain(load_config("recipes/an4/pretrain.yaml", cls=PretrainExperimentConfig))  # doctest: +SKIP
PosixPath('exp/an4_pretrain/model')
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

import earshot
from earshot.config import PretrainExperimentConfig
from earshot.errors import ConfigError
from earshot.models.artifacts import save_transformers_dir
from earshot.models.wav2vec2_pretraining import Wav2Vec2Pretrainer
from earshot.train.distributed import Dist, reduce_sums
from earshot.train.engine import Run, Task, begin_run, fit, restore
from earshot.train.environment import autocast
from earshot.train.state import TrainState
from earshot.train.tasks import drop_short_rows, drop_unbatchable

if TYPE_CHECKING:
    from lhotse import CutSet

    from earshot.data.batching import Batch

log = logging.getLogger(__name__)



def pretrain(cfg: PretrainExperimentConfig, resume: bool = False) -> Path:
    """Pretrain on the engine and export the best epoch(s); returns the checkpoint directory."""
    world, device, exp_dir, saved = begin_run(cfg, resume)
    model = Wav2Vec2Pretrainer(cfg.model).to(device)  # (a bad architecture fails before data loads)
    train_cuts, dev_cuts = load_pool(cfg)
    run = build_run(cfg, exp_dir, world, device, model, train_cuts, dev_cuts)
    state = restore(run, *saved) if saved is not None else TrainState(lr=run.scheduler.lr)
    with deterministic_algorithms():
        return fit(run, state)


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """torch's deterministic kernels for the duration (the caller's setting after). The
    negatives are gathered by index, and the backward of that gather accumulates with
    atomic adds across CPU threads otherwise: two runs, or a run and its resumption,
    would drift apart by rounding."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def load_pool(cfg: PretrainExperimentConfig) -> tuple[CutSet, CutSet]:
    """Training and dev CutSets: the pooled sources, over-long cuts left out (and counted),
    dev held out from the pool when none is given."""
    from earshot.data.manifests import load_audio_sources

    pool = drop_unbatchable(load_audio_sources(cfg.data.train, "data.train"), cfg.data, "data.train")
    if cfg.data.dev:
        return pool, load_audio_sources(cfg.data.dev, "data.dev")
    if len(pool) < 2:
        raise ConfigError("config key 'data.train': needs at least 2 usable cuts to hold out a "
                          "dev set (or give data.dev)")
    ids = sorted(pool.ids)
    random.Random(cfg.train.seed).shuffle(ids)
    held = set(ids[:min(len(ids) - 1, max(1, round(cfg.data.dev_fraction * len(ids))))])
    log.info("holding out %d of %d cuts as the dev set (data.dev_fraction=%g)", len(held), len(ids),
             cfg.data.dev_fraction)
    return pool.filter(lambda c: c.id not in held), pool.filter(lambda c: c.id in held)


def build_run(cfg: PretrainExperimentConfig, exp_dir: Path, world: Dist, device: torch.device,
              model: Wav2Vec2Pretrainer, train_cuts: CutSet, dev_cuts: CutSet) -> Run:
    """This rank's loaders of the pool and the Run."""
    from earshot.data.batching import make_loader
    from earshot.data.manifests import manifest_stats

    data, rate = cfg.data, cfg.model.sample_rate
    shard = {"world_size": world.world_size, "rank": world.rank}
    train_loader = make_loader(train_cuts, None, rate, data.max_duration, shuffle=True,
                               seed=cfg.train.seed, num_buckets=data.num_buckets,
                               num_workers=data.num_workers, keep_empty=True, **shard)
    dev_loader = make_loader(dev_cuts, None, rate, data.max_duration, shuffle=False,
                             num_buckets=data.num_buckets, num_workers=data.num_workers, even=False,
                             keep_empty=True, **shard)
    train_stats, dev_stats = manifest_stats(train_cuts), manifest_stats(dev_cuts)
    hours = train_stats.hours
    return Run.start(cfg, exp_dir, world, device, model=model, task=PretrainTask(cfg, model),
                     train_loader=train_loader, dev_loader=dev_loader, train_hours=hours,
                     data=f"train: {train_stats.cuts} cuts ({hours:.2f} h); "
                          f"dev: {dev_stats.cuts} cuts")


@dataclass(frozen=True)
class PretrainDevResult:
    loss: float  # per masked frame
    contrastive: float
    diversity: float
    perplexity: float  # of the codebook choices (higher: more codes in use)
    skipped: int = 0

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, "contrastive": self.contrastive, "diversity": self.diversity,
                "perplexity": self.perplexity}


class PretrainTask(Task):
    """Contrastive + diversity loss of a Wav2Vec2Pretrainer on untranscribed cuts."""

    NAME = "wav2vec 2.0"
    PARTS = ("contrastive", "diversity")
    AMOUNT = "audio_seconds"
    ROWS = "utterances"
    UNUSABLE = "too short for one masked span"

    def __init__(self, cfg: PretrainExperimentConfig, model: Wav2Vec2Pretrainer):
        self.cfg, self.model = cfg, model
        self.find_unused_parameters = model.may_leave_parameters_unused

    def usable(self, batch: Batch) -> Batch | None:
        span = self.cfg.model.mask_length
        return drop_short_rows(batch, self.model.frames(batch.wav_lens), span,
                               f"frames, fewer than one masked span (model.mask_length={span})")

    def unreadable(self, batch: Batch) -> int:
        return len(batch.dropped)

    def forward(self, model: torch.nn.Module, batch: Batch, epoch: int, step: int
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self.model.set_training_step(step)
        loss, contrastive, diversity, _ = model(batch.wavs, batch.wav_lens)
        return loss, [contrastive, diversity]

    def amount(self, batch: Batch) -> float:
        return float(batch.wav_lens.sum()) / self.model.sample_rate

    def padded(self, batch: Batch) -> float:
        return float(batch.wavs.numel()) / self.model.sample_rate

    @torch.no_grad()
    def dev_pass(self, run: Run) -> PretrainDevResult:
        """Dev losses with masks and negatives drawn from a generator seeded per batch, so
        every epoch is scored on the same task."""
        model = run.model
        was_training = model.training
        model.eval()
        sums, skipped = np.zeros(5), 0
        for i, batch in enumerate(run.dev_loader):
            rows = len(batch)
            skipped += len(batch.dropped)
            batch = self.usable(batch) if rows else None
            skipped += rows - (len(batch) if batch is not None else 0)
            if batch is None:
                continue
            batch = batch.to(run.device)
            with torch.random.fork_rng(devices=[]), autocast(run.cfg.train.precision, run.device):
                torch.manual_seed(self.cfg.train.seed * 100003 + i)
                values = model(batch.wavs, batch.wav_lens)
            sums += [*(len(batch) * float(v) for v in values), len(batch)]
        model.train(was_training)
        totals = reduce_sums(run.dist, run.device, np.append(sums, skipped))
        n = max(totals[4], 1)
        loss, contrastive, diversity, perplexity = (totals[:4] / n).tolist()
        return PretrainDevResult(loss, contrastive, diversity, perplexity, int(totals[5]))

    def save_export(self, run: Run, out: Path, epochs: list[int], dev: PretrainDevResult,
                    state: TrainState) -> None:
        card = {"earshot_version": earshot.__version__,
                "corpus": run.cfg.data.corpus or Path(run.cfg.data.train[0]).name.split(".")[0],
                "train_hours": round(run.train_hours, 3), "epochs": run.cfg.train.epochs,
                "exported_epochs": epochs, "dev": {k: round(v, 5) for k, v in dev.metrics().items()
                                                   if math.isfinite(v)},
                "parameters": sum(p.numel() for p in self.model.parameters())}
        save_transformers_dir(out, self.model, card)
        log.info("exported epoch(s) %s to %s (dev loss %.4f)", ", ".join(map(str, epochs)), out,
                 dev.loss)

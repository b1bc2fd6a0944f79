"""``earshot pretrain``: self-supervised wav2vec 2.0 pretraining (``PretrainExperimentConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from earshot.choices import OPTIMIZERS
from earshot.config.asr import check_batching
from earshot.config.core import dotted, require
from earshot.config.training import (LossSelectedTrainConfig, OptimConfig, SchedulerConfig,
                                     check_schedule_fits)


@dataclass(frozen=True)
class PretrainModelConfig:
    """``model`` of ``earshot pretrain``: a wav2vec 2.0 (transformers' Wav2Vec2ForPreTraining)
    on the ``waveform`` front end, with its masking, negatives and Gumbel temperature."""

    init_from: str = ""  # checkpoint directory to continue pretraining; empty: a new model
    architecture: dict = field(default_factory=dict)  # Wav2Vec2Config keys over earshot's small default
    sample_rate: int = 16000  # audio is resampled to this rate on load
    waveform_norm: Literal["utterance", "none"] = "utterance"  # as model.features.waveform_norm
    mask_prob: float = 0.65  # share of frames starting a masked span (about half end up masked)
    mask_length: int = 10  # frames per masked span
    num_negatives: int = 50  # distractors per masked frame, drawn from the same utterance's masked frames
    diversity_weight: float = 0.1  # alpha in L = L_contrastive + alpha L_diversity
    gumbel_max: float = 2.0  # Gumbel-softmax temperature at step 0 ...
    gumbel_min: float = 0.5  # ... decaying by gumbel_decay a step down to this
    gumbel_decay: float = 0.9995

    def check(self, key: str) -> None:
        def at(name: str) -> str:
            return dotted(key, name)

        require(self.sample_rate >= 1000, at("sample_rate"), "must be >= 1000 (Hz)")
        require(0.0 < self.mask_prob < 1.0, at("mask_prob"), "must be in (0, 1)")
        require(self.mask_length >= 1, at("mask_length"), "must be >= 1")
        require(self.num_negatives >= 1, at("num_negatives"), "must be >= 1")
        require(self.diversity_weight >= 0, at("diversity_weight"), "must be >= 0")
        require(0 < self.gumbel_min <= self.gumbel_max, at("gumbel_min"),
                f"must be in (0, {at('gumbel_max')}]")
        require(0 < self.gumbel_decay <= 1, at("gumbel_decay"), "must be in (0, 1]")
        require(not (self.init_from and self.architecture), at("architecture"),
                f"cannot change the architecture of {at('init_from')}'s checkpoint")


@dataclass(frozen=True)
class PretrainDataConfig:
    corpus: str = ""  # a name for the checkpoint's card; empty: the first source's name
    train: tuple[str, ...] = ()  # CutSet manifests (transcripts not needed) and/or folders of audio files
    dev: tuple[str, ...] = ()  # the same; empty: hold out dev_fraction of train
    dev_fraction: float = 0.05
    max_duration: float = 60.0  # seconds of audio per batch
    num_buckets: int = 10
    num_workers: int = 0
    max_utterance_duration: float = 20.0  # longer cuts are left out (and counted)

    def check(self, key: str) -> None:
        require(bool(self.train), dotted(key, "train"), "give at least one manifest or folder of audio files")
        require(0.0 < self.dev_fraction < 1.0 or bool(self.dev), dotted(key, "dev_fraction"),
                "must be in (0, 1)")
        check_batching(self, key)


@dataclass(frozen=True)
class PretrainOptimConfig(OptimConfig):
    """``optim`` of pretraining: AdamW with warmup and cosine decay by default."""

    name: Literal[OPTIMIZERS.names] = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.01
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(type="cosine", warmup_steps=500))


@dataclass(frozen=True)
class PretrainTrainConfig(LossSelectedTrainConfig):
    """``train`` of pretraining (the loss per masked frame)."""

    exp_dir: str = "exp/pretrain"


@dataclass(frozen=True)
class PretrainExperimentConfig:
    """``earshot pretrain``: self-supervised wav2vec 2.0 pretraining on the same engine as
    ``earshot train``; the checkpoint is exported to ``<train.exp_dir>/model``, a directory
    ``model.encoder.path`` accepts."""

    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)

    def check(self, key: str) -> None:
        check_schedule_fits(self)

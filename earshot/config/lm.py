"""``earshot train-lm``: the RNN language model's training config (``LMExperimentConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from earshot.config.core import dotted, require
from earshot.config.training import (LossSelectedTrainConfig, OptimConfig, SchedulerConfig,
                                     check_schedule_fits)


@dataclass(frozen=True)
class LMConfig:
    embedding_dim: int = 128
    units: int = 512
    layers: int = 2
    dropout: float = 0.2


@dataclass(frozen=True)
class LMDataConfig:
    asr_model: str = ""  # ASR model directory; the LM uses its tokenizer/
    train_text: str = ""  # CutSet manifest (.jsonl / .jsonl.gz) or plain text, one sentence per line
    dev_text: str = ""  # same formats; empty: hold out 5% of train_text
    batch_size: int = 64  # sentences per batch

    def check(self, key: str) -> None:
        require(self.batch_size >= 1, dotted(key, "batch_size"), "must be >= 1")


@dataclass(frozen=True)
class LMOptimConfig(OptimConfig):
    """``optim`` of a language model: OptimConfig with no schedule by default."""

    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(type="none"))


@dataclass(frozen=True)
class LMTrainConfig(LossSelectedTrainConfig):
    """``train`` of a language model (the loss in nats per token)."""

    exp_dir: str = "exp/lm"


@dataclass(frozen=True)
class LMExperimentConfig:
    """``earshot train-lm``: the same engine (``train``, ``optim`` sections) as ``earshot
    train``; the language model is exported to ``<train.exp_dir>/model``."""

    model: LMConfig = field(default_factory=LMConfig)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    optim: LMOptimConfig = field(default_factory=LMOptimConfig)
    train: LMTrainConfig = field(default_factory=LMTrainConfig)

    # earshot 0.2 kept everything under `train`; such configs (and LM directories) still load
    _MOVED = {"asr_model": "data", "train_text": "data", "dev_text": "data", "batch_size": "data",
              "lr": "optim", "grad_clip": "optim"}

    def check(self, key: str) -> None:
        check_schedule_fits(self)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """A config dict in the 0.2 layout moved to the current one (others unchanged)."""
        train = data.get("train")
        if not isinstance(train, dict) or not (set(train) & (set(cls._MOVED) | {"out_dir"})):
            return data
        data, train = dict(data), dict(train)
        for key, section in cls._MOVED.items():
            if key in train:
                data[section] = {**data.get(section, {}), key: train.pop(key)}
        if "out_dir" in train:
            train["exp_dir"] = train.pop("out_dir")
        data["train"] = train
        return data

"""The ``optim`` and ``train`` sections that every training task (ASR, LM, pretraining)
shares: optimizer, schedule, parameter groups, and the engine's run settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from earshot.choices import OPTIMIZERS, SCHEDULERS
from earshot.config.core import dotted, require
from earshot.devices import DEVICE_NAME, NAMES_HELP


@dataclass(frozen=True)
class SchedulerConfig:
    type: Literal[SCHEDULERS.names] = "newbob"
    # newbob: multiply lr by `factor` when the dev metric improves by less than `threshold` (relative)
    factor: float = 0.5
    threshold: float = 0.0025
    patience: int = 0
    metric: Literal["loss", "cer", "wer"] = "loss"  # newbob: the dev metric it watches
    # warmup: linear warmup over warmup_steps, then inverse-square-root decay
    # cosine: linear warmup over warmup_steps, then cosine decay to min_lr_ratio * lr at the
    # run's last step (counted from the sampler: epochs x batches per epoch / accum_steps)
    # noam (Vaswani et al. 2017): optim.lr * model_dim^-0.5 * min(s^-0.5, s * warmup_steps^-1.5);
    # optim.lr is then a scale factor (peak = lr / sqrt(model_dim * warmup_steps))
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.02
    model_dim: int = 256

    def check(self, key: str) -> None:
        require(self.model_dim >= 1, dotted(key, "model_dim"), "must be >= 1")
        require(0 < self.factor <= 1, dotted(key, "factor"), "must be in (0, 1] (the rate is multiplied by it)")
        require(self.threshold >= 0, dotted(key, "threshold"), "must be >= 0")
        require(self.patience >= 0, dotted(key, "patience"), "must be >= 0")
        require(self.type not in ("warmup", "cosine") or self.warmup_steps >= 1,
                dotted(key, "warmup_steps"), "must be >= 1")
        require(0.0 <= self.min_lr_ratio <= 1.0, dotted(key, "min_lr_ratio"), "must be in [0, 1]")


@dataclass(frozen=True)
class ParamGroupConfig:
    """Parameters whose names start with ``prefix`` (e.g. "encoder.") train at their own
    rate: ``lr`` where optim.lr would be; the schedule moves both alike."""

    prefix: str = ""
    lr: float = 1e-3
    weight_decay: float | None = None  # None: optim.weight_decay

    def check(self, key: str) -> None:
        require(bool(self.prefix), dotted(key, "prefix"), "must name a parameter prefix")
        require(self.lr >= 0, dotted(key, "lr"), "must be a number >= 0 (0 freezes the group)")
        require(self.weight_decay is None or self.weight_decay >= 0, dotted(key, "weight_decay"),
                "must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal[OPTIMIZERS.names] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 for adam/adadelta, decoupled for adamw
    param_groups: tuple[ParamGroupConfig, ...] = ()  # first matching prefix wins; the rest: lr
    grad_clip: float = 5.0  # max global grad norm; <= 0 disables
    accum_steps: int = 1  # gradient accumulation
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def check(self, key: str) -> None:
        require(math.isfinite(self.lr) and self.lr > 0, dotted(key, "lr"), "must be a positive number")
        require(self.accum_steps >= 1, dotted(key, "accum_steps"), "must be >= 1")
        require(self.weight_decay >= 0, dotted(key, "weight_decay"), "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    exp_dir: str = "exp/run"
    epochs: int = 20
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    keep_last: int = 2  # epoch checkpoints kept (and mid-epoch ones since the last epoch end)
    save_every_steps: int = 0  # also checkpoint inside an epoch every N optimizer steps; 0 off
    save_every_minutes: float = 0.0  # ... and/or every N minutes; 0 off
    max_bad_steps: int = 20  # stop after this many updates in a row skipped for inf/nan
    dist_timeout: float = 600.0  # seconds a rank waits for the others before the job ends
    average_best: int = 1  # export the average of the K best epochs (1 = best only)
    average_last: int = 0  # instead export the average of the last N epochs (0 = off)
    validate_every: int = 1  # dev pass every N epochs (and after the last); newbob needs 1
    validate_all_from: int = 0  # from this epoch on, a dev pass after every epoch (0: off)
    init_from: str = ""  # a model directory whose weights start a fresh run (fine-tuning)
    select_metric: Literal["cer", "wer", "loss"] = "cer"
    flush_denormal: bool = True
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    log_every: int = 10  # a "step" row in metrics.jsonl (and TensorBoard) every N steps
    tensorboard: bool = True  # also write EXP_DIR/tensorboard/ when tensorboard is installed
    plot_alignments: int = 3  # attention plots of this many dev utterances per epoch; 0 off

    def check(self, key: str) -> None:
        def at(name: str) -> str:
            return dotted(key, name)

        require(bool(self.exp_dir.strip()), at("exp_dir"),
                "empty; give a directory of the run's own, e.g. exp/myrun")
        require(bool(DEVICE_NAME.fullmatch(self.device)), at("device"),
                f"{self.device!r} is not {NAMES_HELP}")
        require(self.epochs >= 1, at("epochs"), "must be >= 1")
        require(0 <= self.seed < 2**32, at("seed"), "must be in [0, 2^32)")
        require(self.num_threads >= 0, at("num_threads"), "must be >= 0 (0: torch's default)")
        require(self.keep_last >= 1, at("keep_last"), "must be >= 1")
        require(self.average_best >= 1, at("average_best"), "must be >= 1")
        require(self.average_last >= 0, at("average_last"), "must be >= 0 (0: by average_best)")
        require(self.validate_every >= 1, at("validate_every"), "must be >= 1")
        require(self.validate_all_from >= 0, at("validate_all_from"),
                "must be >= 0 (0: every train.validate_every epochs throughout)")
        require(self.average_last <= self.epochs, at("average_last"),
                f"must be <= train.epochs ({self.epochs})")
        require(self.save_every_steps >= 0, at("save_every_steps"), "must be >= 0 (0: off)")
        require(self.save_every_minutes >= 0, at("save_every_minutes"), "must be >= 0 (0: off)")
        require(self.max_bad_steps >= 1, at("max_bad_steps"), "must be >= 1")
        require(self.log_every >= 1, at("log_every"), "must be >= 1")
        require(self.plot_alignments >= 0, at("plot_alignments"), "must be >= 0 (0: off)")
        require(self.dist_timeout > 0, at("dist_timeout"), "must be positive (seconds)")


@dataclass(frozen=True)
class LossSelectedTrainConfig(TrainConfig):
    """``train`` of a task whose only dev metric is its loss (language models, pretraining):
    no WER to select by, no alignments to plot."""

    epochs: int = 10
    keep_last: int = 1
    select_metric: Literal["loss"] = "loss"
    plot_alignments: int = 0


def check_schedule_fits(cfg: Any) -> None:
    """What ``train`` and ``optim`` must agree on (every training config's ``check``)."""
    require(cfg.train.validate_every == 1 or cfg.optim.scheduler.type != "newbob",
            "train.validate_every", "must be 1 with optim.scheduler.type=newbob (it steps on "
            "every epoch's dev result)")

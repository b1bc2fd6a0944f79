"""Learning-rate schedules: NewBob (driven by the dev metric), warmup + inverse-sqrt decay,
Noam, warmup + cosine decay over the whole run, none.

Every scheduler owns the learning rate of one optimizer and is told about two events:
``step_batch()`` after each optimizer step and ``step_epoch(metrics)`` after each dev
evaluation; each returns the learning rate now in force. ``state_dict()`` holds plain
numbers so it can sit in a ``weights_only`` checkpoint. The rate a schedule sets is the
base one; a parameter group with its own ``lr_scale`` (see ``build_optimizer``) gets
that multiple of it. Pick one with ``build_scheduler``, which looks
``SchedulerConfig.type`` up in ``earshot.choices.SCHEDULERS``; a schedule whose class
sets ``NEEDS_TOTAL_STEPS`` is told how many optimizer steps the whole run will take.

>>> import torch
>>> from earshot.config import SchedulerConfig
>>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
>>> sched = build_scheduler(SchedulerConfig(type="newbob", factor=0.5), opt, base_lr=1.0)
>>> sched.step_epoch({"loss": 10.0}), sched.step_epoch({"loss": 9.0}), sched.step_epoch({"loss": 9.0})
(1.0, 1.0, 0.5)
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from earshot.choices import SCHEDULERS
from earshot.config import SchedulerConfig


class Scheduler(Protocol):
    """What the engine needs of a schedule (each class here is one)."""

    lr: float

    def step_batch(self) -> float: ...

    def step_epoch(self, metrics: dict[str, float]) -> float: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


class ConstantLR:
    """No schedule: the learning rate stays at ``base_lr``."""

    def __init__(self, cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, base_lr: float):
        self.optimizer = optimizer
        self.lr = _set_lr(optimizer, base_lr)

    def step_batch(self) -> float:
        return self.lr

    def step_epoch(self, metrics: dict[str, float]) -> float:
        return self.lr

    def state_dict(self) -> dict:
        return {"lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        self.lr = _set_lr(self.optimizer, float(state["lr"]))


class NewBob:
    """Multiply the lr by ``factor`` when the dev metric stops improving.

    An epoch is "bad" when the relative improvement over the previous epoch,
    ``(prev - now) / prev``, is below ``threshold``; after more than ``patience``
    bad epochs in a row the lr is annealed and the count starts again. Comparing
    with the previous epoch (not the best) is the classic NewBob rule.
    """

    def __init__(self, cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, base_lr: float):
        self.cfg = cfg
        self.optimizer = optimizer
        self.lr = _set_lr(optimizer, base_lr)
        self.prev_metric: float | None = None
        self.bad_epochs = 0

    def step_batch(self) -> float:
        return self.lr

    def step_epoch(self, metrics: dict[str, float]) -> float:
        metric = float(metrics[self.cfg.metric])
        if self.prev_metric is not None:
            prev = self.prev_metric
            improvement = (prev - metric) / prev if prev > 0 else 0.0
            self.bad_epochs = self.bad_epochs + 1 if improvement < self.cfg.threshold else 0
            if self.bad_epochs > self.cfg.patience:
                self.lr = _set_lr(self.optimizer, self.lr * self.cfg.factor)
                self.bad_epochs = 0
        self.prev_metric = metric
        return self.lr

    def state_dict(self) -> dict:
        prev = math.nan if self.prev_metric is None else self.prev_metric
        return {"lr": self.lr, "prev_metric": prev, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.lr = _set_lr(self.optimizer, float(state["lr"]))
        prev = float(state["prev_metric"])
        self.prev_metric = None if math.isnan(prev) else prev
        self.bad_epochs = int(state["bad_epochs"])


class WarmupDecay:
    """Linear warmup to ``base_lr`` over ``warmup_steps``, then decay as ``1/sqrt(step)``.

    The lr for optimizer step ``s`` (1-based) is
    ``base_lr * min(s / warmup_steps, sqrt(warmup_steps / s))``: it peaks at
    ``base_lr`` on step ``warmup_steps`` and is continuous there.
    """

    def __init__(self, cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, base_lr: float):
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.warmup = max(1, cfg.warmup_steps)
        self.steps_done = 0
        self.lr = _set_lr(optimizer, self.lr_at(1))

    def lr_at(self, step: int) -> float:
        return self.base_lr * min(step / self.warmup, math.sqrt(self.warmup / step))

    def step_batch(self) -> float:
        self.steps_done += 1
        self.lr = _set_lr(self.optimizer, self.lr_at(self.steps_done + 1))
        return self.lr

    def step_epoch(self, metrics: dict[str, float]) -> float:
        return self.lr

    def state_dict(self) -> dict:
        return {"lr": self.lr, "steps_done": self.steps_done, "base_lr": self.base_lr}

    def load_state_dict(self, state: dict) -> None:
        self.steps_done = int(state["steps_done"])
        self.base_lr = float(state["base_lr"])
        self.lr = _set_lr(self.optimizer, float(state["lr"]))


class Noam(WarmupDecay):
    """The Transformer schedule: ``base_lr * model_dim^-0.5 * min(s^-0.5, s * warmup^-1.5)``;
    ``base_lr`` is a scale factor, the peak (at ``warmup_steps``) is
    ``base_lr / sqrt(model_dim * warmup_steps)``."""

    def __init__(self, cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, base_lr: float):
        self.model_dim = cfg.model_dim
        super().__init__(cfg, optimizer, base_lr)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.model_dim ** -0.5 * min(step ** -0.5, step * self.warmup ** -1.5)


class WarmupCosine(WarmupDecay):
    """Linear warmup to ``base_lr`` over ``warmup_steps``, then half a cosine down to
    ``min_lr_ratio * base_lr`` at ``total_steps``, where it stays.

    Annealing to a small rate by the last epoch lets the final checkpoints settle, which
    is what checkpoint averaging wants; inverse-sqrt decay leaves the rate high to the end.
    """

    NEEDS_TOTAL_STEPS = True

    def __init__(self, cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, base_lr: float,
                 total_steps: int = 0):
        if total_steps < 1:
            raise ValueError("the cosine schedule needs the run's total number of optimizer steps")
        self.total = total_steps
        self.floor = cfg.min_lr_ratio
        super().__init__(cfg, optimizer, base_lr)

    def lr_at(self, step: int) -> float:
        if step <= self.warmup:
            return self.base_lr * step / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        scale = self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.base_lr * scale

    def state_dict(self) -> dict:
        return {**super().state_dict(), "total_steps": self.total}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.total = int(state["total_steps"])


def build_scheduler(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, base_lr: float,
                    total_steps: int = 0) -> Scheduler:
    """The scheduler named by ``cfg.type``; it sets the optimizer's lr right away.
    ``total_steps`` (the optimizer steps of the whole run) is passed on to the schedules
    that need it."""
    cls = SCHEDULERS.load(cfg.type, "config key 'optim.scheduler.type'")
    if getattr(cls, "NEEDS_TOTAL_STEPS", False):
        return cls(cfg, optimizer, base_lr, total_steps)
    return cls(cfg, optimizer, base_lr)

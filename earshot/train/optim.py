"""Optimizers, their parameter groups and schedules, for every task's run.

``optim.name`` picks an optimizer from ``earshot.choices.OPTIMIZERS``, whose entries are
the factories here (``adam``, ``adamw``, ``adadelta``), each
``(parameter groups, OptimConfig) -> torch.optim.Optimizer``; ``optim.scheduler.type``
picks a schedule from ``earshot.choices.SCHEDULERS`` (see ``earshot.train.schedulers``).
``build_optimization`` makes the three things an engine run steps: optimizer, scheduler
and grad scaler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from earshot.choices import OPTIMIZERS, SCHEDULERS
from earshot.config import OptimConfig
from earshot.errors import ConfigError
from earshot.train.schedulers import Scheduler, build_scheduler

if TYPE_CHECKING:
    from earshot.train.environment import RunConfig


def _fused(adam: Callable[..., torch.optim.Optimizer]
           ) -> Callable[[list[dict], OptimConfig], torch.optim.Optimizer]:
    """``adam`` with its fused kernel (one pass over each parameter instead of a dozen
    elementwise ops; about 2.5x faster a step on CPU), where this torch has one for the
    parameters' device (CPU since torch 2.4), else its default implementation."""
    def make(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
        try:
            return adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except RuntimeError:  # "`fused=True` requires ... supported devices"
            return adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return make


def adam(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (L2 weight decay), fused where available."""
    return _fused(torch.optim.Adam)(groups, cfg)


def adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), fused where available."""
    return _fused(torch.optim.AdamW)(groups, cfg)


def adadelta(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adadelta with rho 0.95, eps 1e-8."""
    return torch.optim.Adadelta(groups, lr=cfg.lr, rho=0.95, eps=1e-8, weight_decay=cfg.weight_decay)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """``cfg.name`` over the model's parameters, split into ``cfg.param_groups`` (first
    matching name prefix wins) and a last group with the rest at ``cfg.lr``. Each group
    carries ``lr_scale``, its rate over the base one, which the schedulers keep; a group
    at lr 0 is frozen (its parameters stop requiring gradients)."""
    named = list(model.named_parameters())
    chosen: list[list[torch.nn.Parameter]] = [[] for _ in cfg.param_groups]
    rest = []
    for name, param in named:
        index = next((i for i, g in enumerate(cfg.param_groups) if name.startswith(g.prefix)), None)
        (rest if index is None else chosen[index]).append(param)
    groups = []
    for i, (group, params) in enumerate(zip(cfg.param_groups, chosen)):
        if not params:
            tops = sorted({name.split(".")[0] + "." for name, _ in named})
            raise ConfigError(f"config key 'optim.param_groups[{i}].prefix': {group.prefix!r} matches "
                              f"no parameter (names start with {', '.join(tops)})")
        if group.lr == 0:
            for param in params:
                param.requires_grad_(False)
        decay = cfg.weight_decay if group.weight_decay is None else group.weight_decay
        groups.append({"params": params, "lr_scale": group.lr / cfg.lr, "weight_decay": decay})
    if rest:
        groups.append({"params": rest, "lr_scale": 1.0, "weight_decay": cfg.weight_decay})
    return OPTIMIZERS.load(cfg.name, "config key 'optim.name'")(groups, cfg)


def build_optimization(cfg: RunConfig, model: torch.nn.Module, device: torch.device,
                       train_loader: torch.utils.data.DataLoader
                       ) -> tuple[torch.optim.Optimizer, Scheduler, torch.amp.GradScaler]:
    """Optimizer (with parameter groups), its schedule (told the run's total steps when it
    needs them) and the grad scaler (enabled for fp16) of any task's run (``cfg`` is any
    experiment config with ``optim`` and ``train`` sections)."""
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(cfg.optim.scheduler, optimizer, cfg.optim.lr,
                                total_steps=total_optimizer_steps(cfg, train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    return optimizer, scheduler, scaler


def total_optimizer_steps(cfg: RunConfig, train_loader: torch.utils.data.DataLoader) -> int:
    """Optimizer steps of the whole run, for schedules that end at the last one: epochs x
    batches of the first epoch / accum_steps (epochs of a bucketed sampler differ by a few);
    0 for the others."""
    schedule = SCHEDULERS.load(cfg.optim.scheduler.type, "config key 'optim.scheduler.type'")
    if not getattr(schedule, "NEEDS_TOTAL_STEPS", False):
        return 0
    from earshot.data.batching import batches_in_epoch

    per_epoch = math.ceil(batches_in_epoch(train_loader, 1) / cfg.optim.accum_steps)
    return max(1, cfg.train.epochs * per_epoch)

"""Training losses: CTC, label-smoothed NLL, their joint weighting, scheduled sampling.

Reductions (chosen so both terms are on a per-token scale and ``alpha`` weighs like
for like): ``ctc_loss`` is torch's ``reduction="mean"`` (each utterance's loss divided
by its target length, then averaged over the batch); ``nll_loss`` is the mean over all
valid target tokens of the batch.

>>> import torch
>>> from earshot.config import ScheduledSamplingConfig
>>> cfg = ScheduledSamplingConfig(max_prob=0.4, unit="epoch", start=2, ramp=4)
>>> [sampling_probability(cfg, step=0, epoch=e) for e in (0, 2, 4, 6, 9)]
[0.0, 0.0, 0.2, 0.4, 0.4]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from earshot.config import ScheduledSamplingConfig
from earshot.masks import lengths_to_mask


def ctc_loss(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    targets: torch.Tensor,
    target_lens: torch.Tensor,
    blank: int,
) -> torch.Tensor:
    """CTC loss in float32. log_probs (B, T', V), lens (B,), targets (B, U), target_lens (B,).

    Impossible alignments (target longer than the input allows) give zero loss and zero
    gradient instead of inf (zero_infinity), so one bad utterance cannot spoil a batch.
    """
    with torch.autocast(device_type=log_probs.device.type, enabled=False):
        return F.ctc_loss(
            log_probs.float().transpose(0, 1), targets, lens, target_lens,
            blank=blank, reduction="mean", zero_infinity=True,
        )


def nll_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    target_lens: torch.Tensor,
    pad_id: int,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Label-smoothed cross entropy, mean per valid token. logits (B, U, V), targets (B, U).

    Positions at or past ``target_lens`` and positions holding ``pad_id`` are ignored.
    """
    valid = lengths_to_mask(target_lens, targets.size(1)) & targets.ne(pad_id)
    targets = targets.masked_fill(~valid, -100)
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(),
        ignore_index=-100, label_smoothing=smoothing, reduction="mean",
    )


def joint_loss(ctc: torch.Tensor, nll: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * CTC + (1 - alpha) * NLL."""
    return alpha * ctc + (1.0 - alpha) * nll


def sampling_probability(cfg: ScheduledSamplingConfig, step: int, epoch: int) -> float:
    """Scheduled-sampling probability: 0 up to ``start``, then a linear ramp reaching
    ``max_prob`` ``ramp`` units later, then flat. The unit (step or epoch) is ``cfg.unit``."""
    if cfg.max_prob <= 0:
        return 0.0
    now = step if cfg.unit == "step" else epoch
    progress = (now - cfg.start) / max(cfg.ramp, 1)
    return cfg.max_prob * min(max(progress, 0.0), 1.0)

"""SpecAugment: random frequency and time masks on a padded feature batch, vectorised.

>>> import torch
>>> from earshot.config import SpecAugmentConfig
>>> feats = torch.ones(2, 50, 40)
>>> out = spec_augment(feats, torch.tensor([50, 30]), SpecAugmentConfig(freq_masks=2, time_masks=2))
>>> out.shape, bool((out == 0).any())
(torch.Size([2, 50, 40]), True)
"""

from __future__ import annotations

import torch

from earshot.config import SpecAugmentConfig


def spec_augment(feats: torch.Tensor, lens: torch.Tensor, cfg: SpecAugmentConfig) -> torch.Tensor:
    """feats (B, T, D), lens (B,) -> feats with masked regions set to zero (the mean
    after normalisation). Time masks stay inside each utterance's valid frames."""
    if cfg.freq_masks <= 0 and cfg.time_masks <= 0:
        return feats
    b, t, d = feats.shape
    keep = torch.ones(b, t, d, dtype=torch.bool, device=feats.device)
    if cfg.freq_masks > 0 and d > 0:
        sizes = torch.full((b,), d, device=feats.device)
        keep &= ~_band_mask(sizes, d, cfg.freq_masks, cfg.freq_width).unsqueeze(1)
    if cfg.time_masks > 0 and t > 0:
        widest = (lens.to(feats.device).float() * cfg.max_time_fraction).long().clamp(max=cfg.time_width)
        keep &= ~_band_mask(lens.to(feats.device), t, cfg.time_masks, widest).unsqueeze(2)
    return feats * keep.to(feats.dtype)


def _band_mask(sizes: torch.Tensor, axis_len: int, count: int, max_width) -> torch.Tensor:
    """(B, axis_len) True inside ``count`` random bands per row: width uniform in
    [0, max_width], start uniform in [0, size - width]."""
    b = sizes.shape[0]
    device = sizes.device
    max_width = torch.as_tensor(max_width, device=device).expand(b)
    width = (torch.rand(b, count, device=device) * (max_width.unsqueeze(1) + 1)).long()
    room = (sizes.unsqueeze(1) - width).clamp(min=0)
    start = (torch.rand(b, count, device=device) * (room + 1)).long()
    pos = torch.arange(axis_len, device=device).view(1, 1, -1)
    inside = (pos >= start.unsqueeze(2)) & (pos < (start + width).unsqueeze(2))
    return inside.any(dim=1)

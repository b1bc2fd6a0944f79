"""Dropout with a cheaper mask on CPU.

PyTorch's CPU generator makes one Mersenne-Twister draw per element for ``nn.Dropout``'s
bernoulli mask (or for ``torch.rand``), single-threaded: on a 2-core machine the masks of
the AN4 Conformer's training step took about as long as all its matrix products
(benchmarks/PROFILE.md). ``Dropout`` instead cuts 64-bit draws into four 16-bit lanes
and keeps an element when its lane is at or above the threshold ``round(p * 65536)``
(offset to signed values), which needs a quarter of the draws. The drop rate is ``p`` rounded to a
multiple of 1/65536 (0.1 becomes 0.100006); kept elements are scaled by 1 / (1 - p) as
in ``nn.Dropout``. Elsewhere than on CPU it is ``nn.Dropout`` (fused, counter-based RNG).

>>> drop = Dropout(0.25)
>>> y = drop(torch.ones(100_000))
>>> round((y == 0).float().mean().item(), 2), round(y.max().item(), 4)
(0.25, 1.3333)
"""

from __future__ import annotations

import torch
from torch import nn

LANES = 65536  # values of one 16-bit lane


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of ``shape`` holding 1 / (1 - p) where kept and 0 where dropped."""
    n = shape.numel()
    draws = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    lanes = draws.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    keep = lanes >= round(p * LANES) - LANES // 2
    return keep.to(dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, same state dict) with the mask above on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p >= 1.0 or self.inplace:
            return super().forward(x)
        return x * keep_mask(x.shape, self.p, x.dtype)

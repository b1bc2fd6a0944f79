"""CTC head: a linear map from encoder frames to log-probabilities over the vocabulary.

The projection and log_softmax run in float32 even under autocast, because CTC's
forward-backward sums many small probabilities and is unstable in half precision.

>>> import torch
>>> head = CTCHead(enc_dim=6, vocab_size=5)
>>> lp = head(torch.randn(2, 3, 6))
>>> lp.dtype, lp.shape, bool(torch.allclose(lp.exp().sum(-1), torch.ones(2, 3)))
(torch.float32, torch.Size([2, 3, 5]), True)
"""

from __future__ import annotations

import torch
from torch import nn


class CTCHead(nn.Module):
    """Linear + log_softmax in float32: h (B, T', H) -> log_probs (B, T', V)."""

    TOKEN_INDEXED = ("proj.weight", "proj.bias")  # first dimension indexed by token id

    def __init__(self, enc_dim: int, vocab_size: int):
        super().__init__()
        self.proj = nn.Linear(enc_dim, vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=h.device.type, enabled=False):
            return torch.log_softmax(self.proj(h.float()), dim=-1)

"""The one place where padding masks are made from absolute lengths."""

import torch


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Boolean mask (B, T), True on valid positions, from integer lengths (B,).

    >>> lengths_to_mask(torch.tensor([2, 3]))
    tensor([[ True,  True, False],
            [ True,  True,  True]])
    """
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) with every frame at or past its row's length set to zero."""
    mask = lengths_to_mask(lengths, x.size(1))
    return x.masked_fill(~mask.view(*mask.shape, *([1] * (x.dim() - 2))), 0.0)

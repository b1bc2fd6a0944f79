"""What every encoder is: ``(x (B, T, D), lens (B,)) -> (h (B, T', H) zero past h_lens, h_lens)``.

An encoder is an ``Encoder`` subclass built as ``cls(cfg, input_dim)`` from its own
frozen config dataclass, which it names as ``Config`` (a subclass of
``earshot.config.EncoderConfig`` whose ``type`` default is its name in
``earshot.choices.ENCODERS``). Besides ``forward`` and ``output_lengths`` it declares
its optional capabilities here, with defaults for an encoder that has none of them, so
the model never probes for attributes:

- ``forward_with_taps``: outputs of inner blocks (intermediate CTC); the config side
  says how many blocks there are (``EncoderConfig.tappable_blocks``).
- ``sample_rate``: the audio rate a pretrained encoder was trained at.
- ``STATISTICS``: state-dict names holding corpus statistics.
- ``parameter_groups``: named parameter prefixes for ``optim.param_groups``.
- freezing: ``may_leave_parameters_unused`` (a data-parallel wrapper must be told) and
  ``set_training_step`` (an encoder that unfreezes after N optimizer steps reads it).
- ``portable_config``: the config that rebuilds it from its weights alone.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from earshot.config import EncoderConfig


class Encoder(nn.Module):
    """Base of every encoder; see the module docstring for the contract."""

    Config: ClassVar[type[EncoderConfig]]
    STATISTICS: ClassVar[tuple[str, ...]] = ()
    output_dim: int
    sample_rate: int | None = None  # None: takes audio at any rate

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        """Encoder frames for input lengths (B,), without running the network."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward_with_taps(self, x: torch.Tensor, lens: torch.Tensor, taps: tuple[int, ...]
                          ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``forward`` plus the outputs of blocks ``taps`` (1-based)."""
        if taps:
            raise NotImplementedError(f"{type(self).__name__} has no blocks to tap")
        return (*self(x, lens), [])

    @property
    def may_leave_parameters_unused(self) -> bool:
        """Whether some parameters may get no gradient in a step (a frozen or dropped part)."""
        return False

    def set_training_step(self, step: int) -> None:
        """Told the optimizer steps done before each training batch."""

    def parameter_groups(self) -> dict[str, str]:
        """Named parameter-name prefixes (relative to the encoder) that make sensible
        ``optim.param_groups`` (e.g. a pretrained part and a new one); empty: none."""
        return {}

    def portable_config(self, cfg: EncoderConfig) -> EncoderConfig:
        """``cfg`` with what it takes to rebuild this encoder from its weights alone."""
        return cfg

"""CRDNN encoder: CNN blocks -> frame stacking -> bidirectional RNN -> DNN.

Padding never changes a valid output: every convolution sees zeros past an
utterance's end (as it would alone), time pooling ignores padded frames, and the RNN
runs on packed sequences. Each time-changing layer uses ceil(len / factor), so an
utterance is never pooled to zero frames. Output lengths are absolute.

>>> import torch
>>> from earshot.config import CRDNNConfig
>>> cfg = CRDNNConfig(cnn_channels=(4, 8), rnn_units=8, dnn_units=8)
>>> enc = CRDNN(cfg, input_dim=20).eval()
>>> h, h_lens = enc(torch.randn(2, 17, 20), torch.tensor([17, 9]))
>>> h.shape, h_lens.tolist()
(torch.Size([2, 5, 8]), [5, 3])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from earshot.config import CRDNNConfig
from earshot.masks import lengths_to_mask, zero_padding

_RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


def pooled_lengths(lens: torch.Tensor, factor: int) -> torch.Tensor:
    """Lengths after pooling/stacking time by ``factor``: ceil(lens / factor)."""
    return (lens + factor - 1) // factor


class CNNBlock(nn.Module):
    """Two (conv 3x3 -> LayerNorm -> LeakyReLU), then max-pool time and frequency.

    Works on (B, T, F, C); LayerNorm normalises each frame over (frequency, channels)
    jointly, which keeps the spectral envelope (normalising each bin over channels alone
    would discard it) and keeps padded frames out of the statistics (BatchNorm would not).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, time_pool: int, freq_pool: int,
                 dropout: float, freq: int):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2),
             nn.Conv2d(out_ch, out_ch, kernel, padding=kernel // 2)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm([freq, out_ch]), nn.LayerNorm([freq, out_ch])])
        self.act = nn.LeakyReLU()
        self.pool = (time_pool, freq_pool)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, F, C_in) -> (B, ceil(T/tp), ceil(F/fp), C_out), new lengths (B,)."""
        for conv, norm in zip(self.convs, self.norms):
            x = zero_padding(x, lens)
            x = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            x = self.act(norm(x))
        x, lens = self._pool(x, lens)
        return self.dropout(x), lens

    def _pool(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool == (1, 1):
            return x, lens
        # Padded frames get the lowest value so a window straddling the end keeps only
        # valid frames, exactly as ceil-mode pooling of the utterance alone would.
        mask = lengths_to_mask(lens, x.size(1))[:, :, None, None]
        x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
        x = nn.functional.max_pool2d(x.permute(0, 3, 1, 2), self.pool, self.pool, ceil_mode=True)
        lens = pooled_lengths(lens, self.pool[0])
        return zero_padding(x.permute(0, 2, 3, 1), lens), lens


def stack_frames(x: torch.Tensor, lens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate k consecutive frames: (B, T, D) -> (B, ceil(T/k), k*D), zero-padding the end."""
    b, t, d = x.shape
    pad = (-t) % k
    x = nn.functional.pad(zero_padding(x, lens), (0, 0, 0, pad))
    return x.reshape(b, (t + pad) // k, k * d), pooled_lengths(lens, k)


class CRDNN(nn.Module):
    """Conv + recurrent + dense encoder: (feats (B, T, D), lens) -> (h (B, T', H), h_lens)."""

    def __init__(self, cfg: CRDNNConfig, input_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList()
        channels, freq = 1, input_dim
        for out_ch, tp in zip(cfg.cnn_channels, cfg.time_pool):
            self.blocks.append(
                CNNBlock(channels, out_ch, cfg.cnn_kernel, tp, cfg.freq_pool, cfg.dropout, freq))
            channels, freq = out_ch, -(-freq // cfg.freq_pool)
        self.stack = cfg.rnn_time_pool
        self.rnn = _RNNS[cfg.rnn_type](
            channels * freq * self.stack, cfg.rnn_units, num_layers=cfg.rnn_layers,
            batch_first=True, bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.rnn_layers > 1 else 0.0,
        )
        dim = cfg.rnn_units * (2 if cfg.bidirectional else 1)
        layers = []
        for _ in range(cfg.dnn_layers):
            layers += [nn.Linear(dim, cfg.dnn_units), nn.LayerNorm(cfg.dnn_units),
                       nn.LeakyReLU(), nn.Dropout(cfg.dropout)]
            dim = cfg.dnn_units
        self.dnn = nn.Sequential(*layers)
        self.output_dim = dim
        self.time_factors = [*cfg.time_pool, cfg.rnn_time_pool]

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        """Encoder frames for input lengths (B,), without running the network."""
        for factor in self.time_factors:
            lens = pooled_lengths(lens, factor)
        return lens

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, D), lens (B,) -> h (B, T', H) zero past h_lens, h_lens (B,)."""
        x = feats.unsqueeze(-1)  # (B, T, F, C=1)
        for block in self.blocks:
            x, lens = block(x, lens)
        x, lens = stack_frames(x.flatten(2), lens, self.stack)
        x = self._rnn(x, lens)
        return zero_padding(self.dnn(x), lens), lens

    def _rnn(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        # Packing keeps the backward direction from starting in the padding.
        packed = pack_padded_sequence(x, lens.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return out

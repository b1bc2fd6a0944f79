"""CRDNN encoder: CNN blocks -> frame stacking -> bidirectional RNN -> DNN.

Padding never changes a valid output: every convolution sees zeros past an
utterance's end (as it would alone), time pooling ignores padded frames, and the
backward direction of the RNN reads each utterance reversed within its own length.
Each time-changing layer uses ceil(len / factor), so an utterance is never pooled to
zero frames. Output lengths are absolute. A batch without padding (every row as long as
the batch, as one utterance at a time always is) skips the masking, which is then the
identity, and in evaluation runs its RNN as one fused bidirectional call.

>>> import torch
>>> cfg = CRDNNConfig(cnn_channels=(4, 8), rnn_units=8, dnn_units=8)
>>> enc = CRDNN(cfg, input_dim=20).eval()
>>> h, h_lens = enc(torch.randn(2, 17, 20), torch.tensor([17, 9]))
>>> h.shape, h_lens.tolist()
(torch.Size([2, 5, 8]), [5, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from earshot.config import EncoderConfig
from earshot.config.core import MAX_LAYERS, MAX_WIDTH, dotted, require, require_size
from earshot.masks import lengths_to_mask, zero_padding
from earshot.models.dropout import Dropout
from earshot.models.encoders.base import Encoder

_RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


def reversal_index(lens: torch.Tensor, steps: int) -> torch.Tensor:
    """Index into the flattened (B * steps) frames of a padded batch that reverses each
    row within its length and leaves its padding where it is; applying it twice is the
    identity.

    >>> reversal_index(torch.tensor([3, 1]), 4).tolist()
    [2, 1, 0, 3, 4, 5, 6, 7]
    """
    t = torch.arange(steps, device=lens.device).unsqueeze(0)
    back = lens.unsqueeze(1) - 1 - t
    within = torch.where(back >= 0, back, t)
    return (within + torch.arange(lens.numel(), device=lens.device).unsqueeze(1) * steps).reshape(-1)


def reverse_padded(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, D) with each row's valid frames in reverse order (``reversal_index``);
    index_select of the flattened frames is several times faster than a gather on CPU."""
    b, t, d = x.shape
    return x.reshape(b * t, d).index_select(0, index).view(b, t, d)


class PaddedRNN(nn.Module):
    """Stacked (bi)directional LSTM/GRU on a padded batch, exact under padding.

    A recurrence run left to right over a padded row gives its valid frames exactly what
    it would give them alone (the padding comes after them); the backward direction runs
    left to right over each row reversed within its own length. No packing: packed
    sequences take PyTorch's slow per-step CPU path, padded ones its fused oneDNN kernel
    (about 3x faster to train on CPU). Frames past a row's length hold arbitrary values.

    One single-layer, one-direction module per layer and direction, in nn.LSTM's own
    parameter order; ``nn.LSTM(bidirectional=True)`` state dicts (earshot 0.2) load.
    """

    def __init__(self, kind: str, input_dim: int, units: int, layers: int,
                 bidirectional: bool, dropout: float):
        super().__init__()
        directions = 2 if bidirectional else 1
        self.layers = nn.ModuleList(
            nn.ModuleList(_RNNS[kind](input_dim if i == 0 else units * directions, units,
                                      batch_first=True) for _ in range(directions))
            for i in range(layers))
        self.dropout = Dropout(dropout)  # between layers, as nn.LSTM's dropout
        self._register_load_state_dict_pre_hook(self._from_fused_names)

    def forward(self, x: torch.Tensor, lens: torch.Tensor, padded: bool = True) -> torch.Tensor:
        """x (B, T, D), lens (B,) -> (B, T, units * directions). ``padded=False`` promises
        that every row is T frames long."""
        if not padded and not self.training and x.device.type == "cpu":
            return self._fused(x)
        if torch.onnx.is_in_onnx_export():
            return self._packed(x, lens)
        index = reversal_index(lens, x.size(1)) if len(self.layers[0]) == 2 else None
        for i, directions in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            out = [directions[0](x)[0]]
            if index is not None:
                out.append(reverse_padded(directions[1](reverse_padded(x, index))[0], index))
            x = torch.cat(out, dim=-1) if len(out) > 1 else out[0]
        return x

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """The whole stack in one call of PyTorch's multi-layer RNN kernel (what
        nn.LSTM.forward runs), for a batch without padding: the same result as the
        per-layer path, without its per-direction calls and reversals (a quarter of the
        encoder's time for one short utterance on CPU). CPU only: cuDNN wants one
        contiguous weight buffer, which these per-layer modules do not share."""
        kernel, hx, weights, bidirectional = self._stack(x)
        return kernel(x, hx, weights, True, len(self.layers), 0.0, False, bidirectional,
                      True)[0]

    def _packed(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """The whole stack in one call on the packed batch, for ONNX export (evaluation
        only): the exporter makes it RNN nodes that take each row's length (the backward
        direction within it), where the padded path's reversals export as index
        arithmetic, about a hundred small nodes for the peer CRDNN. Padding comes out 0."""
        packed = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True,
                                                   enforce_sorted=False)
        kernel, hx, weights, bidirectional = self._stack(x)
        out = kernel(packed.data, packed.batch_sizes, hx, weights, True, len(self.layers), 0.0,
                     False, bidirectional)[0]
        out = nn.utils.rnn.PackedSequence(out, packed.batch_sizes, packed.sorted_indices,
                                          packed.unsorted_indices)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))[0]

    def _stack(self, x: torch.Tensor):
        """(kernel, initial state, weights, bidirectional) of PyTorch's multi-layer RNN
        kernel for this stack and a batch like x."""
        first = self.layers[0][0]
        directions, units = len(self.layers[0]), first.hidden_size
        weights = [w for layer in self.layers for rnn in layer for w in rnn._flat_weights]
        h0 = x.new_zeros(len(self.layers) * directions, x.size(0), units)
        if isinstance(first, nn.LSTM):
            return torch._VF.lstm, (h0, h0), weights, directions == 2
        return torch._VF.gru, h0, weights, directions == 2

    def _from_fused_names(self, state_dict, prefix, *args):
        # nn.LSTM names: weight_ih_l{layer}[_reverse] -> layers.{layer}.{0|1}.weight_ih_l0
        for name in [n for n in state_dict if n.startswith(prefix)]:
            rest = name[len(prefix):]
            kind, _, where = rest.rpartition("_l")
            if not kind or rest.startswith("layers."):
                continue
            layer, reverse = where.removesuffix("_reverse"), where.endswith("_reverse")
            if layer.isdigit():
                new = f"{prefix}layers.{layer}.{int(reverse)}.{kind}_l0"
                state_dict[new] = state_dict.pop(name)


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
        self.pool = (time_pool, freq_pool)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, lens: torch.Tensor, padded: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, F, C_in) -> (B, ceil(T/tp), ceil(F/fp), C_out) zero past the new
        lengths (B,). ``padded=False`` promises that every row is T frames long."""
        # A multiply by a float mask: five times cheaper on CPU than masked_fill with a
        # broadcast bool mask (the inputs are finite, so the two agree).
        keep = lengths_to_mask(lens, x.size(1))[:, :, None, None].to(x.dtype) if padded else None
        for conv, norm in zip(self.convs, self.norms):
            x = conv((x if keep is None else x * keep).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            x = nn.functional.leaky_relu(norm(x), inplace=True)
        x, lens = self._pool(x, lens, keep)
        return self.dropout(x), lens

    def _pool(self, x: torch.Tensor, lens: torch.Tensor, keep: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ceil-mode max pooling, and the padding zeroed again; ``keep`` None: no padding."""
        if keep is not None and self.pool[0] > 1:
            # Padded frames get the lowest value so a window straddling the end keeps only
            # valid frames, exactly as ceil-mode pooling of the utterance alone would.
            x = x.masked_fill(keep == 0, torch.finfo(x.dtype).min)
            keep = lengths_to_mask(pooled_lengths(lens, self.pool[0]),
                                   (x.size(1) + self.pool[0] - 1) // self.pool[0])[:, :, None, None].to(x.dtype)
        if self.pool != (1, 1):
            x = nn.functional.max_pool2d(x.permute(0, 3, 1, 2), self.pool, self.pool,
                                         ceil_mode=True).permute(0, 2, 3, 1)
        return (x if keep is None else x * keep), pooled_lengths(lens, self.pool[0])


def stack_frames(x: torch.Tensor, lens: torch.Tensor, k: int, padded: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate k consecutive frames: (B, T, D) -> (B, ceil(T/k), k*D), zero-padding the end."""
    b, t, d = x.shape
    pad = (k - t % k) % k  # (an exported graph keeps this arithmetic on its sizes)
    x = nn.functional.pad(zero_padding(x, lens) if padded else x, (0, 0, 0, pad))
    return x.reshape(b, (t + pad) // k, k * d), pooled_lengths(lens, k)


@dataclass(frozen=True)
class CRDNNConfig(EncoderConfig):
    """``model.encoder`` with ``type: crdnn``: conv + recurrent + dense."""

    type: Literal["crdnn"] = "crdnn"
    cnn_channels: tuple[int, ...] = (64, 128)  # one CNN block per entry
    cnn_kernel: int = 3
    freq_pool: int = 2  # frequency pooling after each CNN block
    time_pool: tuple[int, ...] = (1, 2)  # time subsampling after each CNN block
    rnn_type: Literal["lstm", "gru"] = "lstm"
    rnn_layers: int = 2
    rnn_units: int = 256  # per direction
    bidirectional: bool = True
    rnn_time_pool: int = 2  # extra time subsampling (frame stacking) before the RNN
    dnn_layers: int = 1
    dnn_units: int = 256
    dropout: float = 0.15

    def check(self, key: str) -> None:
        def at(name: str) -> str:
            return dotted(key, name)

        require(1 <= len(self.cnn_channels) <= 16 and min(self.cnn_channels) >= 1
                and max(self.cnn_channels) <= 4096, at("cnn_channels"),
                "needs 1-16 blocks, each with 1-4096 channels")
        require(len(self.time_pool) == len(self.cnn_channels), at("time_pool"),
                f"needs one entry per {at('cnn_channels')} entry")
        require(min(self.time_pool, default=1) >= 1 and self.freq_pool >= 1 and self.rnn_time_pool >= 1,
                at("time_pool"), "pooling factors (time_pool, freq_pool, rnn_time_pool) must be >= 1")
        time = math.prod(self.time_pool) * self.rnn_time_pool
        require(time <= 32, at("time_pool"),
                f"subsamples time by {time} in all (time_pool x rnn_time_pool); at most 32, or "
                f"most utterances would be too short for CTC to align their tokens")
        require(self.freq_pool <= 16, at("freq_pool"), "must be at most 16")
        require(self.cnn_kernel >= 1 and self.cnn_kernel % 2 == 1 and self.cnn_kernel <= 31,
                at("cnn_kernel"), "must be odd, in [1, 31]")
        require_size(self.rnn_layers, at("rnn_layers"), MAX_LAYERS)
        require_size(self.rnn_units, at("rnn_units"), MAX_WIDTH)
        require_size(self.dnn_layers, at("dnn_layers"), MAX_LAYERS, least=0)
        require_size(self.dnn_units, at("dnn_units"), MAX_WIDTH)
        require(0.0 <= self.dropout < 1.0, at("dropout"), "must be in [0, 1)")


class CRDNN(Encoder):
    """Conv + recurrent + dense encoder: (feats (B, T, D), lens) -> (h (B, T', H), h_lens)."""

    Config = CRDNNConfig

    def __init__(self, cfg: CRDNNConfig, input_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList()
        channels, freq = 1, input_dim
        for out_ch, tp in zip(cfg.cnn_channels, cfg.time_pool):
            self.blocks.append(
                CNNBlock(channels, out_ch, cfg.cnn_kernel, tp, cfg.freq_pool, cfg.dropout, freq))
            channels, freq = out_ch, -(-freq // cfg.freq_pool)
        self.stack = cfg.rnn_time_pool
        self.rnn = PaddedRNN(cfg.rnn_type, channels * freq * self.stack, cfg.rnn_units,
                             cfg.rnn_layers, cfg.bidirectional, cfg.dropout)
        dim = cfg.rnn_units * (2 if cfg.bidirectional else 1)
        layers = []
        for _ in range(cfg.dnn_layers):
            layers += [nn.Linear(dim, cfg.dnn_units), nn.LayerNorm(cfg.dnn_units),
                       nn.LeakyReLU(), Dropout(cfg.dropout)]
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
        # False: every row is full length (an exported graph always takes the padded path)
        padded = torch.onnx.is_in_onnx_export() or bool((lens < feats.size(1)).any())
        x = feats.unsqueeze(-1)  # (B, T, F, C=1)
        for block in self.blocks:
            x, lens = block(x, lens, padded)
        x, lens = stack_frames(x.flatten(2), lens, self.stack, padded)
        x = self.dnn(self.rnn(x, lens, padded))
        return (zero_padding(x, lens) if padded else x), lens

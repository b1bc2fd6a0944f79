"""Conformer encoder (Gulati et al., 2020): convolutional subsampling, then blocks of
half feed-forward -> self-attention -> convolution module -> half feed-forward.

Padding never changes a valid output: the subsampling convolutions and the depthwise
convolution see zeros past an utterance's end (as they would alone), self-attention
never attends to padded frames, and positions are relative (rotary, or Transformer-XL
style relative encodings), so a frame's output depends on its distance to other
frames, not on the batch it came in. Normalisation is LayerNorm everywhere (BatchNorm
in the convolution module would mix padded frames into its statistics). Output lengths
are exact: each stride-s subsampling convolution maps L frames to ceil(L / s).

>>> import torch
>>> enc = Conformer(ConformerConfig(dim=16, layers=2, heads=2, ffn_dim=32), input_dim=20).eval()
>>> h, h_lens = enc(torch.randn(2, 17, 20), torch.tensor([17, 9]))
>>> h.shape, h_lens.tolist()
(torch.Size([2, 5, 16]), [5, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from earshot.config import EncoderConfig
from earshot.config.core import MAX_LAYERS, MAX_WIDTH, dotted, require, require_size
from earshot.masks import lengths_to_mask, zero_padding
from earshot.models.dropout import Dropout
from earshot.models.encoders.base import Encoder



@dataclass(frozen=True)
class ConformerConfig(EncoderConfig):
    """``model.encoder`` with ``type: conformer`` (Gulati et al., 2020)."""

    type: Literal["conformer"] = "conformer"
    subsampling: Literal[4, 6, 8] = 4  # convolutional subsampling factor in time
    subsampling_channels: int = 64  # channels of the subsampling convolutions
    dim: int = 144  # model width
    layers: int = 8
    heads: int = 4
    ffn_dim: int = 576  # each macaron feed-forward half: dim -> ffn_dim -> dim
    conv_kernel: int = 15  # depthwise convolution kernel; odd
    positional: Literal["rotary", "relative"] = "rotary"
    dropout: float = 0.1  # on every residual branch and the subsampling output
    attention_dropout: float = 0.0  # on the attention weights
    stochastic_depth: float = 0.0  # layer drop probability, rising linearly to this at the top

    def tappable_blocks(self) -> int:
        return self.layers

    def check(self, key: str) -> None:
        def at(name: str) -> str:
            return dotted(key, name)

        require(self.dim >= 1 and self.heads >= 1 and self.dim % self.heads == 0, at("dim"),
                f"must be a positive multiple of {at('heads')}")
        require(self.positional != "rotary" or (self.dim // max(self.heads, 1)) % 2 == 0, at("dim"),
                "rotary positions need an even width per head (dim / heads)")
        require(self.dim <= MAX_WIDTH and self.heads <= 256, at("dim"),
                f"must be at most {MAX_WIDTH} (and heads at most 256)")
        require_size(self.layers, at("layers"), MAX_LAYERS)
        require_size(self.ffn_dim, at("ffn_dim"), 4 * MAX_WIDTH)
        require_size(self.subsampling_channels, at("subsampling_channels"), 4096)
        require(self.conv_kernel >= 1 and self.conv_kernel % 2 == 1 and self.conv_kernel <= 255,
                at("conv_kernel"), "must be odd, in [1, 255]")
        for name in ("dropout", "attention_dropout", "stochastic_depth"):
            require(0.0 <= getattr(self, name) < 1.0, at(name), "must be in [0, 1)")


# Time strides of the subsampling convolutions for each overall factor.
SUBSAMPLING_STRIDES = {4: (2, 2), 6: (2, 3), 8: (2, 2, 2)}


def strided_lengths(lens: torch.Tensor, stride: int) -> torch.Tensor:
    """Frames out of a kernel-3, padding-1 convolution of stride ``stride``: ceil(L / s)."""
    return (lens + stride - 1) // stride


class ConvSubsampling(nn.Module):
    """Conv2d (3x3, stride s in time and 2 in frequency) + ReLU per stride, then a linear
    map of (channels x frequency) to the model width: (B, T, D) -> (B, ceil(T / factor), dim)."""

    def __init__(self, input_dim: int, channels: int, dim: int, factor: int, dropout: float):
        super().__init__()
        self.strides = SUBSAMPLING_STRIDES[factor]
        convs, in_ch, freq = [], 1, input_dim
        for stride in self.strides:
            convs.append(nn.Conv2d(in_ch, channels, 3, stride=(stride, 2), padding=1))
            in_ch, freq = channels, (freq + 1) // 2
        self.convs = nn.ModuleList(convs)
        self.out = nn.Linear(channels * freq, dim)
        self.dropout = Dropout(dropout)

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        for stride in self.strides:
            lens = strided_lengths(lens, stride)
        return lens

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.unsqueeze(1)  # (B, C=1, T, F)
        for conv, stride in zip(self.convs, self.strides):
            # Zeros past the end, as the utterance alone would be padded by the convolution:
            # a multiply by a float mask (the inputs are finite), which a graph runtime
            # broadcasts far faster than a select with a broadcast bool mask.
            x = F.relu(conv(x * lengths_to_mask(lens, x.size(2))[:, None, :, None].to(x.dtype)))
            lens = strided_lengths(lens, stride)
        b, c, t, f = x.shape
        x = self.out(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return self.dropout(x), lens


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> SiLU -> dropout -> Linear (one macaron half)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(),
                                 Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (B, H, T, dk) with cos/sin tables (T, dk / 2)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(P,) float positions -> (P, dim) [sin | cos] encodings with wavelengths up to 10^4."""
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, device=positions.device,
                                                     dtype=torch.float32) / dim)
    angles = positions.float().unsqueeze(1) * inv
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with relative positions; padded keys get no weight.

    ``rotary``: queries and keys are rotated by their position (Su et al., 2021), so
    q_i . k_j depends on i - j only. ``relative``: Transformer-XL's decomposition (Dai et
    al., 2019), as the Conformer paper uses: content and position terms with learned
    biases u and v, a sinusoidal encoding of every distance i - j.
    """

    def __init__(self, dim: int, heads: int, positional: str, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.positional = positional
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout
        if positional == "relative":
            self.pos_proj = nn.Linear(dim, dim, bias=False)
            self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.head_dim))
            self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.head_dim))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim), key_mask (B, T) True on valid frames -> (B, T, dim)."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = key_mask[:, None, None, :]  # (B, 1, 1, T)
        if self.positional == "rotary":
            angles = sinusoids(torch.arange(t, device=x.device), self.head_dim)
            sin, cos = angles.to(q.dtype).chunk(2, dim=1)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        else:
            bias = self._position_scores(q, t) / math.sqrt(self.head_dim)
            mask = bias.masked_fill(~mask, float("-inf"))
            q = q + self.pos_bias_u.unsqueeze(1).to(q.dtype)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))

    def _position_scores(self, q: torch.Tensor, t: int) -> torch.Tensor:
        """(q_i + v) . W p(i - j) for every query i and key j: (B, H, T, T)."""
        distances = torch.arange(t - 1, -t, -1, device=q.device)  # T-1 .. -(T-1)
        p = self.pos_proj(sinusoids(distances, self.heads * self.head_dim).to(q.dtype))
        p = p.view(2 * t - 1, self.heads, self.head_dim).transpose(0, 1)  # (H, 2T-1, dk)
        scores = (q + self.pos_bias_v.unsqueeze(1).to(q.dtype)) @ p.transpose(1, 2).unsqueeze(0)
        i = torch.arange(t, device=q.device)
        column = (t - 1) - i.unsqueeze(1) + i.unsqueeze(0)  # distance i - j lives at T-1-(i-j)
        return scores.gather(-1, column.expand(*scores.shape[:2], t, t))


class ConvModule(nn.Module):
    """LayerNorm -> pointwise conv + GLU -> depthwise conv -> LayerNorm -> SiLU -> pointwise."""

    def __init__(self, dim: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.depthwise_norm = nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        x = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        x = zero_padding(x, lens)  # the convolution must see zeros past the end
        x = self.depthwise(x.transpose(1, 2)).transpose(1, 2)
        x = F.silu(self.depthwise_norm(x))
        return self.dropout(self.pointwise_out(x))


class ConformerBlock(nn.Module):
    """x + FF/2, + MHSA, + Conv, + FF/2, then LayerNorm; dropped whole with ``drop_prob``
    in training (stochastic depth), its branches scaled by 1 / (1 - drop_prob) when kept."""

    def __init__(self, cfg: ConformerConfig, drop_prob: float):
        super().__init__()
        self.ff1 = FeedForward(cfg.dim, cfg.ffn_dim, cfg.dropout)
        self.attn_norm = nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.positional, cfg.attention_dropout)
        self.conv = ConvModule(cfg.dim, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(cfg.dim, cfg.ffn_dim, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = Dropout(cfg.dropout)
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor, lens: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        scale = 1.0
        if self.training and self.drop_prob > 0:
            if torch.rand(()) < self.drop_prob:
                return x
            scale = 1.0 / (1.0 - self.drop_prob)
        x = x + 0.5 * scale * self.dropout(self.ff1(x))
        x = x + scale * self.dropout(self.attn(self.attn_norm(x), key_mask))
        x = x + scale * self.conv(x, lens)
        x = x + 0.5 * scale * self.dropout(self.ff2(x))
        return self.norm(x)


class Conformer(Encoder):
    """Conformer encoder: (feats (B, T, D), lens) -> (h (B, T', dim) zero past h_lens, h_lens)."""

    Config = ConformerConfig

    def __init__(self, cfg: ConformerConfig, input_dim: int):
        super().__init__()
        self.subsampling = ConvSubsampling(input_dim, cfg.subsampling_channels, cfg.dim,
                                           cfg.subsampling, cfg.dropout)
        self.blocks = nn.ModuleList(
            ConformerBlock(cfg, cfg.stochastic_depth * (i + 1) / cfg.layers)
            for i in range(cfg.layers))
        self.output_dim = cfg.dim

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        """Encoder frames for input lengths (B,), without running the network."""
        return self.subsampling.output_lengths(lens)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, lens, _ = self.forward_with_taps(feats, lens, ())
        return h, lens

    def forward_with_taps(self, feats: torch.Tensor, lens: torch.Tensor, taps: tuple[int, ...]
                          ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``forward``, plus the outputs of blocks ``taps`` (1-based; each (B, T', dim),
        its padded frames not zeroed): what intermediate CTC trains the CTC head on."""
        x, lens = self.subsampling(feats, lens)
        # A row with no frame would attend to nothing (NaN); it gets one masked-in frame
        # of zeros instead, and its output is zeroed like every padded frame.
        key_mask = lengths_to_mask(lens.clamp(min=1), x.size(1))
        tapped = []
        for i, block in enumerate(self.blocks, start=1):
            x = block(x, lens, key_mask)
            if i in taps:
                tapped.append(x)
        return zero_padding(x, lens), lens, tapped

"""Additive attention for the RNN decoder: content-based, location-aware, and
multi-head location-aware.

All kinds share one interface, and their only state (the previous attention
weights) is passed in and returned, so a beam search can reorder it like any tensor.
``alignment(state)`` gives the (N, T') weights over frames that scorers and plots read.

>>> import torch
>>> from earshot.config import AttentionConfig
>>> att = LocationAwareAttention(AttentionConfig(dim=8), enc_dim=6, query_dim=5)
>>> enc, lens = torch.randn(2, 7, 6), torch.tensor([7, 4])
>>> weights = att.init_state(enc, lens)
>>> context, weights = att(torch.randn(2, 5), enc, att.precompute(enc), lengths_to_mask(lens, 7), weights)
>>> context.shape, weights.shape, bool(weights[1, 4:].eq(0).all())
(torch.Size([2, 6]), torch.Size([2, 7]), True)
"""

from __future__ import annotations

import torch
from torch import nn

from earshot.config import AttentionConfig
from earshot.masks import lengths_to_mask


def masked_softmax(energies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis that gives exactly zero weight to padded frames."""
    energies = energies.masked_fill(~mask, float("-inf"))
    return torch.softmax(energies, dim=-1)


class ContentAttention(nn.Module):
    """Bahdanau attention: e_t = v . tanh(W_k h_t + W_q q)."""

    def __init__(self, cfg: AttentionConfig, enc_dim: int, query_dim: int):
        super().__init__()
        self.scaling = cfg.scaling
        self.key_proj = nn.Linear(enc_dim, cfg.dim)
        self.query_proj = nn.Linear(query_dim, cfg.dim, bias=False)
        self.energy = nn.Linear(cfg.dim, 1, bias=False)

    def precompute(self, enc: torch.Tensor) -> torch.Tensor:
        """Project the encoder output once per utterance: (N, T', H) -> keys (N, T', A)."""
        return self.key_proj(enc)

    def init_state(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> torch.Tensor:
        """Initial weights (N, T'): uniform over the valid frames of each row."""
        mask = lengths_to_mask(enc_lens, enc.size(1)).to(enc.dtype)
        return mask / enc_lens.clamp(min=1).unsqueeze(1).to(enc.dtype)

    def forward(
        self,
        query: torch.Tensor,
        enc: torch.Tensor,
        keys: torch.Tensor,
        enc_mask: torch.Tensor,
        prev_weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend with query (N, Q) over enc (N, T', H) -> (context (N, H), weights (N, T'))."""
        # (N, T', A) is the largest tensor of a decoding step: add and squash it in place.
        hidden = keys + self.query_proj(query).unsqueeze(1)
        location = self._location(prev_weights)
        if location is not None:
            hidden += location
        energies = torch.tanh_(hidden) @ self.energy.weight.squeeze(0)
        if self.scaling != 1.0:
            energies = energies * self.scaling
        weights = masked_softmax(energies, enc_mask)
        context = torch.bmm(weights.unsqueeze(1), enc).squeeze(1)
        return context, weights

    def _location(self, prev_weights: torch.Tensor) -> torch.Tensor | None:
        """Extra energy term from the previous alignment; none for pure content attention."""
        return None

    @staticmethod
    def alignment(weights: torch.Tensor) -> torch.Tensor:
        """The state as weights over frames (N, T')."""
        return weights


class LocationAwareAttention(ContentAttention):
    """Chorowski et al. (2015): adds conv1d features of the previous weights to the energy.

    The previous weights are zero on padded frames, and the convolution pads with
    zeros, so a row's energies do not depend on how much padding its batch adds.
    """

    def __init__(self, cfg: AttentionConfig, enc_dim: int, query_dim: int):
        super().__init__(cfg, enc_dim, query_dim)
        kernel = cfg.location_kernel
        self.conv = nn.Conv1d(1, cfg.location_channels, kernel, padding=kernel // 2, bias=False)
        self.location_proj = nn.Linear(cfg.location_channels, cfg.dim, bias=False)

    def _location(self, prev_weights: torch.Tensor) -> torch.Tensor:
        feats = reachable_conv(self.conv, prev_weights.unsqueeze(1)).transpose(1, 2)  # (N, T', C)
        return self.location_proj(feats)


def reachable_conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a centred, zero-padded, odd-kernel conv1d, with the kernel cut to
    the taps that can reach a frame of x (T frames reach at most T - 1 either side): the
    same result, and a 201-tap location kernel over 25 frames costs a quarter."""
    half, frames = conv.kernel_size[0] // 2, x.size(-1)
    weight, padding = conv.weight, half
    if frames <= half and not torch.onnx.is_in_onnx_export():  # a graph keeps every tap
        weight, padding = weight[:, :, half - (frames - 1): half + frames], frames - 1
    if _im2col_kernel_applies(x, weight, conv.groups):
        k = weight.shape[-1]
        return torch._C._nn.thnn_conv2d(x.unsqueeze(2), weight.unsqueeze(2), (1, k), conv.bias,
                                        (1, 1), (0, padding)).squeeze(2)
    return nn.functional.conv1d(x, weight, conv.bias, padding=padding, groups=conv.groups)


def _im2col_kernel_applies(x: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether a training step takes ATen's own im2col + matrix-product convolution
    instead of oneDNN's. At the location convolution's training shapes (one input
    channel, ten outputs, a few dozen frames, a batch of rows) it is 2-2.5x faster
    forward + backward on CPU (8 rows x 23 frames, 45 taps: 317 -> 144 us). Only where
    gradients are recorded: at decoding shapes it is not faster (one row: slower), and
    decoding keeps oneDNN's numbers, so transcripts do not move. One group only, CPU, one
    dtype (not under autocast, which would not cast its inputs)."""
    return (torch.is_grad_enabled() and groups == 1 and x.device.type == "cpu"
            and x.dtype == weight.dtype and not torch.is_autocast_enabled("cpu"))


class MultiHeadLocationAttention(nn.Module):
    """Several location-aware heads side by side (as ESPnet's multi-head location
    attention): each head has its own key, value and query projections, its own
    convolution over its own previous weights, and its own energy vector. The heads'
    contexts are concatenated and projected back to the encoder width.

    State: the previous weights of every head, (N, heads, T').
    """

    def __init__(self, cfg: AttentionConfig, enc_dim: int, query_dim: int):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.scaling = cfg.scaling
        self.key_proj = nn.Linear(enc_dim, cfg.dim)
        self.value_proj = nn.Linear(enc_dim, cfg.dim)
        self.query_proj = nn.Linear(query_dim, cfg.dim, bias=False)
        kernel, channels = cfg.location_kernel, cfg.location_channels
        self.conv = nn.Conv1d(self.heads, self.heads * channels, kernel, padding=kernel // 2,
                              groups=self.heads, bias=False)
        self.location_proj = nn.Parameter(torch.empty(self.heads, channels, self.head_dim))
        self.energy = nn.Parameter(torch.empty(self.heads, self.head_dim))
        self.out_proj = nn.Linear(cfg.dim, enc_dim)
        bound = channels ** -0.5
        nn.init.uniform_(self.location_proj, -bound, bound)
        nn.init.uniform_(self.energy, -self.head_dim ** -0.5, self.head_dim ** -0.5)

    def precompute(self, enc: torch.Tensor) -> torch.Tensor:
        """Keys and values of every head, once per utterance: (N, T', 2, heads, head_dim)."""
        n, t, _ = enc.shape
        keys = self.key_proj(enc).view(n, t, self.heads, self.head_dim)
        values = self.value_proj(enc).view(n, t, self.heads, self.head_dim)
        return torch.stack([keys, values], dim=2)

    def init_state(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> torch.Tensor:
        """Initial weights (N, heads, T'): uniform over the valid frames, every head."""
        mask = lengths_to_mask(enc_lens, enc.size(1)).to(enc.dtype)
        uniform = mask / enc_lens.clamp(min=1).unsqueeze(1).to(enc.dtype)
        return uniform.unsqueeze(1).expand(-1, self.heads, -1).contiguous()

    def forward(self, query: torch.Tensor, enc: torch.Tensor, keys: torch.Tensor,
                enc_mask: torch.Tensor, prev_weights: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (N, Q), keys (N, T', 2, heads, dh), prev (N, heads, T') ->
        (context (N, H_enc), weights (N, heads, T'))."""
        n, t = prev_weights.shape[0], prev_weights.shape[2]
        location = reachable_conv(self.conv, prev_weights).view(n, self.heads, -1, t)  # (N, heads, C, T')
        hidden = keys[:, :, 0] + torch.einsum("nhct,hcd->nthd", location, self.location_proj)
        hidden += self.query_proj(query).view(n, 1, self.heads, self.head_dim)
        energies = torch.einsum("nthd,hd->nht", torch.tanh_(hidden), self.energy) * self.scaling
        weights = masked_softmax(energies, enc_mask.unsqueeze(1))
        context = torch.einsum("nht,nthd->nhd", weights, keys[:, :, 1]).reshape(n, -1)
        return self.out_proj(context), weights

    @staticmethod
    def alignment(weights: torch.Tensor) -> torch.Tensor:
        """The heads' mean weights over frames (N, T')."""
        return weights.mean(dim=1)

"""Kaldi-compatible log-mel filterbank and MFCC features in torch, plus global CMVN.

Features are computed inside the model, on the device of the waveforms, for a whole
padded batch at once. The numbers match Kaldi (``compute-fbank-feats`` /
``compute-mfcc-feats``, and kaldi-native-fbank) with dither 0: snip_edges framing,
per-frame DC removal, pre-emphasis 0.97, povey window, FFT padded to a power of two,
power spectrum, Kaldi's mel banks and a log floored at float epsilon.

>>> from earshot.config import FeatureConfig
>>> fx = FeatureExtractor(FeatureConfig(num_mel_bins=40))
>>> feats, lens = fx(torch.zeros(2, 16000), torch.tensor([16000, 8000]))
>>> feats.shape, lens.tolist()
(torch.Size([2, 98, 40]), [98, 48])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from earshot.config import FeatureConfig
from earshot.errors import ConfigError
from earshot.masks import lengths_to_mask

INT16_SCALE = 32768.0  # Kaldi analyses int16 sample values, not [-1, 1] floats
PREEMPHASIS = 0.97
POVEY_POWER = 0.85
CEPSTRAL_LIFTER = 22.0
DELTA_WINDOW = 2
LOG_FLOOR = torch.finfo(torch.float32).eps


# ---------------------------------------------------------------------------
# fixed matrices (built once, kept as buffers)


def povey_window(length: int) -> torch.Tensor:
    """Kaldi's "povey" window (L,): a Hann window raised to the power 0.85."""
    n = torch.arange(length, dtype=torch.float64)
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * n / (length - 1))
    return hann.pow(POVEY_POWER).float()


def mel_scale(freq: torch.Tensor | float) -> torch.Tensor:
    """Hz -> mel as Kaldi defines it: 1127 ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def mel_banks(num_bins: int, fft_size: int, sample_rate: int,
              low_freq: float, high_freq: float) -> torch.Tensor:
    """Triangular mel filters (fft_size // 2 + 1, num_bins), triangles in the mel domain.

    As in Kaldi, the Nyquist bin gets no weight and ``high_freq <= 0`` is an offset
    from the Nyquist frequency.
    """
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * torch.arange(num_bins, dtype=torch.float64)
    center, right = left + delta, left + 2 * delta
    freqs = torch.arange(fft_size // 2, dtype=torch.float64) * (sample_rate / fft_size)
    mel = mel_scale(freqs).unsqueeze(1)  # (F, 1)
    rising = (mel - left) / (center - left)
    falling = (right - mel) / (right - center)
    weights = torch.where(mel <= center, rising, falling)
    weights = torch.where((mel > left) & (mel < right), weights, torch.zeros(()))
    nyquist_row = torch.zeros(1, num_bins, dtype=torch.float64)
    return torch.cat([weights, nyquist_row]).float()


def dct_matrix(num_bins: int, num_ceps: int) -> torch.Tensor:
    """Orthonormal DCT-II (num_bins, num_ceps) with Kaldi's cepstral liftering folded in."""
    n = torch.arange(num_bins, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(num_ceps, dtype=torch.float64).unsqueeze(0)
    dct = torch.cos(math.pi / num_bins * (n + 0.5) * k) * math.sqrt(2.0 / num_bins)
    dct[:, 0] = math.sqrt(1.0 / num_bins)
    lifter = 1.0 + 0.5 * CEPSTRAL_LIFTER * torch.sin(math.pi * k / CEPSTRAL_LIFTER)
    return (dct * lifter).float()


def delta_kernels(order: int = 2, window: int = DELTA_WINDOW) -> list[torch.Tensor]:
    """Kaldi's delta filters: entry i is the (2 * i * window + 1,) kernel of order i."""
    kernels = [torch.ones(1, dtype=torch.float64)]
    taps = torch.arange(-window, window + 1, dtype=torch.float64)
    norm = float((taps ** 2).sum())
    for _ in range(order):
        prev = kernels[-1]
        cur = torch.zeros(prev.numel() + 2 * window, dtype=torch.float64)
        for j, tap in enumerate(taps.tolist()):
            cur[j: j + prev.numel()] += tap * prev
        kernels.append(cur / norm)
    return [k.float() for k in kernels]


# ---------------------------------------------------------------------------
# per-frame processing


def frame_signal(wavs: torch.Tensor, length: int, shift: int) -> torch.Tensor:
    """(B, S) -> (B, T, L) frames with snip_edges=True (no frame runs past the end)."""
    if torch.onnx.is_in_onnx_export():
        return _frames_by_hops(wavs, length, shift)
    if wavs.shape[1] < length:
        return wavs.new_zeros(wavs.shape[0], 0, length)
    return wavs.unfold(1, length, shift)


def _frames_by_hops(wavs: torch.Tensor, length: int, shift: int) -> torch.Tensor:
    """``frame_signal`` as slices and one concatenation, which the ONNX exporter sizes at
    run time (``unfold`` it cannot): the signal cut into hops of ``shift`` samples, frame
    t = hops t, t+1, ... side by side, the last cut to ``length``."""
    b, s = wavs.shape
    frames = torch.div(s - length, shift, rounding_mode="floor") + 1
    pieces = -(-length // shift)
    hops = frames + pieces - 1
    # zeros past the end fill the last hop; only samples inside the last frame are kept
    padded = torch.nn.functional.pad(wavs, (0, pieces * shift))[:, : hops * shift]
    hops = padded.reshape(b, -1, shift)
    parts = [hops[:, i: i + frames] for i in range(pieces)]
    parts[-1] = parts[-1][..., : length - (pieces - 1) * shift]
    return torch.cat(parts, dim=2)


def add_deltas(feats: torch.Tensor, lens: torch.Tensor, kernels: list[torch.Tensor]) -> torch.Tensor:
    """(B, T, D) -> (B, T, D * len(kernels)); edges repeat each utterance's own end frames."""
    batch, frames, _ = feats.shape
    last = (lens - 1).clamp(min=0).unsqueeze(1)  # (B, 1)
    steps = torch.arange(frames, device=feats.device).unsqueeze(0)
    outputs = []
    for kernel in kernels:
        half = (kernel.numel() - 1) // 2
        out = torch.zeros_like(feats)
        for j, weight in enumerate(kernel.tolist()):
            if weight == 0.0:
                continue
            index = torch.minimum((steps + j - half).clamp(min=0), last)  # (B, T)
            out = out + weight * feats.gather(1, index.unsqueeze(2).expand_as(feats))
        outputs.append(out)
    return torch.cat(outputs, dim=2)


class FeatureExtractor(nn.Module):
    """Waveforms (B, S) in [-1, 1] -> Kaldi fbank or MFCC features (B, T, D).

    Frames past an utterance's own length are zero. Dither (``cfg.dither``, in int16
    units as in Kaldi) is only added in training mode, so evaluation is deterministic.
    """

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        _check_settings(cfg)
        self.cfg = cfg
        self.frame_length = int(cfg.sample_rate * 0.001 * cfg.frame_length_ms)
        self.frame_shift = int(cfg.sample_rate * 0.001 * cfg.frame_shift_ms)
        self.fft_size = 1 << (self.frame_length - 1).bit_length()
        base_dim = cfg.num_ceps if cfg.kind == "mfcc" else cfg.num_mel_bins
        self.out_dim = base_dim * (3 if cfg.deltas else 1)
        self.register_buffer("window", povey_window(self.frame_length), persistent=False)
        banks = mel_banks(cfg.num_mel_bins, self.fft_size, cfg.sample_rate, cfg.low_freq, cfg.high_freq)
        self.register_buffer("mel", banks, persistent=False)
        self.register_buffer("dct", dct_matrix(cfg.num_mel_bins, cfg.num_ceps), persistent=False)
        self.delta_kernels = delta_kernels() if cfg.deltas else []

    def num_frames(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        """Frames Kaldi produces (snip_edges=True) for ``num_samples`` samples."""
        if isinstance(num_samples, torch.Tensor):
            frames = torch.div(num_samples - self.frame_length, self.frame_shift, rounding_mode="floor") + 1
            return frames.clamp(min=0).long()
        if num_samples < self.frame_length:
            return 0
        return (num_samples - self.frame_length) // self.frame_shift + 1

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs (B, S) float, wav_lens (B,) long -> feats (B, T, D) float32, feat_lens (B,)."""
        feat_lens = self.num_frames(wav_lens.to(wavs.device))
        # Features are float32 maths whatever the surrounding autocast says.
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            frames = frame_signal(wavs.float() * INT16_SCALE, self.frame_length, self.frame_shift)
            if frames.shape[1] == 0:  # every utterance shorter than one frame (MKL rejects empty FFTs)
                return wavs.new_zeros(wavs.shape[0], 0, self.out_dim, dtype=torch.float32), feat_lens
            log_mel, log_energy = self._log_mel(frames)
            feats = log_mel if self.cfg.kind == "fbank" else self._cepstra(log_mel, log_energy)
            if self.delta_kernels:
                feats = add_deltas(feats, feat_lens, self.delta_kernels)  # CPU weights: read as floats
            mask = lengths_to_mask(feat_lens, feats.shape[1]).unsqueeze(2)
            feats = feats.masked_fill(~mask, 0.0)
            if self.cfg.utterance_cmn:
                feats = utterance_mean_norm(feats, feat_lens, mask)
            return feats, feat_lens

    def _log_mel(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, L) frames -> log mel energies (B, T, M) and raw log energy (B, T)."""
        if self.training and self.cfg.dither > 0:
            frames = frames + self.cfg.dither * torch.randn_like(frames)
        frames = frames - frames.mean(dim=2, keepdim=True)
        # Kaldi's raw energy: after DC removal, before pre-emphasis and windowing.
        log_energy = frames.pow(2).sum(dim=2).clamp(min=LOG_FLOOR).log()
        first = frames[..., :1] * (1.0 - PREEMPHASIS)
        frames = torch.cat([first, frames[..., 1:] - PREEMPHASIS * frames[..., :-1]], dim=2)
        power = _power_spectrum(frames * self.window, self.fft_size, self.frame_length)
        return (power @ self.mel).clamp(min=LOG_FLOOR).log(), log_energy

    def _cepstra(self, log_mel: torch.Tensor, log_energy: torch.Tensor) -> torch.Tensor:
        """MFCC (B, T, C) with C0 replaced by the raw log energy (Kaldi's use_energy)."""
        ceps = log_mel @ self.dct
        return torch.cat([log_energy.unsqueeze(2), ceps[..., 1:]], dim=2)


def _power_spectrum(frames: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """|rfft(frames, n)|^2 (B, T, n // 2 + 1) of frames of ``length`` samples. An ONNX
    export has no real FFT operator, so there it is two matrix products with the DFT's
    cosine and sine bases (same values to float rounding), built from the Python int
    ``length`` so that the exporter stores them as constants."""
    if not torch.onnx.is_in_onnx_export():
        spectrum = torch.fft.rfft(frames, n=n)
        return spectrum.real.pow(2) + spectrum.imag.pow(2)
    angle = (2 * torch.pi / n) * torch.outer(torch.arange(length, dtype=torch.float64),
                                             torch.arange(n // 2 + 1, dtype=torch.float64))
    cos, sin = angle.cos().to(frames.dtype), angle.sin().to(frames.dtype)
    return (frames @ cos).pow(2) + (frames @ sin).pow(2)


def _check_settings(cfg: FeatureConfig) -> None:
    nyquist = 0.5 * cfg.sample_rate
    high = cfg.high_freq if cfg.high_freq > 0 else nyquist + cfg.high_freq
    if not 0.0 <= cfg.low_freq < high <= nyquist:
        raise ConfigError(f"config keys 'model.features.low_freq/high_freq': need 0 <= low_freq "
                          f"< high_freq <= {nyquist:g} (Nyquist), got {cfg.low_freq:g} and {high:g}")
    if cfg.kind == "mfcc" and not 1 <= cfg.num_ceps <= cfg.num_mel_bins:
        raise ConfigError("config key 'model.features.num_ceps': must be in [1, num_mel_bins]")
    if int(cfg.sample_rate * 0.001 * cfg.frame_shift_ms) < 1 or cfg.frame_length_ms <= 0:
        raise ConfigError("config keys 'model.features.frame_length_ms/frame_shift_ms': "
                          "must give at least one sample per frame and per shift")


# ---------------------------------------------------------------------------
# global mean/variance normalisation


def utterance_mean_norm(feats: torch.Tensor, lens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Subtract each utterance's mean over its valid frames: feats (B, T, D) with zero
    padding, lens (B,), mask (B, T, 1). Removes channel and gain offsets per recording."""
    mean = feats.sum(dim=1, keepdim=True) / lens.clamp(min=1).view(-1, 1, 1).to(feats.dtype)
    return (feats - mean).masked_fill(~mask, 0.0)


class GlobalCMVN(nn.Module):
    """Normalise features (B, T, D) with corpus-level mean and std (D,).

    ``mean`` and ``std`` are persistent buffers, so they are saved with the weights.
    Only valid frames change; padding is returned as it came in (zeros).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Copy statistics (D,) into the buffers (e.g. from ``CMVNAccumulator.finalize``)."""
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std))

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """feats (B, T, D), lens (B,) -> normalised feats (B, T, D)."""
        mask = lengths_to_mask(lens.to(feats.device), feats.shape[1]).unsqueeze(2)
        normed = (feats - self.mean) / self.std
        return torch.where(mask, normed.to(feats.dtype), feats)


class CMVNAccumulator:
    """Running float64 sums over valid frames; ``finalize()`` gives mean and std (D,).

    >>> acc = CMVNAccumulator(2)
    >>> acc.update(torch.tensor([[[1.0, 2.0], [3.0, 2.0], [9.0, 9.0]]]), torch.tensor([2]))
    >>> [t.tolist() for t in acc.finalize()]
    [[2.0, 2.0], [1.0, 0.009999999776482582]]
    """

    # A dimension that never varies (e.g. an empty mel bin) would otherwise divide by ~0.
    STD_FLOOR = 1e-2

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.sum_sq = torch.zeros(dim, dtype=torch.float64)

    def update(self, feats: torch.Tensor, lens: torch.Tensor) -> None:
        """Add the valid frames of feats (B, T, D) with lengths (B,)."""
        if feats.shape[-1] != self.dim:
            raise ValueError(f"expected feature dim {self.dim}, got {feats.shape[-1]}")
        mask = lengths_to_mask(lens.to(feats.device), feats.shape[1])
        valid = feats[mask].detach().to("cpu", torch.float64)  # (N, D)
        self.count += valid.shape[0]
        self.sum += valid.sum(dim=0)
        self.sum_sq += valid.pow(2).sum(dim=0)

    def all_reduce(self) -> None:
        """Sum counts and sums over the ranks of a torch.distributed job, so every rank
        finalises the statistics of the whole data set (a no-op in a single process).
        Averaging each rank's mean and std instead would be wrong for unequal shards,
        and for the std even for equal ones."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        packed = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64),
                            self.sum, self.sum_sq])
        if dist.get_backend() == "nccl":
            packed = packed.cuda()
        dist.all_reduce(packed)
        packed = packed.cpu()
        self.count = int(round(packed[0].item()))
        self.sum, self.sum_sq = packed[1:1 + self.dim].clone(), packed[1 + self.dim:].clone()

    def finalize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (D,), std (D,)) as float32; std is floored at ``STD_FLOOR``."""
        if self.count == 0:
            raise RuntimeError("CMVNAccumulator.finalize: no frames were accumulated")
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean.pow(2)).clamp(min=0.0)
        std = var.sqrt().clamp(min=self.STD_FLOOR)
        return mean.float(), std.float()

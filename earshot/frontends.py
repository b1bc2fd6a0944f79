"""Front ends: waveforms -> normalised encoder inputs, chosen by name (``model.features.kind``).

Every front end declares what an encoder needs to know about its output (``out_dim``,
``frame_shift`` in samples, so ``frame_rate``) and owns its normalisation, including the
corpus statistics it needs. Statistics are gathered through the front end itself::

    acc = frontend.new_statistics()          # None: nothing to estimate
    for wavs, lens in batches:
        frontend.accumulate(acc, wavs, lens)
    acc.all_reduce()                         # sums over ranks in a distributed job
    frontend.set_statistics(acc)

``STATISTICS`` names the state-dict entries (relative to the front end) that hold corpus
statistics, so fine-tuning on another corpus knows to estimate them afresh.

>>> from earshot.choices import FRONTENDS
from earshot.config import FeatureConfig
>>> fe = build_frontend(FeatureConfig(kind="fbank", num_mel_bins=40))
>>> feats, lens = fe(torch.zeros(2, 16000), torch.tensor([16000, 8000]))
>>> fe.out_dim, fe.frame_rate, feats.shape, lens.tolist()
(40, 100.0, torch.Size([2, 98, 40]), [98, 48])
"""

from __future__ import annotations

import torch
from torch import nn

from earshot.choices import FRONTENDS
from earshot.config import FeatureConfig
from earshot.features import CMVNAccumulator, FeatureExtractor, GlobalCMVN
from earshot.masks import lengths_to_mask


class FrontEnd(nn.Module):
    """The interface: ``forward(wavs (B, S), wav_lens (B,)) -> (x (B, T, out_dim), lens (B,))``,
    float32, zero past each length, never differentiated (fixed signal processing)."""

    STATISTICS: tuple[str, ...] = ()
    spectral = False  # whether SpecAugment's frequency/time masks make sense on the output

    def __init__(self, cfg: FeatureConfig, out_dim: int, frame_shift: int):
        super().__init__()
        self.cfg = cfg
        self.out_dim = out_dim
        self.frame_shift = frame_shift

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def frame_rate(self) -> float:
        """Output frames per second of audio."""
        return self.cfg.sample_rate / self.frame_shift

    def num_frames(self, wav_lens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def raw(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features before normalisation (what statistics are gathered on)."""
        raise NotImplementedError

    def normalize(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return x

    @torch.no_grad()
    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            x, lens = self.raw(wavs.float(), wav_lens)
            return self.normalize(x, lens), lens

    def new_statistics(self) -> CMVNAccumulator | None:
        """An empty accumulator for this front end's corpus statistics, or None."""
        return None

    @torch.no_grad()
    def accumulate(self, acc: CMVNAccumulator, wavs: torch.Tensor, wav_lens: torch.Tensor) -> None:
        acc.update(*self.raw(wavs.float(), wav_lens))

    def set_statistics(self, acc: CMVNAccumulator) -> None:
        raise NotImplementedError


class FilterbankFrontEnd(FrontEnd):
    """Kaldi-compatible fbank or MFCC (``features.FeatureExtractor``), then global CMVN
    with corpus statistics kept as the ``normalizer.mean`` / ``normalizer.std`` buffers."""

    STATISTICS = ("normalizer.mean", "normalizer.std")
    spectral = True

    def __init__(self, cfg: FeatureConfig):
        features = FeatureExtractor(cfg)
        super().__init__(cfg, features.out_dim, features.frame_shift)
        self.features = features
        self.normalizer = GlobalCMVN(features.out_dim)

    def num_frames(self, wav_lens: torch.Tensor) -> torch.Tensor:
        return self.features.num_frames(wav_lens)

    def raw(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features(wavs, wav_lens)

    def normalize(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.normalizer(x, lens)

    def new_statistics(self) -> CMVNAccumulator:
        return CMVNAccumulator(self.out_dim)

    def set_statistics(self, acc: CMVNAccumulator) -> None:
        self.normalizer.set_stats(*acc.finalize())


class WaveformFrontEnd(FrontEnd):
    """Samples as they are, (B, S) -> (B, S, 1), for encoders that learn their own
    front end (wav2vec 2.0 and kin). ``waveform_norm: utterance`` scales each utterance
    to zero mean and unit variance over its own samples, as those models expect."""

    def __init__(self, cfg: FeatureConfig):
        super().__init__(cfg, out_dim=1, frame_shift=1)

    def num_frames(self, wav_lens: torch.Tensor) -> torch.Tensor:
        return wav_lens.long()

    def raw(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lens = wav_lens.to(wavs.device).long()
        mask = lengths_to_mask(lens, wavs.size(1))
        return wavs.masked_fill(~mask, 0.0).unsqueeze(2), lens

    def normalize(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        if self.cfg.waveform_norm == "none":
            return x
        mask = lengths_to_mask(lens, x.size(1)).unsqueeze(2)
        n = lens.clamp(min=1).view(-1, 1, 1).to(x.dtype)
        mean = x.sum(dim=1, keepdim=True) / n
        var = ((x - mean).masked_fill(~mask, 0.0).pow(2)).sum(dim=1, keepdim=True) / n
        return ((x - mean) / torch.sqrt(var + 1e-7)).masked_fill(~mask, 0.0)




def build_frontend(cfg: FeatureConfig) -> FrontEnd:
    return FRONTENDS.load(cfg.kind, "config key 'model.features.kind'")(cfg)

"""SpecAugment masks and per-utterance mean normalisation."""

import torch

from earshot.augment import spec_augment
from earshot.config import FeatureConfig, SpecAugmentConfig
from earshot.features import FeatureExtractor


def test_no_masks_is_identity():
    feats = torch.randn(3, 20, 8)
    assert spec_augment(feats, torch.tensor([20, 10, 5]), SpecAugmentConfig()) is feats


def test_time_masks_stay_within_each_utterance_and_its_fraction():
    cfg = SpecAugmentConfig(time_masks=1, time_width=50, max_time_fraction=0.2)
    lens = torch.tensor([100, 40])
    total = 0
    for _ in range(20):
        out = spec_augment(torch.ones(2, 100, 4), lens, cfg)
        masked = (out[:, :, 0] == 0)
        total += int(masked.sum())
        assert masked[0].sum() <= 20 and masked[1].sum() <= 8
        assert not masked[1, 40:].any()  # nothing masked in padding
        assert bool((out == 0).all(dim=2).eq(masked).all())  # whole frames masked
    assert total > 0  # it masks something


def test_freq_masks_cover_whole_bands_of_at_most_width():
    cfg = SpecAugmentConfig(freq_masks=1, freq_width=5)
    out = spec_augment(torch.ones(4, 30, 40), torch.full((4,), 30), cfg)
    masked = (out == 0).all(dim=1)  # (B, D) bins masked across all frames
    assert masked.sum(dim=1).le(5).all() and masked.any()
    assert bool(((out == 0) == masked.unsqueeze(1)).all())


def test_utterance_cmn_zero_mean_and_batch_invariant():
    extractor = FeatureExtractor(FeatureConfig(num_mel_bins=23, utterance_cmn=True))
    wavs = torch.randn(2, 8000) * torch.tensor([[0.5], [0.01]])
    lens = torch.tensor([8000, 5000])
    feats, flens = extractor(wavs, lens)
    for i in range(2):
        valid = feats[i, : flens[i]]
        assert valid.mean(dim=0).abs().max() < 1e-4
        alone, _ = extractor(wavs[i : i + 1, : lens[i]], lens[i : i + 1])
        assert torch.allclose(alone[0], valid, atol=1e-4)
    assert feats[1, flens[1]:].eq(0).all()

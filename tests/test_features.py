"""Features match kaldi-native-fbank on speech; batching, deltas and CMVN keep lengths honest."""

from __future__ import annotations

import math

import kaldi_native_fbank as knf  # the test oracle (the dev extra installs it)
import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import shared_data
from earshot.config import FeatureConfig
from earshot.features import CMVNAccumulator, FeatureExtractor, GlobalCMVN, add_deltas, delta_kernels

# (kind, mel bins): the oracle cases asked for; MFCC keeps 13 cepstra.
CASES = [("fbank", 80), ("fbank", 40), ("mfcc", 23), ("mfcc", 80)]
TOLERANCE = 1e-3  # mean absolute difference, in log units


def synthetic_speech(sample_rate: int, seconds: float = 0.8, seed: int = 0) -> np.ndarray:
    """A vowel-like signal in [-1, 1]: glottal pulses with a pitch glide through formants.

    The pulse train is filtered by three damped resonances (formants) whose centre
    frequencies change halfway, like a diphthong, plus a little noise.
    """
    rng = np.random.default_rng(seed)
    n = int(sample_rate * seconds)
    pitch = np.linspace(110.0, 170.0, n)  # Hz
    phase = np.cumsum(pitch / sample_rate)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # 1 at each glottal closure
    t = np.arange(int(0.03 * sample_rate)) / sample_rate
    out = np.zeros(n)
    for half, formants in enumerate([(700, 1200, 2600), (350, 2000, 2900)]):
        response = sum(np.exp(-math.pi * 90.0 * t) * np.sin(2 * math.pi * f * t) / (k + 1)
                       for k, f in enumerate(formants))
        segment = np.zeros(n)
        segment[half * n // 2:(half + 1) * n // 2] = pulses[half * n // 2:(half + 1) * n // 2]
        out += np.convolve(segment, response)[:n]
    out += 0.01 * rng.standard_normal(n)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def kaldi_features(wav: np.ndarray, sample_rate: int, kind: str, bins: int) -> np.ndarray:
    """kaldi-native-fbank on the int16-scaled waveform, dither off."""
    opts = knf.FbankOptions() if kind == "fbank" else knf.MfccOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = sample_rate
    opts.mel_opts.num_bins = bins
    if kind == "mfcc":
        opts.num_ceps = 13
    computer = knf.OnlineFbank(opts) if kind == "fbank" else knf.OnlineMfcc(opts)
    computer.accept_waveform(sample_rate, (wav * 32768.0).tolist())
    computer.input_finished()
    return np.stack([computer.get_frame(i) for i in range(computer.num_frames_ready)])


def ours(wav: np.ndarray, sample_rate: int, kind: str, bins: int) -> np.ndarray:
    fx = FeatureExtractor(FeatureConfig(kind=kind, sample_rate=sample_rate, num_mel_bins=bins))
    feats, lens = fx(torch.from_numpy(wav).unsqueeze(0), torch.tensor([len(wav)]))
    assert int(lens[0]) == feats.shape[1]
    return feats[0].numpy()


def assert_matches_kaldi(wav: np.ndarray, sample_rate: int) -> None:
    for kind, bins in CASES:
        ref = kaldi_features(wav, sample_rate, kind, bins)
        got = ours(wav, sample_rate, kind, bins)
        assert got.shape == ref.shape, (kind, bins)
        diff = float(np.abs(got - ref).mean())
        assert diff < TOLERANCE, f"{kind} {bins} bins at {sample_rate} Hz: mean |diff| {diff}"


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_matches_kaldi_on_synthetic_speech(sample_rate):
    assert_matches_kaldi(synthetic_speech(sample_rate), sample_rate)


@pytest.mark.parametrize("corpus, pattern, count, rate",
                         [("fsdd", "recordings/*.wav", 3, 8000), ("an4", "**/*.wav", 2, 16000)])
def test_matches_kaldi_on_real_speech(corpus, pattern, count, rate):
    files = sorted(shared_data(corpus).glob(pattern))[:count]
    if not files:
        pytest.skip(f"no {corpus} recordings found")
    for path in files:
        wav, file_rate = sf.read(path, dtype="float32")
        assert file_rate == rate
        assert_matches_kaldi(wav, rate)


def test_signal_is_not_silence():
    # Guards the oracle test against passing trivially on a flat or empty signal.
    wav = synthetic_speech(16000)
    feats = ours(wav, 16000, "fbank", 40)
    assert feats.std(axis=0).mean() > 1.0 and feats.max() > 10.0


# ---------------------------------------------------------------------------
# batching and lengths


def padded_batch(sample_rate: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    wav = torch.from_numpy(synthetic_speech(sample_rate, seconds=max(lengths) / sample_rate))
    wavs = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        # Distinct content per row, and garbage past each length that must not leak in.
        wavs[i, :n] = torch.roll(wav, 97 * i)[:n]
        wavs[i, n:] = 0.3
    return wavs, torch.tensor(lengths)


@pytest.mark.parametrize("kind,deltas", [("fbank", False), ("mfcc", True), ("fbank", True)])
def test_padded_batch_equals_one_by_one(kind, deltas):
    fx = FeatureExtractor(FeatureConfig(kind=kind, num_mel_bins=40, deltas=deltas))
    lengths = [12000, 400, 7000, 399, 5555]
    wavs, wav_lens = padded_batch(16000, lengths)
    feats, feat_lens = fx(wavs, wav_lens)
    assert feat_lens.tolist() == [(n - 400) // 160 + 1 if n >= 400 else 0 for n in lengths]
    assert feat_lens.dtype == torch.long and feats.shape[1] == int(feat_lens.max())
    for i, n in enumerate(lengths):
        alone, alone_len = fx(wavs[i:i + 1, :n], torch.tensor([n]))
        t = int(feat_lens[i])
        assert int(alone_len[0]) == t
        torch.testing.assert_close(feats[i, :t], alone[0, :t], rtol=0, atol=1e-4)
        assert torch.all(feats[i, t:] == 0)


def test_out_dim_and_delta_shapes():
    cases = [(dict(kind="fbank"), 80), (dict(kind="fbank", num_mel_bins=40, deltas=True), 120),
             (dict(kind="mfcc"), 13), (dict(kind="mfcc", num_ceps=20, deltas=True), 60)]
    wavs, lens = padded_batch(16000, [4000, 3000])
    for kwargs, dim in cases:
        fx = FeatureExtractor(FeatureConfig(**kwargs))
        feats, _ = fx(wavs, lens)
        assert fx.out_dim == dim and feats.shape == (2, 23, dim)


def test_deltas_match_kaldi_per_utterance():
    feats = torch.randn(2, 9, 3)
    lens = torch.tensor([9, 5])
    out = add_deltas(feats, lens, delta_kernels())
    for i, n in enumerate(lens.tolist()):
        ref = knf.compute_deltas(knf.DeltaOptions(), feats[i, :n].numpy())
        np.testing.assert_allclose(out[i, :n].numpy(), ref, atol=1e-5)


def test_num_frames_int_and_tensor_agree():
    fx = FeatureExtractor(FeatureConfig(sample_rate=8000))
    samples = [0, 199, 200, 279, 280, 8000]
    expected = [0, 0, 1, 1, 2, 98]
    assert [fx.num_frames(n) for n in samples] == expected
    assert fx.num_frames(torch.tensor(samples)).tolist() == expected


def test_short_batch_gives_zero_frames():
    fx = FeatureExtractor(FeatureConfig())
    feats, lens = fx(torch.zeros(2, 100), torch.tensor([100, 50]))
    assert feats.shape == (2, 0, 80) and lens.tolist() == [0, 0]


def test_dither_only_in_training_and_buffers_not_saved():
    fx = FeatureExtractor(FeatureConfig(dither=1.0))
    wavs, lens = padded_batch(16000, [3000])
    fx.eval()
    torch.testing.assert_close(fx(wavs, lens)[0], fx(wavs, lens)[0])
    fx.train()
    assert not torch.equal(fx(wavs, lens)[0], fx(wavs, lens)[0])
    assert fx.state_dict() == {}


def test_float32_output_under_autocast():
    fx = FeatureExtractor(FeatureConfig(num_mel_bins=40))
    wavs, lens = padded_batch(16000, [3000, 2000])
    expected, _ = fx(wavs, lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = fx(wavs, lens)
    assert feats.dtype == torch.float32 and torch.equal(feats, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    fx = FeatureExtractor(FeatureConfig(kind="mfcc", deltas=True))
    wavs, lens = padded_batch(16000, [6000, 3000])
    cpu, cpu_lens = fx(wavs, lens)
    gpu, gpu_lens = fx.to("cuda")(wavs.cuda(), lens.cuda())
    assert gpu.device.type == "cuda" and torch.equal(gpu_lens.cpu(), cpu_lens)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=1e-4)
    cmvn = GlobalCMVN(fx.out_dim).to("cuda")
    assert cmvn(gpu, gpu_lens).device.type == "cuda"


def test_bad_frequency_range_is_config_error():
    from earshot.errors import ConfigError
    with pytest.raises(ConfigError, match="high_freq"):
        FeatureExtractor(FeatureConfig(sample_rate=8000, high_freq=6000.0))


# ---------------------------------------------------------------------------
# CMVN


def feats_with_padding() -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.randn(3, 20, 4) * torch.tensor([1.0, 5.0, 0.1, 2.0]) + torch.tensor([3.0, -7.0, 0.0, 1.0])
    lens = torch.tensor([20, 11, 6])
    feats = feats.masked_fill(torch.arange(20)[None, :, None] >= lens[:, None, None], 0.0)
    return feats, lens


def test_accumulator_matches_torch_over_valid_frames():
    feats, lens = feats_with_padding()
    acc = CMVNAccumulator(4)
    acc.update(feats[:2], lens[:2])
    acc.update(feats[2:], lens[2:])
    valid = torch.cat([feats[i, :n] for i, n in enumerate(lens.tolist())]).double()
    mean, std = acc.finalize()
    torch.testing.assert_close(mean, valid.mean(0).float())
    torch.testing.assert_close(std, valid.std(0, unbiased=False).float())


def test_accumulator_floors_constant_dims_and_needs_frames():
    acc = CMVNAccumulator(2)
    with pytest.raises(RuntimeError, match="no frames"):
        acc.finalize()
    acc.update(torch.tensor([[[1.0, 5.0], [3.0, 5.0]]]), torch.tensor([2]))
    mean, std = acc.finalize()
    assert mean.tolist() == [2.0, 5.0] and std[1] == pytest.approx(CMVNAccumulator.STD_FLOOR)


def test_global_cmvn_normalises_valid_frames_and_keeps_padding():
    feats, lens = feats_with_padding()
    acc = CMVNAccumulator(4)
    acc.update(feats, lens)
    cmvn = GlobalCMVN(4)
    cmvn.set_stats(*acc.finalize())
    out = cmvn(feats, lens)
    mask = torch.arange(20)[None, :] < lens[:, None]
    valid = out[mask]
    torch.testing.assert_close(valid.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(valid.std(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    assert torch.equal(out[~mask], feats[~mask])
    assert set(cmvn.state_dict()) == {"mean", "std"}


def test_global_cmvn_defaults_are_identity():
    feats, lens = feats_with_padding()
    assert torch.equal(GlobalCMVN(4)(feats, lens), feats)

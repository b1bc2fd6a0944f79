"""load_audio gives mono float32 at the requested rate, or an AudioError naming file and reason."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from earshot.audio import audio_duration, audio_info, load_audio
from earshot.errors import AudioError


def tone(sample_rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_loads_mono_float32_in_range(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(16000, 0.5), 16000, subtype="PCM_16")
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.shape == (8000,)
    assert 0.45 < float(wav.abs().max()) <= 0.5 + 1e-4


def test_stereo_is_averaged_to_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = tone(8000, 0.25, 300.0), tone(8000, 0.25, 700.0) * 0.5
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    wav = load_audio(path)
    assert wav.shape == (2000,)
    np.testing.assert_allclose(wav.numpy(), (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("src,dst", [(8000, 16000), (16000, 8000), (22050, 16000)])
def test_resampling_changes_length_by_the_rate_ratio(tmp_path, src, dst):
    path = tmp_path / "r.flac"
    sf.write(path, tone(src, 1.0, 200.0), src)
    wav = load_audio(path, sample_rate=dst)
    assert abs(wav.shape[0] - dst) <= 1
    # The tone survives resampling: same frequency, same level, away from the edges.
    spectrum = np.abs(np.fft.rfft(wav.numpy()[dst // 10: dst // 10 + dst // 2]))
    assert np.argmax(spectrum) * 2 == pytest.approx(200, abs=2)
    assert 0.45 < float(wav[dst // 10:-dst // 10].abs().max()) < 0.55


def test_same_rate_is_not_resampled(tmp_path):
    path = tmp_path / "s.wav"
    data = tone(16000, 0.1)
    sf.write(path, data, 16000, subtype="FLOAT")
    assert torch.equal(load_audio(path, sample_rate=16000), torch.from_numpy(data))


@pytest.mark.parametrize("suffix", ["ogg", "flac", "mp3"])
def test_compressed_formats_load(tmp_path, suffix):
    if suffix.upper() not in sf.available_formats():
        pytest.skip(f"this libsndfile has no {suffix} support")
    path = tmp_path / f"x.{suffix}"
    sf.write(path, tone(16000, 0.2), 16000)
    wav = load_audio(path)
    # Lossy codecs may pad a little; the level must survive.
    assert abs(wav.shape[0] - 3200) <= 1200 and 0.4 < float(wav.abs().max()) < 0.6


def test_duration_and_info_from_header(tmp_path):
    path = tmp_path / "d.wav"
    sf.write(path, np.zeros((12000, 2), dtype=np.float32), 8000)
    assert audio_duration(path) == pytest.approx(1.5)
    info = audio_info(path)
    assert (info.sample_rate, info.frames, info.channels) == (8000, 12000, 2)


def bad_file(tmp_path, case: str):
    path = tmp_path / f"{case}.wav"
    if case == "corrupt":
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 3)
    elif case == "empty":
        sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    elif case == "nan":
        data = tone(16000, 0.1)
        data[100] = np.nan
        data[200] = np.inf
        sf.write(path, data, 16000, subtype="FLOAT")
    elif case == "directory":
        path.mkdir()
    elif case == "unscaled":
        sf.write(path, tone(16000, 0.1) * 30000, 16000, subtype="FLOAT")
    return path


@pytest.mark.parametrize("case,reason", [
    ("missing", "file not found"),
    ("corrupt", "unreadable or corrupt"),
    ("empty", "zero samples"),
    ("nan", "2 non-finite"),
    ("directory", "not a regular file"),
    ("unscaled", "must lie in [-1, 1]"),
])
def test_bad_audio_raises_audio_error_naming_file_and_reason(tmp_path, case, reason):
    path = bad_file(tmp_path, case)
    with pytest.raises(AudioError) as info:
        load_audio(path, sample_rate=8000)
    assert str(path) in str(info.value) and reason in str(info.value)
    assert info.value.path == str(path)


@pytest.mark.parametrize("case", ["missing", "corrupt", "directory"])
def test_duration_of_bad_file_raises_audio_error(tmp_path, case):
    path = bad_file(tmp_path, case)
    with pytest.raises(AudioError, match=str(path)):
        audio_duration(path)


def test_a_truncated_wav_decodes_what_is_there_with_a_warning(tmp_path, caplog):
    full = tmp_path / "full.wav"
    sf.write(full, tone(16000, 1.0), 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[: 44 + 2 * 6000])  # header + 6000 of 16000 samples
    with caplog.at_level("WARNING", logger="earshot.audio"):
        wav = load_audio(cut)
    assert wav.numel() == 6000
    assert f"{cut}: truncated: the header declares 16000 samples, the file holds 6000" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="earshot.audio"):
        load_audio(full)
    assert "truncated" not in caplog.text


@pytest.mark.parametrize("rate, channels, says", [(50, 1, "sample rate 50 Hz is outside"),
                                                  (16000, 100, "claims 100 channels")])
def test_an_absurd_header_is_refused_before_decoding(tmp_path, rate, channels, says):
    import time

    path = tmp_path / "odd.wav"
    sf.write(path, np.zeros((rate * 2, channels), dtype=np.float32), rate)
    start = time.monotonic()
    for read in (lambda: load_audio(path, sample_rate=16000), lambda: audio_info(path)):
        with pytest.raises(AudioError, match=says):
            read()
    assert time.monotonic() - start < 5


def test_headerless_raw_samples_are_named_not_a_traceback(tmp_path):
    path = tmp_path / "take.raw"
    path.write_bytes(np.zeros(4000, np.int16).tobytes())
    for read in (lambda: load_audio(path, sample_rate=16000), lambda: audio_info(path)):
        with pytest.raises(AudioError, match="headerless raw samples"):
            read()

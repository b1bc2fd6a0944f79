"""Reading audio files into mono float waveforms at the rate the model expects.

Every failure a user can cause (a missing path, a corrupt or empty file, NaN samples)
is an ``AudioError`` naming the file and the reason, so data preparation can report
and skip it instead of crashing deep inside feature extraction.

>>> wav = load_audio("utt1.flac", sample_rate=16000)  # doctest: +SKIP
>>> wav.shape, wav.dtype  # doctest: +SKIP
(torch.Size([52400]), torch.float32)
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from earshot.errors import AudioError

RESAMPLE_QUALITY = "HQ"


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says: rate in Hz, frames per channel, channel count."""

    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str | Path) -> AudioInfo:
    """Header information of an audio file, without decoding the samples."""
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(path, f"cannot read audio header ({_describe(err)})") from None
    _check_header(path, int(info.samplerate), int(info.channels), int(info.frames))
    return AudioInfo(sample_rate=int(info.samplerate), frames=int(info.frames),
                     channels=int(info.channels))


# What a header may claim before its samples are decoded or resampled: rates from
# telephone speech to studio audio, a microphone array's channels, a day of audio.
MIN_RATE, MAX_RATE = 1000, 768_000
MAX_CHANNELS = 64
MAX_SECONDS = 24 * 3600


def _check_header(path: str | Path, rate: int, channels: int, frames: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(path, f"the header's sample rate {rate} Hz is outside "
                               f"{MIN_RATE}-{MAX_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(path, f"the header claims {channels} channels (1-{MAX_CHANNELS} are read)")
    if frames > MAX_SECONDS * rate:
        raise AudioError(path, f"the header claims {frames / rate / 3600:.1f} hours of audio "
                               f"(at most {MAX_SECONDS // 3600} are read)")


def audio_duration(path: str | Path) -> float:
    """Duration in seconds read from the header (no decoding)."""
    return audio_info(path).duration


def load_audio(path: str | Path, sample_rate: int | None = None,
               span: tuple[float, float] | None = None) -> torch.Tensor:
    """Decode ``path`` to a mono float32 waveform (S,) in [-1, 1].

    Channels are averaged; when ``sample_rate`` is given and differs from the file's
    rate the signal is resampled with soxr. ``span`` (start, duration) in seconds
    decodes only that stretch (a segment of a long recording). Raises ``AudioError``
    for missing, unreadable, empty or non-finite audio.
    """
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    samples, file_rate = _read(path, span)
    _check_samples(path, samples)
    if span is None:
        _warn_if_truncated(path, samples.shape[0])
    return _mono_at(samples, file_rate, sample_rate)


def decode_audio_bytes(data: bytes, name: str, sample_rate: int | None = None) -> torch.Tensor:
    """``load_audio`` for an encoded file held in memory (a shard's FLAC); ``name`` is
    what an AudioError names."""
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(name, f"unreadable or corrupt audio ({_describe(err)})") from None
    _check_samples(name, samples)
    return _mono_at(samples, int(rate), sample_rate)


def _mono_at(samples: np.ndarray, file_rate: int, sample_rate: int | None) -> torch.Tensor:
    """(frames, channels) -> mono (S,) float32 at ``sample_rate`` (None: as it is)."""
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if sample_rate is not None and sample_rate != file_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality=RESAMPLE_QUALITY)
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


def check_waveform(name: str, wav: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A waveform handed in through the Python API as a float32 tensor (S,); AudioError
    naming ``name`` unless it is 1-D floating-point samples, finite and in [-1, 1]
    (with the same tolerance as files)."""
    if isinstance(wav, np.ndarray):
        wav = torch.from_numpy(wav)
    if not isinstance(wav, torch.Tensor):
        raise AudioError(name, f"waveform must be a tensor or numpy array, got {type(wav).__name__}")
    if wav.dim() != 1:
        raise AudioError(name, f"waveform must be 1-D (samples,), got shape {tuple(wav.shape)}; "
                               f"average the channels first")
    if not wav.dtype.is_floating_point:
        raise AudioError(name, f"waveform must hold floating-point samples in [-1, 1], got "
                               f"{wav.dtype} (divide 16-bit integers by 32768)")
    wav = wav.detach().to("cpu", torch.float32)
    _check_samples(name, wav.numpy())
    return wav


def _read(path: str | Path, span: tuple[float, float] | None = None) -> tuple[np.ndarray, int]:
    """The samples (of ``span``, else all) as (frames, channels) float32, and the file's
    sample rate."""
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError):
        info = None  # (the read below says what is wrong with it)
    if info is not None:  # the header's claims, checked before decoding
        _check_header(path, int(info.samplerate), int(info.channels), int(info.frames))
    window = {}
    if span is not None and info is not None:
        start = round(span[0] * info.samplerate)
        window = {"start": start, "stop": start + round(span[1] * info.samplerate)}
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True, **window)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(path, f"unreadable or corrupt audio ({_describe(err)})") from None
    return samples, int(rate)


def _check_exists(path: str | Path) -> None:
    p = Path(path)
    if not p.exists():
        raise AudioError(path, "file not found")
    if not p.is_file():
        raise AudioError(path, "not a regular file")


def _check_samples(path: str | Path, samples: np.ndarray) -> None:
    if samples.size == 0:
        raise AudioError(path, "audio has zero samples")
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - finite.sum())
        raise AudioError(path, f"audio contains {bad} non-finite (NaN/Inf) samples")
    peak = float(np.abs(samples).max())
    if peak > MAX_PEAK:
        raise AudioError(path, f"samples reach {peak:.4g}; decoded audio must lie in [-1, 1] "
                               f"(a float file written without scaling, e.g. from 16-bit integers?)")


MAX_PEAK = 2.0  # float files may overshoot 1 a little; far beyond it the scale is wrong


def _warn_if_truncated(path: str | Path, frames: int) -> None:
    """Warn when a WAV file's header promises more audio than the file holds (a copy or
    recording cut short): only what is there gets decoded."""
    declared = _declared_wav_frames(path)
    if declared is not None and declared > frames:
        logging.getLogger(__name__).warning(
            "%s: truncated: the header declares %d samples, the file holds %d (%.0f%%); "
            "decoding what is there", path, declared, frames, 100.0 * frames / declared)


def _declared_wav_frames(path: str | Path) -> int | None:
    """Frames per channel the RIFF/WAVE header's data chunk declares; None for other
    formats, streamed WAVs (size 0 or 0xFFFFFFFF) and headers it cannot follow."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)  # the chunks before "data" are small
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block_align, pos = None, 12
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"fmt " and pos + 22 <= len(head):
            block_align = int.from_bytes(head[pos + 20:pos + 22], "little")
        if chunk == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
        pos += 8 + size + (size & 1)
    return None


def _describe(err: Exception) -> str:
    # LibsndfileError's str() repeats the path; its error_string is just the reason.
    if isinstance(err, TypeError) and "samplerate" in str(err):  # a .raw file: no header
        return "headerless raw samples; earshot reads files with a header (WAV, FLAC, OGG, ...)"
    text = getattr(err, "error_string", "") or str(err)
    return text.strip() or type(err).__name__

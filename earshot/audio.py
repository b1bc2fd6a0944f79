"""Reading audio files into mono float waveforms at the rate the model expects.

Every failure a user can cause (a missing path, a corrupt or empty file, NaN samples)
is an ``AudioError`` naming the file and the reason, so data preparation can report
and skip it instead of crashing deep inside feature extraction.

>>> wav = load_audio("utt1.flac", sample_rate=16000)  # doctest: +SKIP
>>> wav.shape, wav.dtype  # doctest: +SKIP
(torch.Size([52400]), torch.float32)
"""

from __future__ import annotations

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
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(path, f"cannot read audio header ({_describe(err)})") from None
    if info.samplerate <= 0:
        raise AudioError(path, f"invalid sample rate {info.samplerate} in header")
    return AudioInfo(sample_rate=int(info.samplerate), frames=int(info.frames),
                     channels=int(info.channels))


def audio_duration(path: str | Path) -> float:
    """Duration in seconds read from the header (no decoding)."""
    return audio_info(path).duration


def load_audio(path: str | Path, sample_rate: int | None = None) -> torch.Tensor:
    """Decode ``path`` to a mono float32 waveform (S,) in [-1, 1].

    Channels are averaged; when ``sample_rate`` is given and differs from the file's
    rate the signal is resampled with soxr. Raises ``AudioError`` for missing,
    unreadable, empty or non-finite audio.
    """
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    samples, file_rate = _read(path)
    _check_samples(path, samples)
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if sample_rate is not None and sample_rate != file_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality=RESAMPLE_QUALITY)
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


def _read(path: str | Path) -> tuple[np.ndarray, int]:
    """All samples as (frames, channels) float32, and the file's sample rate."""
    _check_exists(path)
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as err:
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


def _describe(err: Exception) -> str:
    # LibsndfileError's str() repeats the path; its error_string is just the reason.
    text = getattr(err, "error_string", "") or str(err)
    return text.strip() or type(err).__name__

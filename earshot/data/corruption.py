"""Waveform augmentation for training: additive noise at a random SNR and reverberation
by a room impulse response (real ones from files, or simulated).

Every draw for an utterance comes from a generator seeded with (seed, epoch, cut id,
what for), as speed perturbation's does: the same in every run, loader worker and
resumed epoch. Sources are listed once (paths and lengths); noise is read a stretch at a
time, impulse responses are read once per process and kept (they are short).

>>> noise = NoiseSource.from_path("data/musan/noise.jsonl.gz", 16000)  # doctest: +SKIP
>>> noisy = noise.add(wav, snr_db=10.0, rng=np.random.default_rng(0))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from earshot.audio import audio_info, load_audio
from earshot.errors import AudioError, ConfigError

logger = logging.getLogger(__name__)

MIN_SIGNAL_POWER = 1e-10  # below this an utterance is silence: no SNR to keep


def corruption_rng(seed: int, epoch: int, cut_id: str, what: str) -> np.random.Generator:
    """A generator for one utterance's ``what`` ("noise", "reverb") draws; the same in
    every process (random.Random hashes a str seed with SHA-512)."""
    return np.random.default_rng(random.Random(f"{seed}/{epoch}/{cut_id}/{what}").getrandbits(64))


@dataclass(frozen=True)
class _Source:
    path: str
    seconds: float


def _list_sources(spec: str, key: str) -> list[_Source]:
    """Audio files of a folder (recursively) or of a CutSet manifest, with their lengths;
    ConfigError naming ``key`` when there is none usable."""
    from earshot.data.manifests import AUDIO_SUFFIXES, load_cuts

    path = Path(spec)
    sources: list[_Source] = []
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
            try:
                sources.append(_Source(str(f), audio_info(f).duration))
            except AudioError as err:
                logger.warning("%s: %s; not used as %s", err.path, err.reason, key)
    elif path.is_file():
        for cut in load_cuts(path, need_text=False):
            source = cut.recording.sources[0] if cut.recording is not None else None
            if source is None or source.type != "file":
                continue
            sources.append(_Source(source.source, cut.duration))
    else:
        raise ConfigError(f"config key '{key}': {spec} is neither a folder of audio files nor a "
                          f"manifest (earshot prepare musan writes noise.jsonl.gz)")
    if not sources:
        raise ConfigError(f"config key '{key}': no usable audio in {spec}")
    return sources


class NoiseSource:
    """Noise recordings to add to speech at a given signal-to-noise ratio."""

    def __init__(self, sources: list[_Source], sample_rate: int) -> None:
        self.sources, self.sample_rate = sources, sample_rate

    @classmethod
    def from_path(cls, spec: str, sample_rate: int, key: str = "data.noise.sources") -> NoiseSource:
        return cls(_list_sources(spec, key), sample_rate)

    def add(self, wav: torch.Tensor, snr_db: float, rng: np.random.Generator) -> torch.Tensor:
        """``wav`` (S,) plus a stretch of a random noise recording (repeated when shorter)
        scaled to ``snr_db``; a noise file that fails to load leaves ``wav`` as it is."""
        n = wav.numel()
        source = self.sources[int(rng.integers(len(self.sources)))]
        seconds = n / self.sample_rate
        start = float(rng.uniform(0.0, max(source.seconds - seconds, 0.0)))
        try:
            noise = load_audio(source.path, self.sample_rate,
                               span=(start, min(seconds, source.seconds)))
        except AudioError as err:
            logger.warning("noise %s: %s; this utterance stays clean", err.path, err.reason)
            return wav
        if noise.numel() < n:
            noise = noise.repeat(n // max(noise.numel(), 1) + 1)
        return mix_at_snr(wav, noise[:n], snr_db)


def mix_at_snr(speech: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """speech + g * noise with 10 log10(P_speech / P_(g noise)) = snr_db; the sum is scaled
    down if it would clip."""
    p_speech = float(speech.pow(2).mean())
    p_noise = float(noise.pow(2).mean())
    if p_speech < MIN_SIGNAL_POWER or p_noise < MIN_SIGNAL_POWER:
        return speech
    gain = (p_speech / (p_noise * 10 ** (snr_db / 10))) ** 0.5
    out = speech + gain * noise
    peak = float(out.abs().max())
    return out / peak if peak > 1.0 else out


class ReverbSource:
    """Room impulse responses: files (each read once per process, resampled, kept), or,
    with ``simulated``, exponentially decaying noise with a random RT60 (Polack's model)."""

    def __init__(self, sources: list[_Source], sample_rate: int,
                 rt60: tuple[float, float] = (0.2, 0.8)) -> None:
        self.sources, self.sample_rate, self.rt60 = sources, sample_rate, rt60
        self._cache: dict[str, torch.Tensor | None] = {}

    @classmethod
    def from_path(cls, spec: str, sample_rate: int, rt60: tuple[float, float] = (0.2, 0.8),
                  key: str = "data.reverb.rirs") -> ReverbSource:
        sources = [] if spec == "simulated" else _list_sources(spec, key)
        return cls(sources, sample_rate, rt60)

    def impulse_response(self, rng: np.random.Generator) -> torch.Tensor | None:
        if not self.sources:
            return simulated_rir(float(rng.uniform(*self.rt60)), self.sample_rate, rng)
        source = self.sources[int(rng.integers(len(self.sources)))]
        if source.path not in self._cache:
            try:
                self._cache[source.path] = load_audio(source.path, self.sample_rate)
            except AudioError as err:
                logger.warning("impulse response %s: %s; not used", err.path, err.reason)
                self._cache[source.path] = None
        return self._cache[source.path]

    def apply(self, wav: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        rir = self.impulse_response(rng)
        return wav if rir is None else reverberate(wav, rir)


class Corruption:
    """What a training loader does to each utterance's waveform after speed perturbation:
    reverberation with probability ``reverb_prob``, then noise with ``noise_prob`` at an
    SNR drawn from ``snr_db``."""

    def __init__(self, noise: NoiseSource | None = None, noise_prob: float = 0.0,
                 snr_db: tuple[float, float] = (5.0, 20.0), reverb: ReverbSource | None = None,
                 reverb_prob: float = 0.0) -> None:
        self.noise, self.noise_prob, self.snr_db = noise, noise_prob, tuple(snr_db)
        self.reverb, self.reverb_prob = reverb, reverb_prob

    @classmethod
    def from_config(cls, data, sample_rate: int) -> Corruption | None:
        """From ``data.noise`` and ``data.reverb``; None when both are off."""
        noise = reverb = None
        if data.noise.prob > 0:
            noise = NoiseSource.from_path(data.noise.sources, sample_rate)
        if data.reverb.prob > 0:
            reverb = ReverbSource.from_path(data.reverb.rirs, sample_rate, tuple(data.reverb.rt60))
        if noise is None and reverb is None:
            return None
        return cls(noise, data.noise.prob, data.noise.snr_db, reverb, data.reverb.prob)

    def __call__(self, wav: torch.Tensor, seed: int, epoch: int, cut_id: str) -> torch.Tensor:
        if self.reverb is not None:
            rng = corruption_rng(seed, epoch, cut_id, "reverb")
            if rng.random() < self.reverb_prob:
                wav = self.reverb.apply(wav, rng)
        if self.noise is not None:
            rng = corruption_rng(seed, epoch, cut_id, "noise")
            if rng.random() < self.noise_prob:
                wav = self.noise.add(wav, float(rng.uniform(*self.snr_db)), rng)
        return wav


def simulated_rir(rt60: float, sample_rate: int, rng: np.random.Generator) -> torch.Tensor:
    """A synthetic impulse response: a direct path, then Gaussian noise under an energy
    decay of 60 dB over ``rt60`` seconds, starting a few milliseconds later."""
    length = max(int(rt60 * sample_rate), 2)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60)  # ln(1000): 60 dB in energy
    delay = int(rng.uniform(0.002, 0.010) * sample_rate)
    tail[: delay + 1] = 0.0
    tail *= float(rng.uniform(0.3, 0.8)) / max(np.sqrt(np.sum(tail ** 2)), 1e-9)
    tail[0] = 1.0
    return torch.from_numpy(tail.astype(np.float32))


def reverberate(wav: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """``wav`` convolved with ``rir`` (aligned on its strongest tap, the direct path), cut
    to the input's length and scaled to its peak."""
    direct = int(rir.abs().argmax())
    n = wav.numel() + rir.numel() - 1
    size = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(wav.numpy(), size) * np.fft.rfft(rir.numpy(), size), size)
    out = out[direct: direct + wav.numel()].astype(np.float32)
    peak_in, peak_out = float(wav.abs().max()), float(np.abs(out).max())
    if peak_out > 0:
        out *= peak_in / peak_out
    return torch.from_numpy(np.ascontiguousarray(out))


def corrupt_manifest(manifest: str | Path, out_dir: str | Path, noise: str = "",
                     snr_db: tuple[float, float] = (10.0, 10.0), reverb: str = "",
                     rt60: tuple[float, float] = (0.2, 0.8), seed: int = 0) -> Path:
    """A noisy and/or reverberant copy of a test set: every cut of ``manifest`` through
    ``Corruption`` (each one's draws seeded by ``seed`` and its id) into
    ``out_dir/audio/ID.flac`` (16-bit, the cut's own rate), and ``out_dir/cuts.jsonl.gz``
    with the same ids and transcripts. A cut whose audio does not load is named and
    skipped. Returns the manifest written."""
    from lhotse import MonoCut, Recording
    from lhotse.utils import fastcopy

    import soundfile as sf

    from earshot.data.batching import load_cut_audio
    from earshot.data.corpora import write_splits
    from earshot.data.manifests import load_cuts

    if not noise and not reverb:
        raise ConfigError("earshot corrupt: give --noise and/or --reverb")
    out_dir = Path(out_dir)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    made: dict[int, Corruption] = {}
    cuts, skipped = [], Counter()
    for cut in load_cuts(manifest, need_text=False):
        rate = cut.sampling_rate
        if rate not in made:
            made[rate] = Corruption(
                NoiseSource.from_path(noise, rate, "--noise") if noise else None, 1.0, snr_db,
                ReverbSource.from_path(reverb, rate, rt60, "--reverb") if reverb else None, 1.0)
        try:
            wav = made[rate](load_cut_audio(cut, rate), seed, 0, cut.id)
        except AudioError as err:
            logger.warning("%s: %s; cut '%s' skipped", err.path, err.reason, cut.id)
            skipped["audio unreadable"] += 1
            continue
        path = audio_dir / f"{_safe_name(cut.id)}.flac"
        sf.write(path, wav.numpy(), rate, subtype="PCM_16")
        recording = Recording.from_file(path, recording_id=cut.id)
        supervisions = [fastcopy(s, recording_id=cut.id, start=0.0, duration=recording.duration)
                        for s in cut.supervisions[:1]]
        cuts.append(MonoCut(id=cut.id, start=0.0, duration=recording.duration, channel=0,
                            recording=recording, supervisions=supervisions))
    if not cuts:
        raise ConfigError(f"{manifest}: no cut could be read; nothing written")
    write_splits({"cuts": cuts}, out_dir, skipped)
    return out_dir / "cuts.jsonl.gz"


def _safe_name(cut_id: str) -> str:
    """A file name for a cut id: the id itself, or (when it holds / or other characters a
    file name should not) a cleaned one with a digest of the id, so two ids never meet."""
    import hashlib

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in cut_id).lstrip(".")
    if name == cut_id:
        return name
    return f"{name[:80]}-{hashlib.sha1(cut_id.encode()).hexdigest()[:10]}"

"""Cutting a long recording into segments the model can decode, at its pauses.

An energy detector marks 10 ms frames louder than the recording's own noise floor (the
quietest 10th-percentile energy of the half-second blocks within 3 s) by
``SegmentOptions.threshold_db``; bursts shorter than ``min_speech`` (clicks,
breaths) are dropped, then gaps shorter than ``min_silence`` closed, and each speech
region is padded; a segment's times are its speech, not the padding. A region longer than ``max_seconds`` (the longest utterance the model
trained on) is cut at its quietest point where that point is a pause; speech without a
pause is cut into windows overlapping by ``overlap`` seconds, whose transcripts are
merged at the token level by their CTC alignments (``merge_windows``). Stationary noise
and silence give no segment at all.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> quiet, loud = 0.001 * rng.standard_normal(16000), 0.3 * rng.standard_normal(8000)
>>> wav = np.concatenate([quiet, loud, quiet, quiet, loud, quiet]).astype(np.float32)
>>> opts = SegmentOptions(max_seconds=2.0)
>>> [(p.start, p.end) for p in plan(frame_energies(wav, 160), 160, len(wav), 16000, opts)]
[(12000, 28000), (52000, 68000)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_SECONDS = 0.01  # the detector's frame: 10 ms
FLOOR_DB = -100.0  # digital silence is clamped here


@dataclass(frozen=True)
class SegmentOptions:
    """How a recording is cut. Times in seconds."""

    max_seconds: float = 20.0  # longest segment decoded at once
    threshold_db: float = 10.0  # speech: this far above the noise floor
    min_level_db: float = -65.0  # ...and above this absolute level (dBFS)
    min_silence: float = 0.5  # shorter pauses do not cut
    min_speech: float = 0.15  # shorter bursts are dropped
    pad: float = 0.25  # kept on each side of speech
    overlap: float = 2.0  # between windows of speech without a pause


@dataclass(frozen=True)
class Planned:
    """Samples [start, end) to decode, of which [onset, offset) is speech (the rest is the
    padding around it); windows of one unpaused stretch share ``group`` (-1: a segment of
    its own) and are merged in order."""

    start: int
    end: int
    group: int = -1
    onset: int | None = None  # None: start
    offset: int | None = None  # None: end

    @property
    def speech(self) -> tuple[int, int]:
        return (self.start if self.onset is None else self.onset,
                self.end if self.offset is None else self.offset)


def frame_energies(samples: np.ndarray, hop: int) -> np.ndarray:
    """Energy in dBFS of each complete ``hop``-sample frame of ``samples`` (a last partial
    frame counts as a frame of its own)."""
    n = len(samples)
    if n == 0:
        return np.zeros(0, np.float32)
    padded = np.zeros(-(-n // hop) * hop, np.float32)
    padded[:n] = samples
    frames = padded.reshape(-1, hop)
    power = (frames.astype(np.float64) ** 2).mean(axis=1)
    if n % hop:  # a partial last frame: its mean over the samples it has
        power[-1] = float((samples[n - n % hop:].astype(np.float64) ** 2).mean())
    return np.maximum(10.0 * np.log10(power + 1e-12), FLOOR_DB).astype(np.float32)


def noise_floor(energies: np.ndarray, block: int = 50, reach: int = 6) -> np.ndarray:
    """Each frame's noise floor: the quietest 10th-percentile energy among the ``block``-frame
    blocks within ``reach`` blocks of it (0.5 s blocks, +-3 s), so a background that
    changes along a recording is followed."""
    n = len(energies)
    blocks = -(-n // block)
    padded = np.full(blocks * block, np.nan, np.float32)
    padded[:n] = energies
    per_block = np.nanpercentile(padded.reshape(blocks, block), 10, axis=1)
    edged = np.concatenate([np.full(reach, np.inf), per_block, np.full(reach, np.inf)])
    local = np.lib.stride_tricks.sliding_window_view(edged, 2 * reach + 1).min(axis=1)
    return np.repeat(local, block)[:n]


def speech_mask(energies: np.ndarray, opts: SegmentOptions) -> np.ndarray:
    """True for frames louder than their local noise floor by ``threshold_db`` (and than
    ``min_level_db``)."""
    if not len(energies):
        return np.zeros(0, bool)
    return energies > np.maximum(noise_floor(energies) + opts.threshold_db, opts.min_level_db)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _close(runs: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """``runs`` with the gaps shorter than ``gap`` frames filled."""
    closed: list[list[int]] = []
    for start, end in runs:
        if closed and start - closed[-1][1] < gap:
            closed[-1][1] = end
        else:
            closed.append([start, end])
    return [(a, b) for a, b in closed]


def speech_regions(energies: np.ndarray, opts: SegmentOptions) -> list[tuple[int, int, int, int]]:
    """[start, end) frames of speech, short gaps closed, short bursts dropped: padded
    (start, end) and the speech itself (onset, offset)."""
    runs = _close(_runs(speech_mask(energies, opts)), round(0.1 / FRAME_SECONDS))  # syllables
    bursts = [r for r in runs if r[1] - r[0] >= round(opts.min_speech / FRAME_SECONDS)]  # no clicks
    kept = _close(bursts, round(opts.min_silence / FRAME_SECONDS))
    pad, total = round(opts.pad / FRAME_SECONDS), len(energies)
    out = []
    for i, (start, end) in enumerate(kept):
        left = (kept[i - 1][1] + start) // 2 if i else 0
        right = (end + kept[i + 1][0]) // 2 if i + 1 < len(kept) else total
        out.append((max(left, start - pad), min(right, end + pad), start, end))
    return out


def plan(energies: np.ndarray, hop: int, num_samples: int, rate: int,
         opts: SegmentOptions) -> list[Planned]:
    """The segments of a recording of ``num_samples`` samples at ``rate`` whose frame
    energies (``frame_energies`` with ``hop`` samples a frame) are ``energies``, in order."""
    max_frames = max(1, int(opts.max_seconds / FRAME_SECONDS))
    overlap = min(round(opts.overlap / FRAME_SECONDS), max_frames // 4)
    quiet = ~speech_mask(energies, opts)
    smooth = np.convolve(energies, np.ones(10) / 10, mode="same") if len(energies) >= 10 else energies
    frames: list[tuple[int, int, int, int, int]] = []
    group = 0
    for start, end, onset, offset in speech_regions(energies, opts):
        windowed = False
        while end - start > max_frames:
            lo, hi = start + max_frames // 2, start + max_frames
            cut = lo + int(np.argmin(smooth[lo:hi]))
            if quiet[max(cut - 2, 0):cut + 3].any():  # a pause, if a short one: cut there
                frames.append((start, cut, group if windowed else -1, max(onset, start), cut))
                start = onset = cut
                if windowed:  # that closed the group; what follows is a stretch of its own
                    group, windowed = group + 1, False
            else:  # speech without a pause: overlapping windows of one group
                frames.append((start, hi, group, max(onset, start), hi))
                start, windowed = hi - overlap, True
        frames.append((start, end, group if windowed else -1, max(onset, start), min(offset, end)))
        group += 1 if windowed else 0

    def at(frame: int) -> int:
        return min(frame * hop, num_samples)

    return [Planned(at(s), at(e), g, at(on), at(off)) for s, e, g, on, off in frames
            if s * hop < num_samples]

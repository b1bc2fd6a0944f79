"""CutSets -> padded batches of waveforms and token ids, bucketed by duration.

A lhotse ``DynamicBucketingSampler`` groups cuts of similar length into CutSets of at
most ``max_duration`` seconds; ``CutDataset`` turns each CutSet into a ``Batch``. Audio
that fails to load at run time is warned about and dropped from its batch; a batch
left empty is skipped by the loader itself, so consumers never see ``None``.

>>> loader = make_loader(cuts, tokenizer, 16000, max_duration=60.0, shuffle=True)  # doctest: +SKIP
>>> loader.sampler.set_epoch(epoch)  # doctest: +SKIP
>>> for batch in loader:  # doctest: +SKIP
...     batch = batch.to("cuda")

Resuming mid-epoch: save ``sampler_state(loader)`` with the checkpoint and call
``restore_sampler(loader, state)`` on a fresh loader; it yields the remaining batches.
The state is exact with ``num_workers=0``; with workers the sampler runs ahead by the
prefetched batches, which a resumed run then skips.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import warnings
from dataclasses import dataclass

import numpy as np
import soxr
import torch
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.utils import compute_num_samples
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from earshot.audio import load_audio
from earshot.errors import AudioError

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """One padded mini-batch, rows sorted by waveform length (longest first)."""

    ids: list[str]
    wavs: torch.Tensor  # (B, S) float32, zero padded
    wav_lens: torch.Tensor  # (B,) long, samples
    texts: list[str]  # raw transcripts (not normalised)
    tokens: torch.Tensor  # (B, U) long, padded with tokenizer.pad_id; no bos/eos
    token_lens: torch.Tensor  # (B,) long

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        move = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **move)

    def select(self, index: torch.Tensor) -> Batch:
        """Rows ``index`` (B',) of the batch, order kept; padding trimmed to the longest."""
        rows = index.tolist()
        wav_lens, token_lens = self.wav_lens[index], self.token_lens[index]
        return Batch(
            ids=[self.ids[i] for i in rows],
            wavs=self.wavs[index, : int(wav_lens.max())],
            wav_lens=wav_lens,
            texts=[self.texts[i] for i in rows],
            tokens=self.tokens[index, : int(token_lens.max())],
            token_lens=token_lens,
        )

    def pin_memory(self) -> Batch:
        # Called by DataLoader(pin_memory=True) on custom batch types.
        pinned = {f.name: getattr(self, f.name).pin_memory()
                  for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **pinned)


def load_cut_audio(cut: Cut, sample_rate: int) -> torch.Tensor:
    """The cut's waveform (S,) at ``sample_rate``; only its [start, start+duration) span.

    Raises ``AudioError`` when the file cannot be used or the span is empty.
    """
    recording = cut.recording
    if recording is None or recording.sources[0].type != "file":
        raise AudioError(cut.id, "cut has no audio file")
    path = recording.sources[0].source
    wav = load_audio(path, sample_rate)
    if cut.start == 0 and abs(cut.duration - recording.duration) < 1e-6:
        return wav  # whole file: no rounding of the span
    first = compute_num_samples(cut.start, sample_rate)
    span = wav[first: first + compute_num_samples(cut.duration, sample_rate)]
    if span.numel() == 0:
        raise AudioError(path, f"segment {cut.start:.3f}s+{cut.duration:.3f}s is outside the audio")
    return span


def speed_perturb(wav: torch.Tensor, sample_rate: int, factor: float) -> torch.Tensor:
    """Play ``wav`` (S,) ``factor`` times faster (pitch moves too), as Kaldi's 3-way
    speed perturbation does: resample from sample_rate * factor to sample_rate."""
    if factor == 1.0:
        return wav
    out = soxr.resample(wav.numpy(), round(sample_rate * factor), sample_rate, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


class CutDataset(Dataset):
    """Map-style dataset indexed by a CutSet (from the sampler); returns Batch or None.

    With ``speed_factors`` each loaded cut is played at a factor drawn from them (the
    draw uses Python's ``random``, whose state training checkpoints keep).
    """

    def __init__(self, tokenizer, sample_rate: int, speed_factors: tuple[float, ...] = ()):
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.speed_factors = tuple(speed_factors)

    def __getitem__(self, cuts: CutSet) -> Batch | None:
        loaded = [(cut, wav) for cut in cuts if (wav := self._load(cut)) is not None]
        if not loaded:
            return None
        loaded.sort(key=lambda pair: pair[1].numel(), reverse=True)
        return collate([c.id for c, _ in loaded], [w for _, w in loaded],
                       [c.supervisions[0].text for c, _ in loaded], self.tokenizer)

    def _load(self, cut: Cut) -> torch.Tensor | None:
        try:
            wav = load_cut_audio(cut, self.sample_rate)
            if self.speed_factors:
                wav = speed_perturb(wav, self.sample_rate, random.choice(self.speed_factors))
            return wav
        except AudioError as err:
            logger.warning("dropping cut '%s' from its batch: %s: %s", cut.id, err.path, err.reason)
            return None


def collate(ids: list[str], wavs: list[torch.Tensor], texts: list[str], tokenizer) -> Batch:
    """Pad waveforms (S,) with zeros and token ids with ``tokenizer.pad_id``."""
    token_lists = [torch.tensor(tokenizer.encode(t), dtype=torch.long) for t in texts]
    return Batch(
        ids=ids,
        wavs=pad_sequence(wavs, batch_first=True),
        wav_lens=torch.tensor([w.numel() for w in wavs], dtype=torch.long),
        texts=texts,
        tokens=pad_sequence(token_lists, batch_first=True, padding_value=tokenizer.pad_id),
        token_lens=torch.tensor([t.numel() for t in token_lists], dtype=torch.long),
    )


class _SkipEmptyLoader(DataLoader):
    """A DataLoader that leaves out batches whose every cut failed to load (None)."""

    def __iter__(self):
        return (batch for batch in super().__iter__() if batch is not None)


def _as_is(item):
    return item


def make_loader(cuts: CutSet, tokenizer, sample_rate: int, max_duration: float,
                shuffle: bool, seed: int = 0, num_buckets: int = 10, num_workers: int = 0,
                drop_last: bool = False, speed_factors: tuple[float, ...] = ()) -> DataLoader:
    """A DataLoader of ``Batch`` with at most ``max_duration`` seconds of audio each.

    The sampler (``loader.sampler``) is a ``DynamicBucketingSampler``: call
    ``set_epoch(e)`` before each epoch for a new shuffle. A cut longer than
    ``max_duration`` comes alone in its batch (filter them first: ``drop_long_cuts``).
    """
    with warnings.catch_warnings():
        # Manifests here fit in memory; lhotse's advice to read them lazily is noise.
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
        sampler = _sampler(cuts, max_duration, shuffle, seed, num_buckets, drop_last)
    dataset = CutDataset(tokenizer, sample_rate, speed_factors)
    return _SkipEmptyLoader(dataset, sampler=sampler,
                            batch_size=None, collate_fn=_as_is, num_workers=num_workers)


def _sampler(cuts: CutSet, max_duration: float, shuffle: bool, seed: int, num_buckets: int,
             drop_last: bool):
    """Duration-bucketed sampler; lhotse needs 2 <= buckets <= cuts, so tiny sets get one
    plain duration-budgeted sampler instead."""
    if len(cuts) < 2 or num_buckets < 2:
        return SimpleCutSampler(cuts, max_duration=max_duration, shuffle=shuffle, seed=seed,
                                drop_last=drop_last)
    return DynamicBucketingSampler(cuts, max_duration=max_duration, shuffle=shuffle, seed=seed,
                                   num_buckets=min(num_buckets, len(cuts)), drop_last=drop_last)


def sampler_state(loader: DataLoader) -> dict:
    """The sampler's position (epoch and batches drawn), to store in a checkpoint."""
    return loader.sampler.state_dict()


def restore_sampler(loader: DataLoader, state: dict) -> None:
    """Make ``loader`` continue from ``state``: its next iteration yields the rest of that
    epoch. (``state`` is copied: lhotse consumes the dict it is given.)"""
    loader.sampler.load_state_dict(copy.deepcopy(state))


def batches_in_epoch(loader: DataLoader, epoch: int) -> int:
    """How many batches ``loader`` yields in ``epoch`` (this rank's share), counted by
    running a copy of its sampler over the cut metadata; no audio is read. Batches whose
    every cut then fails to load are skipped at run time, so the real count can be lower."""
    sampler = copy.deepcopy(loader.sampler)
    sampler.set_epoch(epoch)
    return sum(1 for _ in sampler)


def drop_long_cuts(cuts: CutSet, max_seconds: float) -> tuple[CutSet, int]:
    """Cuts of at most ``max_seconds``, and how many longer ones were left out."""
    kept = CutSet.from_cuts(c for c in cuts if c.duration <= max_seconds)
    return kept, len(cuts) - len(kept)

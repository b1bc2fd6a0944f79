"""Duration-bucketed batching: limits, absolute lengths, bad audio, resumable sampling,
batches dealt to ranks."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from earshot.data.batching import (
    Batch,
    drop_long_cuts,
    load_cut_audio,
    batches_in_epoch,
    make_loader,
    set_epoch,
    speed_perturb,
)
from earshot.data.manifests import import_jsonl

RATE = 8000
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero"]


class FakeTokenizer:
    """The tokenizer contract (encode, pad_id) over lowercase letters."""

    pad_id = 30

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") for c in text.lower() if c.isalpha()]


@pytest.fixture
def corpus(tmp_path) -> Path:
    """16 noise files of 0.1-0.85 s at 8 kHz and a JSONL manifest over them."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(16):
        samples = int(RATE * (0.1 + 0.05 * i))
        sf.write(tmp_path / f"u{i}.wav", (0.1 * rng.standard_normal(samples)).astype(np.float32), RATE)
        lines.append(json.dumps({"id": f"u{i}", "audio": f"u{i}.wav", "text": WORDS[i % 10]}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_batches_respect_max_duration_and_cover_every_cut(corpus):
    cuts = import_jsonl(corpus / "m.jsonl")
    loader = make_loader(cuts, FakeTokenizer(), RATE, max_duration=1.5, shuffle=True, num_buckets=3)
    batches = list(loader)
    assert len(batches) > 3
    for batch in batches:
        assert sum(cuts[i].duration for i in batch.ids) <= 1.5 + 1e-6
    seen = [i for b in batches for i in b.ids]
    assert sorted(seen) == sorted(cuts.ids)


def test_batch_contents_and_absolute_lengths(corpus):
    cuts = import_jsonl(corpus / "m.jsonl")
    tok = FakeTokenizer()
    for batch in make_loader(cuts, tok, 16000, max_duration=2.0, shuffle=False):
        assert batch.wavs.dtype == torch.float32 and batch.wav_lens.dtype == torch.long
        assert batch.tokens.dtype == torch.long and batch.token_lens.dtype == torch.long
        assert batch.wavs.shape == (len(batch), int(batch.wav_lens.max()))
        assert torch.all(batch.wav_lens[:-1] >= batch.wav_lens[1:])  # longest first
        for row, uid in enumerate(batch.ids):
            n = int(batch.wav_lens[row])
            assert n == 2 * cuts[uid].recording.num_samples  # resampled 8 kHz -> 16 kHz
            assert torch.all(batch.wavs[row, n:] == 0)
            ids = tok.encode(batch.texts[row])
            assert batch.texts[row] == cuts[uid].supervisions[0].text
            assert int(batch.token_lens[row]) == len(ids)
            assert batch.tokens[row, : len(ids)].tolist() == ids
            assert torch.all(batch.tokens[row, len(ids):] == tok.pad_id)


@pytest.mark.filterwarnings("ignore:We have exceeded the max_duration")
def test_corrupt_audio_is_dropped_with_a_warning(corpus, caplog):
    cuts = import_jsonl(corpus / "m.jsonl")
    (corpus / "u3.wav").write_bytes(b"corrupted after preparation" * 20)
    (corpus / "u5.wav").unlink()
    loader = make_loader(cuts, FakeTokenizer(), RATE, max_duration=0.3, shuffle=False)
    # Some batch holds only bad cuts: it must be skipped, not yielded as None.
    assert any(set(c.ids) <= {"u3", "u5"} for c in loader.sampler)
    with caplog.at_level(logging.WARNING, logger="earshot.data.batching"):
        batches = list(loader)
    assert all(isinstance(b, Batch) and len(b) > 0 for b in batches)
    seen = {i for b in batches for i in b.ids}
    assert seen == set(cuts.ids) - {"u3", "u5"}
    assert f"'u3'" in caplog.text and str(corpus / "u3.wav") in caplog.text
    assert "file not found" in caplog.text and str(corpus / "u5.wav") in caplog.text
    assert {i for b in batches for i in b.dropped} < {"u3", "u5"}  # the rest were in empty batches
    # A training loader keeps the empty batches, so every batch of the sampler is counted.
    kept = list(make_loader(cuts, FakeTokenizer(), RATE, max_duration=0.3, shuffle=False,
                            keep_empty=True))
    assert len(kept) == len(list(loader.sampler))
    assert sorted(i for b in kept for i in b.dropped) == ["u3", "u5"]
    assert [b.ids for b in kept if len(b)] == [b.ids for b in batches]


def _ids(batches) -> list[list[str]]:
    return [list(b.ids) for b in batches]


def test_an_epoch_started_part_way_yields_the_remaining_batches(corpus):
    cuts = import_jsonl(corpus / "m.jsonl")

    def loader(workers=0):
        return make_loader(cuts, FakeTokenizer(), RATE, max_duration=1.0, shuffle=True, seed=3,
                           num_buckets=2, num_workers=workers, speed_factors=(0.9, 1.0, 1.1))

    full = loader()
    set_epoch(full, 1)
    batches = list(full)
    assert batches_in_epoch(full, 1) == len(batches) >= 5
    resumed = loader(workers=1)  # workers prefetch; the position is counted by the consumer
    set_epoch(resumed, 1, skip=3)
    tail = list(resumed)
    assert _ids(tail) == _ids(batches[3:])
    assert all(torch.equal(a.wavs, b.wavs) for a, b in zip(tail, batches[3:]))  # same speed factors
    assert sorted(sum(_ids(batches), [])) == sorted(cuts.ids)
    # the next epoch is whole again, reshuffled, and equals a fresh loader's epoch 2
    set_epoch(resumed, 2)
    fresh = loader()
    set_epoch(fresh, 2)
    assert _ids(resumed) == _ids(fresh) != _ids(batches)


def test_ranks_get_disjoint_equal_shares_of_the_global_batches(corpus):
    cuts = import_jsonl(corpus / "m.jsonl")

    def loader(world_size=1, rank=0, even=True):
        return make_loader(cuts, FakeTokenizer(), RATE, max_duration=1.0, shuffle=True, seed=3,
                           num_buckets=2, world_size=world_size, rank=rank, even=even)

    single = loader()
    set_epoch(single, 1)
    everything = _ids(single)
    shares = []
    for rank in range(3):
        part = loader(3, rank)
        set_epoch(part, 1)
        shares.append(_ids(part))
    rounds = len(everything) // 3
    assert [len(s) for s in shares] == [rounds] * 3  # the last, incomplete round is dropped
    assert [shares[i % 3][i // 3] for i in range(3 * rounds)] == everything[: 3 * rounds]
    uneven = [len(_ids(p)) for p in (loader(3, r, even=False) for r in range(3))]
    assert sum(uneven) == len(everything)  # evaluation: nothing dropped

def test_sub_segment_cut_loads_only_its_span(corpus):
    cut = import_jsonl(corpus / "m.jsonl")["u10"]  # 0.6 s
    part = cut.truncate(offset=0.1, duration=0.2)
    full = load_cut_audio(cut, RATE)
    assert torch.equal(load_cut_audio(part, RATE), full[800:2400])


def test_batch_to_and_len(corpus):
    cuts = import_jsonl(corpus / "m.jsonl")
    batch = next(iter(make_loader(cuts, FakeTokenizer(), RATE, max_duration=2.0, shuffle=False)))
    moved = batch.to("cpu")
    assert len(moved) == len(batch.ids) and moved.ids == batch.ids
    assert torch.equal(moved.wavs, batch.wavs)


def test_drop_long_cuts(corpus):
    cuts = import_jsonl(corpus / "m.jsonl")
    kept, longer = drop_long_cuts(cuts, 0.48)
    assert len(longer) == 8 and all(c.duration > 0.48 for c in longer)
    assert len(kept) == 8 and all(c.duration <= 0.48 for c in kept)
    assert drop_long_cuts(kept, 0.48) == (kept, [])


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_duration_by_the_factor(factor):
    wav = torch.sin(torch.arange(8000) * 0.05)
    out = speed_perturb(wav, RATE, factor)
    assert abs(out.numel() - 8000 / factor) <= 2
    assert speed_perturb(wav, RATE, 1.0) is wav


def test_loader_applies_speed_factors(corpus):
    cuts = import_jsonl(corpus / "m.jsonl")
    plain = {i: int(n) for b in make_loader(cuts, FakeTokenizer(), RATE, 100.0, shuffle=False)
             for i, n in zip(b.ids, b.wav_lens)}
    slow = {i: int(n) for b in make_loader(cuts, FakeTokenizer(), RATE, 100.0, shuffle=False,
                                           speed_factors=(0.8,))
            for i, n in zip(b.ids, b.wav_lens)}
    assert all(abs(slow[i] - plain[i] / 0.8) <= 2 for i in plain)


class _NoDraw:
    """A sampler that may be told its epoch but not drawn from."""

    def __init__(self, inner):
        self.inner = inner

    def set_epoch(self, epoch):
        self.inner.set_epoch(epoch)

    def __iter__(self):
        raise AssertionError("the epoch was drawn again instead of read from its plan")


def test_an_epoch_plan_is_what_the_sampler_draws_and_resumes_by_seeking(corpus, tmp_path):
    cuts = import_jsonl(corpus / "m.jsonl")

    def loader(plan_dir=None, workers=0):
        return make_loader(cuts, FakeTokenizer(), RATE, 1.0, shuffle=True, seed=4, num_buckets=2,
                           num_workers=workers, speed_factors=(0.9, 1.1), plan_dir=plan_dir)

    drawn = loader()
    set_epoch(drawn, 2)
    expected = [(list(b.ids), b.wav_lens.tolist()) for b in drawn]
    planned = loader(tmp_path / "plans")
    assert batches_in_epoch(planned, 2) == len(expected)  # counting writes the plan
    set_epoch(planned, 2)
    assert [(list(b.ids), b.wav_lens.tolist()) for b in planned] == expected
    resumed = loader(tmp_path / "plans", workers=1)
    resumed.sampler.inner = _NoDraw(resumed.sampler.inner)  # resuming reads the plan only
    set_epoch(resumed, 2, skip=3)
    assert [(list(b.ids), b.wav_lens.tolist()) for b in resumed] == expected[3:]
    set_epoch(planned, 3)
    list(planned)
    assert sorted(p.name for p in (tmp_path / "plans").iterdir()) == \
        ["epoch-0003-rank-0.batches.gz", "epoch-0003-rank-0.index.json"]  # one epoch kept


def test_buckets_and_the_batch_budget_see_the_perturbed_lengths(corpus):
    cuts = import_jsonl(corpus / "m.jsonl")
    loader = make_loader(cuts, FakeTokenizer(), RATE, 1.5, shuffle=True, seed=2, num_buckets=2,
                         speed_factors=(0.5, 1.0, 2.0))
    for epoch in (1, 2):
        set_epoch(loader, epoch)
        for cuts_ in loader.sampler:  # what the sampler weighed is what gets loaded
            loaded = loader.dataset[cuts_].wav_lens.tolist()
            expected = sorted((round(c.duration * RATE) for c in cuts_), reverse=True)
            assert all(abs(a - b) <= 2 for a, b in zip(loaded, expected)), (loaded, expected)
    set_epoch(loader, 1)
    first = [b.wav_lens.tolist() for b in loader]
    set_epoch(loader, 2)
    assert [b.wav_lens.tolist() for b in loader] != first  # each epoch draws its own factors

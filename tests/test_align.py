"""CTC forced alignment: known paths, batch invariance, a brute-force reference, words."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from earshot.inference.align import (ctc_forced_align, spread_spans, token_confidences,
                                     words_from_alignment)
from earshot.tokenizer import CharTokenizer, SentencePieceTokenizer

BLANK = 0


def peaky(frames: list[int], vocab: int, low: float = 0.01) -> torch.Tensor:
    """(T, V) log-probs putting most mass on ``frames[t]`` at each frame."""
    probs = torch.full((len(frames), vocab), low)
    for t, k in enumerate(frames):
        probs[t, k] = 1.0
    return (probs / probs.sum(1, keepdim=True)).log()


def brute_force(lp: torch.Tensor, target: list[int]) -> list[list[int]]:
    """Spans of the best frame labelling that collapses to ``target``, by enumeration."""
    best, best_path = -math.inf, None
    for path in itertools.product(range(lp.shape[1]), repeat=lp.shape[0]):
        collapsed = [k for i, k in enumerate(path) if k != BLANK and (i == 0 or path[i - 1] != k)]
        if collapsed != target:
            continue
        score = sum(float(lp[t, k]) for t, k in enumerate(path))
        if score > best:
            best, best_path = score, path
    assert best_path is not None
    spans, u = [], -1
    for t, k in enumerate(best_path):
        if k == BLANK:
            continue
        if t == 0 or best_path[t - 1] != k:
            u += 1
            spans.append([t, t])
        spans[u][1] = t
    return spans


def check_spans(spans: torch.Tensor, num_tokens: int, frames: int) -> None:
    assert spans.shape == (num_tokens, 2) and spans.dtype == torch.long
    if num_tokens == 0:
        return
    assert bool((spans[:, 0] <= spans[:, 1]).all())
    assert int(spans.min()) >= 0 and int(spans.max()) < frames
    assert bool((spans[1:, 0] > spans[:-1, 1]).all())  # ordered, no overlap


def test_known_path_with_a_blank_between_repeats():
    # argmax says 1 1 2 2 2 2 2 2; the repeated 2 needs a blank, cheapest at frame 4
    lp = peaky([1, 1, 2, 2, 2, 2, 2, 2], 4)
    lp[4] = torch.tensor([0.3, 0.05, 0.6, 0.05]).log()
    spans = ctc_forced_align(lp[None], torch.tensor([8]), [[1, 2, 2]], BLANK)
    assert spans[0].tolist() == [[0, 1], [2, 3], [5, 7]]
    lp = peaky([1, 1, 2, 2, 0, 2, 2, 0], 4)
    assert ctc_forced_align(lp[None], torch.tensor([8]), [[1, 2, 2]], BLANK)[0].tolist() == \
        [[0, 1], [2, 3], [5, 6]]


def random_case(gen: torch.Generator, batch: int, max_t: int, vocab: int, max_u: int):
    lens = torch.randint(1, max_t + 1, (batch,), generator=gen)
    lp = torch.randn(batch, max_t, vocab, generator=gen).mul(2).log_softmax(-1)
    targets = []
    for b in range(batch):
        u = int(torch.randint(0, min(max_u, int(lens[b])) + 1, (1,), generator=gen))
        targets.append(torch.randint(1, vocab, (u,), generator=gen).tolist())
    return lp, lens, targets


def test_batched_equals_one_at_a_time_and_is_well_formed():
    gen = torch.Generator().manual_seed(1)
    lp, lens, targets = random_case(gen, 7, 40, 6, 12)
    targets[2], lens[3] = [], 17  # an empty target and a padded row
    targets[3] = [1, 1, 2, 2, 3]
    batched = ctc_forced_align(lp, lens, targets, BLANK)
    for b in range(len(targets)):
        one = ctc_forced_align(lp[b:b + 1, :int(lens[b])], lens[b:b + 1], targets[b:b + 1], BLANK)
        assert torch.equal(batched[b], one[0]), b
        check_spans(batched[b], len(targets[b]), int(lens[b]))
    assert batched[2].shape == (0, 2)


def test_matches_brute_force_on_small_cases():
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        lp, lens, targets = random_case(gen, 4, 6, 3, 3)
        got = ctc_forced_align(lp, lens, targets, BLANK)
        for b, target in enumerate(targets):
            if not target:
                assert got[b].shape == (0, 2)
                continue
            if len(target) + sum(x == y for x, y in zip(target, target[1:])) > int(lens[b]):
                continue  # no valid path: covered by the fallback test
            assert got[b].tolist() == brute_force(lp[b, :int(lens[b])], target), (b, target)


def test_too_few_frames_and_empty_rows_fall_back_without_raising():
    lp = torch.randn(3, 4, 5).log_softmax(-1)
    targets = [[1, 1, 1], [1, 2, 3, 4, 1, 2], [3]]
    spans = ctc_forced_align(lp, torch.tensor([4, 4, 0]), targets, BLANK)
    check_spans(spans[0], 3, 4)  # 5 frames needed: spread evenly over 4
    assert spans[0].tolist() == [[0, 0], [1, 1], [2, 3]]
    assert spans[1].shape == (6, 2) and int(spans[1].max()) < 4
    assert bool((spans[1][1:, 0] >= spans[1][:-1, 0]).all())
    assert spans[2].tolist() == [[0, 0]]
    assert spread_spans(2, 0).tolist() == [[0, 0], [0, 0]]
    lp[0, :, 2] = -math.inf  # an impossible token also falls back
    assert ctc_forced_align(lp[:1], torch.tensor([4]), [[2]], BLANK)[0].tolist() == [[0, 3]]


def test_token_confidences_are_mean_posteriors():
    lp = peaky([1, 1, 0, 2], 3)
    conf = token_confidences(lp, torch.tensor([[0, 1], [3, 3]]), [1, 2])
    assert conf == pytest.approx([float(lp[0, 1].exp()), float(lp[3, 2].exp())])
    assert token_confidences(lp[:0], torch.zeros(1, 2, dtype=torch.long), [1]) == [0.0]


def align_words(tok, ids: list[int], frames: list[int], offset: int = 1000,
                num_samples: int = 20000):
    lp = peaky(frames, tok.vocab_size)
    spans = ctc_forced_align(lp[None], torch.tensor([len(frames)]), [ids], tok.blank_id)[0]
    check_spans(spans, len(ids), len(frames))
    conf = token_confidences(lp, spans, ids)
    words = words_from_alignment(ids, spans, conf, tok, samples_per_frame=640.0,
                                 offset_sample=offset, sample_rate=16000, num_samples=num_samples)
    starts = [w.start_sample for w in words]
    assert starts == sorted(starts)
    for w in words:
        assert offset <= w.start_sample <= w.end_sample <= offset + num_samples
        assert 0.0 <= w.confidence <= 1.0 and w.sample_rate == 16000
    return words


def test_words_from_a_character_tokenizer():
    tok = CharTokenizer(sorted(set("HELLO WORLD")), case="upper")
    ids = tok.encode("HELLO WORLD")
    frames = [BLANK]
    for k in ids:  # each char two frames, a blank after each
        frames += [k, k, BLANK]
    words = align_words(tok, ids, frames)
    assert [w.text for w in words] == ["HELLO", "WORLD"]
    assert words[0].start_sample == 1000 + 640 and words[0].end_sample == 1000 + 640 * 15
    assert words[1].start_sample == 1000 + 640 * 19
    assert all(w.confidence > 0.8 for w in words)
    short = align_words(tok, ids, frames, num_samples=640 * 20)  # audio ends inside WORLD
    assert short[1].end_sample == 1000 + 640 * 20


def test_words_from_a_sentencepiece_tokenizer():
    texts = ["hello world", "hold the door", "the world is wide"] * 5
    tok = SentencePieceTokenizer.train(texts, 22)
    ids = tok.encode("hello world the door")
    frames = [k for k in ids for _ in range(2)]
    words = align_words(tok, ids, frames)
    assert [w.text for w in words] == ["hello", "world", "the", "door"]
    assert " ".join(w.text for w in words) == tok.decode(ids)


class Pieces:
    """A hand-made word-piece vocabulary (blank at 0)."""

    tokens = ["<blank>", "\u2581he", "llo", "\u2581wor", "ld", "\u2581a", "<unk>"]

    def decode(self, ids):
        text = "".join(self.tokens[i] for i in ids if i not in (0, 6))
        return text.replace("\u2581", " ").strip()


def test_words_from_word_pieces_keep_continuations_and_skip_empty_words():
    tok = Pieces()
    ids = [6, 1, 2, 5, 3, 4]  # <unk> | he llo | a | wor ld
    spans = torch.tensor([[0, 0], [1, 2], [3, 3], [4, 4], [6, 7], [8, 9]])
    words = words_from_alignment(ids, spans, [0.5, 1.0, 0.4, 0.9, 0.2, 0.8], tok, 10.0, 0, 8000, 95)
    assert [w.text for w in words] == ["hello", "a", "world"]
    assert [(w.start_sample, w.end_sample) for w in words] == [(10, 40), (40, 50), (60, 95)]
    assert abs(words[0].confidence - (2 * 1.0 + 0.4) / 3) < 1e-9

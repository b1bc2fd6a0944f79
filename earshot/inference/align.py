"""CTC forced alignment (Viterbi, batched, pure torch) and word timestamps from it.

``ctc_forced_align`` finds, per row, the best CTC path of a known token sequence and
returns each token's first and last frame; ``token_confidences`` gives each token's mean
posterior over its frames; ``words_from_alignment`` groups tokens into ``Word`` objects
at sample positions, following the tokenizer's word boundaries (the space token of a
character tokenizer, the ``▁`` prefix of a SentencePiece piece).

>>> import torch
>>> lp = torch.full((1, 5, 3), -9.0)
>>> for t, k in enumerate([1, 1, 0, 2, 2]):
...     lp[0, t, k] = 0.0
>>> ctc_forced_align(lp, torch.tensor([5]), [[1, 2]], blank=0)[0].tolist()
[[0, 1], [3, 4]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from earshot.inference.results import Word

__all__ = ["ctc_forced_align", "spread_spans", "token_confidences", "words_from_alignment"]

WORD_START = "\u2581"  # SentencePiece's word-start mark


class PieceTokenizer(Protocol):
    """What word grouping needs from a tokenizer (both earshot tokenizers qualify)."""

    @property
    def tokens(self) -> list[str]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def spread_spans(num_tokens: int, num_frames: int) -> Tensor:
    """Fallback spans: ``num_tokens`` tokens spread evenly over ``num_frames`` frames, as a
    (U, 2) long tensor of inclusive [first, last] frames. With fewer frames than tokens,
    neighbours share frames; with no frames every token gets (0, 0)."""
    if num_frames <= 0:
        return torch.zeros(num_tokens, 2, dtype=torch.long)
    i = torch.arange(num_tokens)
    first = i * num_frames // num_tokens
    last = torch.maximum((i + 1) * num_frames // num_tokens - 1, first)
    return torch.stack((first, last), 1)


def ctc_forced_align(log_probs: Tensor, lens: Tensor, targets: Sequence[Sequence[int]],
                     blank: int) -> list[Tensor]:
    """Viterbi CTC alignment of ``targets[b]`` to frames [0, lens[b]) of ``log_probs``
    (B, T, V), all rows in one dynamic programme. Returns per row a CPU long tensor (U, 2):
    the first and last frame (inclusive) where the best path emits each target token.

    An empty target gives a (0, 2) tensor. A row with no valid path (fewer frames than
    tokens plus repeated neighbours, or -inf scores) gets ``spread_spans`` instead of an
    error; a row with ``lens[b] == 0`` gets (0, 0) for every token."""
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    B, T, V = log_probs.shape
    lens_cpu = lens.detach().to("cpu", torch.long).reshape(-1)
    if len(targets) != B or lens_cpu.numel() != B:
        raise ValueError(f"{B} rows of log_probs but {lens_cpu.numel()} lens, "
                         f"{len(targets)} targets")
    if B and (int(lens_cpu.min()) < 0 or int(lens_cpu.max()) > T):
        raise ValueError(f"lens must lie in [0, {T}], got {lens_cpu.tolist()}")
    for row in targets:
        if any(not 0 <= int(k) < V or int(k) == blank for k in row):
            raise ValueError(f"target ids must lie in [0, {V}) and differ from blank={blank}")
    out = [spread_spans(len(row), 0) for row in targets]
    todo = [b for b in range(B) if len(targets[b]) and int(lens_cpu[b]) > 0]
    if not todo:
        return out
    dev, n = log_probs.device, len(todo)
    num = torch.tensor([len(targets[b]) for b in todo])
    S = 2 * int(num.max()) + 1
    ext = torch.full((n, S), blank, dtype=torch.long)  # blank, y1, blank, y2, ..., blank
    for i, b in enumerate(todo):
        ext[i, 1:2 * len(targets[b]):2] = torch.tensor([int(k) for k in targets[b]])
    skip = torch.zeros(n, S, dtype=torch.bool)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    ext, skip = ext.to(dev), skip.to(dev)
    lp = log_probs if n == B else log_probs.index_select(0, torch.tensor(todo, device=dev))
    row_lens = lens_cpu[todo]
    steps = int(row_lens.max())
    lens_dev = row_lens.to(dev).unsqueeze(1)
    neg = float("-inf")
    alpha = torch.full((n, S), neg, dtype=torch.float32, device=dev)
    alpha[:, :2] = lp[:, 0].gather(1, ext[:, :2]).float()
    pad = torch.full((n, 2), neg, dtype=torch.float32, device=dev)
    back = torch.zeros(steps, n, S, dtype=torch.uint8, device=dev)  # 0 stay, 1 s-1, 2 s-2
    for t in range(1, steps):
        prev1 = torch.cat((pad[:, :1], alpha[:, :-1]), 1)
        prev2 = torch.cat((pad, alpha[:, :-2]), 1).masked_fill(~skip, neg)
        from1, best = prev1 > alpha, alpha  # ties keep the earlier choice: stay, s-1, s-2
        best = torch.where(from1, prev1, best)
        from2 = prev2 > best
        best = torch.where(from2, prev2, best)
        active = t < lens_dev
        alpha = torch.where(active, best + lp[:, t].gather(1, ext).float(), alpha)
        back[t] = torch.where(from2, 2, from1.to(torch.uint8)).masked_fill(~active, 0)
    ends = torch.stack((2 * num - 1, 2 * num), 1).to(dev)  # last token, final blank
    end_scores = alpha.gather(1, ends)
    final = ends.gather(1, end_scores.argmax(1, keepdim=True)).squeeze(1).cpu().numpy()
    ok = torch.isfinite(end_scores.max(1).values).cpu().tolist()
    states = _backtrack(back.cpu().numpy(), final)
    for i, b in enumerate(todo):
        u, frames = int(num[i]), int(row_lens[i])
        out[b] = _spans(states[:frames, i], u) if ok[i] else spread_spans(u, frames)
    return out


def _backtrack(back: np.ndarray, final: np.ndarray) -> np.ndarray:
    """States (T, n) of the best paths, read backwards from ``final`` through ``back``
    (rows past their length store 0, so they wait in their final state)."""
    rows = np.arange(back.shape[1])
    s = final.astype(np.int64)
    states = np.empty(back.shape[:2], dtype=np.int64)
    for t in range(back.shape[0] - 1, -1, -1):
        states[t] = s
        s = s - back[t, rows, s]
    return states


def _spans(states: np.ndarray, num_tokens: int) -> Tensor:
    frames = np.nonzero(states % 2 == 1)[0]  # odd states emit tokens
    token = (states[frames] - 1) // 2  # non-decreasing; every token is visited
    ids = np.arange(num_tokens)
    first = frames[np.searchsorted(token, ids, "left")]
    last = frames[np.searchsorted(token, ids, "right") - 1]
    return torch.from_numpy(np.stack((first, last), 1)).long()


def token_confidences(log_probs: Tensor, spans: Tensor, tokens: Sequence[int]) -> list[float]:
    """Per token, the mean posterior (exp of its log-prob) over its span's frames, for one
    row: ``log_probs`` (T, V), ``spans`` (U, 2) as ``ctc_forced_align`` returns. Frames
    outside [0, T) are clipped; with T == 0 every confidence is 0."""
    if len(tokens) == 0 or log_probs.shape[0] == 0:
        return [0.0] * len(tokens)
    post = log_probs[:, torch.as_tensor(list(tokens), device=log_probs.device)].double().exp()
    csum = torch.cat((post.new_zeros(1, len(tokens)), post.cumsum(0))).cpu()
    n = log_probs.shape[0]
    first = spans[:, 0].clamp(0, n - 1)
    last = torch.maximum(spans[:, 1].clamp(0, n - 1), first)
    cols = torch.arange(len(tokens))
    mean = (csum[last + 1, cols] - csum[first, cols]) / (last - first + 1)
    return [min(max(float(c), 0.0), 1.0) for c in mean]


def words_from_alignment(tokens: Sequence[int], spans: Tensor, confidences: Sequence[float],
                         tokenizer: PieceTokenizer, samples_per_frame: float, offset_sample: int,
                         sample_rate: int, num_samples: int) -> list[Word]:
    """Group aligned tokens into words: a " " piece separates words (and belongs to none),
    a piece starting with "▁" starts one. Each word's text is ``tokenizer.decode`` of its
    tokens (words decoding to "" are dropped); it spans samples
    [offset + round(first * samples_per_frame), offset + round((last + 1) * samples_per_frame))
    clipped to the segment [offset, offset + num_samples), with starts non-decreasing and
    start <= end; its confidence is the frame-weighted mean of its tokens' confidences."""
    pieces = tokenizer.tokens
    groups: list[list[int]] = []
    for i, k in enumerate(tokens):
        piece = pieces[int(k)]
        if piece == " ":
            groups.append([])
        elif piece.startswith(WORD_START) or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    words: list[Word] = []
    lo, hi, prev = offset_sample, offset_sample + num_samples, offset_sample
    for group in groups:
        text = tokenizer.decode([int(tokens[i]) for i in group]).strip() if group else ""
        if not text:
            continue
        first, last = int(spans[group[0], 0]), int(spans[group[-1], 1])
        start = min(max(offset_sample + round(first * samples_per_frame), lo, prev), hi)
        end = min(max(offset_sample + round((last + 1) * samples_per_frame), start), hi)
        weights = [int(spans[i, 1]) - int(spans[i, 0]) + 1 for i in group]
        conf = sum(w * float(confidences[i]) for w, i in zip(weights, group)) / sum(weights)
        words.append(Word(text, int(start), int(end), sample_rate, min(max(conf, 0.0), 1.0)))
        prev = start
    return words

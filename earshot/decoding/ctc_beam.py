"""CTC-only decoding (best path, prefix beam search) and attention rescoring of its n-best.

``ctc_prefix_beam_search`` is the classic frame-synchronous algorithm (Hannun et al.,
2014): per frame, every kept prefix is extended by blank, by a repeat of its last
label, or by one of the frame's most likely labels, and prefixes that collapse to the
same labels are merged. It runs per utterance in plain Python over the kept prefixes,
so it is a reference and an alternative mode, not the fast path (that is beam_search
with a CTC-only scorer, which gives the same result: tests/test_beam_search.py).

>>> import torch
>>> lp = torch.tensor([[[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1]]]).log()
>>> ctc_prefix_beam_search(lp, torch.tensor([3]), blank=0, beam=4)[0][0].tokens
[1]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import torch

from earshot.decoding.beam_search import Hypothesis
from earshot.decoding.greedy import greedy_ctc

if TYPE_CHECKING:
    from earshot.models.decoder import Memory

NEG_INF = float("-inf")


class TeacherForcedDecoder(Protocol):
    """What ``attention_rescore`` needs of the model (``EncoderDecoderASR``)."""

    def select_memory(self, memory: Memory, index: torch.Tensor) -> Memory: ...

    def teacher_forced(self, memory: Memory, tokens_in: torch.Tensor) -> torch.Tensor: ...


def ctc_greedy(log_probs: torch.Tensor, lens: torch.Tensor, blank: int) -> list[list[Hypothesis]]:
    """Best path per utterance: log_probs (B, T', V), lens (B,). Scores are not computed (0)."""
    return [[Hypothesis(tokens, 0.0, {})] for tokens in greedy_ctc(log_probs, lens, blank)]


def ctc_prefix_beam_search(log_probs: torch.Tensor, lens: torch.Tensor, blank: int,
                           beam: int, nbest: int | None = None,
                           exclude: tuple[int, ...] = ()) -> list[list[Hypothesis]]:
    """Frame-synchronous CTC prefix beam search; log_probs (B, T', V), lens (B,).

    Each hypothesis' score (and scores["ctc"]) is log P(tokens | X) summed over the
    alignments the beam kept. ``exclude``: ids never emitted as labels (bos, eos, pad:
    never CTC targets). Returns up to ``nbest`` (default ``beam``) per utterance.
    """
    lp = log_probs.double().cpu()
    skip = set(exclude) | {blank}
    return [_search_one(lp[b, : int(lens[b])], blank, skip, beam, nbest or beam)
            for b in range(lp.shape[0])]


def _search_one(lp: torch.Tensor, blank: int, skip: set, beam: int,
                nbest: int) -> list[Hypothesis]:
    prefixes = {(): (0.0, NEG_INF)}  # prefix -> (log P ending in blank, ending in label)
    k = min(beam + len(skip), lp.shape[1])
    for frame in lp:
        labels = [c for c in frame.topk(k).indices.tolist() if c not in skip][:beam]
        prefixes = _prune(_extend_frame(prefixes, frame.tolist(), labels, blank), beam)
    ranked = sorted(prefixes.items(), key=lambda kv: -_lse(*kv[1]))[:nbest]
    return [Hypothesis(list(p), _lse(*s), {"ctc": _lse(*s)}) for p, s in ranked]


def _extend_frame(prefixes: dict, x: list[float], labels: list[int], blank: int) -> dict:
    new: dict = {}

    def add(prefix, pb=NEG_INF, pl=NEG_INF):
        ob, ol = new.get(prefix, (NEG_INF, NEG_INF))
        new[prefix] = (_lse(ob, pb), _lse(ol, pl))

    for prefix, (pb, pl) in prefixes.items():
        add(prefix, pb=_lse(pb, pl) + x[blank])
        last = prefix[-1] if prefix else None
        if last is not None:
            add(prefix, pl=pl + x[last])  # the last label continues over this frame
        for c in labels:
            # a repeated label needs a blank in between, so only paths ending in blank
            start = pb if c == last else _lse(pb, pl)
            add(prefix + (c,), pl=start + x[c])
    return new


def _prune(prefixes: dict, beam: int) -> dict:
    ranked = sorted(prefixes.items(), key=lambda kv: -_lse(*kv[1]))
    return dict(ranked[:beam])


def _lse(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


@torch.no_grad()
def attention_rescore(decoder: TeacherForcedDecoder, memory: Memory,
                      nbest: list[list[Hypothesis]], bos: int, eos: int, pad: int,
                      ctc_weight: float, length_bonus: float = 0.0) -> list[list[Hypothesis]]:
    """Rerank each utterance's CTC n-best by (1 - ctc_weight) log p_att + ctc_weight
    log p_ctc + length_bonus (|Y| + 1); memory has B rows. One teacher-forced decoder
    pass over all hypotheses of the batch."""
    utt = [b for b, hyps in enumerate(nbest) for _ in hyps]
    flat = [h for hyps in nbest for h in hyps]
    if not flat:
        return nbest
    att = _attention_log_probs(decoder, memory, utt, [h.tokens for h in flat], bos, eos, pad)
    out: list[list[Hypothesis]] = [[] for _ in nbest]
    for b, h, a in zip(utt, flat, att.tolist()):
        ctc = h.scores.get("ctc", h.score)
        total = (1 - ctc_weight) * a + ctc_weight * ctc + length_bonus * (len(h.tokens) + 1)
        out[b].append(Hypothesis(h.tokens, total, {"attention": a, "ctc": ctc}))
    return [sorted(hyps, key=lambda h: -h.score) for hyps in out]


def _attention_log_probs(decoder: TeacherForcedDecoder, memory: Memory, utt: list[int],
                         seqs: list[list[int]], bos: int, eos: int, pad: int) -> torch.Tensor:
    """log p_att(Y + eos | X) for each sequence (M,), rows of memory picked by ``utt``."""
    device = memory.enc.device
    idx = torch.tensor(utt, device=device)
    mem = decoder.select_memory(memory, idx)
    width = max(len(s) for s in seqs) + 1
    tokens_in = torch.full((len(seqs), width), pad, dtype=torch.long, device=device)
    targets = torch.full_like(tokens_in, pad)
    for i, s in enumerate(seqs):
        tokens_in[i, : len(s) + 1] = torch.tensor([bos] + s)
        targets[i, : len(s) + 1] = torch.tensor(s + [eos])
    log_probs = torch.log_softmax(decoder.teacher_forced(mem, tokens_in).float(), dim=-1)
    picked = log_probs.gather(2, targets.unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(targets == pad, 0.0).sum(dim=1)

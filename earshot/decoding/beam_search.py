"""One batched beam search over weighted scorers.

All B utterances and their K hypotheses advance together as N = B*K rows: each step
is one pass of tensor operations (score, combine, top-k, reorder states), with no
Python loop over hypotheses or tokens. The search maximises sum_i w_i log s_i(Y)
over the scorers it is given and never knows what they are (see scorers.py).

Per step and utterance the best 2K of the K x C extensions are ranked; those ending
in eos within the first K ranks are finished (kept per utterance), and the best K
that do not end in eos form the next beam. An utterance stops once it has K finished
hypotheses or reaches its maximum length (where eos is forced), or earlier, exactly:
when every scorer bounds its per-step score (log-probabilities never exceed 0, the
length bonus 1), an utterance whose n-th best finished score is at least the best any
live hypothesis could still reach can gain nothing more and stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from earshot.config import DecodeConfig
from earshot.decoding.scorers import Scorer, StepContext

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """One decoded output. ``score`` is the weighted total the search ranked by (divided
    by len(tokens) + 1 when length normalisation is on); ``scores`` holds each scorer's
    own unweighted log-score summed over the hypothesis (eos step included)."""

    tokens: list[int]
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    text: str = ""


@dataclass
class WeightedScorer:
    name: str
    scorer: Scorer
    weight: float


@dataclass
class _Beam:
    tokens: torch.Tensor  # (N, L) bos first
    score: torch.Tensor  # (N,) weighted total
    raw: torch.Tensor  # (N, S) unweighted per-scorer totals


@dataclass
class _StepScores:
    total: torch.Tensor  # (N, C) weighted sum of every scorer
    token_part: torch.Tensor  # (N, C) weighted sum of token-dependent scorers only
    raw: list[torch.Tensor]  # per scorer (N, V | C | 1), unweighted
    cands: torch.Tensor | None  # (N, C) token id of each column; None: column = token id
    states: list


@dataclass
class Decision:
    """What one step decided, as tensors: the ranked extensions of every live utterance
    (B, M = min(2K, K*C)), those that finish, the next beam (N = B*K rows) and the
    utterances that are done. ``states``: each scorer's candidate state, to be narrowed
    to the next beam by its ``select_state``."""

    top: torch.Tensor  # (B, M) cumulative scores, best first
    rows: torch.Tensor  # (B, M) parent row of each
    tokens: torch.Tensor  # (B, M) token of each
    final: torch.Tensor  # (B, M) ends in eos within the first K ranks
    ext_raw: torch.Tensor  # (B, M, S) per-scorer totals of each
    new_rows: torch.Tensor  # (N,) the next beam's parents
    new_tokens: torch.Tensor  # (N,)
    new_score: torch.Tensor  # (N,)
    new_raw: torch.Tensor  # (N, S)
    n_finished: torch.Tensor  # (B,)
    best_final: torch.Tensor  # (B, nbest)
    done: torch.Tensor  # (B,) nothing more to search for
    states: list


@dataclass
class FullScores:
    """The full scorers' part of a step (``score_full``): per-scorer raw scores and
    candidate states (None for partial scorers, scored later), their weighted sums."""

    raw: list
    states: list
    token_part: torch.Tensor | None  # (N, V) weighted sum of token-dependent scores
    row_part: torch.Tensor | None  # (N, 1) weighted sum of token-independent scores
    ctx: StepContext


@dataclass(frozen=True)
class SearchSpec:
    """The fixed quantities of one search: what a step is a function of besides tensors."""

    vocab_size: int
    eos: int
    k: int
    cfg: DecodeConfig
    step_bound: float | None


@torch.no_grad()
def beam_search(scorers: list[WeightedScorer], vocab_size: int, min_lens: torch.Tensor,
                max_lens: torch.Tensor, bos: int, eos: int, cfg: DecodeConfig,
                graphs=None) -> list[list[Hypothesis]]:
    """Decode B utterances; min_lens, max_lens (B,) in tokens. Returns per utterance up
    to ``cfg.nbest`` hypotheses, best first. Scorers of weight 0 are not run.
    ``graphs``: an object whose ``search(scorers, spec, min_lens, max_lens, bos)`` runs
    the whole search elsewhere (earshot.export.search_graph: one onnxruntime graph) and
    returns what the loop below would have collected, or None when it cannot."""
    scorers = [s for s in scorers if s.weight != 0.0]
    b, k = max_lens.shape[0], cfg.beam_size
    bound = None if cfg.length_normalize else _step_bound(scorers)
    spec = SearchSpec(vocab_size, eos, k, cfg, bound)
    names = [s.name for s in scorers]
    found = graphs.search(scorers, spec, min_lens, max_lens, bos) if graphs is not None else None
    if found is not None:
        return _collect(*found, names, b, cfg)
    beam, states, live = start(scorers, b, k, bos, min_lens, max_lens, cfg.nbest)
    vocab_ids = torch.arange(vocab_size, device=max_lens.device).unsqueeze(0)
    finished: list[tuple] = []
    fallback: dict[int, tuple] = {}
    for step in range(int(max_lens.max()) + 1):
        full = score_full(scorers, beam.tokens, states, step)
        d = decide(scorers, spec, full, beam, states, live, step, vocab_ids)
        if bool(d.final.any()):
            utt, pos = d.final.nonzero(as_tuple=True)
            finished.append((live.ids[utt], beam.tokens[d.rows[utt, pos], 1:],
                             d.top[utt, pos], d.ext_raw[utt, pos]))
        beam = _Beam(torch.cat([beam.tokens[d.new_rows], d.new_tokens.unsqueeze(1)], dim=1),
                     d.new_score, d.new_raw)
        states = [ws.scorer.select_state(st, d.new_rows, d.new_tokens)
                  for ws, st in zip(scorers, d.states)]
        live.n_finished, live.best_final = d.n_finished, d.best_final
        if bool(d.done.any()):  # always by step max(max_lens), where every utterance is done
            fallback.update(_fallbacks(beam, live, d.done & (live.n_finished == 0), k))
            if bool(d.done.all()):
                break
            beam, states, live = _drop(beam, states, scorers, live, ~d.done, k)
    return _collect(finished, fallback, names, b, cfg)


def start(scorers: list[WeightedScorer], b: int, k: int, bos: int, min_lens: torch.Tensor,
          max_lens: torch.Tensor, nbest: int) -> tuple[_Beam, list, _Live]:
    """The search's first beam (K copies of the empty hypothesis per utterance, one of
    them live), the scorers' first states and the utterances' limits."""
    device = max_lens.device
    beam = _start(b, k, bos, len(scorers), device)
    states = [s.scorer.init_state(b, k) for s in scorers]
    live = _Live.of(torch.arange(b, device=device), min_lens, max_lens,
                    torch.zeros(b, dtype=torch.long, device=device),
                    torch.full((b, nbest), NEG_INF, device=device), k)
    return beam, states, live


def decide(scorers: list[WeightedScorer], spec: SearchSpec, full: FullScores, beam: _Beam,
           states: list, live: _Live, step: int, vocab_ids: torch.Tensor) -> Decision:
    """One step after the full scorers: partial scorers on the candidates, length and eos
    rules, the best extensions, those that finish, the next beam and the utterances that
    are done. vocab_ids (1, V): every token id. Pure tensor code with no data-dependent
    control flow, so that it also runs as a graph."""
    k, eos = spec.k, spec.eos
    scored = _score_partial(scorers, full, beam.tokens, states, vocab_ids, spec.cfg.pre_beam, eos)
    total = _constrain(scored, beam.score, step, live, eos, spec.cfg.eos_threshold)
    top, rows, cols = _top(total, live.offsets, k)
    tokens = cols if scored.cands is None else _at(scored.cands, rows, cols)
    first_k = torch.arange(int(top.shape[1]), device=top.device) < k
    # scores are log-probabilities, -inf for what the rules ban (never NaN or +inf)
    final = (tokens == eos) & (top > NEG_INF) & first_k  # the first K ranks only
    ext_raw = beam.raw[rows] + _pick_raw(scored, rows, cols, tokens)
    n_finished = live.n_finished + final.sum(1)
    best_final = live.best_final
    if spec.step_bound is not None:
        best_final = torch.cat([best_final, top.masked_fill(~final, NEG_INF)], 1)
        best_final = best_final.topk(spec.cfg.nbest, dim=1).values
    new_rows, new_tokens, new_score, new_raw = _advance(rows, tokens, top, ext_raw, live.offsets,
                                                        eos, k)
    best = new_score.view(-1, k).max(dim=1).values
    done = (n_finished >= k) | (live.max_lens <= step) | (best == NEG_INF)
    if spec.step_bound is not None:
        done = done | (best_final[:, -1] >= best + spec.step_bound * (live.max_lens - step))
    return Decision(top, rows, tokens, final, ext_raw, new_rows, new_tokens, new_score,
                    new_raw, n_finished, best_final, done, scored.states)


@dataclass
class _Live:
    """The utterances still being searched: their ids in the batch and per-utterance limits."""

    ids: torch.Tensor  # (B',)
    min_lens: torch.Tensor  # (B',)
    max_lens: torch.Tensor  # (B',)
    n_finished: torch.Tensor  # (B',)
    best_final: torch.Tensor  # (B', nbest) best finished scores so far
    row_min: torch.Tensor  # (B'*K,) min_lens and max_lens per beam row
    row_max: torch.Tensor
    offsets: torch.Tensor  # (B', 1) first beam row of each utterance

    @staticmethod
    def of(ids, min_lens, max_lens, n_finished, best_final, k: int) -> _Live:
        """A ``_Live`` with its per-row tensors made for beams of K."""
        offsets = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1) * k
        return _Live(ids, min_lens, max_lens, n_finished, best_final,
                     min_lens.repeat_interleave(k), max_lens.repeat_interleave(k), offsets)


def _fallbacks(beam, live, which, k) -> dict[int, tuple]:
    """The top row of the beam for utterances ``which`` (B',) that end without any
    hypothesis having reached eos (every path pruned): their output."""
    out = {}
    for u in which.nonzero(as_tuple=True)[0].tolist():
        row = u * k
        out[int(live.ids[u])] = (beam.tokens[row, 1:].tolist(), float(beam.score[row]),
                                 beam.raw[row].tolist())
    return out


def _drop(beam, states, scorers, live, keep, k):
    """Remove finished utterances from the beam, the scorers' states and ``live``, so
    that later steps spend nothing on them."""
    utts = keep.nonzero(as_tuple=True)[0]
    rows = (utts.unsqueeze(1) * k + torch.arange(k, device=utts.device)).reshape(-1)
    beam = _Beam(beam.tokens[rows], beam.score[rows], beam.raw[rows])
    states = [ws.scorer.select_utterances(st, utts, rows) for ws, st in zip(scorers, states)]
    live = _Live.of(live.ids[utts], live.min_lens[utts], live.max_lens[utts],
                    live.n_finished[utts], live.best_final[utts], k)
    return beam, states, live


def _step_bound(scorers: list[WeightedScorer]) -> float | None:
    """Upper bound on one step's weighted score, or None if some scorer has none."""
    bound = 0.0
    for ws in scorers:
        if ws.scorer.max_step_score is None or ws.weight < 0:
            return None
        bound += ws.weight * ws.scorer.max_step_score
    return bound


def length_limits(enc_lens: torch.Tensor, cfg: DecodeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(min_lens, max_lens) in tokens per utterance (B,), from encoder lengths (B,);
    the same rule as greedy decoding: max = ceil(ratio * frames), at least 1."""
    # in Python floats (float64, as torch's double): a search's few lengths cost less
    # than the eight tensor operators that would compute them
    frames = enc_lens.tolist()
    longest = [max(1, math.ceil(f * cfg.max_len_ratio)) for f in frames]
    shortest = [min(math.floor(f * cfg.min_len_ratio), m) for f, m in zip(frames, longest)]
    return (torch.tensor(shortest, dtype=torch.long, device=enc_lens.device),
            torch.tensor(longest, dtype=torch.long, device=enc_lens.device))


def _start(b: int, k: int, bos: int, s: int, device) -> _Beam:
    tokens = torch.full((b * k, 1), bos, dtype=torch.long, device=device)
    score = torch.zeros(b, k, device=device)
    score[:, 1:] = NEG_INF  # K copies of the empty hypothesis: only one may expand
    return _Beam(tokens, score.view(-1), torch.zeros(b * k, s, device=device))


def score_full(scorers: list[WeightedScorer], tokens: torch.Tensor, states: list,
               step: int) -> FullScores:
    """Run every full scorer (those that score the whole vocabulary or the row) once."""
    ctx = StepContext(step)
    token_part = row_part = None  # weighted sums (N, V) and (N, 1); None: nothing yet
    raw, new_states = [None] * len(scorers), [None] * len(scorers)
    for i, ws in enumerate(scorers):
        if not ws.scorer.partial:
            raw[i], new_states[i] = ws.scorer.score(tokens, states[i], None, ctx)
            ctx.attn = _first(ws.scorer.attention(new_states[i]), ctx.attn)
            if raw[i].shape[1] == 1:
                row_part = _accumulate(row_part, ws.weight, raw[i])
            else:
                token_part = _accumulate(token_part, ws.weight, raw[i])
    return FullScores(raw, new_states, token_part, row_part, ctx)


def _score_partial(scorers, full: FullScores, tokens, states, vocab_ids, pre_beam,
                   eos) -> _StepScores:
    """The partial scorers on the candidates (the best ``pre_beam`` by the full scorers,
    or the whole vocabulary), added to the full scorers' sums. vocab_ids (1, V)."""
    n, vocab_size = tokens.shape[0], vocab_ids.shape[1]
    raw, new_states = list(full.raw), list(full.states)
    token_part, row_part = full.token_part, full.row_part
    ranked = token_part is not None  # some full scorer ranks tokens (a pre-beam means something)
    if token_part is None:
        token_part = torch.zeros(n, vocab_size, device=tokens.device)
    partial = [i for i, ws in enumerate(scorers) if ws.scorer.partial]
    use_pre_beam = partial and ranked and 0 < pre_beam < vocab_size - 1
    cands = _pre_beam(token_part, pre_beam, eos) if use_pre_beam else None
    if cands is not None:
        token_part = token_part.gather(1, cands)
    for i in partial:
        raw[i], new_states[i] = scorers[i].scorer.score(tokens, states[i], cands, full.ctx)
        token_part = token_part + scorers[i].weight * raw[i]
    total = token_part if row_part is None else token_part + row_part
    return _StepScores(total, token_part, raw, cands, new_states)


def _first(a, b):
    return a if a is not None else b


def _accumulate(total: torch.Tensor | None, weight: float, scores: torch.Tensor) -> torch.Tensor:
    """total + weight * scores, where no total yet counts as zero."""
    return weight * scores if total is None else total + weight * scores


def _pre_beam(token_part: torch.Tensor, size: int, eos: int) -> torch.Tensor:
    """(N, size + 1) candidate ids: the best ``size`` by the full scorers, plus eos always
    (so that a hypothesis can always end, e.g. at its maximum length)."""
    best = token_part.index_fill(1, torch.tensor([eos], device=token_part.device), NEG_INF)
    ids = best.topk(size, dim=1).indices
    return torch.cat([ids, torch.full_like(ids[:, :1], eos)], dim=1)


def _constrain(scored: _StepScores, score, step, live: _Live, eos, eos_threshold):
    """Cumulative scores (N, C) of every extension with length and eos rules applied."""
    is_eos = _column_ids(scored) == eos
    allow_eos = (live.row_min <= step).unsqueeze(1)
    if eos_threshold > 0:
        # SpeechBrain's rule on the token-dependent log-scores: eos only if close to the best
        best = scored.token_part.max(dim=1, keepdim=True).values
        allow_eos = allow_eos & (scored.token_part >= eos_threshold * best)
    forced = (live.row_max <= step).unsqueeze(1)
    ban = (forced & ~is_eos) | (~forced & is_eos & ~allow_eos)
    total = (score.unsqueeze(1) + scored.total).masked_fill(ban, NEG_INF)
    return total.masked_fill(total.isnan(), NEG_INF)


def _column_ids(scored: _StepScores) -> torch.Tensor:
    """Token id of each column: (N, C), or (1, V) when the columns are the vocabulary."""
    if scored.cands is not None:
        return scored.cands
    return torch.arange(int(scored.total.shape[1]), device=scored.total.device).unsqueeze(0)


def _at(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x[rows, cols] for a 2-D x of fixed width, as one gather from the flattened x (which
    a graph runs as a single node)."""
    return x.reshape(-1)[rows * int(x.shape[1]) + cols]


def _top(total: torch.Tensor, offsets: torch.Tensor, k: int):
    """Best min(2K, K*C) extensions per utterance: scores (B, M), parent rows, columns;
    ``offsets`` (B, 1) the first row of each utterance."""
    c = int(total.shape[1])
    flat = total.reshape(-1, k * c)
    top, idx = flat.topk(min(2 * k, k * c), dim=1)
    return top, idx // c + offsets, idx % c


def _pick_raw(scored: _StepScores, rows, cols, tokens) -> torch.Tensor:
    """Unweighted score of each chosen extension, per scorer: (..., S) for rows, cols and
    tokens of any one shape."""
    out = []
    for r in scored.raw:
        if r.shape[1] == 1:
            out.append(r[rows, 0])
        elif r.shape[1] == scored.total.shape[1]:
            out.append(_at(r, rows, cols))  # candidate columns (or the whole vocabulary)
        else:
            out.append(_at(r, rows, tokens))  # whole-vocabulary scores under a pre-beam
    if not out:
        return torch.zeros(rows.shape[0], 0, device=rows.device)
    return torch.stack(out, dim=-1).float()


def _advance(rows, tokens, top, ext_raw, offsets, eos, k):
    """The next beam: per utterance the best K extensions that do not end in eos, as
    (parent rows, tokens, scores, per-scorer totals), N rows each; offsets (B, 1) the
    first row of each utterance."""
    m = int(top.shape[1])
    rank = torch.arange(m, device=top.device).unsqueeze(0)
    # ranks, with those ending in eos after all the others (the keys are distinct)
    order = (rank + (tokens == eos) * m).topk(min(k, m), dim=1, largest=False).indices
    if order.shape[1] < k:  # fewer than K extensions exist at all
        order = torch.cat([order, order[:, :1].expand(-1, k - order.shape[1])], dim=1)
    flat = (order + offsets // k * m).reshape(-1)  # into the B * M extensions
    new_rows, new_tokens, new_top = (x.reshape(-1)[flat] for x in (rows, tokens, top))
    new_top = new_top.masked_fill(new_tokens == eos, NEG_INF)
    return new_rows, new_tokens, new_top, ext_raw.reshape(-1, ext_raw.shape[2])[flat]


def _collect(finished, fallback, names, b, cfg) -> list[list[Hypothesis]]:
    """Group finished hypotheses by utterance, rank them, keep the n-best. ``finished``:
    groups of (utterances, token sequences, scores, per-scorer scores), each a tensor,
    an array or a list."""
    per_utt: list[list[Hypothesis]] = [[] for _ in range(b)]
    for utt, toks, score, raw in finished:
        for u, t, s, r in zip(*(x if isinstance(x, list) else x.tolist()
                                for x in (utt, toks, score, raw))):
            per_utt[u].append(_hyp(t, s, r, names, cfg.length_normalize))
    for u in range(b):
        if not per_utt[u]:  # nothing reached eos (every path pruned): keep the top row
            per_utt[u].append(_hyp(*fallback[u], names, cfg.length_normalize))
        per_utt[u].sort(key=lambda h: -h.score)
        per_utt[u] = per_utt[u][: cfg.nbest]
    return per_utt


def _hyp(tokens, score, raw, names, normalize) -> Hypothesis:
    if normalize:
        score = score / (len(tokens) + 1)
    return Hypothesis(tokens, score, dict(zip(names, raw)))

"""Scorers: every source of evidence in beam search behind one small protocol.

A scorer gives each live hypothesis (row) log-scores over candidate next tokens:
``score(tokens, state, candidates, ctx) -> (scores, candidate_state)`` where scores are
(N, V) over the whole vocabulary, (N, C) over given candidate ids (scorers with
``partial = True`` only, e.g. CTC prefix scores), or (N, 1) when the score does not
depend on the token (length bonus, coverage). After the search picks, for each new
row, a parent row and a token, ``select_state(candidate_state, rows, tokens)`` gives
the scorer's state for the new beam. The search combines scorers by weight and never
names one; rows are utterance-major (b*K .. b*K+K-1) and never leave their utterance,
so per-utterance inputs (encoder memory, CTC log-probs) are kept once, unmoved, until
``select_utterances(state, utts, rows)`` drops the utterances that have finished.

``max_step_score`` is an upper bound on one step's score (0 for log-probabilities), or
None when there is none; when every weighted scorer has one, the search can stop an
utterance as soon as no live hypothesis can overtake its finished ones.

A scorer with attention (the decoder) exposes this step's weights via ``attention()``;
the search passes them to later scorers in ``StepContext`` (CTC window, coverage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from earshot.decoding import ctc_prefix

if TYPE_CHECKING:
    from earshot.models.decoder import DecoderState, Memory
    from earshot.models.lm import LMState, RNNLM

NEG_INF = float("-inf")


@dataclass
class StepContext:
    """What a scorer may know about the current step besides its own state."""

    step: int  # tokens emitted so far (bos excluded)
    attn: torch.Tensor | None = None  # (N, T') attention weights behind this step's scores


class StepDecoder(Protocol):
    """The attentional decoder's step interface, as the searches drive it: an
    ``EncoderDecoderASR`` (whose methods delegate to its decoder) or a bare
    ``AttentionalDecoder``."""

    def init_state(self, memory: Memory) -> DecoderState: ...

    def step(self, tokens: torch.Tensor, state: DecoderState,
             memory: Memory) -> tuple[torch.Tensor, DecoderState]: ...

    def select_state(self, state: DecoderState, index: torch.Tensor) -> DecoderState: ...

    def select_memory(self, memory: Memory, index: torch.Tensor) -> Memory: ...

    def repeat_memory(self, memory: Memory, k: int) -> Memory: ...

    def alignment(self, state: DecoderState) -> torch.Tensor: ...


class Scorer:
    """Protocol (and defaults). ``partial``: can score a candidate subset (N, C)."""

    partial = False
    max_step_score: float | None = None  # upper bound on one step's score; None: unknown

    def init_state(self, batch: int, beam: int) -> Any:
        """State of the empty hypothesis, ``beam`` rows per utterance."""
        return None

    def score(self, tokens: torch.Tensor, state: Any, candidates: torch.Tensor | None,
              ctx: StepContext) -> tuple[torch.Tensor, Any]:
        """tokens (N, L) so far (bos first) -> scores (N, V | C | 1), candidate state."""
        raise NotImplementedError

    def select_state(self, state: Any, rows: torch.Tensor, tokens: torch.Tensor) -> Any:
        """New beam state: row i continues parent ``rows[i]`` with ``tokens[i]``; (N,) each."""
        return state

    def attention(self, state: Any) -> torch.Tensor | None:
        """Attention weights (N, T') of the step that produced ``state``, if any."""
        return None

    def select_utterances(self, state: Any, utts: torch.Tensor, rows: torch.Tensor) -> Any:
        """Keep only utterances ``utts`` (B',) of those being decoded, whose rows are
        ``rows`` (B'*K,): their state (a scorer's per-utterance inputs narrow too)."""
        if state is None or isinstance(state, torch.Tensor):
            return None if state is None else state[rows]
        raise NotImplementedError(f"{type(self).__name__} cannot drop finished utterances")


@dataclass
class _DecoderRows:
    dec: DecoderState
    memory: Memory  # repeated to N rows (never reordered)


class DecoderScorer(Scorer):
    """log p_att(y_t | y_<t, X) from the attentional decoder; temperature-scaled."""

    max_step_score = 0.0

    def __init__(self, decoder: StepDecoder, memory: Memory, temperature: float = 1.0) -> None:
        self.decoder, self.memory, self.temperature = decoder, memory, temperature

    def init_state(self, batch: int, beam: int) -> _DecoderRows:
        memory = self.decoder.repeat_memory(self.memory, beam) if beam > 1 else self.memory
        return _DecoderRows(self.decoder.init_state(memory), memory)

    def score(self, tokens: torch.Tensor, state: _DecoderRows, candidates: torch.Tensor | None,
              ctx: StepContext) -> tuple[torch.Tensor, _DecoderRows]:
        log_probs, dec = self.decoder.step(tokens[:, -1], state.dec, state.memory)
        if self.temperature != 1.0:
            log_probs = torch.log_softmax(log_probs / self.temperature, dim=-1)
        return log_probs, _DecoderRows(dec, state.memory)

    def select_state(self, state: _DecoderRows, rows: torch.Tensor,
                     tokens: torch.Tensor) -> _DecoderRows:
        return _DecoderRows(self.decoder.select_state(state.dec, rows), state.memory)

    def attention(self, state: _DecoderRows) -> torch.Tensor:
        return self.decoder.alignment(state.dec)

    def select_utterances(self, state: _DecoderRows, utts: torch.Tensor,
                          rows: torch.Tensor) -> _DecoderRows:
        return _DecoderRows(self.decoder.select_state(state.dec, rows),
                            self.decoder.select_memory(state.memory, rows))


@dataclass
class _CTCCandidates:
    prefix: ctc_prefix.PrefixState  # state of the parent prefixes (N rows)
    psi: torch.Tensor  # (N, V | C) prefix scores of every candidate extension
    candidates: torch.Tensor | None  # (N, C) ids, None for the whole vocabulary
    flow: ctc_prefix.Inflow  # of the parent prefixes (within the window, if any)


class CTCPrefixScorer(Scorer):
    """log psi(g c) - log psi(g): CTC prefix score increments, vectorised over candidates.

    log_probs (B, T', V) from the CTC head, lens (B,). ``window`` > 0 lets a new label
    start only within that many frames of the decoder's attention peak. ``exclude``: ids
    CTC never emits (bos, pad: never CTC targets) get -inf, like the blank.
    """

    partial = True

    def __init__(self, log_probs: torch.Tensor, lens: torch.Tensor, blank: int, eos: int,
                 window: int = 0, exclude: tuple[int, ...] = ()) -> None:
        self.log_probs = log_probs  # prepared (ctc_prefix.prepare_log_probs) by init_state
        self.lens, self.blank, self.eos, self.window = lens, blank, eos, window
        # made by init_state, once per search: the posteriors' exp, and ctc_prefix.Rows
        self.probs = self.rows = None
        self.excluded = torch.zeros(log_probs.shape[-1], dtype=torch.bool, device=lens.device)
        self.excluded[list(exclude)] = True  # (V,) ids this scorer gives -inf
        # A prefix's probability never grows as it is extended; a window breaks the bound.
        self.max_step_score = 0.0 if window <= 0 else None

    def init_state(self, batch: int, beam: int) -> ctc_prefix.PrefixState:
        self.log_probs = ctc_prefix.prepare_log_probs(self.log_probs, self.lens)
        self.beam, self.probs = beam, self.log_probs.exp()
        self.rows = ctc_prefix.rows_for(self.log_probs, self.lens, beam)
        return ctc_prefix.initial_state(self.log_probs, self.blank, beam)

    def score(self, tokens: torch.Tensor, state: ctc_prefix.PrefixState,
              candidates: torch.Tensor | None,
              ctx: StepContext) -> tuple[torch.Tensor, _CTCCandidates]:
        flow = ctc_prefix.inflow(state, self.rows, self._window(ctx.attn))
        psi = ctc_prefix.candidate_scores(self.log_probs, self.lens, state, self.blank,
                                          self.eos, candidates, rows=self.rows,
                                          probs=self.probs, flow=flow)
        prev = state.psi.unsqueeze(1)
        inc = torch.where(prev == NEG_INF, NEG_INF, psi - prev)
        excluded = self.excluded if candidates is None else self.excluded[candidates]
        inc = inc.masked_fill(excluded, NEG_INF)
        return inc.float(), _CTCCandidates(state, psi, candidates, flow)

    def select_state(self, state: _CTCCandidates, rows: torch.Tensor,
                     tokens: torch.Tensor) -> ctc_prefix.PrefixState:
        cols = tokens if state.candidates is None else \
            (state.candidates[rows] == tokens.unsqueeze(1)).int().argmax(dim=1)
        psi = state.psi.reshape(-1)[rows * state.psi.shape[1] + cols]  # psi[rows, cols]
        return ctc_prefix.extend(self.log_probs, self.lens, state.prefix, tokens, psi,
                                 self.blank, rows=self.rows, flow=state.flow, parents=rows)

    def select_utterances(self, state: ctc_prefix.PrefixState, utts: torch.Tensor,
                          rows: torch.Tensor) -> ctc_prefix.PrefixState:
        self.log_probs, self.probs, self.lens = self.log_probs[utts], self.probs[utts], self.lens[utts]
        self.rows = ctc_prefix.rows_for(self.log_probs, self.lens, self.beam)
        return ctc_prefix.select(state, rows)

    def _window(self, attn: torch.Tensor | None) -> torch.Tensor | None:
        if self.window <= 0 or attn is None:
            return None
        peak = attn.argmax(dim=1, keepdim=True)
        frames = torch.arange(self.log_probs.shape[1], device=attn.device).unsqueeze(0)
        return (frames - peak).abs() <= self.window


class LMScorer(Scorer):
    """log p_LM(y_t | y_<t) from a model with init_state / step / select_state (RNNLM)."""

    max_step_score = 0.0

    def __init__(self, lm: RNNLM, device: torch.device) -> None:
        self.lm, self.device = lm, device

    def init_state(self, batch: int, beam: int) -> LMState:
        return self.lm.init_state(batch * beam, self.device)

    def score(self, tokens: torch.Tensor, state: LMState, candidates: torch.Tensor | None,
              ctx: StepContext) -> tuple[torch.Tensor, LMState]:
        return self.lm.step(tokens[:, -1], state)

    def select_state(self, state: LMState, rows: torch.Tensor, tokens: torch.Tensor) -> LMState:
        return self.lm.select_state(state, rows)

    def select_utterances(self, state: LMState, utts: torch.Tensor,
                          rows: torch.Tensor) -> LMState:
        return self.lm.select_state(state, rows)


class LengthBonus(Scorer):
    """+1 per emitted token (eos included): weight gamma rewards longer outputs."""

    max_step_score = 1.0

    def score(self, tokens: torch.Tensor, state: None, candidates: torch.Tensor | None,
              ctx: StepContext) -> tuple[torch.Tensor, None]:
        return tokens.new_ones(tokens.shape[0], 1, dtype=torch.float32), None


class CoverageScorer(Scorer):
    """Increase in the number of encoder frames whose cumulative attention exceeds
    ``threshold`` (Chorowski & Jaitly, 2017): a bonus for covering the whole input."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def score(self, tokens: torch.Tensor, state: torch.Tensor | None,
              candidates: torch.Tensor | None,
              ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx.attn is None:
            raise ValueError("CoverageScorer needs an attention scorer listed before it")
        cov = ctx.attn if state is None else state + ctx.attn
        before = 0 if state is None else (state > self.threshold).sum(1)
        gain = (cov > self.threshold).sum(1) - before
        return gain.float().unsqueeze(1), cov

    def select_state(self, state: torch.Tensor, rows: torch.Tensor,
                     tokens: torch.Tensor) -> torch.Tensor:
        return state[rows]


class AttentionShiftLimit(Scorer):
    """-inf for hypotheses whose attention peak moves more than ``max_shift`` frames in a
    step (use weight 1); keeps attention from jumping over or back across the input."""

    max_step_score = 0.0

    def __init__(self, max_shift: int) -> None:
        self.max_shift = max_shift

    def score(self, tokens: torch.Tensor, state: torch.Tensor | None,
              candidates: torch.Tensor | None,
              ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx.attn is None:
            raise ValueError("AttentionShiftLimit needs an attention scorer listed before it")
        peak = ctx.attn.argmax(dim=1)
        prev = torch.zeros_like(peak) if state is None else state
        ok = (peak - prev).abs() <= self.max_shift
        return torch.where(ok, 0.0, NEG_INF).unsqueeze(1), peak

    def select_state(self, state: torch.Tensor, rows: torch.Tensor,
                     tokens: torch.Tensor) -> torch.Tensor:
        return state[rows]

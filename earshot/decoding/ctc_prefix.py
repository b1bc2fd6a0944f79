"""Vectorised CTC prefix scores (Watanabe et al., 2017), as pure tensor functions.

The prefix score of a label sequence g is psi(g) = sum over every continuation v of
P(g v | X): the probability that the CTC output *starts* with g. Joint CTC/attention
search adds log psi(g c) - log psi(g) when it extends g by c, so that over a finished
hypothesis the increments sum to log P_ctc(Y | X).

Per prefix we keep, for every frame t, a_t = log P(g over frames 0..t, last frame emits
the last label of g) and b_t = the same ending in blank. Extending by a label c obeys
the linear recurrences
    A_t = (A_{t-1} + phi_{t-1}) y_t(c),      B_t = (B_{t-1} + A_{t-1}) y_t(blank),
with phi_t = b_t + a_t (or b_t alone when c repeats the last label). Both are solved in
closed form with cumulative sums and ``logcumsumexp``, so no Python loop over frames is
needed; the score of *every* candidate needs only psi(g c) = sum_t phi_{t-1} y_t(c),
which is one batched matrix product over (hypotheses x frames) @ (frames x vocabulary).

Work in float64: the closed form subtracts cumulative log-probabilities, and float64
keeps those differences exact to ~1e-12 for any utterance length used in speech.

>>> lp = torch.randn(1, 4, 3, dtype=torch.float64).log_softmax(-1)
>>> st = initial_state(lp, blank=0)
>>> psi = candidate_scores(lp, torch.tensor([4]), st, blank=0, eos=None)
>>> psi.shape
torch.Size([1, 3])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from earshot.masks import lengths_to_mask

NEG_INF = float("-inf")
# log-probabilities are floored here so that cumulative sums stay finite (no inf - inf)
LOG_FLOOR = -1.0e4


@dataclass
class PrefixState:
    """CTC state of N prefixes over T frames."""

    a: torch.Tensor  # (N, T) log P(prefix over frames 0..t, frame t emits its last label)
    b: torch.Tensor  # (N, T) log P(prefix over frames 0..t, frame t is blank)
    psi: torch.Tensor  # (N,) log prefix score of the prefix
    last: torch.Tensor  # (N,) last label of the prefix; -1 for the empty prefix


@dataclass
class Rows:
    """The utterance behind each of N utterance-major state rows (rows b*K .. b*K+K-1
    belong to utterance b): fixed while the search's utterances are, so a scorer makes
    it once instead of every step."""

    utt: torch.Tensor  # (N,) utterance of each row
    lens: torch.Tensor  # (N,) its frames
    padding: torch.Tensor  # (N, T) True after its frames
    last_frame: torch.Tensor  # (N, 1) index of its last frame (0 when it has none)
    by_label: torch.Tensor  # (B * V, T) the log-probs of each utterance and label over time
    label_base: torch.Tensor  # (N,) the row of by_label of label 0 of each row's utterance

    def frames(self, labels: torch.Tensor | int) -> torch.Tensor:
        """log y_t(label) of each row's utterance, labels (N,) or one id: (N, T)."""
        return self.by_label[self.label_base + labels]


def rows_for(log_probs: torch.Tensor, lens: torch.Tensor, k: int) -> Rows:
    """``Rows`` for K rows per utterance of log_probs (B, T, V), lens (B,)."""
    b, t, v = log_probs.shape
    utt = torch.arange(b, device=lens.device).repeat_interleave(k)
    row_lens = lens[utt]
    padding = ~lengths_to_mask(row_lens, t)
    by_label = log_probs.transpose(1, 2).reshape(b * v, t)
    return Rows(utt, row_lens, padding, (row_lens - 1).clamp_min(0).unsqueeze(1), by_label,
                utt * v)


@dataclass
class Inflow:
    """phi_{t-1} (N, T) of N prefixes, for both ways their next label can start at frame
    t: after any path when it differs from the last label (phi = a + b), after a blank
    only when it repeats it (phi = b); -inf where a row's frames end or a window shuts
    them. Made once a step, it serves every candidate's score and, selected by parent
    row, the states of the extensions the search keeps (``extend``)."""

    other: torch.Tensor  # (N, T)
    repeat: torch.Tensor  # (N, T)
    end: torch.Tensor  # (N,) log P(exactly the prefix | X): a + b at the row's last frame


def prepare_log_probs(log_probs: torch.Tensor, lens: torch.Tensor,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Floor log-probs (B, T, V) and zero (log 1) the padded frames, in ``dtype``."""
    lp = log_probs.to(dtype).clamp_min(LOG_FLOOR)
    valid = lengths_to_mask(lens, lp.shape[1]).unsqueeze(-1)
    return torch.where(valid, lp, torch.zeros((), dtype=dtype, device=lp.device))


def initial_state(log_probs: torch.Tensor, blank: int, k: int = 1) -> PrefixState:
    """State of the empty prefix, K rows per utterance of prepared log-probs (B, T, V)."""
    b = log_probs[:, :, blank].cumsum(1).repeat_interleave(k, dim=0)
    n, t = b.shape
    a = torch.full((n, t), NEG_INF, dtype=log_probs.dtype, device=log_probs.device)
    psi = torch.zeros(n, dtype=log_probs.dtype, device=log_probs.device)
    last = torch.full((n,), -1, dtype=torch.long, device=log_probs.device)
    return PrefixState(a, b, psi, last)


def inflow(state: PrefixState, rows: Rows, window: torch.Tensor | None = None) -> Inflow:
    """The ``Inflow`` of the prefixes of ``state``. ``window`` (N, T) bool restricts the
    frames where a new label may start."""
    start = _empty(state).unsqueeze(1)  # before frame 0 only the empty prefix has mass
    shut = rows.padding if window is None else rows.padding | ~window

    def shifted(phi):
        return torch.cat([start, phi[:, :-1]], dim=1).masked_fill(shut, NEG_INF)

    total = torch.logaddexp(state.a, state.b)
    return Inflow(shifted(total), shifted(state.b), final_score(state, rows, total))


def candidate_scores(log_probs: torch.Tensor, lens: torch.Tensor, state: PrefixState,
                     blank: int, eos: int | None, candidates: torch.Tensor | None = None,
                     window: torch.Tensor | None = None, rows: Rows | None = None,
                     probs: torch.Tensor | None = None,
                     flow: Inflow | None = None) -> torch.Tensor:
    """log psi(g c) for every prefix g and candidate c: (N, V), or (N, C) for candidates.

    log_probs (B, T, V) prepared; lens (B,); the N = B*K state rows are utterance-major
    (rows b*K .. b*K+K-1 belong to utterance b). candidates (N, C) token ids, or None for
    the whole vocabulary. The blank gets -inf; ``eos`` gets log P(exactly g | X).
    ``rows`` (``rows_for``), ``probs`` (exp of log_probs) and ``flow`` (``inflow`` of
    the state, with ``window``) may be passed in, made once; they are made here when not.
    """
    rows = rows if rows is not None else _rows(log_probs, lens, state)
    probs = probs if probs is not None else log_probs.exp()
    flow = flow if flow is not None else inflow(state, rows, window)
    psi = _sum_over_frames(flow.other, probs, candidates, rows.utt)
    tokens = _candidate_ids(log_probs, candidates)
    # the last label again: only the paths that end in blank can continue
    last = rows.frames(state.last.clamp_min(0))
    psi_repeat = torch.logsumexp(flow.repeat + last, dim=1, keepdim=True)
    psi = torch.where(tokens == state.last.unsqueeze(1), psi_repeat, psi)
    psi = psi.masked_fill(tokens == blank, NEG_INF)
    if eos is not None:
        psi = torch.where(tokens == eos, flow.end.unsqueeze(1), psi)
    return psi


def final_score(state: PrefixState, rows: Rows, total: torch.Tensor | None = None) -> torch.Tensor:
    """log P(exactly the prefix | X) per row (N,); ``total``: logaddexp(a, b) when made."""
    if total is None:
        total = torch.logaddexp(state.a, state.b)
    end = total.gather(1, rows.last_frame).squeeze(1)
    # zero frames: only the empty prefix is possible, with probability 1
    return torch.where(rows.lens > 0, end, _empty(state))


def extend(log_probs: torch.Tensor, lens: torch.Tensor, state: PrefixState,
           tokens: torch.Tensor, psi: torch.Tensor, blank: int,
           window: torch.Tensor | None = None, rows: Rows | None = None,
           flow: Inflow | None = None, parents: torch.Tensor | None = None) -> PrefixState:
    """State of the N prefixes g + tokens (N,), given their scores psi (N,).

    log_probs (B, T, V) prepared, lens (B,), rows utterance-major as above. ``parents``
    (N,): the row of ``state`` each prefix g is (default: the same row); ``flow``: the
    ``inflow`` of ``state`` (with ``window``), made here when not given.
    """
    rows = rows if rows is not None else _rows(log_probs, lens, state)
    flow = flow if flow is not None else inflow(state, rows, window)
    other, repeat, last = flow.other, flow.repeat, state.last
    if parents is not None:
        other, repeat, last = other[parents], repeat[parents], last[parents]
    phi = torch.where((tokens == last).unsqueeze(1), repeat, other)
    a = _linear_recurrence(phi, rows.frames(tokens))
    a_shift = torch.nn.functional.pad(a[:, :-1], (1, 0), value=NEG_INF)
    b = _linear_recurrence(a_shift, rows.frames(blank))
    return PrefixState(a, b, psi, tokens.clone())


def select(state: PrefixState, index: torch.Tensor) -> PrefixState:
    """Rows ``index`` (N',) of a state."""
    return PrefixState(state.a[index], state.b[index], state.psi[index], state.last[index])


def _rows(log_probs: torch.Tensor, lens: torch.Tensor, state: PrefixState) -> Rows:
    return rows_for(log_probs, lens, state.last.shape[0] // log_probs.shape[0])


def _empty(state: PrefixState) -> torch.Tensor:
    """(N,) log 1 for the empty prefix, log 0 for the others."""
    return state.last.lt(0).to(state.a.dtype).log()


def _linear_recurrence(inflow: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Solve r_t = (r_{t-1} + inflow_t) * y_t in log space, r_{-1} = 0; (N, T) each.

    r_t = sum_{s<=t} inflow_s prod_{u=s..t} y_u = X_t + logcumsumexp_s(inflow_s - X_{s-1}).
    """
    cum = x.cumsum(1)
    return cum + torch.logcumsumexp(inflow - (cum - x), dim=1)


def _sum_over_frames(phi: torch.Tensor, probs: torch.Tensor, candidates: torch.Tensor | None,
                     utt: torch.Tensor) -> torch.Tensor:
    """log sum_t exp(phi_t) y_t(c): (N, V), or (N, C) for candidates (N, C); probs
    (B, T, V) are the posteriors y, utt (N,) each row's utterance."""
    # a row of -inf only: shifted by -1e300 instead (no -inf - -inf); its sum stays -inf
    peak = phi.amax(dim=1, keepdim=True).clamp_min(-1e300)
    weights = (phi - peak).exp()  # (N, T)
    b, t, v = probs.shape
    if candidates is None:
        # (B, K, T) @ (B, T, V): the utterance's probabilities are shared by its K rows
        total = torch.bmm(weights.view(b, -1, t), probs).reshape(-1, v)
    else:
        total = torch.einsum("nt,nct->nc", weights, probs[utt.unsqueeze(1), :, candidates])
    return total.log() + peak


def _candidate_ids(log_probs: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
    """The candidates (N, C), or the whole vocabulary as (1, V), broadcast over rows."""
    if candidates is not None:
        return candidates
    return torch.arange(int(log_probs.shape[2]), device=log_probs.device).unsqueeze(0)

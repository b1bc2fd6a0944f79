"""CTC prefix scores against brute-force sums over every alignment (float64, 1e-9)."""

import itertools
import math

import torch

from earshot.decoding import ctc_prefix as cp

BLANK, EOS = 0, 3


def collapse(path):
    out, prev = [], None
    for s in path:
        if s != prev and s != BLANK:
            out.append(s)
        prev = s
    return tuple(out)


def brute_force(lp: torch.Tensor):
    """Return (prefix probs, exact probs) as dicts label-tuple -> probability."""
    t, v = lp.shape
    prefix, exact = {}, {}
    for path in itertools.product(range(v), repeat=t):
        p = math.exp(sum(float(lp[i, s]) for i, s in enumerate(path)))
        y = collapse(path)
        exact[y] = exact.get(y, 0.0) + p
        for n in range(len(y) + 1):
            prefix[y[:n]] = prefix.get(y[:n], 0.0) + p
    return prefix, exact


def log_or_inf(p):
    return math.log(p) if p > 0 else float("-inf")


def walk(lp, lens, prefix_len, candidates=None):
    """Yield (prefix, scores) for every prefix up to prefix_len by extending states."""
    frontier = [((), cp.initial_state(lp, BLANK))]
    for _ in range(prefix_len + 1):
        nxt = []
        for g, st in frontier:
            psi = cp.candidate_scores(lp, lens, st, BLANK, EOS, candidates)
            yield g, psi[0]
            for c in (1, 2, 3):
                col = c if candidates is None else int((candidates[0] == c).nonzero())
                tok = torch.tensor([c])
                nxt.append((g + (c,), cp.extend(lp, lens, st, tok, psi[:, col], BLANK)))
        frontier = nxt


def check(lp_full, length, candidates=None):
    lp = cp.prepare_log_probs(lp_full.unsqueeze(0), torch.tensor([length]))
    prefix, exact = brute_force(lp_full[:length])
    count = 0
    for g, psi in walk(lp, torch.tensor([length]), 2, candidates):
        for col, c in enumerate(range(4) if candidates is None else candidates[0].tolist()):
            got = float(psi[col])
            if c == BLANK:
                assert got == float("-inf")
                continue
            want = exact.get(g, 0.0) if c == EOS else prefix.get(g + (c,), 0.0)
            assert math.isclose(got, log_or_inf(want), abs_tol=1e-9), (g, c, got, want)
            count += 1
    assert count > 30


def test_prefix_scores_equal_brute_force():
    torch.manual_seed(0)
    lp = torch.randn(5, 4, dtype=torch.float64).mul(2).log_softmax(-1)
    check(lp, 5)


def test_padded_frames_are_ignored():
    torch.manual_seed(1)
    lp = torch.randn(6, 4, dtype=torch.float64).log_softmax(-1)
    check(lp, 4)


def test_candidate_subset_matches_full_vocabulary():
    torch.manual_seed(2)
    lp = torch.randn(5, 4, dtype=torch.float64).log_softmax(-1)
    check(lp, 5, candidates=torch.tensor([[3, 1, 2]]))


def test_zero_frames_only_empty_sequence():
    lp = cp.prepare_log_probs(torch.zeros(1, 2, 4, dtype=torch.float64).log_softmax(-1),
                              torch.tensor([0]))
    st = cp.initial_state(lp, BLANK)
    psi = cp.candidate_scores(lp, torch.tensor([0]), st, BLANK, EOS)
    assert psi[0, EOS] == 0.0
    assert torch.isneginf(psi[0, 1]) and torch.isneginf(psi[0, 2])


def test_rows_share_utterance_log_probs():
    """K rows per utterance: each row scores like its utterance decoded alone."""
    torch.manual_seed(3)
    lp = cp.prepare_log_probs(torch.randn(2, 5, 4, dtype=torch.float64).log_softmax(-1),
                              torch.tensor([5, 3]))
    lens = torch.tensor([5, 3])
    st = cp.initial_state(lp, BLANK, k=2)
    psi = cp.candidate_scores(lp, lens, st, BLANK, EOS)
    st2 = cp.extend(lp, lens, st, torch.tensor([1, 2, 2, 1]), psi[[0, 1, 2, 3], [1, 2, 2, 1]], BLANK)
    both = cp.candidate_scores(lp, lens, st2, BLANK, EOS)
    for b in range(2):
        one = cp.initial_state(lp[b:b + 1], BLANK)
        p1 = cp.candidate_scores(lp[b:b + 1], lens[b:b + 1], one, BLANK, EOS)
        tok = torch.tensor([2 if b else 1])
        one = cp.extend(lp[b:b + 1], lens[b:b + 1], one, tok, p1[:, tok[0]], BLANK)
        alone = cp.candidate_scores(lp[b:b + 1], lens[b:b + 1], one, BLANK, EOS)
        assert torch.allclose(alone[0], both[2 * b], atol=1e-12)


def test_extend_from_parents_matches_selected_state():
    """Extending rows ``parents`` of a state (with its shared inflow, as the beam search
    does) gives the same state as selecting those rows first and extending them."""
    torch.manual_seed(5)
    lens = torch.tensor([6, 4])
    lp = cp.prepare_log_probs(torch.randn(2, 6, 5, dtype=torch.float64).log_softmax(-1), lens)
    st = cp.initial_state(lp, BLANK, k=3)
    first = torch.tensor([1, 2, 4, 2, 1, 4])
    psi = cp.candidate_scores(lp, lens, st, BLANK, EOS)
    st = cp.extend(lp, lens, st, first, psi[torch.arange(6), first], BLANK)
    rows = cp.rows_for(lp, lens, 3)
    flow = cp.inflow(st, rows)
    psi = cp.candidate_scores(lp, lens, st, BLANK, EOS, rows=rows, flow=flow)
    parents = torch.tensor([2, 2, 0, 5, 3, 3])  # within each utterance, repeats included
    tokens = torch.tensor([4, 1, 1, 2, 2, 4])  # row 0 repeats its parent's last label
    scores = psi[parents, tokens]
    shared = cp.extend(lp, lens, st, tokens, scores, BLANK, rows=rows, flow=flow, parents=parents)
    alone = cp.extend(lp, lens, cp.select(st, parents), tokens, scores, BLANK)
    for name in ("a", "b", "psi", "last"):
        assert torch.equal(getattr(shared, name), getattr(alone, name)), name

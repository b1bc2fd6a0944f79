"""Joint CTC/attention beam search: greedy equivalence, batch invariance, CTC-only
equivalence, LM weight 0, edge cases. Tiny random models on random encoder output."""

import math

import pytest
import torch

from earshot.config import DecodeConfig, DecoderConfig, LMConfig
from earshot.decoding import scorers as sc
from earshot.decoding.api import decode_encoded
from earshot.decoding.ctc_beam import ctc_prefix_beam_search
from earshot.models.asr import Encoded
from earshot.models.ctc import CTCHead
from earshot.models.decoder import AttentionalDecoder
from earshot.models.lm import RNNLM

V, H = 9, 12
BLANK, PAD, UNK, BOS, EOS = 0, 1, 2, 3, 4


class StubTokenizer:
    blank_id, pad_id, unk_id, bos_id, eos_id = BLANK, PAD, UNK, BOS, EOS
    vocab_size = V

    def decode(self, ids):
        return " ".join(str(i) for i in ids if i > EOS)


def make_model(seed=0, sharp=4.0, vocab=V):
    torch.manual_seed(seed)
    decoder = AttentionalDecoder(DecoderConfig(units=16, embedding_dim=8, dropout=0.0),
                                 vocab_size=vocab, enc_dim=H, bos_id=BOS).eval()
    ctc = CTCHead(H, vocab).eval()
    with torch.no_grad():  # peaky outputs, like a trained model: eos is reachable
        decoder.output.weight.mul_(sharp)
        decoder.output.bias[EOS] += 1.0
        ctc.proj.weight.mul_(sharp)
        ctc.proj.bias[BLANK] += 2.0
        ctc.proj.bias[[PAD, BOS, EOS]] -= 10.0  # never CTC targets, so never emitted
    return StubModel(decoder, ctc)


class StubModel:
    """The model's decoding interface over a bare decoder and CTC head (no encoder)."""

    def __init__(self, decoder, ctc):
        self.decoder, self.ctc, self.vocab_size = decoder, ctc, decoder.vocab_size

    def __getattr__(self, name):  # init_state, step, select_state, select_memory, ...
        return getattr(self.decoder, name)

    def teacher_forced(self, memory, tokens_in):
        return self.decoder(memory, tokens_in)

    def encoded(self, h, lens):
        return Encoded(self.decoder.memory(h, lens), self.ctc(h), lens)


def make_lm(seed=1, vocab=V):
    torch.manual_seed(seed)
    return RNNLM(LMConfig(embedding_dim=8, units=16, layers=1, dropout=0.0), vocab).eval()


def encoder_output(lens, seed=2):
    torch.manual_seed(seed)
    lens = torch.tensor(lens)
    return torch.randn(len(lens), int(lens.max()), H), lens


def run(model, h, lens, lm=None, mode="beam", **kw):
    return decode_encoded(model, model.encoded(h, lens), DecodeConfig(**kw), StubTokenizer(),
                          lm=lm, mode=mode)


def test_beam_one_without_ctc_or_lm_equals_greedy():
    model = make_model()
    h, lens = encoder_output([9, 4, 7, 12, 1])
    beam = run(model, h, lens, beam_size=1, max_len_ratio=0.5)
    greedy = run(model, h, lens, mode="greedy", max_len_ratio=0.5)
    assert [b[0].tokens for b in beam] == [g[0].tokens for g in greedy]
    assert any(len(b[0].tokens) > 0 for b in beam)


@pytest.mark.parametrize("beam_size", [1, 10])
def test_batch_invariance(beam_size):
    model, lm = make_model(), make_lm()
    h, lens = encoder_output([11, 5, 8, 2])
    kw = dict(beam_size=beam_size, ctc_weight=0.3, lm_weight=0.2, length_bonus=0.1, nbest=3)
    together = run(model, h, lens, lm, **kw)
    for i, n in enumerate(lens.tolist()):
        alone = run(model, h[i:i + 1, :n], lens[i:i + 1], lm, **kw)[0]
        assert [a.tokens for a in alone] == [t.tokens for t in together[i]]
        for a, t in zip(alone, together[i]):
            assert a.score == pytest.approx(t.score, abs=1e-5)
            for name in a.scores:
                assert a.scores[name] == pytest.approx(t.scores[name], abs=1e-5)


def test_ctc_weight_one_gives_ctc_prefix_beam_search():
    model = make_model(seed=3, sharp=6.0)
    h, lens = encoder_output([10, 6, 8], seed=4)
    joint = run(model, h, lens, beam_size=10, ctc_weight=1.0, eos_threshold=0.0)
    with torch.no_grad():
        lp = model.ctc(h)
    specials = (PAD, BOS, EOS)
    ref = ctc_prefix_beam_search(lp, lens, BLANK, beam=10, exclude=specials)
    for b, (j, r) in enumerate(zip(joint, ref)):
        assert j[0].tokens == r[0].tokens
        # the frame-synchronous search loses the mass of pruned prefixes, so its score is
        # a lower bound; the joint search's prefix scores are exact
        exact = -_ctc_nll(lp, lens, b, j[0].tokens)
        assert r[0].score <= exact + 1e-9
        assert j[0].score == pytest.approx(exact, abs=1e-5)
        assert j[0].scores["ctc"] == pytest.approx(exact, abs=1e-5)


def _ctc_nll(lp, lens, b, tokens):
    return float(torch.nn.functional.ctc_loss(
        lp[b:b + 1, : lens[b]].double().transpose(0, 1), torch.tensor([tokens]),
        lens[b:b + 1], torch.tensor([len(tokens)]), blank=BLANK, reduction="sum"))


@pytest.mark.parametrize("pre_beam", [0, 5])
def test_ctc_score_is_exact_ctc_log_likelihood(pre_beam):
    model = make_model(vocab=30)
    h, lens = encoder_output([12, 7])
    hyps = run(model, h, lens, beam_size=4, ctc_weight=0.3, pre_beam=pre_beam, nbest=3)
    with torch.no_grad():
        lp = model.ctc(h)
    for b, utt in enumerate(hyps):
        for hyp in utt:
            assert hyp.scores["ctc"] == pytest.approx(-_ctc_nll(lp, lens, b, hyp.tokens), abs=1e-4)
            total = 0.7 * hyp.scores["attention"] + 0.3 * hyp.scores["ctc"]
            assert hyp.score == pytest.approx(total, abs=1e-4)


def test_lm_weight_zero_equals_no_lm():
    model, lm = make_model(), make_lm()
    h, lens = encoder_output([9, 6])
    kw = dict(beam_size=5, ctc_weight=0.4, nbest=3)
    with_lm = run(model, h, lens, lm, lm_weight=0.0, **kw)
    without = run(model, h, lens, None, **kw)
    assert [[x.tokens for x in u] for u in with_lm] == [[x.tokens for x in u] for u in without]
    assert [[x.score for x in u] for u in with_lm] == [[x.score for x in u] for u in without]


def test_total_score_is_weighted_sum_of_scorer_scores():
    model, lm = make_model(), make_lm()
    h, lens = encoder_output([9, 6])
    weights = dict(attention=0.6, ctc=0.4, lm=0.3, length=0.5)
    hyps = run(model, h, lens, lm, beam_size=4, ctc_weight=0.4, lm_weight=0.3, length_bonus=0.5,
               nbest=4)
    for utt in hyps:
        assert len(utt) >= 2 and [x.score for x in utt] == sorted((x.score for x in utt), reverse=True)
        for hyp in utt:
            assert hyp.scores["length"] == len(hyp.tokens) + 1
            total = sum(w * hyp.scores[k] for k, w in weights.items())
            assert hyp.score == pytest.approx(total, abs=1e-4)


@pytest.mark.parametrize("nbest", [1, 3])
def test_early_stop_is_exact(monkeypatch, nbest):
    """Stopping an utterance once no live hypothesis can overtake its finished ones
    returns what the search gives when it runs until K hypotheses have finished."""
    model, lm = make_model(), make_lm()
    h, lens = encoder_output([11, 5, 8, 2])
    kw = dict(beam_size=6, ctc_weight=0.3, lm_weight=0.2, length_bonus=0.1, nbest=nbest)
    steps = []
    step = model.decoder.step
    monkeypatch.setattr(model.decoder, "step", lambda *a: steps.append(1) or step(*a))
    early = run(model, h, lens, lm, **kw)
    n_early = len(steps)
    monkeypatch.setattr(sc.DecoderScorer, "max_step_score", None)  # no bound: no early stop
    full = run(model, h, lens, lm, **kw)
    assert n_early < len(steps)
    for e, f in zip(early, full):
        assert [x.tokens for x in e] == [x.tokens for x in f]
        assert [x.score for x in e] == pytest.approx([x.score for x in f], abs=1e-6)


def test_lm_fusion_changes_scores():
    model, lm = make_model(), make_lm()
    h, lens = encoder_output([9])
    a = run(model, h, lens, lm, beam_size=4, lm_weight=0.0)[0][0]
    b = run(model, h, lens, lm, beam_size=4, lm_weight=0.5)[0][0]
    assert "lm" in b.scores and "lm" not in a.scores and b.score != a.score


def test_beam_larger_than_vocabulary():
    model = make_model(vocab=6)
    h, lens = encoder_output([7, 3])
    hyps = run(model, h, lens, beam_size=20, ctc_weight=0.5, nbest=20)
    for utt in hyps:
        assert utt and all(math.isfinite(x.score) for x in utt)
        assert len({tuple(x.tokens) for x in utt}) == len(utt)


def test_utterance_without_frames_gives_empty_hypothesis():
    model = make_model()
    h, _ = encoder_output([5, 5])
    hyps = run(model, h, torch.tensor([0, 5]), beam_size=3, ctc_weight=0.3)
    assert hyps[0][0].tokens == [] and hyps[0][0].text == ""
    assert run(model, h[:1], torch.tensor([0]), beam_size=3)[0][0].tokens == []


def test_maximum_length_reached_before_eos():
    model = make_model()
    with torch.no_grad():
        model.decoder.output.bias[EOS] -= 30.0  # eos never wins on its own
    h, lens = encoder_output([10, 4])
    for ctc_weight in (0.0, 0.5):
        hyps = run(model, h, lens, max_len_ratio=0.3, beam_size=3, ctc_weight=ctc_weight)
        for utt, n in zip(hyps, lens.tolist()):
            assert 0 < len(utt[0].tokens) <= math.ceil(0.3 * n)
            assert math.isfinite(utt[0].score)
            if ctc_weight == 0.0:
                assert len(utt[0].tokens) == math.ceil(0.3 * n)


def test_window_coverage_and_shift_limit():
    model = make_model(vocab=30)
    h, lens = encoder_output([12, 7])
    plain = run(model, h, lens, beam_size=4, ctc_weight=0.3)
    for kw in (dict(ctc_window=3), dict(pre_beam=2), dict(coverage_weight=0.5),
               dict(max_attn_shift=1)):
        hyps = run(model, h, lens, beam_size=4, ctc_weight=0.3, nbest=4, **kw)
        assert all(u for u in hyps)
        # each setting shows an effect: other hypotheses, or other scores for them
        assert _nbest(hyps) != _nbest(run(model, h, lens, beam_size=4, ctc_weight=0.3, nbest=4)), kw
    # a shift limit wider than the input changes nothing; a tight one prunes a random
    # model's jumping attention, and the search still returns something
    wide = run(model, h, lens, beam_size=4, ctc_weight=0.3, max_attn_shift=12)
    assert [u[0].tokens for u in wide] == [u[0].tokens for u in plain]
    tight = run(model, h, lens, beam_size=4, ctc_weight=0.3, max_attn_shift=1)
    assert all(len(u) == 1 for u in tight)


def _nbest(hyps):
    return [[(tuple(x.tokens), round(float(x.score), 4)) for x in u] for u in hyps]


def _ctc_log_prob(model, h, lens, i, tokens):
    """log p_ctc(tokens | utterance i) from torch's CTC loss (the reference)."""
    log_probs = model.ctc(h[i:i + 1, : int(lens[i])]).transpose(0, 1)
    target = torch.tensor([tokens], dtype=torch.long)
    return -float(torch.nn.functional.ctc_loss(log_probs, target, lens[i:i + 1],
                                               torch.tensor([len(tokens)]), blank=BLANK,
                                               reduction="sum", zero_infinity=False))


def _attention_log_prob(model, h, lens, i, tokens):
    """log p_att(tokens, eos | utterance i) by teacher forcing (the reference)."""
    memory = model.encoded(h[i:i + 1, : int(lens[i])], lens[i:i + 1]).memory
    with torch.no_grad():
        logits = model.teacher_forced(memory, torch.tensor([[BOS, *tokens]]))
    log_probs = torch.log_softmax(logits.float(), dim=-1)[0]
    return float(sum(log_probs[t, y] for t, y in enumerate([*tokens, EOS])))


def test_ctc_modes_and_rescoring_equal_reference_computations():
    import itertools

    model = make_model(vocab=7)  # tokens CTC can emit: unk, 5 and 6
    h, lens = encoder_output([6, 4])
    greedy = run(model, h, lens, mode="ctc_greedy")
    for i in range(2):
        best = model.ctc(h[i:i + 1, : int(lens[i])]).argmax(-1)[0].tolist()
        collapsed = [t for j, t in enumerate(best) if t != BLANK and (j == 0 or t != best[j - 1])]
        assert greedy[i][0].tokens == collapsed
    beams = run(model, h, lens, mode="ctc_beam", beam_size=64, nbest=3)
    for i in range(2):
        every = [list(y) for n in range(0, 5) for y in itertools.product([UNK, 5, 6], repeat=n)]
        scored = sorted(((_ctc_log_prob(model, h, lens, i, y), y) for y in every), reverse=True)
        assert [x.tokens for x in beams[i]] == [y for _, y in scored[:3]]  # exact on this small a space
        for x, (want, _) in zip(beams[i], scored):
            assert float(x.score) == pytest.approx(want, abs=1e-4)
    rescored = run(model, h, lens, mode="rescore", beam_size=64, ctc_weight=0.3, length_bonus=0.2,
                   nbest=6)
    for i in range(2):
        totals = [float(x.score) for x in rescored[i]]
        assert totals == sorted(totals, reverse=True)
        for x in rescored[i]:
            want = (0.7 * _attention_log_prob(model, h, lens, i, x.tokens)
                    + 0.3 * _ctc_log_prob(model, h, lens, i, x.tokens) + 0.2 * (len(x.tokens) + 1))
            assert float(x.score) == pytest.approx(want, abs=1e-3)  # (a wide beam: exact CTC)


def test_other_modes():
    model = make_model()
    h, lens = encoder_output([9, 6])
    for mode in ("ctc_greedy", "ctc_beam", "rescore", "auto"):
        hyps = run(model, h, lens, mode=mode, beam_size=4, ctc_weight=0.3, nbest=2)
        assert len(hyps) == 2 and all(1 <= len(u) <= 2 for u in hyps)
    rescored = run(model, h, lens, mode="rescore", beam_size=4, ctc_weight=0.3, nbest=4)
    assert all(set(x.scores) == {"attention", "ctc"} for u in rescored for x in u)

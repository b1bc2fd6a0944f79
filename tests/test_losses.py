"""Losses: CTC against torch, label smoothing, padding, joint weighting, sampling schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from earshot.config import ScheduledSamplingConfig
from earshot.losses import ctc_loss, joint_loss, nll_loss, sampling_probability


def ctc_inputs():
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(3, 12, 6), -1)
    lens = torch.tensor([12, 9, 5])
    targets = torch.tensor([[1, 2, 3, 2], [4, 4, 5, 0], [2, 0, 0, 0]])
    return log_probs, lens, targets, torch.tensor([4, 3, 1])


def test_ctc_loss_equals_torch():
    log_probs, lens, targets, target_lens = ctc_inputs()
    ours = ctc_loss(log_probs, lens, targets, target_lens, blank=0)
    ref = F.ctc_loss(log_probs.transpose(0, 1), targets, lens, target_lens, blank=0)
    torch.testing.assert_close(ours, ref)
    per_utt = F.ctc_loss(log_probs.transpose(0, 1), targets, lens, target_lens, reduction="none")
    torch.testing.assert_close(ours, (per_utt / target_lens).mean())


def test_ctc_loss_is_float32_under_autocast_and_zero_for_impossible():
    log_probs, lens, targets, target_lens = ctc_inputs()
    lens = torch.tensor([12, 9, 1])
    targets[2, :3], target_lens[2] = 2, 3  # 3 labels cannot fit in 1 frame
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ctc_loss(log_probs.bfloat16(), lens, targets, target_lens, blank=0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    per_utt = F.ctc_loss(log_probs.transpose(0, 1), targets, lens, target_lens,
                         reduction="none", zero_infinity=True)
    assert per_utt[2] == 0
    torch.testing.assert_close(loss, (per_utt / target_lens).mean(), atol=0.05, rtol=0.02)


def nll_inputs():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, requires_grad=True)
    targets = torch.tensor([[3, 4, 5, 6], [2, 6, 1, 1]])  # pad id 1
    return logits, targets, torch.tensor([4, 2])


def test_nll_without_smoothing_is_cross_entropy_over_valid_tokens():
    logits, targets, lens = nll_inputs()
    ours = nll_loss(logits, targets, lens, pad_id=1, smoothing=0.0)
    lp = torch.log_softmax(logits, -1)
    picked = [lp[0, t, targets[0, t]] for t in range(4)] + [lp[1, t, targets[1, t]] for t in range(2)]
    torch.testing.assert_close(ours, -torch.stack(picked).mean())


def test_nll_label_smoothing_formula():
    logits, targets, lens = nll_inputs()
    eps = 0.2
    ours = nll_loss(logits, targets, lens, pad_id=1, smoothing=eps)
    lp = torch.log_softmax(logits, -1)
    valid = [(0, t) for t in range(4)] + [(1, t) for t in range(2)]
    per_tok = [-(1 - eps) * lp[b, t, targets[b, t]] - eps * lp[b, t].mean() for b, t in valid]
    torch.testing.assert_close(ours, torch.stack(per_tok).mean())


def test_nll_ignores_padding_positions():
    logits, targets, lens = nll_inputs()
    base = nll_loss(logits, targets, lens, pad_id=1, smoothing=0.1)
    changed = logits.detach().clone()
    changed[1, 2:] = 50 * torch.randn(2, 7)
    torch.testing.assert_close(nll_loss(changed, targets, lens, 1, 0.1), base)
    base.backward()
    assert logits.grad[1, 2:].abs().sum() == 0 and logits.grad[0].abs().sum() > 0


def test_joint_loss():
    ctc, nll = torch.tensor(2.0), torch.tensor(4.0)
    assert joint_loss(ctc, nll, 0.25).item() == pytest.approx(0.25 * 2 + 0.75 * 4)
    assert joint_loss(ctc, nll, 0.0).item() == 4.0
    assert joint_loss(ctc, nll, 1.0).item() == 2.0


def test_sampling_probability_ramps_linearly():
    off = ScheduledSamplingConfig()
    assert sampling_probability(off, step=10_000, epoch=50) == 0.0
    steps = ScheduledSamplingConfig(max_prob=0.5, unit="step", start=100, ramp=200)
    got = [sampling_probability(steps, step=s, epoch=0) for s in (0, 100, 200, 300, 10_000)]
    assert got == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.5])
    epochs = ScheduledSamplingConfig(max_prob=0.3, unit="epoch", start=1, ramp=1)
    assert [sampling_probability(epochs, 999, e) for e in (0, 1, 2, 3)] == pytest.approx(
        [0.0, 0.0, 0.3, 0.3])

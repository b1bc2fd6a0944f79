"""Learning-rate schedulers: NewBob, warmup + inverse-sqrt or cosine decay, none; state round trips."""

import math
import typing

import pytest
import torch

from earshot.choices import SCHEDULERS
from earshot.config import SchedulerConfig
from earshot.train.schedulers import ConstantLR, NewBob, WarmupCosine, WarmupDecay, build_scheduler


def _optimizer(lr=1.0):
    return torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr)


def _lr(opt):
    return opt.param_groups[0]["lr"]


def test_table_covers_every_configurable_type():
    kinds = typing.get_args(typing.get_type_hints(SchedulerConfig)["type"])
    assert set(SCHEDULERS) == set(kinds)
    assert isinstance(build_scheduler(SchedulerConfig(type="none"), _optimizer(), 0.1), ConstantLR)


def test_newbob_anneals_only_when_improvement_is_below_threshold():
    opt = _optimizer()
    sched = NewBob(SchedulerConfig(type="newbob", factor=0.5, threshold=0.01), opt, base_lr=1.0)
    assert sched.step_epoch({"loss": 10.0}) == 1.0  # first epoch: nothing to compare with
    assert sched.step_epoch({"loss": 9.0}) == 1.0  # 10% better
    assert sched.step_epoch({"loss": 8.95}) == 0.5  # 0.56% better < 1%
    assert sched.step_epoch({"loss": 9.5}) == 0.25  # worse
    assert _lr(opt) == 0.25


def test_newbob_patience_waits_for_consecutive_bad_epochs():
    opt = _optimizer()
    cfg = SchedulerConfig(type="newbob", factor=0.1, threshold=0.001, patience=1)
    sched = NewBob(cfg, opt, base_lr=1.0)
    lrs = [sched.step_epoch({"loss": m}) for m in (5.0, 5.0, 4.0, 4.0, 4.0)]
    # bad epochs at 2, 4, 5: the first and third are forgiven by patience=1, the 4-5 run anneals
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1])


def test_newbob_watches_the_configured_metric():
    sched = NewBob(SchedulerConfig(type="newbob", metric="cer"), _optimizer(), base_lr=1.0)
    sched.step_epoch({"loss": 9.0, "cer": 50.0})
    assert sched.step_epoch({"loss": 1.0, "cer": 50.0}) == 0.5


def test_warmup_rises_linearly_peaks_then_decays_as_inverse_sqrt():
    opt = _optimizer()
    sched = WarmupDecay(SchedulerConfig(type="warmup", warmup_steps=4), opt, base_lr=2.0)
    lrs = [_lr(opt)] + [sched.step_batch() for _ in range(15)]  # lr used by steps 1..16
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[15] == pytest.approx(2.0 * math.sqrt(4 / 16))
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))
    assert sched.step_epoch({"loss": 1.0}) == lrs[-1]  # epochs do not move it


def test_cosine_warms_up_then_anneals_to_the_floor_at_the_last_step():
    opt = _optimizer()
    cfg = SchedulerConfig(type="cosine", warmup_steps=2, min_lr_ratio=0.1)
    sched = build_scheduler(cfg, opt, 2.0, total_steps=12)
    assert isinstance(sched, WarmupCosine)
    lrs = [_lr(opt)] + [sched.step_batch() for _ in range(14)]  # lr used by steps 1..15
    assert lrs[:2] == pytest.approx([1.0, 2.0])
    assert lrs[6] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # step 7: half way through the decay
    assert all(a > b for a, b in zip(lrs[1:11], lrs[2:12]))
    assert lrs[11:] == pytest.approx([0.2] * 4)  # step 12 = total_steps, and after it


def test_cosine_without_a_total_is_refused():
    with pytest.raises(ValueError, match="total number of optimizer steps"):
        build_scheduler(SchedulerConfig(type="cosine"), _optimizer(), 1.0)


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_state_round_trip_continues_identically(kind):
    cfg = SchedulerConfig(type=kind, warmup_steps=3, threshold=0.05)
    metrics = [{"loss": m} for m in (4.0, 3.0, 2.95, 2.9, 2.0)]
    ref_opt = _optimizer()
    ref = build_scheduler(cfg, ref_opt, 0.5, total_steps=8)
    first = build_scheduler(cfg, _optimizer(), 0.5, total_steps=8)
    for m in metrics[:2]:
        for sch in (ref, first):
            sch.step_batch(), sch.step_batch(), sch.step_epoch(m)
    resumed_opt = _optimizer(lr=123.0)
    resumed = build_scheduler(cfg, resumed_opt, 0.5, total_steps=99)  # the saved total wins
    resumed.load_state_dict(dict(first.state_dict()))
    for m in metrics[2:]:
        for sch in (ref, resumed):
            sch.step_batch(), sch.step_epoch(m)
        assert resumed.lr == ref.lr
    assert _lr(resumed_opt) == _lr(ref_opt)
    assert all(isinstance(v, (int, float)) for v in resumed.state_dict().values())


def test_noam_peaks_at_warmup_with_the_transformer_formula():
    opt = _optimizer()
    sched = build_scheduler(SchedulerConfig(type="noam", warmup_steps=4, model_dim=16), opt, 2.0)
    lrs = [_lr(opt)] + [sched.step_batch() for _ in range(15)]  # steps 1..16
    peak = 2.0 / math.sqrt(16 * 4)
    assert lrs[3] == pytest.approx(peak) and max(lrs) == pytest.approx(peak)
    assert lrs[0] == pytest.approx(peak / 4)
    assert lrs[15] == pytest.approx(2.0 / 4 / 4)  # 16^-0.5 * 16^-0.5


def test_parameter_groups_keep_their_ratio_to_the_scheduled_rate():
    params = [torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)]
    opt = torch.optim.SGD([{"params": [params[0]], "lr_scale": 0.1}, {"params": [params[1]]}], lr=1.0)
    sched = build_scheduler(SchedulerConfig(type="warmup", warmup_steps=2), opt, 1.0)
    for _ in range(3):
        sched.step_batch()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * sched.lr)
        assert opt.param_groups[1]["lr"] == pytest.approx(sched.lr)

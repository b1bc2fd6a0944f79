"""Training checkpoints: round trip, atomic save under a crash, keep-last/best-K, averaging."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from earshot.config import SchedulerConfig
from earshot.errors import EarshotError
from earshot.train import checkpoint as ckpt
from earshot.train.schedulers import build_scheduler
from earshot.train.state import TrainState


def _parts(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sched = build_scheduler(SchedulerConfig(type="newbob"), opt, 0.01)
    return model, opt, sched


def _save(path, model, opt, sched, state=None, sampler=None):
    state = state or TrainState(epoch=1, global_step=7, lr=0.01)
    ckpt.save_checkpoint(path, model, opt, sched, None, sampler, state, ckpt.capture_rng())


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched = _parts()
    state = TrainState(epoch=2, global_step=9, lr=0.01).record(2, 12.5, 9)
    sampler = {"epoch": 2, "seed": 0, "stats": {1: {"kept": 3}}, "max": float("inf"), "cuts": None}
    _save(tmp_path / "a.pt", model, opt, sched, state, sampler)
    loaded = ckpt.load_checkpoint(tmp_path / "a.pt")
    fresh, fresh_opt, fresh_sched = _parts(seed=1)
    fresh.load_state_dict(loaded.model)
    fresh_opt.load_state_dict(loaded.optimizer)
    fresh_sched.load_state_dict(loaded.scheduler)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert loaded.train_state == state and loaded.sampler == sampler and loaded.scaler is None


def test_rng_capture_and_restore_replays_every_generator():
    random.random(), np.random.normal(), torch.randn(1)
    rng = ckpt.capture_rng()
    first = (random.random(), random.gauss(0, 1), np.random.normal(size=3).tolist(), torch.randn(3).tolist())
    ckpt.restore_rng(rng)
    again = (random.random(), random.gauss(0, 1), np.random.normal(size=3).tolist(), torch.randn(3).tolist())
    assert first == again
    assert all(isinstance(v, torch.Tensor) for v in rng.values())


def test_crash_mid_save_keeps_the_old_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    model, opt, sched = _parts()
    path = tmp_path / "epoch-0001.pt"
    _save(path, model, opt, sched)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between writing the temp file and the rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        _save(path, model, opt, sched)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["epoch-0001.pt"]
    ckpt.load_checkpoint(path)  # still loads


def test_partial_file_from_a_hard_kill_is_cleaned_and_ignored(tmp_path):
    (tmp_path / ".epoch-0002.pt.tmp-999").write_bytes(b"half a checkpoint")
    (tmp_path / "epoch-0001.pt").write_bytes(b"")
    assert list(ckpt.list_checkpoints(tmp_path)) == [1]
    assert [p.name for p in ckpt.remove_partial(tmp_path)] == [".epoch-0002.pt.tmp-999"]
    assert sorted(os.listdir(tmp_path)) == ["epoch-0001.pt"]


def test_load_refuses_pickled_code_and_garbage(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"format": 1, "x": os.getcwd}, handle, protocol=2)  # a callable: not weights-only
    with pytest.raises(EarshotError, match="evil.pt"):
        ckpt.load_checkpoint(evil)
    with pytest.raises(EarshotError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_keep_last_k_plus_best_k(tmp_path):
    model, opt, sched = _parts()
    state = TrainState()
    for epoch, metric in enumerate([30.0, 10.0, 20.0, 25.0, 40.0, 35.0], start=1):
        state = state.record(epoch, metric, epoch)
        _save(ckpt.checkpoint_path(tmp_path, epoch), model, opt, sched, state)
        ckpt.prune_checkpoints(tmp_path, ckpt.epochs_to_keep(state, keep_last=2, keep_best=2))
    assert list(ckpt.list_checkpoints(tmp_path)) == [2, 3, 5, 6]
    assert ckpt.latest_checkpoint(tmp_path).name == "epoch-0006.pt"
    assert state.best_epoch == 2 and state.best_epochs(3) == [2, 3, 4]


def test_average_checkpoints_is_the_elementwise_mean(tmp_path):
    paths, models = [], []
    for i in range(3):
        model, opt, sched = _parts(seed=i)
        model[1].num_batches_tracked.fill_(i + 10)
        paths.append(tmp_path / f"{i}.pt")
        _save(paths[-1], model, opt, sched)
        models.append(model.state_dict())
    avg = ckpt.average_checkpoints(paths)
    expected = (models[0]["0.weight"] + models[1]["0.weight"] + models[2]["0.weight"]) / 3
    assert torch.allclose(avg["0.weight"], expected, atol=1e-7)
    assert avg["0.weight"].dtype == torch.float32
    assert avg["1.num_batches_tracked"].item() == 12  # integers come from the last file
    with pytest.raises(EarshotError):
        ckpt.average_checkpoints([])


def test_train_state_ties_go_to_the_later_epoch_and_divergence_ranks_last():
    state = TrainState()
    for epoch, metric in enumerate([50.0, float("nan"), 50.0, 60.0], start=1):
        state = state.record(epoch, metric, epoch * 10)
    assert state.best_epoch == 3 and state.best_metric == 50.0
    assert state.best_epochs(4) == [3, 1, 4, 2]
    assert TrainState.from_dict(state.to_dict()) == state
    assert TrainState().record(1, float("inf"), 1).best_epoch == 1  # something is always exportable

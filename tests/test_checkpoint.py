"""Training checkpoints: round trip, atomic save under a crash, keep-last/best-K, mid-epoch
files, fallback past a damaged checkpoint, averaging."""

import dataclasses
import os
import pickle

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


def _save(path, model, opt, sched, state=None):
    state = state or TrainState(epoch=1, global_step=7, lr=0.01)
    ckpt.save_checkpoint(path, model, opt, sched, None, state)


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched = _parts()
    state = TrainState(epoch=2, global_step=9, lr=0.01).record(2, 12.5, 9)
    state = dataclasses.replace(state, epoch_batches=4, epoch_sums=(1.5, 1.0, 2.0, 3.0))
    _save(tmp_path / "a.pt", model, opt, sched, state)
    loaded = ckpt.load_checkpoint(tmp_path / "a.pt")
    fresh, fresh_opt, fresh_sched = _parts(seed=1)
    fresh.load_state_dict(loaded.model)
    fresh_opt.load_state_dict(loaded.optimizer)
    fresh_sched.load_state_dict(loaded.scheduler)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert loaded.train_state == state and loaded.scaler is None


def test_crash_mid_save_keeps_the_old_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    model, opt, sched = _parts()
    path = tmp_path / "epoch-0001.pt"
    _save(path, model, opt, sched)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between writing the temp file and the rename")

    from earshot import integrity

    monkeypatch.setattr(integrity.os, "replace", crash)  # where checkpoints are renamed into place
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        _save(path, model, opt, sched)
    assert path.read_bytes() == before
    # the old digest goes just before the rename (it must never vouch for the new file)
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


def _checkpoints(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".pt"))


def test_mid_epoch_files_sort_after_their_epoch_and_are_pruned_at_the_next_epoch_end(tmp_path):
    model, opt, sched = _parts()
    for epoch, batches in [(1, 0), (2, 40), (2, 80), (2, 120)]:
        _save(ckpt.checkpoint_path(tmp_path, epoch, batches), model, opt, sched)
    assert ckpt.latest_checkpoint(tmp_path).name == "epoch-0002-batch-000120.pt"
    assert list(ckpt.list_checkpoints(tmp_path)) == [1]  # end-of-epoch files only
    ckpt.prune_mid_epoch(tmp_path, keep_last=2)
    assert _checkpoints(tmp_path) == ["epoch-0001.pt", "epoch-0002-batch-000080.pt",
                                      "epoch-0002-batch-000120.pt"]
    _save(ckpt.checkpoint_path(tmp_path, 2), model, opt, sched)
    ckpt.prune_mid_epoch(tmp_path, keep_last=2)
    assert _checkpoints(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt"]
    assert len(os.listdir(tmp_path)) == 4  # and their digests, no others


def test_resume_falls_back_past_a_truncated_or_foreign_newest_checkpoint(tmp_path, caplog):
    model, opt, sched = _parts()
    _save(ckpt.checkpoint_path(tmp_path, 1), model, opt, sched)
    good = ckpt.checkpoint_path(tmp_path, 2, 10)
    _save(good, model, opt, sched)
    newest = ckpt.checkpoint_path(tmp_path, 2, 20)
    newest.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated
    torch.save({"format": 99}, ckpt.checkpoint_path(tmp_path, 2, 30))  # someone else's file
    path, loaded = ckpt.load_latest(tmp_path)
    assert path == good and loaded.train_state.global_step == 7
    assert "epoch-0002-batch-000030.pt" in caplog.text and "epoch-0002-batch-000020.pt" in caplog.text
    for p in tmp_path.iterdir():
        p.write_bytes(b"junk")
    with pytest.raises(EarshotError, match="no checkpoint can be read"):
        ckpt.load_latest(tmp_path)


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


def test_a_checkpoint_altered_after_writing_is_refused_by_name_and_resume_passes_over_it(tmp_path):
    model, opt, sched = _parts()
    _save(ckpt.checkpoint_path(tmp_path, 1), model, opt, sched)
    newest = ckpt.checkpoint_path(tmp_path, 2)
    _save(newest, model, opt, sched, TrainState(epoch=2, global_step=9))
    assert (tmp_path / "epoch-0002.pt.sha256").is_file()
    ckpt.load_checkpoint(newest)  # intact: loads
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside a tensor: torch.load would not notice
    newest.write_bytes(bytes(raw))
    with pytest.raises(EarshotError, match=r"epoch-0002.pt: its SHA-256 does not match"):
        ckpt.load_checkpoint(newest)
    path, loaded = ckpt.load_latest(tmp_path)
    assert path.name == "epoch-0001.pt" and loaded.train_state.global_step == 7
    ckpt.prune_checkpoints(tmp_path, keep={1})
    assert sorted(os.listdir(tmp_path)) == ["epoch-0001.pt", "epoch-0001.pt.sha256"]

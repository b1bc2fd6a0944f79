"""A training run SIGKILLed inside an epoch -- after a random step, and while a checkpoint
is being written -- and resumed ends with bitwise the parameters of a run never stopped,
with speed perturbation, SpecAugment, dropout and a loader worker on."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_train import DEV_TEXTS, TINY_MODEL, TRAIN_TEXTS, _manifest

from earshot.train import checkpoint as ckpt

pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    rng = np.random.default_rng(0)
    train_csv, dev_csv = _manifest(root, "train", TRAIN_TEXTS, rng), _manifest(root, "dev", DEV_TEXTS, rng)
    config = root / "tiny.yaml"
    config.write_text("train: {epochs: 2}\n")
    overrides = TINY_MODEL + [
        f"data.train={train_csv}", f"data.dev={dev_csv}", "data.max_duration=1.0",
        "data.speed_perturb=[0.9,1.0,1.1]", "data.num_workers=1",
        "model.specaugment.freq_masks=1", "model.specaugment.freq_width=3",
        "model.specaugment.time_masks=1", "model.specaugment.time_width=3",
        "loss.scheduled_sampling.max_prob=0.3", "optim.lr=0.01", "optim.scheduler.type=newbob",
        "train.device=cpu", "train.num_threads=1", "train.keep_last=1", "train.save_every_steps=1",
    ]
    straight = root / "straight"
    done = _train(config, overrides, straight)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (straight / "metrics.jsonl").read_text().splitlines()
    epoch_ends = [row["step"] for row in map(json.loads, lines) if row["kind"] == "epoch"]
    assert len(epoch_ends) == 2 and epoch_ends[1] - epoch_ends[0] >= 2
    return config, overrides, straight, epoch_ends


def _train(config, overrides, exp_dir, fault=None, resume=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EARSHOT_FAULT")}
    if fault:
        env["EARSHOT_FAULT"] = fault
    cmd = [sys.executable, "-m", "earshot.cli", "train", str(config), *overrides,
           f"train.exp_dir={exp_dir}"] + (["--resume"] if resume else [])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _final_weights(exp_dir):
    return ckpt.load_checkpoint(exp_dir / "checkpoints" / "epoch-0002.pt").model


def _assert_same(exp_dir, straight):
    a, b = _final_weights(straight), _final_weights(exp_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_kill_after_a_random_step_then_resume_is_bitwise_identical(setup, tmp_path):
    config, overrides, straight, epoch_ends = setup
    # after step 1 at the earliest (a checkpoint exists) and before the last one
    step = random.Random().randint(2, epoch_ends[-1] - 1)
    killed = _train(config, overrides, tmp_path, fault=f"after-step:{step}")
    assert killed.returncode == -9, f"step {step}: {killed.stderr[-2000:]}"
    resumed = _train(config, overrides, tmp_path, resume=True)
    assert resumed.returncode == 0, f"killed at step {step}: {resumed.stderr[-3000:]}"
    assert "resuming from" in resumed.stderr, f"killed at step {step}"
    try:
        _assert_same(tmp_path, straight)
    except AssertionError as err:
        raise AssertionError(f"killed at step {step}: {err}") from None


@pytest.mark.slow
def test_kill_while_a_checkpoint_is_written_keeps_the_last_good_one(setup, tmp_path):
    config, overrides, straight, epoch_ends = setup
    step = epoch_ends[0] + 1  # the first checkpoint inside epoch 2
    killed = _train(config, overrides, tmp_path, fault=f"in-save:{step}")
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt_dir = tmp_path / "checkpoints"
    partial = [p.name for p in ckpt_dir.iterdir() if ".tmp-" in p.name]
    assert partial, "the kill should have left the temporary file of the interrupted save"
    path, last_good = ckpt.load_latest(ckpt_dir)
    assert last_good.train_state.global_step == step - 1  # the one before, intact
    assert path.name == "epoch-0001.pt"
    resumed = _train(config, overrides, tmp_path, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not [p for p in ckpt_dir.iterdir() if ".tmp-" in p.name]
    _assert_same(tmp_path, straight)

"""Data-parallel training through torchrun with 2 gloo processes on CPU: the same parameters
as one process given the same global batches, and a rank that dies or stalls ends the job."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_train import TINY_MODEL, _manifest

from earshot.train import checkpoint as ckpt

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")]

# Equal-length utterances (3 characters, 0.3 s) in batches of exactly two: 4 global
# batches per epoch whatever the shuffle, so 2 ranks x 2 batches = 1 process x 4 batches.
TEXTS = ["a b", "b a", "aab", "bba", "abb", "baa", "a a", "b b"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    config = root / "tiny.yaml"
    config.write_text("train: {epochs: 2}\n")
    overrides = [o.replace("=0.2", "=0.0") if "dropout" in o else o for o in TINY_MODEL] + [
        f"data.train={_manifest(root, 'train', TEXTS, rng)}",
        f"data.dev={_manifest(root, 'dev', TEXTS[:3], rng)}",
        "data.max_duration=0.65", "data.num_buckets=1", "optim.lr=0.01", "optim.scheduler.type=none",
        "train.device=cpu", "train.num_threads=1", "train.keep_last=2",
    ]
    return config, overrides


def _train(config, overrides, exp_dir, procs, *extra, env=None, timeout=240):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={procs}"] if procs > 1 else [sys.executable]
    cmd = launcher + ["-m", "earshot.cli", "train", str(config), *overrides,
                      f"train.exp_dir={exp_dir}", *extra]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EARSHOT_FAULT")}
    full_env.update(env or {}, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def test_two_gloo_ranks_end_with_the_parameters_of_one_process(corpus, tmp_path):
    config, overrides = corpus
    one = _train(config, overrides, tmp_path / "one", 1, "optim.accum_steps=2")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train(config, overrides, tmp_path / "two", 2, "optim.accum_steps=1")
    assert two.returncode == 0, two.stderr[-3000:]
    for epoch in (1, 2):
        a = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "one" / "checkpoints", epoch))
        b = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "two" / "checkpoints", epoch))
        assert a.train_state.global_step == b.train_state.global_step == 2 * epoch
        for name, value in a.model.items():
            if "running_" in name or "num_batches_tracked" in name:
                continue  # BatchNorm statistics: DDP keeps rank 0's, not a mean over ranks
            assert torch.allclose(value, b.model[name], atol=1e-5, rtol=0), (epoch, name)
        # dev results are gathered over ranks: the same metric as one process saw
        assert [m for _, m in a.train_state.history] == pytest.approx([m for _, m in b.train_state.history])


@pytest.mark.parametrize("fault, timeout, says", [
    ("after-step:3", 20, "exitcode  : -9"),  # torchrun names the dead rank and its signal
    ("stall-after-step:3", 5, "rank 0: no answer from the other ranks"),
])
def test_a_rank_that_dies_or_stalls_ends_the_job_in_time(corpus, tmp_path, fault, timeout, says):
    config, overrides = corpus
    start = time.monotonic()
    done = _train(config, overrides, tmp_path, 2, "train.epochs=50", f"train.dist_timeout={timeout}",
                  env={"EARSHOT_FAULT": fault, "EARSHOT_FAULT_RANK": "1"}, timeout=120)
    assert done.returncode != 0
    assert time.monotonic() - start < 90
    assert says in done.stderr, done.stderr[-2000:]


def test_train_lm_on_two_gloo_ranks_matches_one_process(tmp_path):
    from test_lm import _lm_overrides, _lm_setup

    from earshot.models.artifacts import load_lm

    _lm_setup(tmp_path)
    config = tmp_path / "lm.yaml"
    config.write_text("train: {epochs: 2}\n")
    # 40 sentences in batches of 10: 4 global batches an epoch, 2 per rank
    overrides = [o for o in _lm_overrides(tmp_path) if not o.startswith(("train.epochs", "data.batch_size"))]
    overrides = [o.replace("model.dropout=0.1", "model.dropout=0.0") for o in overrides]
    overrides += ["data.batch_size=10", "train.num_threads=1"]

    def run(exp, procs, accum):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={procs}"] if procs > 1 else [sys.executable]
        cmd = launcher + ["-m", "earshot.cli", "train-lm", str(config), *overrides,
                          f"train.exp_dir={exp}", f"optim.accum_steps={accum}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]

    run(tmp_path / "one", 1, 2)
    run(tmp_path / "two", 2, 1)
    a, b = load_lm(tmp_path / "one").state_dict(), load_lm(tmp_path / "two").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)


def test_a_batch_whose_audio_is_gone_on_one_rank_keeps_the_ranks_in_step(corpus, tmp_path):
    """One utterance per batch; one file deleted after the manifest was made. Its rank has
    an empty batch in one round: both ranks skip that round (and count it) instead of
    one rank running out of batches before the other."""
    import json
    import shutil

    config, overrides = corpus
    train_csv = next(o for o in overrides if o.startswith("data.train=")).split("=", 1)[1]
    root = tmp_path / "copy"
    shutil.copytree(os.path.dirname(train_csv), root)
    from earshot.data.manifests import import_csv

    import_csv(root / "train.csv").to_file(root / "train.jsonl.gz")  # prepared, then
    (root / "train3.wav").unlink()  # the file goes
    moved = [f"data.train={root / 'train.jsonl.gz'}" if o.startswith("data.train=") else o
             for o in overrides]
    done = _train(config, moved, tmp_path / "exp", 2, "train.epochs=1", "data.max_duration=0.35",
                  "train.dist_timeout=20", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    (epoch,) = [r for r in rows if r["kind"] == "epoch"]
    assert epoch["skipped"] == {"unreadable": 1, "unusable": 0, "out_of_memory": 0, "other_rank": 1}
    assert epoch["step"] == 3  # 4 rounds of 2 batches, one skipped


def test_two_ranks_killed_mid_epoch_resume_from_their_plans(corpus, tmp_path):
    """Two gloo ranks SIGKILLed in the middle of epoch 2 and resumed (each rank seeking into
    its own epoch plan) end with the parameters of the run that never stopped; each rank's
    plan of epoch 2 holds its own half of the utterances, every one once."""
    import gzip
    import json

    config, overrides = corpus
    every_step = ("optim.accum_steps=1", "train.save_every_steps=1")
    straight = _train(config, overrides, tmp_path / "straight", 2, *every_step)
    assert straight.returncode == 0, straight.stderr[-3000:]
    # 2 steps an epoch: step 4 is epoch 2's last; killed there, its batch-1 checkpoint is the newest
    killed = _train(config, overrides, tmp_path / "resumed", 2, *every_step,
                    env={"EARSHOT_FAULT": "after-step:4"})
    assert killed.returncode != 0
    newest = ckpt.latest_checkpoint(tmp_path / "resumed" / "checkpoints")
    assert newest.name.startswith("epoch-0002-batch-"), newest
    resumed = _train(config, overrides, tmp_path / "resumed", 2, *every_step, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "straight" / "checkpoints", 2))
    b = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "resumed" / "checkpoints", 2))
    for name, value in a.model.items():
        assert torch.allclose(value, b.model[name], atol=1e-6, rtol=0), name
    ids = []
    for rank in (0, 1):
        data = (tmp_path / "resumed" / "plans" / f"epoch-0002-rank-{rank}.batches.gz").read_bytes()
        index = json.loads((tmp_path / "resumed" / "plans" / f"epoch-0002-rank-{rank}.index.json")
                           .read_text())["offsets"]
        for start, end in zip(index, index[1:]):
            ids += [cut["id"] for cut in json.loads(gzip.decompress(data[start:end]))]
    assert sorted(ids) == sorted(f"train{i}" for i in range(len(TEXTS)))

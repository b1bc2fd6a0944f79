"""RNN language model: step == teacher forcing, state selection, save/load, train-lm on the
shared training engine (metrics, resume, the 0.2 config layout)."""

import json

import torch

from earshot.config import LMConfig, LMExperimentConfig, load_config
from earshot.models.artifacts import load_lm, save_lm_dir
from earshot.models.lm import RNNLM
from earshot.tokenizer import CharTokenizer
from earshot.train.tasks.lm import encode_texts, train_lm


def tiny_lm(vocab=12, seed=0):
    torch.manual_seed(seed)
    return RNNLM(LMConfig(embedding_dim=8, units=16, layers=2, dropout=0.0), vocab).eval()


def test_step_by_step_equals_teacher_forcing():
    lm = tiny_lm()
    tokens = torch.randint(0, 12, (3, 6))
    full = torch.log_softmax(lm(tokens, torch.tensor([6, 6, 6])), dim=-1)
    state = lm.init_state(3, torch.device("cpu"))
    for t in range(6):
        lp, state = lm.step(tokens[:, t], state)
        assert torch.allclose(lp, full[:, t], atol=1e-5)


def test_select_state_reorders_rows():
    lm = tiny_lm()
    state = lm.init_state(3, torch.device("cpu"))
    _, state = lm.step(torch.tensor([1, 2, 3]), state)
    picked = lm.select_state(state, torch.tensor([2, 2, 0]))
    a, _ = lm.step(torch.tensor([4, 4, 4]), picked)
    b, _ = lm.step(torch.tensor([4, 4, 4]), state)
    assert torch.allclose(a, b[[2, 2, 0]])


def test_save_and_load_round_trip(tmp_path):
    tok = CharTokenizer.train(["abc d"])
    lm = tiny_lm(vocab=tok.vocab_size)
    save_lm_dir(tmp_path / "lm", lm, LMExperimentConfig(model=lm.cfg), tok)
    back = load_lm(tmp_path / "lm")
    x = torch.tensor([[tok.bos_id] + tok.encode("abc")])
    assert torch.equal(back(x, torch.tensor([4])), lm(x, torch.tensor([4])))
    assert back.vocab_size == tok.vocab_size and back.tokenizer.encode("cab") == tok.encode("cab")
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in (tmp_path / "lm").rglob("*"))


def test_a_crash_while_saving_leaves_the_previous_lm_directory_whole(tmp_path, monkeypatch):
    import pytest

    from earshot.models import artifacts as lm_module

    tok = CharTokenizer.train(["abc d"])
    old = tiny_lm(vocab=tok.vocab_size)
    save_lm_dir(tmp_path / "lm", old, LMExperimentConfig(model=old.cfg), tok)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the weights")

    monkeypatch.setattr(lm_module, "save_file", killed)
    new = tiny_lm(vocab=tok.vocab_size, seed=1)
    with pytest.raises(KeyboardInterrupt):
        save_lm_dir(tmp_path / "lm", new, LMExperimentConfig(model=new.cfg), tok)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]  # no staging folder left
    back, x = load_lm(tmp_path / "lm"), torch.tensor([[tok.bos_id] + tok.encode("abc")])
    assert torch.equal(back(x, torch.tensor([4])), old(x, torch.tensor([4])))


def _lm_setup(tmp_path):
    sentences = ["go left now", "go right now", "stop here", "go left", "stop now"] * 8
    tok = CharTokenizer.train(sentences)
    tok.save(tmp_path / "asr" / "tokenizer")
    (tmp_path / "train.txt").write_text("\n".join(sentences) + "\n")
    (tmp_path / "dev.txt").write_text("go left now\nstop here\n")
    return tok


def _lm_overrides(tmp_path):
    return ["model.embedding_dim=16", "model.units=32", "model.layers=1", "model.dropout=0.1",
            f"data.asr_model={tmp_path / 'asr'}", f"data.train_text={tmp_path / 'train.txt'}",
            f"data.dev_text={tmp_path / 'dev.txt'}", "data.batch_size=8", "optim.lr=0.01",
            "train.epochs=8", "train.device=cpu", "train.log_every=5"]


def _lm_cfg(tmp_path, exp, *extra):
    return load_config(None, [*_lm_overrides(tmp_path), f"train.exp_dir={exp}", *extra],
                       cls=LMExperimentConfig)


def test_train_lm_learns_the_text_on_the_shared_engine(tmp_path):
    tok = _lm_setup(tmp_path)
    out = train_lm(_lm_cfg(tmp_path, tmp_path / "lm"))
    assert out == tmp_path / "lm" / "model"
    rows = [json.loads(line) for line in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()]
    ppls = [r["dev_perplexity"] for r in rows if r["kind"] == "epoch"]
    assert len(ppls) == 8 and ppls[-1] < ppls[0] / 2
    steps = [r for r in rows if r["kind"] == "step"]
    assert steps and all(r["tokens_per_second"] > 0 and r["sentences_per_second"] > 0 for r in steps)
    assert "epoch-0008.pt" in ckpt_names(tmp_path / "lm")
    lm = load_lm(tmp_path / "lm")  # the experiment directory finds its model/
    good, bad = encode_texts(["go left now", "wo legt onn"], tok)
    assert _logprob(lm, good) > _logprob(lm, bad) + 5


def ckpt_names(exp):
    return [p.name for p in (exp / "checkpoints").iterdir()]


def test_train_lm_killed_inside_an_epoch_and_resumed_ends_with_the_same_weights(tmp_path):
    import os
    import subprocess
    import sys

    _lm_setup(tmp_path)
    config = tmp_path / "lm.yaml"
    config.write_text("train: {epochs: 2}\n")

    def cli(exp, *extra, fault=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("EARSHOT_FAULT")}
        if fault:
            env["EARSHOT_FAULT"] = fault
        overrides = [a for a in _lm_overrides(tmp_path) if not a.startswith("train.epochs")]
        cmd = [sys.executable, "-m", "earshot.cli", "train-lm", str(config), *overrides,
               f"train.exp_dir={exp}", "train.save_every_steps=1", *extra]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    assert cli(tmp_path / "a").returncode == 0
    killed = cli(tmp_path / "b", fault="after-step:7")  # 5 batches an epoch: inside epoch 2
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "epoch-0002-batch-000001.pt" in ckpt_names(tmp_path / "b")
    resumed = cli(tmp_path / "b", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "batches into epoch 2" in resumed.stderr
    a, b = load_lm(tmp_path / "a").state_dict(), load_lm(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_0_2_layout_lm_config_still_loads(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("model: {units: 32}\ntrain: {asr_model: m, train_text: t.txt, out_dir: exp/x, "
                    "batch_size: 16, lr: 0.005, grad_clip: 2.0, epochs: 3}\n")
    cfg = load_config(path, cls=LMExperimentConfig)
    assert (cfg.data.asr_model, cfg.data.train_text, cfg.data.batch_size) == ("m", "t.txt", 16)
    assert (cfg.optim.lr, cfg.optim.grad_clip, cfg.train.exp_dir, cfg.train.epochs) == (0.005, 2.0, "exp/x", 3)


@torch.no_grad()
def _logprob(lm, seq):
    x = torch.tensor([seq[:-1]])
    lp = torch.log_softmax(lm(x, torch.tensor([len(seq) - 1])), dim=-1)[0]
    return float(lp.gather(1, torch.tensor(seq[1:]).unsqueeze(1)).sum())

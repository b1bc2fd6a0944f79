"""RNN language model: step == teacher forcing, state selection, save/load, train-lm."""

import torch

from earshot.config import LMConfig, LMExperimentConfig, LMTrainConfig
from earshot.models.lm import RNNLM, load_lm, save_lm_dir
from earshot.tokenizer import CharTokenizer
from earshot.train.lm_trainer import encode_texts, train_lm


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

    from earshot.models import lm as lm_module

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


def test_train_lm_learns_the_text(tmp_path, capsys):
    sentences = ["go left now", "go right now", "stop here", "go left", "stop now"] * 8
    tok = CharTokenizer.train(sentences)
    tok.save(tmp_path / "asr" / "tokenizer")
    (tmp_path / "train.txt").write_text("\n".join(sentences) + "\n")
    (tmp_path / "dev.txt").write_text("go left now\nstop here\n")
    cfg = LMExperimentConfig(
        model=LMConfig(embedding_dim=16, units=32, layers=1, dropout=0.0),
        train=LMTrainConfig(asr_model=str(tmp_path / "asr"), train_text=str(tmp_path / "train.txt"),
                            dev_text=str(tmp_path / "dev.txt"), out_dir=str(tmp_path / "lm"),
                            epochs=8, batch_size=8, lr=0.01, device="cpu"))
    out = train_lm(cfg)
    printed = capsys.readouterr().out
    ppls = [float(line.rsplit(" ", 1)[1]) for line in printed.splitlines() if "epoch" in line]
    assert len(ppls) == 8 and ppls[-1] < ppls[0] / 2
    lm = load_lm(out)
    good, bad = encode_texts(["go left now", "wo legt onn"], tok)
    assert _logprob(lm, good) > _logprob(lm, bad) + 5


@torch.no_grad()
def _logprob(lm, seq):
    x = torch.tensor([seq[:-1]])
    lp = torch.log_softmax(lm(x, torch.tensor([len(seq) - 1])), dim=-1)[0]
    return float(lp.gather(1, torch.tensor(seq[1:]).unsqueeze(1)).sum())

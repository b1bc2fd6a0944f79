"""A run owns its experiment directory: nowhere shared, nothing foreign, one run at a time."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from earshot.cli import main
from earshot.errors import ConfigError
from earshot.train.rundir import LOCK_FILE, check_run_dir, claim_run_dir, release_run_dir


@pytest.mark.parametrize("exp_dir, says", [
    ("", "empty"), (" ", "empty"), (".", "the current directory"), ("/", "the filesystem root"),
    ("~", "your home directory"),
])
def test_a_shared_place_is_refused(exp_dir, says, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"train\.exp_dir': .*{says}"):
        check_run_dir(os.path.expanduser(exp_dir) if exp_dir == "~" else exp_dir)


def test_a_directory_with_files_earshot_did_not_write_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files earshot did not write \(notes\.txt\)"):
        check_run_dir(tmp_path / "run")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.yaml").write_text("train: {epochs: 1}\n")  # the user's own config
    with pytest.raises(ConfigError, match=r"\(config\.yaml\)"):
        check_run_dir(tmp_path / "cfg")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_run_dir(tmp_path / "file")
    check_run_dir(tmp_path / "new")  # new and empty directories are fine
    (tmp_path / "empty").mkdir()
    check_run_dir(tmp_path / "empty")


def _hold(directory: Path) -> subprocess.Popen:
    code = ("import sys, time; from earshot.train.rundir import claim_run_dir; "
            f"claim_run_dir({str(directory)!r}); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_directory_in_use_is_refused_naming_the_holder_until_it_dies(tmp_path):
    proc = _hold(tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match=rf"in use by another run \(process {proc.pid} on .* since "):
            claim_run_dir(tmp_path / "run")
    finally:
        proc.kill()
        proc.wait()
    # killed without a chance to clean up: its lock went with it
    assert (tmp_path / "run" / LOCK_FILE).exists()
    claim_run_dir(tmp_path / "run")
    claim_run_dir(tmp_path / "run")  # this process may claim what it holds
    release_run_dir(tmp_path / "run")


def test_train_refuses_an_empty_exp_dir_and_one_in_use_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text("data: {train: none.jsonl.gz, dev: none.jsonl.gz}\n")
    assert main(["train", str(config), "train.exp_dir="]) == 2
    assert "train.exp_dir': empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # nothing written, nothing replaced
    proc = _hold(tmp_path / "busy")
    try:
        start = time.monotonic()
        assert main(["train", str(config), f"train.exp_dir={tmp_path / 'busy'}"]) == 2
        assert f"process {proc.pid}" in capsys.readouterr().err and time.monotonic() - start < 30
        assert not (tmp_path / "busy" / "config.yaml").exists()
    finally:
        proc.kill()
        proc.wait()


def test_an_output_directory_of_the_users_is_never_replaced_and_new_ones_follow_the_umask(tmp_path):
    import stat

    from earshot.config import LMConfig, LMExperimentConfig
    from earshot.models.artifacts import save_lm_dir
    from earshot.models.lm import RNNLM
    from earshot.tokenizer import CharTokenizer

    tok = CharTokenizer.train(["ab"])
    lm = RNNLM(LMConfig(embedding_dim=2, units=4, layers=1, dropout=0.0), tok.vocab_size)
    cfg = LMExperimentConfig(model=lm.cfg)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match=r"mine: exists and holds files earshot did not write \(thesis\.tex\)"):
        save_lm_dir(tmp_path / "mine", lm, cfg, tok)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        save_lm_dir(tmp_path / "file", lm, cfg, tok)
    old = os.umask(0o022)
    try:
        save_lm_dir(tmp_path / "lm", lm, cfg, tok)
        save_lm_dir(tmp_path / "lm", lm, cfg, tok)  # its own directory is replaced
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "lm").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "lm" / "model.safetensors").stat().st_mode) == 0o644

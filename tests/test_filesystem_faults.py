"""Filesystem faults end a command with one line naming the path, and lose nothing."""

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from earshot.cli import main
from earshot.errors import EarshotError
from earshot.train import checkpoint as ckpt

FROZEN_MODEL = Path(__file__).parent / "data" / "frozen" / "crdnn_v2"


def test_a_file_where_a_folder_should_be_is_one_line(tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, torch.zeros(4000).numpy(), 8000)
    (tmp_path / "plain").write_text("x")
    code = main(["transcribe", "--model", str(FROZEN_MODEL), "--device", "cpu",
                 "--nbest-out", str(tmp_path / "plain" / "nbest.jsonl"), str(wav)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"error: {tmp_path / 'plain' / 'nbest.jsonl'}: Not a directory" in err


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_says_what_it_needed(tmp_path,
                                                                                     monkeypatch):
    path = tmp_path / "epoch-1.pt"
    ckpt.atomic_torch_save({"w": torch.ones(1000)}, path)
    before = path.read_bytes()

    def full(obj, handle):
        handle.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(EarshotError, match=r"epoch-1\.pt: could not be written \(No space left on "
                                           r"device\); it needs about 0\.0 MB and .* MB are free"):
        ckpt.atomic_torch_save({"w": torch.ones(1000)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-1.pt", "epoch-1.pt.sha256"]
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(1000))
    ckpt._check_digest(path)  # still vouched for


def test_a_real_full_filesystem_when_one_can_be_mounted(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip()[:80]})")
    try:
        path = mount / "epoch-1.pt"
        ckpt.atomic_torch_save({"w": torch.ones(10)}, path)
        before = path.read_bytes()
        with pytest.raises(EarshotError, match=r"could not be written .* MB are free there"):
            ckpt.atomic_torch_save({"w": torch.ones(100_000)}, path)
        assert path.read_bytes() == before
        assert not [p for p in os.listdir(mount) if p.startswith(".")]  # no temp file left
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)

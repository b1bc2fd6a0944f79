"""Shard folders (``earshot shard``): what is written, the audio read back, checksums,
truncated shards, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from earshot.cli import main
from earshot.data.batching import load_cut_audio, make_loader, set_epoch
from earshot.data.manifests import import_csv, load_cuts
from earshot.data.shards import CHECKSUMS, SIZES, verify_shards
from earshot.errors import ManifestError

RATE = 8000


@pytest.fixture
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["id,path,text"]
    for i in range(7):
        wav = (0.2 * rng.standard_normal(int(RATE * (0.2 + 0.05 * i)))).astype(np.float32)
        sf.write(tmp_path / f"u{i}.wav", wav, RATE, subtype="PCM_16")
        rows.append(f"u{i},u{i}.wav,word {i}")
    rows.append("u7,missing.wav,gone")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "all.jsonl.gz"
    cuts = import_csv(tmp_path / "all.csv")
    cuts.to_file(out)
    return out


def test_shards_hold_every_cut_with_its_audio_unchanged(manifest, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["shard", str(manifest), "--out", str(out), "--shard-size", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == [CHECKSUMS] + [f"{k}.{i:06d}.{e}" for k, e in (("cuts", "jsonl.gz"),
                                                                    ("recording", "tar"))
                                   for i in range(3)] + [SIZES]
    plain = {c.id: c for c in load_cuts(manifest)}
    sharded = load_cuts(out)
    assert [c.id for c in sharded] == [c.id for c in plain.values()]
    for cut in sharded:
        assert cut.recording.sources[0].type == "shar"  # the audio stays in the shard
        assert torch.equal(load_cut_audio(cut, RATE), load_cut_audio(plain[cut.id], RATE))
        assert torch.equal(load_cut_audio(cut, 16000), load_cut_audio(plain[cut.id], 16000))
    assert verify_shards(out) == [] and len(sharded) == len(plain)


def test_the_shard_order_is_drawn_per_epoch_and_the_loader_reads_it(manifest, tmp_path):
    main(["shard", str(manifest), "--out", str(tmp_path / "s"), "--shard-size", "2"])
    cuts = load_cuts(tmp_path / "s", shuffle_shards=True, seed=3)
    loader = make_loader(cuts, None, RATE, 1.0, shuffle=False, num_buckets=1)
    orders = []
    for epoch in (1, 2, 1):
        set_epoch(loader, epoch)
        orders.append([i for b in loader for i in b.ids])
    assert orders[0] == orders[2] and sorted(orders[0]) == sorted(orders[1])
    assert orders[0] != orders[1]  # 4 shards: another order in epoch 2


def test_a_truncated_or_altered_shard_is_named_and_left_out(manifest, tmp_path, caplog):
    out = tmp_path / "s"
    main(["shard", str(manifest), "--out", str(out), "--shard-size", "3"])
    tar = out / "recording.000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    cuts = load_cuts(out)
    assert [c.id for c in cuts] == ["u0", "u1", "u2", "u6"]
    assert "shard 000001: recording.000001.tar holds" in caplog.text
    with pytest.raises(ManifestError, match=r"shard 000001: .*\(data.strict is on\)"):
        load_cuts(out, strict=True)
    (out / "cuts.000002.jsonl.gz").unlink()
    (out / "recording.000000.tar").unlink()
    with pytest.raises(ManifestError, match="no usable shard"):
        load_cuts(out)


def test_verify_finds_an_altered_shard(manifest, tmp_path, capsys):
    out = tmp_path / "s"
    main(["shard", str(manifest), "--out", str(out), "--shard-size", "4"])
    tar = out / "recording.000000.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    tar.write_bytes(bytes(data))
    assert main(["shard", "--verify", str(out)]) == 2
    err = capsys.readouterr().err
    assert "recording.000000.tar: does not match its checksum" in err
    assert len(list(load_cuts(out))) == 7  # sizes are right: opening does not read the audio


def test_prepare_writes_shards_beside_each_split(tmp_path, capsys):
    import corpus_layouts

    src = corpus_layouts.librispeech(tmp_path / "src", parts=("train-clean-5", "dev-clean-2"))
    assert main(["prepare", "mini_librispeech", str(src), "--out", str(tmp_path / "out"),
                 "--shards", "3", "--shuffle"]) == 0
    for split in ("train", "dev"):
        assert sorted(c.id for c in load_cuts(tmp_path / "out" / f"{split}_shards")) == \
            sorted(c.id for c in load_cuts(tmp_path / "out" / f"{split}.jsonl.gz"))


def test_bad_input(manifest, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["shard", str(manifest), "--out", str(tmp_path / "full")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["shard", str(manifest), "--out", str(tmp_path / "o"), "--shard-size", "0"]) == 2
    assert "--shard-size: must be >= 1" in capsys.readouterr().err
    with pytest.raises(ManifestError, match="a folder without shards"):
        load_cuts(tmp_path / "full")
    main(["shard", str(manifest), "--out", str(tmp_path / "nosum")])
    (tmp_path / "nosum" / CHECKSUMS).unlink()
    with pytest.raises(ManifestError, match="no sizes.json or checksums.sha256"):
        load_cuts(tmp_path / "nosum")


@pytest.mark.parametrize("source", ["manifest", "shards"])
def test_ranks_and_resumed_epochs_see_every_utterance_once(manifest, tmp_path, source):
    """By utterance id: two ranks' batches of an epoch cover every cut exactly once, and
    an epoch resumed at any batch (fresh loader, two workers) yields exactly the batches
    the uninterrupted one had left: none repeated, none skipped."""
    path = manifest
    if source == "shards":
        main(["shard", str(manifest), "--out", str(tmp_path / "s"), "--shard-size", "2"])
        path = tmp_path / "s"

    def loader(rank, workers=0):
        cuts = load_cuts(path, shuffle_shards=True, seed=5)
        made = make_loader(cuts, None, RATE, 0.7, shuffle=True, seed=5, num_buckets=2,
                           num_workers=workers, speed_factors=(0.9, 1.0, 1.1), world_size=2,
                           rank=rank, even=False)
        return made

    every = []
    for rank in (0, 1):
        full = loader(rank)
        set_epoch(full, 3)
        batches = [list(b.ids) for b in full]
        every += [i for b in batches for i in b]
        for skip in (1, len(batches) // 2, len(batches) - 1):
            resumed = loader(rank, workers=2)
            set_epoch(resumed, 3, skip=skip)
            assert [list(b.ids) for b in resumed] == batches[skip:]
    assert sorted(every) == sorted(c.id for c in load_cuts(manifest))


def test_evaluate_reads_a_shard_folder_as_it_reads_the_manifest(model_dir, overfit_model, tmp_path):
    import json

    cuts = overfit_model / "data" / "cuts.jsonl.gz"
    assert main(["shard", str(cuts), "--out", str(tmp_path / "s"), "--shard-size", "3"]) == 0
    for name, manifest in (("plain", cuts), ("sharded", tmp_path / "s")):
        assert main(["evaluate", "--model", str(model_dir), "--manifest", str(manifest),
                     "--out", str(tmp_path / name), "--device", "cpu"]) == 0
    plain, sharded = ((tmp_path / n / "hypotheses.jsonl").read_text() for n in ("plain", "sharded"))
    assert sorted(plain.splitlines()) == sorted(sharded.splitlines())
    assert json.loads((tmp_path / "sharded" / "summary.json").read_text())["utterances"] == 4

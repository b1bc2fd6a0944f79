"""Noise and reverberation: the SNR they promise, determinism per (seed, epoch, cut),
loader workers and resume, ``earshot corrupt``, and bad sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from earshot.cli import main
from earshot.data.batching import make_loader, set_epoch
from earshot.data.corruption import (Corruption, NoiseSource, ReverbSource, corruption_rng,
                                     mix_at_snr, reverberate, simulated_rir)
from earshot.data.manifests import import_csv, load_cuts
from earshot.errors import ConfigError

RATE = 8000


def _tone(seconds=0.5, freq=440.0, seed=0):
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A speech-like set (tones, CSV) and a folder of noise recordings (one at 16 kHz)."""
    root = tmp_path_factory.mktemp("corruption")
    rows = ["id,path,text"]
    for i in range(6):
        sf.write(root / f"u{i}.wav", _tone(0.3 + 0.1 * i, 300 + 100 * i, i), RATE)
        rows.append(f"u{i},u{i}.wav,a b")
    (root / "all.csv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(7)
    (root / "noise" / "babble").mkdir(parents=True)
    sf.write(root / "noise" / "babble" / "n0.wav", (0.1 * rng.standard_normal(RATE)).astype(np.float32), RATE)
    sf.write(root / "noise" / "n1.flac", (0.2 * rng.standard_normal(2 * 16000)).astype(np.float32), 16000)
    (root / "noise" / "notes.txt").write_text("not audio")
    return root


def _snr(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    return 10 * np.log10(float(clean.pow(2).mean()) / float((noisy - clean).pow(2).mean()))


@pytest.mark.parametrize("snr", [0.0, 5.0, 20.0])
def test_noise_is_mixed_at_the_asked_snr(assets, snr):
    clean = torch.from_numpy(_tone())
    noise = NoiseSource.from_path(str(assets / "noise"), RATE)
    assert len(noise.sources) == 2  # both files, the text file left out
    noisy = noise.add(clean, snr, np.random.default_rng(1))
    assert noisy.shape == clean.shape
    assert _snr(clean, noisy) == pytest.approx(snr, abs=0.05)


def test_mixing_never_clips_and_leaves_silence_alone():
    loud = torch.ones(100) * 0.9
    out = mix_at_snr(loud, torch.randn(100), 0.0)
    assert float(out.abs().max()) <= 1.0
    silence = torch.zeros(100)
    assert torch.equal(mix_at_snr(silence, torch.randn(100), 5.0), silence)


def test_reverberation_keeps_length_and_peak_and_smears_in_time():
    rng = np.random.default_rng(0)
    rir = simulated_rir(0.5, RATE, rng)
    assert rir[0] == 1.0 and rir.numel() == RATE // 2
    energy = rir[1:].pow(2)
    assert float(energy[: RATE // 8].sum()) > 10 * float(energy[-RATE // 8:].sum())  # it decays
    click = torch.zeros(RATE)
    click[100] = 0.5
    out = reverberate(click, rir)
    assert out.shape == click.shape and float(out.abs().max()) == pytest.approx(0.5)
    assert int(out.abs().argmax()) == 100  # aligned on the direct path
    assert float(out[200:].abs().sum()) > 0  # the tail follows it


def test_draws_depend_only_on_seed_epoch_and_cut(assets):
    wav = torch.from_numpy(_tone())
    corruption = Corruption(NoiseSource.from_path(str(assets / "noise"), RATE), 1.0, (5.0, 10.0),
                            ReverbSource.from_path("simulated", RATE), 1.0)
    a = corruption(wav, 3, 1, "u1")
    assert torch.equal(a, corruption(wav, 3, 1, "u1"))
    assert not torch.equal(a, corruption(wav, 3, 2, "u1"))
    assert not torch.equal(a, corruption(wav, 3, 1, "u2"))
    assert corruption_rng(3, 1, "u1", "noise").random() == corruption_rng(3, 1, "u1", "noise").random()


def test_loader_workers_corrupt_exactly_as_the_main_process(assets):
    cuts = import_csv(assets / "all.csv")
    corruption = Corruption(NoiseSource.from_path(str(assets / "noise"), RATE), 0.5, (0.0, 20.0),
                            ReverbSource.from_path("simulated", RATE), 0.5)
    runs = []
    for workers in (0, 2):
        loader = make_loader(cuts, None, RATE, 2.0, shuffle=True, seed=4, num_workers=workers,
                             corruption=corruption)
        set_epoch(loader, 2)
        runs.append({i: w[:n] for b in loader for i, w, n in zip(b.ids, b.wavs, b.wav_lens)})
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) == 6
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    plain = make_loader(cuts, None, RATE, 2.0, shuffle=True, seed=4)
    set_epoch(plain, 2)
    clean = {i: w[:n] for b in plain for i, w, n in zip(b.ids, b.wavs, b.wav_lens)}
    changed = sum(not torch.equal(clean[k], runs[0][k]) for k in clean)
    assert 1 <= changed <= 6  # about 3/4 of the utterances get noise or reverb or both


def test_earshot_corrupt_writes_a_noisy_copy_of_a_test_set(assets, tmp_path, capsys):
    out = tmp_path / "snr5"
    assert main(["corrupt", str(assets / "all.csv"), "--noise", str(assets / "noise"),
                 "--snr-db", "5", "--out", str(out)]) == 0
    assert f"wrote {out / 'cuts.jsonl.gz'}" in capsys.readouterr().out
    clean = {c.id: c for c in import_csv(assets / "all.csv")}
    noisy = load_cuts(out / "cuts.jsonl.gz")
    assert sorted(noisy.ids) == sorted(clean)
    for cut in noisy:
        a, b = (torch.from_numpy(c.load_audio()[0]) for c in (clean[cut.id], cut))
        assert cut.supervisions[0].text == "a b" and a.shape == b.shape
        assert _snr(a, b) == pytest.approx(5.0, abs=0.3)  # 16-bit rounding included
    again = tmp_path / "again"
    main(["corrupt", str(assets / "all.csv"), "--noise", str(assets / "noise"), "--snr-db", "5",
          "--out", str(again)])
    assert (again / "audio" / "u3.flac").read_bytes() == (out / "audio" / "u3.flac").read_bytes()
    assert json.loads((out / "summary.json").read_text())["splits"]["cuts"]["utterances"] == 6


def test_bad_sources_and_flags_are_named(assets, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"'data.noise.sources': no usable audio in .*empty"):
        NoiseSource.from_path(str(tmp_path / "empty"), RATE)
    with pytest.raises(ConfigError, match="'--reverb': .*nowhere is neither a folder"):
        ReverbSource.from_path(str(tmp_path / "nowhere"), RATE, key="--reverb")
    assert main(["corrupt", str(assets / "all.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "give --noise and/or --reverb" in capsys.readouterr().err
    assert main(["corrupt", str(assets / "all.csv"), "--noise", str(assets / "noise"),
                 "--snr-db", "9", "3", "--out", str(tmp_path / "o")]) == 2
    assert "option --snr-db" in capsys.readouterr().err
    from earshot.config import load_config

    with pytest.raises(ConfigError, match=r"'data\.noise\.sources': needs a folder"):
        load_config(None, ["data.noise.prob=0.5"])
    with pytest.raises(ConfigError, match=r"'data\.reverb\.rt60': must be"):
        load_config(None, ["data.reverb.prob=0.5", "data.reverb.rirs=simulated",
                           "data.reverb.rt60=[0.9,0.1]"])

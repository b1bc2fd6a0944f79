"""A model directory in earshot 0.1's layout (format 1) still loads and decodes identically.

The test writes one as 0.1.0 did: ``config.yaml`` holding the whole ExperimentConfig of the
run (data paths, optimizer and all), ``tokenizer/``, and ``model.safetensors`` with the
front end's statistics at ``normalizer.*`` (before the front end became a part of its own).
"""

import math

import torch
import yaml
from safetensors.torch import save_file

from earshot.config import DecodeConfig, load_config, save_config
from earshot.decoding.api import decode_batch
from earshot.models.artifacts import load_model_dir, save_model_dir
from earshot.models.factory import build_model
from earshot.tokenizer import train_tokenizer

TINY = [
    "model.features.sample_rate=8000", "model.features.num_mel_bins=10",
    "model.encoder.cnn_channels=[2]", "model.encoder.time_pool=[2]", "model.encoder.rnn_layers=1",
    "model.encoder.rnn_units=8", "model.encoder.dnn_units=8", "model.decoder.units=8",
    "model.decoder.embedding_dim=4", "model.decoder.attention.dim=8",
    "model.decoder.attention.location_channels=2", "model.decoder.attention.location_kernel=3",
    "train.exp_dir=exp/old", "data.train=data/old/train.jsonl.gz", "data.dev=data/old/dev.jsonl.gz",
]


def _signals():
    wavs = []
    for i in range(3):
        t = torch.arange(8000 * (i + 1) // 2, dtype=torch.float64) / 8000
        wavs.append((0.3 * torch.sin(2 * math.pi * (300 + 200 * i) * t)
                     * torch.sin(2 * math.pi * 3 * t)).float())
    lens = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(3, int(lens.max()))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    return batch, lens


def _decoded(model, tokenizer):
    batch, lens = _signals()
    out = {}
    for name, cfg, mode in [("greedy", DecodeConfig(max_len_ratio=0.5), "greedy"),
                            ("joint", DecodeConfig(beam_size=4, ctc_weight=0.4, max_len_ratio=0.5), "beam"),
                            ("ctc_greedy", DecodeConfig(), "ctc_greedy")]:
        out[name] = [nbest[0].tokens for nbest in decode_batch(model, batch, lens, cfg, tokenizer,
                                                                mode=mode)]
    with torch.no_grad():
        out["encoder"] = model.encode(batch, lens).memory.enc
    return out


def _write_format_1(directory, cfg, tokenizer, model):
    """The 0.1.0 writer: run config, tokenizer, weights with the statistics at normalizer.*."""
    directory.mkdir()
    save_config(cfg, directory / "config.yaml")
    tokenizer.save(directory / "tokenizer")
    weights = {name.replace("frontend.normalizer.", "normalizer."): t.contiguous()
               for name, t in model.state_dict().items()}
    save_file(weights, str(directory / "model.safetensors"))


def _model():
    cfg = load_config(None, TINY)
    tokenizer = train_tokenizer(["abc def", "ghi"], cfg.tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer).eval()
    with torch.no_grad():  # statistics and an eos that does not win at once: non-trivial output
        model.state_dict()["frontend.normalizer.mean"].copy_(torch.linspace(5, 9, 10))
        model.state_dict()["frontend.normalizer.std"].copy_(torch.linspace(1, 2, 10))
        model.state_dict()["decoder.output.bias"][tokenizer.eos_id] -= 3.0
    return cfg, tokenizer, model


def test_format_1_directory_decodes_as_the_model_that_wrote_it(tmp_path):
    cfg, tokenizer, model = _model()
    expected = _decoded(model, tokenizer)
    assert any(expected["greedy"]) and any(expected["ctc_greedy"])
    _write_format_1(tmp_path / "old", cfg, tokenizer, model)
    assert "format" not in yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())

    description, tokenizer1, model1 = load_model_dir(tmp_path / "old")
    assert description.model == cfg.model and description.decode == cfg.decode
    got = _decoded(model1, tokenizer1)
    for key in ("greedy", "joint", "ctc_greedy"):
        assert got[key] == expected[key], key
    assert torch.equal(got["encoder"], expected["encoder"])
    # Saved again, it is a format 2 directory with the same behaviour and no run settings.
    save_model_dir(tmp_path / "new", description, tokenizer1, model1)
    written = yaml.safe_load((tmp_path / "new" / "config.yaml").read_text())
    assert written["format"] == 2 and "data" not in written and "optim" not in written
    _, tokenizer2, model2 = load_model_dir(tmp_path / "new")
    again = _decoded(model2, tokenizer2)
    assert again["greedy"] == expected["greedy"] and again["joint"] == expected["joint"]


def test_a_changed_missing_or_garbled_file_is_named_against_the_checksum_manifest(tmp_path):
    import hashlib

    import pytest

    from earshot.errors import ConfigError
    from earshot.integrity import CHECKSUM_FILE
    from earshot.models.artifacts import load_lm, save_lm_dir

    cfg, tokenizer, model = _model()
    save_model_dir(tmp_path / "m", cfg, tokenizer, model)
    manifest = tmp_path / "m" / CHECKSUM_FILE
    listed = {line.split("  ")[1]: line.split("  ")[0] for line in manifest.read_text().splitlines()}
    files = sorted(p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*")
                   if p.is_file() and p.name != CHECKSUM_FILE)
    assert sorted(listed) == files and "model.safetensors" in listed and "config.yaml" in listed
    for name, digest in listed.items():  # sha256sum's format and digests
        assert hashlib.sha256((tmp_path / "m" / name).read_bytes()).hexdigest() == digest
    (tmp_path / "m" / "NOTES.txt").write_text("a file the user added is not checked\n")
    load_model_dir(tmp_path / "m")

    (tok_file,) = [n for n in listed if n.startswith("tokenizer/")]
    path = tmp_path / "m" / tok_file
    original = path.read_bytes()
    path.write_bytes(original.replace(b'"a"', b'"x"', 1))  # one symbol swapped by hand
    assert path.read_bytes() != original
    with pytest.raises(ConfigError, match=rf"{tok_file}: its SHA-256 differs from .*{CHECKSUM_FILE}:\d"):
        load_model_dir(tmp_path / "m")
    path.unlink()
    with pytest.raises(ConfigError, match=rf"{tok_file}: missing, but listed in"):
        load_model_dir(tmp_path / "m")
    path.write_bytes(original)
    manifest.write_text(manifest.read_text() + "not a digest line\n")
    with pytest.raises(ConfigError, match=rf"{CHECKSUM_FILE}:{len(listed) + 1}: not a"):
        load_model_dir(tmp_path / "m")
    manifest.unlink()  # what the message offers to accept a change: no manifest, no check
    load_model_dir(tmp_path / "m")

    from earshot.config import LMConfig, LMExperimentConfig
    from earshot.models.lm import RNNLM

    lm = RNNLM(LMConfig(embedding_dim=4, units=8, layers=1, dropout=0.0), tokenizer.vocab_size)
    save_lm_dir(tmp_path / "lm", lm, LMExperimentConfig(model=lm.cfg), tokenizer)
    weights = tmp_path / "lm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ConfigError, match="model.safetensors: its SHA-256 differs"):
        load_lm(tmp_path / "lm")

"""Shared test fixtures. Every asset is made here; nothing needs the network."""

from pathlib import Path

import pytest
import torch

from earshot.cli import main

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def shared_data(name: str) -> Path:
    """Path to ../shared/data/NAME, or skip the test with a reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real speech lives only beside the project checkout)")
    return path


# -- a tiny model that has learnt four synthesised utterances (for end-to-end tests) --

TEXTS = ["red cup", "blue hat", "go home", "big dog"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Four short espeak utterances and a CSV manifest for them."""
    from earshot.data.espeak import speak
    import soundfile as sf

    root = tmp_path_factory.mktemp("corpus")
    rows = ["id,path,text"]
    for i, text in enumerate(TEXTS):
        audio, sr = speak(text, voice="en-us", rate=170, seed=i)
        sf.write(root / f"u{i}.wav", audio, sr)
        rows.append(f"u{i},u{i}.wav,{text}")
    (root / "all.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def overfit_model(corpus, tmp_path_factory):
    """A tiny model trained on the four utterances until it repeats them perfectly."""
    out = tmp_path_factory.mktemp("exp")
    assert main(["prepare", "csv", str(corpus / "all.csv"), "--out", str(out / "data")]) == 0
    cuts = str(out / "data" / "cuts.jsonl.gz")
    overrides = [
        f"data.train={cuts}", f"data.dev={cuts}", "data.max_duration=100",
        f"train.exp_dir={out / 'exp'}", "train.epochs=60", "train.keep_last=1",
        "model.features.num_mel_bins=40", "model.encoder.cnn_channels=[8, 16]",
        "model.encoder.rnn_layers=1", "model.encoder.rnn_units=64", "model.encoder.dnn_units=64",
        "model.encoder.dropout=0.0", "model.decoder.units=64", "model.decoder.dropout=0.0",
        "model.decoder.embedding_dim=16", "model.decoder.attention.dim=32",
        "optim.lr=0.003", "optim.scheduler.type=none", "loss.label_smoothing=0.0",
    ]
    assert main(["train", "recipes/demo/none.yaml"] + overrides) == 2  # missing file: clear error
    cfg = out / "tiny.yaml"
    cfg.write_text("train: {log_every: 100}\n")
    assert main(["train", str(cfg)] + overrides) == 0
    return out


@pytest.fixture(scope="session")
def model_dir(overfit_model):
    """The overfit model's directory."""
    return overfit_model / "exp" / "model"


@pytest.fixture(scope="session")
def transcriber(model_dir):
    """The overfit model loaded on the CPU."""
    import earshot

    return earshot.load_model(model_dir, device="cpu")

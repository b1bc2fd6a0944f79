"""A model directory written by earshot 0.1.0 (format 1) still loads and decodes identically.

``tests/data/model_v0_1`` was made by the 0.1.0 code (before the front end became a part
of its own); ``model_v0_1_expected.json`` holds what 0.1.0 decoded from three fixed
signals.
"""

import json
import math
import shutil
from pathlib import Path

import torch

from earshot.config import DecodeConfig
from earshot.decoding.api import decode_batch
from earshot.modeldir import load_model_dir, save_model_dir

DATA = Path(__file__).parent / "data"


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
        enc = model.encode(batch, lens)
    out["encoder_sum"] = float(enc.memory.enc.double().sum())
    out["encoder_lens"] = enc.lens.tolist()
    return out


def test_format_1_directory_decodes_as_0_1_did(tmp_path):
    expected = json.loads((DATA / "model_v0_1_expected.json").read_text())
    description, tokenizer, model = load_model_dir(DATA / "model_v0_1")
    assert description.model.encoder.type == "crdnn"
    got = _decoded(model, tokenizer)
    for key in ("greedy", "joint", "ctc_greedy", "encoder_lens"):
        assert got[key] == expected[key], key
    assert abs(got["encoder_sum"] - expected["encoder_sum"]) < 1e-4
    # Saved again, it is a format 2 directory with the same behaviour.
    shutil.copytree(DATA / "model_v0_1", tmp_path / "old")
    save_model_dir(tmp_path / "new", description, tokenizer, model)
    assert "format: 2" in (tmp_path / "new" / "config.yaml").read_text()
    _, tokenizer2, model2 = load_model_dir(tmp_path / "new")
    again = _decoded(model2, tokenizer2)
    assert again["greedy"] == expected["greedy"] and again["joint"] == expected["joint"]

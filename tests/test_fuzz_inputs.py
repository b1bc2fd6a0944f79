"""Fuzzing what the YAML reader and the Python API are handed.

The same property as tests/test_fuzz.py: a result or one line naming the input, never
another exception, and every example within a time bound (an alias bomb, runaway
nesting or a huge scalar must be refused quickly, not expanded). The long run draws
EARSHOT_FUZZ_EXAMPLES fresh examples per property (see tests/test_fuzz.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from test_fuzz import fuzz

import earshot
from earshot.config import DecodeConfig, ExperimentConfig, load_config
from earshot.errors import EarshotError

pytestmark = pytest.mark.filterwarnings("ignore")
FROZEN_MODEL = Path(__file__).parent / "data" / "frozen" / "crdnn_v2"
SECONDS = 10.0  # every example's bound

KEYS = ["model", "train", "data", "optim", "decode", "loss", "tokenizer", "encoder", "epochs",
        "rnn_units", "units", "beam_size", "exp_dir", "lr", "type", "x", "<<"]
SCALARS = ["1", "-1", "0", "3.5", "1e9", "nan", ".inf", "true", "null", "'s'", "crdnn",
           "conformer", "[]", "{}", "~"]


@st.composite
def yaml_texts(draw) -> str:
    """YAML built from pieces that break naive readers: aliases that multiply, deep
    nesting, keys given twice, huge scalars, merge keys, tags, tabs and bad bytes."""
    lines, anchors = [], []
    for i in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["pair", "pair", "anchor", "alias_list", "deep", "huge",
                                     "dup", "tag", "junk"]))
        key = draw(st.sampled_from(KEYS))
        if kind == "pair":
            lines.append(f"{key}: {draw(st.sampled_from(SCALARS))}")
        elif kind == "anchor":
            name = f"a{i}"
            items = ", ".join(f"*{a}" for a in anchors[-1:] * draw(st.integers(1, 12))) or "x, y"
            lines.append(f"k{i}: &{name} [{items}]")
            anchors.append(name)
        elif kind == "alias_list" and anchors:
            lines.append(f"{key}: [{', '.join('*' + draw(st.sampled_from(anchors)) for _ in range(9))}]")
        elif kind == "deep":
            depth = draw(st.sampled_from([5, 63, 64, 65, 500, 5000]))
            lines.append(f"{key}: " + "[" * depth + "1" + "]" * depth)
        elif kind == "huge":
            lines.append(f"{key}: " + draw(st.sampled_from(["9", "x", "é"])) * draw(
                st.sampled_from([10, 10_000, 300_000])))
        elif kind == "dup":
            lines += [f"{key}: 1", f"{key}: 2"]
        elif kind == "tag":
            lines.append(f"{key}: !!python/object:os.system ls")
        else:
            lines.append(draw(st.sampled_from(["\t- x", ": :", "{{", "key: 'unclosed", "- - -",
                                               "a: b: c", "\ufeffdata: 1"])))
    return "\n".join(lines) + "\n"


@fuzz(60)
@given(text=yaml_texts())
def test_any_yaml_loads_or_is_refused_in_one_bounded_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    start = time.monotonic()
    try:
        cfg = load_config(path)
    except EarshotError as err:
        event("refused")
        message = str(err)
        assert message.startswith(str(path)) and len(message) < 2000, message[:300]
    else:
        event("loaded")
        assert isinstance(cfg, ExperimentConfig)
    assert time.monotonic() - start < SECONDS


_MODEL: list = []


def _model():
    if not _MODEL:
        _MODEL.append(earshot.load_model(FROZEN_MODEL, device="cpu"))
    return _MODEL[0]


NUMBERS = st.sampled_from([0, 1, 2, 3, -1, 0.0, 0.3, 1.0, 1.5, -0.5, math.nan, math.inf, -math.inf,
                           1e9, 10**6, True])
DECODE_FIELDS = ["beam_size", "ctc_weight", "lm_weight", "length_bonus", "eos_threshold",
                 "max_attn_shift", "min_len_ratio", "max_len_ratio", "coverage_weight",
                 "temperature", "nbest", "ctc_window", "pre_beam", "batch_size"]


@st.composite
def api_calls(draw) -> tuple[dict, str, list]:
    settings = {name: draw(NUMBERS) for name in draw(st.lists(st.sampled_from(DECODE_FIELDS),
                                                               max_size=3, unique=True))}
    mode = draw(st.sampled_from(["auto", "greedy", "beam", "ctc_greedy", "ctc_beam", "rescore",
                                 "joint", "fast", ""]))
    form = draw(st.sampled_from(["tensor", "numpy", "list", "int16", "none", "string"]))
    return settings, mode, form


@fuzz(40)
@given(call=api_calls())
def test_api_decoding_options_and_input_forms_decode_or_are_named(call):
    settings, mode, form = call
    wav = 0.3 * torch.sin(torch.arange(4000) / 8000 * 2 * math.pi * 440)
    given_wav = {"tensor": wav, "numpy": wav.numpy(), "list": wav.tolist(),
                 "int16": (wav * 32767).to(torch.int16), "none": None, "string": "a.wav"}[form]
    start = time.monotonic()
    try:
        decode = DecodeConfig(**settings)
        result = _model().transcribe(given_wav, sample_rate=8000, decode=decode, mode=mode)
    except (EarshotError, ValueError, TypeError) as err:
        event("refused")
        assert len(str(err).splitlines()) == 1
    else:
        event("decoded")
        assert isinstance(result.text, str)
        assert form in ("tensor", "numpy") and mode not in ("fast", "")
        assert all(math.isfinite(float(v)) for v in settings.values())
    assert time.monotonic() - start < SECONDS

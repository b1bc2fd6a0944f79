"""Fuzzing the entry points: a bad input ends in a result or a one-line error naming it.

Hypothesis draws audio files, manifest rows, config overrides, decoding options,
waveforms, damaged model directories and training settings, and runs each through the
real entry point (``earshot prepare / train / evaluate / transcribe`` through
``earshot.cli.main``, and the Python API). The property: the call returns (exit status 0,
1 or 2, or an ``EarshotError`` from the API), never another exception; an error names
the input; an input that cannot be used never gives a result silently; and a good input
in the same call gets the result it gets alone.

CI runs each property on a few dozen examples, the same ones every run (derandomized).
The long version draws fresh examples (N per property; the manifest property N/4, the
training one N/100)::

    EARSHOT_FUZZ_EXAMPLES=10000 python -m pytest tests/test_fuzz.py --hypothesis-show-statistics
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from earshot.cli import main
from earshot.config import ExperimentConfig, load_config, to_dict
from earshot.errors import ConfigError, EarshotError
from earshot.integrity import CHECKSUM_FILE
from earshot.models.artifacts import save_model_dir
from earshot.models.factory import build_model
from earshot.tokenizer import train_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore")

LONG = int(os.environ.get("EARSHOT_FUZZ_EXAMPLES", "0") or 0)


def fuzz(ci_examples: int, long_share: float = 1.0):
    """Hypothesis settings: ``ci_examples`` derandomized examples, or in the long run
    ``long_share`` of EARSHOT_FUZZ_EXAMPLES fresh ones (the slow properties take fewer)."""
    examples = max(ci_examples, int(LONG * long_share)) if LONG else ci_examples
    return settings(max_examples=examples, deadline=None, derandomize=not LONG,
                    database=None, suppress_health_check=list(HealthCheck))


RATE = 8000
TINY = [
    f"model.features.sample_rate={RATE}", "model.features.num_mel_bins=10",
    "model.encoder.cnn_channels=[2]", "model.encoder.time_pool=[2]", "model.encoder.rnn_layers=1",
    "model.encoder.rnn_units=8", "model.encoder.dnn_units=8", "model.decoder.units=8",
    "model.decoder.embedding_dim=4", "model.decoder.attention.dim=8",
    "model.decoder.attention.location_channels=2", "model.decoder.attention.location_kernel=3",
    "decode.beam_size=1", "decode.ctc_weight=0", "decode.max_len_ratio=1.0",
]


def tone(seconds: float, freq: float = 500.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``earshot ARGV`` in this process: (exit status, stdout, stderr). argparse's own
    usage errors count as exit status 2; any other exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue(), err.getvalue()


@dataclass
class Assets:
    root: Path
    model: Path
    good: Path
    good_text: str
    train_csv: Path
    dev_csv: Path


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    """A tiny model (random weights; its eos wins after a few tokens), a good recording
    and its transcript when decoded alone, and a tiny corpus."""
    root = tmp_path_factory.mktemp("fuzz")
    cfg = load_config(None, TINY)
    tokenizer = train_tokenizer(["ab ba", "a b"], cfg.tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer).eval()
    with torch.no_grad():
        model.state_dict()["decoder.output.bias"][tokenizer.eos_id] += 1.0
    save_model_dir(root / "model", cfg, tokenizer, model)
    good = root / "good.wav"
    sf.write(good, tone(0.6), RATE)
    code, out, _ = cli(["transcribe", "--model", str(root / "model"), str(good)])
    assert code == 0
    good_text = out.splitlines()[0].split("\t", 1)[1]
    rows = {"train": ["ab", "ba", "a b", "b a", "ab ab", "b"], "dev": ["ab", "b a"]}
    for split, texts in rows.items():
        lines = ["id,path,text"]
        for i, text in enumerate(texts):
            sf.write(root / f"{split}{i}.wav", tone(0.1 + 0.1 * len(text), 400 + 300 * i), RATE)
            lines.append(f"{split}{i},{split}{i}.wav,{text}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return Assets(root, root / "model", good, good_text, root / "train.csv", root / "dev.csv")


def good_line(assets: Assets) -> str:
    return f"{assets.good}\t{assets.good_text}"


# ---------------------------------------------------------------------------
# audio files


@dataclass
class AudioFile:
    data: bytes
    suffix: str
    usable: bool | None  # False: must be refused; None: either way (a damaged file)


SUBTYPES = {"wav": ["PCM_16", "PCM_24", "PCM_32", "PCM_U8", "FLOAT", "DOUBLE"],
            "flac": ["PCM_16", "PCM_24"]}


@st.composite
def audio_files(draw) -> AudioFile:
    kind = draw(st.sampled_from(["sound", "sound", "truncated", "bytes", "riff", "empty", "raw"]))
    if kind == "raw":  # headerless samples: nothing says their rate
        return AudioFile(np.zeros(draw(st.integers(0, 4000)), np.int16).tobytes(), "raw", False)
    if kind == "empty":
        return AudioFile(b"", draw(st.sampled_from(["wav", "flac", "mp3"])), False)
    if kind == "bytes":
        return AudioFile(draw(st.binary(max_size=3000)), draw(st.sampled_from(["wav", "flac", "ogg"])), None)
    if kind == "riff":
        body = draw(st.binary(max_size=400))
        return AudioFile(b"RIFF" + len(body).to_bytes(4, "little") + b"WAVEfmt " + body, "wav", None)
    fmt = draw(st.sampled_from(["wav", "flac"]))
    rate = draw(st.sampled_from([1, 50, 1000, 4000, 8000, 11025, 16000, 22050, 44100, 96000]))
    seconds = draw(st.sampled_from([0.0, 0.001, 0.01, 0.02, 0.03, 0.1, 0.5, 2.0]))
    frames = max(draw(st.integers(0, 3)), int(seconds * rate))
    channels = draw(st.integers(1, 3))
    subtype = draw(st.sampled_from(SUBTYPES[fmt]))
    content = draw(st.sampled_from(["tone", "noise", "zeros", "full_scale", "nan", "inf", "loud"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    t = np.arange(frames)[:, None] / rate
    data = {"tone": 0.3 * np.sin(2 * np.pi * 440 * t) * np.ones((1, channels)),
            "noise": rng.uniform(-1, 1, (frames, channels)),
            "zeros": np.zeros((frames, channels)),
            "full_scale": np.sign(rng.standard_normal((frames, channels))),
            }.get(content)
    float_file = subtype in ("FLOAT", "DOUBLE")
    if data is None:  # non-finite or far out of [-1, 1]: only a float file can hold them
        data = rng.uniform(-1, 1, (frames, channels))
        if frames:
            data[rng.integers(0, frames)] = {"nan": np.nan, "inf": np.inf, "loud": 50.0}[content]
    usable = (frames > 0 and rate >= 1000  # (earshot.audio.MIN_RATE: a 50 Hz header is refused)
              and (content in ("tone", "noise", "zeros", "full_scale") or not float_file))
    buf = io.BytesIO()
    try:
        sf.write(buf, data, rate, subtype=subtype, format=fmt.upper())
    except Exception:  # noqa: BLE001 (libsndfile refuses some rate/format pairs: not our input)
        assume(False)
    raw = buf.getvalue()
    if kind == "truncated":
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
        usable = None
    return AudioFile(raw, fmt, usable)


@fuzz(40)
@given(audio=audio_files())
def test_transcribe_reads_any_file_or_names_it_and_still_transcribes_the_good_one(assets, audio):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzzed.{audio.suffix}"
        path.write_bytes(audio.data)
        code, out, err = cli(["transcribe", "--model", str(assets.model), str(assets.good), str(path)])
    event(f"exit {code}")
    assert code in (0, 1), err
    lines = out.splitlines()
    assert good_line(assets) in lines
    if code == 1:
        assert f"error: {path}: " in err
        assert not any(line.startswith(f"{path}\t") for line in lines)
        assert audio.usable is not True
    else:
        assert sum(line.startswith(f"{path}\t") for line in lines) == 1
        assert audio.usable is not False, "audio that must be refused was transcribed"


# ---------------------------------------------------------------------------
# waveforms through the Python API


@st.composite
def waveforms(draw):
    length = draw(st.sampled_from([0, 1, 10, 199, 200, 201, 4000]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int16,
                                  torch.bool]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    wav = torch.from_numpy(rng.uniform(-0.5, 0.5, length)).to(dtype)
    bad = draw(st.sampled_from([None, None, "nan", "inf", "loud", "2d", "3d"]))
    if bad in ("nan", "inf", "loud") and length and dtype.is_floating_point:
        wav[int(rng.integers(0, length))] = {"nan": math.nan, "inf": math.inf, "loud": 40.0}[bad]
    elif bad == "2d":
        wav = wav.reshape(1, -1) if draw(st.booleans()) else torch.stack([wav, wav], 1)
    elif bad == "3d":
        wav = wav.reshape(1, 1, -1)
    return wav


@fuzz(40)
@given(wav=waveforms())
def test_decode_waveforms_decodes_or_names_a_bad_waveform(assets, wav):
    model = _api_model(assets)
    good = torch.from_numpy(tone(0.6))
    usable = (wav.dim() in (1, 2) and wav.numel() > 0 and wav.dtype.is_floating_point
              and bool(torch.isfinite(wav).all()) and float(wav.abs().max()) <= 2)
    try:
        utts = model.transcribe([good, wav], sample_rate=model.sample_rate)
    except (EarshotError, ValueError) as err:
        event("refused")
        assert "audio[1]" in str(err) and len(str(err).splitlines()) == 1
        assert not usable, f"a usable waveform was refused: {err}"
        return
    assert utts[0].text == assets.good_text and isinstance(utts[1].text, str)
    assert usable, f"an unusable waveform (shape {tuple(wav.shape)}, {wav.dtype}) was decoded"


_MODELS: dict[Path, object] = {}


def _api_model(assets: Assets):
    import earshot

    if assets.model not in _MODELS:
        _MODELS[assets.model] = earshot.load_model(assets.model)
    return _MODELS[assets.model]


# ---------------------------------------------------------------------------
# manifests: prepare, then evaluate what it wrote


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_subnormal=False),  # (training in this process flushes denormals)
    st.text(max_size=12), st.sampled_from(["", " ", "ab", "a b", "\t", "0", "-1", "1e400", "nan",
                                           "B A", "ab\nba", "\u00e9\u0301", "\x00"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.text(max_size=4), SCALARS, max_size=2))


@st.composite
def manifest_files(draw, assets: Assets):
    """A JSONL or CSV manifest: rows that start valid and get up to two fields broken,
    dropped or added, between lines of noise."""
    good_audio = [str(assets.good), "good.wav", str(assets.root / "train0.wav"), "train1.wav"]
    bad_audio = ["missing.wav", str(assets.root), "", "../good.wav", "model/config.yaml",
                 str(assets.root / "model" / "model.safetensors")]
    fmt = draw(st.sampled_from(["jsonl", "csv"]))
    header = draw(st.sampled_from([["id", "path", "text"], ["id", "audio", "transcript", "duration"],
                                   ["id", "path", "text", "speaker"], ["path", "text"]]))
    if fmt == "jsonl":
        header = ["id", draw(st.sampled_from(["path", "audio"])),
                  draw(st.sampled_from(["text", "transcript"])), "duration", "speaker"]
    mutated = st.one_of(VALUES, st.sampled_from(bad_audio)) if fmt == "jsonl" else \
        st.one_of(st.sampled_from(["", "x,y", '"', "nan", "-3", "1e400", "0", *bad_audio]),
                  st.text(max_size=8))
    lines = []
    for n in range(draw(st.integers(0, 6))):
        row = {"id": draw(st.sampled_from([f"u{n}", f"u{n}", "u0", "utt with space", "ü"])),
               "path": draw(st.sampled_from(good_audio)), "audio": draw(st.sampled_from(good_audio)),
               "text": draw(st.sampled_from(["ab", "b a", "ab ab", "AB", "a\u00e9"])),
               "transcript": "ba", "duration": draw(st.sampled_from(["", "0.6", "0.1"])),
               "speaker": draw(st.sampled_from(["s1", "s2", ""]))}
        row = {k: row[k] for k in header}
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from([*header, "extra"]))
            if draw(st.booleans()) and key in row:
                del row[key]
            else:
                row[key] = draw(mutated)
        if fmt == "jsonl":
            lines.append(draw(st.one_of(st.just(json.dumps(row)), st.just(json.dumps(row)),
                                        st.text(max_size=20),
                                        st.sampled_from(["", "{", "[]", "null", '{"id": }']))))
        else:
            lines.append(",".join(str(row.get(k, "")) for k in header))
    if fmt == "csv":
        lines.insert(0, ",".join(header))
    return fmt, "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


@fuzz(30, long_share=0.25)
@given(data=st.data())
def test_prepare_keeps_only_usable_rows_and_evaluate_accounts_for_every_one(assets, data):
    fmt, text = data.draw(manifest_files(assets))
    with tempfile.TemporaryDirectory(dir=assets.root) as tmp:
        src = Path(tmp) / f"m.{fmt}"
        src.write_bytes(text.encode("utf-8", "surrogatepass"))
        code, _, err = cli(["prepare", fmt, str(src), "--out", f"{tmp}/out",
                            "--audio-root", str(assets.root)])
        event(f"prepare exit {code}")
        assert code in (0, 2), err
        if code == 2:
            assert err.startswith("error: ") and str(src) in err and err.count("\n") == 1
            return
        from earshot.data.manifests import load_cuts

        cuts = list(load_cuts(f"{tmp}/out/cuts.jsonl.gz"))
        event(f"rows kept: {min(len(cuts), 3)}{'+' if len(cuts) >= 3 else ''}")
        assert cuts and len({c.id for c in cuts}) == len(cuts)
        for cut in cuts:
            assert math.isfinite(cut.duration) and cut.duration >= 0.025
            assert isinstance(cut.supervisions[0].text, str) and cut.supervisions[0].text.strip()
            assert Path(cut.recording.sources[0].source).is_file()
        code, _, err = cli(["evaluate", "--model", str(assets.model), "--manifest",
                            f"{tmp}/out/cuts.jsonl.gz", "--out", f"{tmp}/eval"])
        assert code == 0, err
        summary = json.loads(Path(f"{tmp}/eval/summary.json").read_text())
        assert summary["utterances"] + summary["dropped"] == summary["manifest_utterances"] == len(cuts)


# ---------------------------------------------------------------------------
# config overrides


def leaf_keys(cls=ExperimentConfig, prefix: str = "") -> list[str]:
    keys = []
    defaults = cls()
    for f in fields(cls):
        value = getattr(defaults, f.name)
        if is_dataclass(value):
            keys += leaf_keys(type(value), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


CONFIG_KEYS = leaf_keys() + ["model.encoder.type", "model.encoder.layers", "model.nonsense",
                             "nonsense", "optim.param_groups", "model.decoder.attention.heads"]
ADVERSARIAL = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "3", "0.5", "-0.5", "1e9", "-1e9", "1e400", "nan", "inf",
                     "-inf", "", "abc", "[]", "[0]", "[1, 2]", "[0.9, 1.1]", "{}", "null", "true",
                     "false", "'1'", "{a: 1}", "conformer", "crdnn", "cuda", "cpu", "bf16",
                     "[{prefix: encoder., lr: 0}]", "[{lr: -1}]", "[[]]", ":", "- a", "&a b"]),
    st.text(max_size=10))


def _default_of(key: str):
    value = ExperimentConfig()
    for part in key.split("."):
        value = getattr(value, part, None)
    return value


@st.composite
def override_value(draw, key: str) -> str:
    """Half the time a value near the key's default (most are valid), else adversarial."""
    default = _default_of(key)
    if draw(st.booleans()) or default is None:
        return draw(ADVERSARIAL)
    if isinstance(default, bool):
        return str(not default).lower()
    if isinstance(default, (int, float)):
        scale = draw(st.sampled_from([0, 0.5, 1, 2, -1]))
        value = default * scale if default else draw(st.sampled_from([0.1, 1, 3]))
        return str(int(value) if isinstance(default, int) else value)
    if isinstance(default, tuple):
        return json.dumps(list(default[: draw(st.integers(0, len(default)))]))
    return str(default)


@st.composite
def overrides(draw) -> list[tuple[str, str]]:
    keys = draw(st.lists(st.sampled_from(CONFIG_KEYS), min_size=1, max_size=3))
    return [(key, draw(override_value(key))) for key in keys]


@fuzz(300)
@given(pairs_=overrides())
def test_a_config_override_is_accepted_or_refused_naming_its_key(pairs_):
    overrides = pairs_
    pairs = [f"{key}={value}" for key, value in overrides]
    try:
        cfg = load_config(None, pairs)
    except ConfigError as err:
        event("refused")
        message = str(err)
        named = FULL_KEY.search(message)
        assert named or message.startswith("override "), f"{pairs}: '{message}' names no key"
        if named:  # a key given, or (a check across keys) a full key of the same section
            key = named.group(1)
            given_keys = [k for k, _ in overrides]
            assert key in given_keys or ("." in key and any(
                k.split(".")[0] == key.split(".")[0] for k in given_keys)), (pairs, message)
        return
    event("accepted")
    assert isinstance(cfg, ExperimentConfig)
    given = {}
    for key, value in overrides:  # the last override of a key wins
        given[key] = yaml.safe_load(value) if value != "" else ""
    for key, value in given.items():  # an accepted config holds the values given
        held = cfg
        for part in key.split("."):
            held = getattr(held, part)
        assert _holds(to_dict(held), value), (key, value, held)


def _holds(held, value) -> bool:
    """Whether a config value ``held`` is what the YAML ``value`` said (ints read as floats,
    numbers and strings as strings, defaults filled in for keys not given)."""
    if isinstance(value, dict):
        return isinstance(held, dict) and all(_holds(held.get(k), v) for k, v in value.items())
    if isinstance(value, list):
        return (isinstance(held, list) and len(held) == len(value)
                and all(_holds(h, v) for h, v in zip(held, value)))
    if isinstance(held, str):
        return held == str(value)
    if isinstance(held, float):  # (YAML 1.1 reads 1e9 as a string; the config as a number)
        return held == float(value)
    return held == value


FULL_KEY = re.compile(r"config key '([^']+?)(?:\[\d+\][^']*)?'")


# ---------------------------------------------------------------------------
# decoding options


DECODE_FLAGS = ["--beam-size", "--ctc-weight", "--lm-weight", "--length-bonus", "--eos-threshold",
                "--max-attn-shift", "--min-len-ratio", "--max-len-ratio", "--coverage-weight",
                "--temperature", "--nbest", "--ctc-window", "--pre-beam", "--batch-size",
                "--mode", "--device"]
FLAG_VALUES = st.sampled_from(["0", "1", "2", "5", "-1", "0.5", "1.5", "-0.5", "nan", "inf", "-inf",
                               "1e9", "100000", "abc", "", "greedy", "beam", "ctc_greedy",
                               "ctc_beam", "rescore", "auto", "cpu", "cuda", "cuda:3", "tpu"])
SENSIBLE = {"--mode": ["greedy", "beam", "ctc_greedy", "ctc_beam", "rescore", "auto"],
            "--device": ["cpu", "auto"], "--ctc-weight": ["0", "0.3", "1"],
            "--min-len-ratio": ["0", "0.1"], "--max-len-ratio": ["0.5", "1"],
            "--eos-threshold": ["0", "1.5"], "--temperature": ["0.5", "1", "2"],
            "--length-bonus": ["-1", "0", "0.5"]}


@st.composite
def decode_options(draw) -> list[tuple[str, str]]:
    flags = draw(st.lists(st.sampled_from(DECODE_FLAGS), max_size=3, unique=True))
    return [(flag, draw(st.one_of(FLAG_VALUES, st.sampled_from(SENSIBLE.get(flag, ["1", "2", "4"])))))
            for flag in flags]


@fuzz(40)
@given(options=decode_options(),
       normalize=st.sampled_from([[], ["--length-normalize"], ["--no-length-normalize"]]))
def test_decoding_options_decode_or_are_refused_naming_the_flag(assets, options, normalize):
    flags = [part for flag, value in options for part in (flag, value)] + normalize
    code, out, err = cli(["transcribe", "--model", str(assets.model), *flags, str(assets.good)])
    event(f"exit {code}")
    assert code in (0, 2), err
    if code == 2:
        last = err.strip().splitlines()[-1]
        assert last.startswith(("error: ", "earshot transcribe: error: ")), err
        assert any(flag in last for flag, _ in options), f"{flags}: '{last}' names no flag"
    else:
        (line,) = out.splitlines()
        assert line.startswith(f"{assets.good}\t")


# ---------------------------------------------------------------------------
# damaged model directories


@st.composite
def damage(draw):
    target = draw(st.sampled_from(["config.yaml", "model.safetensors", "tokenizer", CHECKSUM_FILE]))
    how = draw(st.sampled_from(["truncate", "flip", "garbage", "delete", "append", "yaml"]))
    return target, how, draw(st.integers(0, 2**31)), draw(st.booleans())


@fuzz(40)
@given(spec=damage())
def test_a_damaged_model_directory_is_refused_naming_the_file_or_still_decodes(assets, spec):
    target, how, at, keep_manifest = spec
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(assets.model, model)
        if not keep_manifest and target != CHECKSUM_FILE:
            (model / CHECKSUM_FILE).unlink()
        path = model / target
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            path = files[at % len(files)]
        raw = path.read_bytes()
        changed = _damage(path, raw, how, at)
        code, out, err = cli(["transcribe", "--model", str(model), str(assets.good)])
    event(f"exit {code}")
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("error: ") and str(model) in err
        named = path.name in err or (path.parent.name == "tokenizer" and "tokenizer" in err)
        assert named or CHECKSUM_FILE in err, f"{how} of {path.name}: {err.strip()}"
        return
    if changed and keep_manifest and target != CHECKSUM_FILE:
        pytest.fail(f"{how} of {target} passed the checksum manifest")
    assert out.startswith(f"{assets.good}\t")


def _damage(path: Path, raw: bytes, how: str, at: int) -> bool:
    """Damage ``path`` (holding ``raw``); True when its bytes changed."""
    if how == "delete":
        path.unlink()
        return True
    if how == "truncate":
        new = raw[: at % max(len(raw), 1)]
    elif how == "flip" and raw:
        i = at % len(raw)
        new = raw[:i] + bytes([raw[i] ^ (1 + at % 255)]) + raw[i + 1:]
    elif how == "garbage":
        new = np.random.default_rng(at).bytes(1 + at % 2000)
    elif how == "append":
        new = raw + b"\n" + np.random.default_rng(at).bytes(1 + at % 50)
    else:  # a YAML document in its place (a config edited into nonsense)
        new = yaml.safe_dump({"format": at % 4, "model": {"encoder": {"type": "x"}}, "x": [at]}).encode()
    path.write_bytes(new)
    return new != raw


# ---------------------------------------------------------------------------
# training on a tiny model


TRAIN_SETTINGS = st.lists(st.sampled_from([
    "optim.lr=1e3", "optim.lr=0", "optim.grad_clip=0", "optim.grad_clip=1e-9", "optim.accum_steps=7",
    "optim.name=adamw", "optim.name=adadelta", "optim.scheduler.type=cosine",
    "optim.scheduler.type=noam", "optim.scheduler.type=newbob", "optim.scheduler.warmup_steps=1",
    "data.max_duration=0.05", "data.max_duration=1000", "data.num_buckets=1", "data.num_buckets=50",
    "data.speed_perturb=[0.5,2.0]", "data.max_utterance_duration=0.2", "data.num_workers=1",
    "loss.ctc_weight=0", "loss.ctc_weight=1", "loss.label_smoothing=0.99",
    "loss.scheduled_sampling.max_prob=1", "model.specaugment.time_width=1000",
    "model.specaugment.freq_width=1000", "model.specaugment.time_masks=9", "model.features.kind=mfcc",
    "model.features.kind=waveform", "model.features.dither=1", "model.encoder.time_pool=[4]",
    "model.encoder.cnn_channels=[2, 2, 2]", "model.decoder.rnn_type=lstm",
    "model.decoder.attention.type=content", "tokenizer.case=lower", "train.precision=bf16",
    "train.save_every_steps=1", "train.average_best=3", "train.average_last=1",
    "train.select_metric=loss", "train.max_bad_steps=1", "train.keep_last=1",
    "decode.beam_size=4", "decode.ctc_weight=0.5", "train.plot_alignments=0",
]), min_size=1, max_size=4, unique=True)


@fuzz(6, long_share=0.01)
@given(settings_=TRAIN_SETTINGS)
def test_training_with_any_settings_exports_a_model_or_stops_with_a_reason(assets, settings_):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "tiny.yaml"
        tiny = dict(pair.split("=", 1) for pair in TINY)
        cfg.write_text("{}\n")
        overrides = [f"{k}={v}" for k, v in tiny.items()] + [
            f"data.train={assets.train_csv}", f"data.dev={assets.dev_csv}", "data.max_duration=1.0",
            f"train.exp_dir={tmp}/exp", "train.epochs=1", "train.device=cpu", "train.tensorboard=false",
            *settings_]
        checked, report, why = cli(["validate", str(cfg), *overrides])
        assert checked in (0, 2), why
        code, out, err = cli(["train", str(cfg), *overrides])
        event(f"train exit {code}")
        assert code in (0, 2), err
        if checked == 2:  # what validate refuses, train refuses too
            assert code == 2, f"validate said: {why}"
        if code == 2:
            assert err.startswith("error: ") and err.count("\n") == 1, err
            return
        model = out.strip().splitlines()[-1].split("model: ", 1)[1]
        code, out, err = cli(["transcribe", "--model", model, str(assets.good)])
        assert code == 0 and out.startswith(f"{assets.good}\t"), err

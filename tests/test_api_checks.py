"""The Python API checks decoding options, modes, devices and inputs as the CLI does."""

import math
from pathlib import Path

import pytest
import torch

import earshot
from earshot.config import DecodeConfig
from earshot.errors import ConfigError

MODEL = Path(__file__).parent / "data" / "frozen" / "crdnn_v2"


@pytest.fixture(scope="module")
def model():
    return earshot.load_model(MODEL, device="cpu")


@pytest.mark.parametrize("settings, key", [
    (dict(beam_size=0), "beam_size"), (dict(batch_size=0), "batch_size"),
    (dict(temperature=0.0), "temperature"), (dict(ctc_weight=math.nan), "ctc_weight"),
    (dict(max_len_ratio=1e9), "max_len_ratio"), (dict(nbest=0), "nbest"),
])
def test_bad_decoding_settings_are_named_before_anything_is_decoded(model, settings, key):
    wav = torch.zeros(4000)
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        model.transcribe(wav, sample_rate=8000, decode=DecodeConfig(**settings))
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):  # checked before reading
        model.transcribe(["does-not-exist.wav"], decode=DecodeConfig(**settings))
    with pytest.raises(ConfigError, match=rf"option {key}="):
        model.transcribe(["does-not-exist.wav"], **settings)


def test_a_bad_mode_a_foreign_decode_object_and_unknown_keywords_are_named(model):
    wav = torch.zeros(4000)
    with pytest.raises(ConfigError, match="mode: unknown decoding mode 'fastest'"):
        model.transcribe(wav, sample_rate=8000, mode="fastest")
    with pytest.raises(ConfigError, match="expected an earshot.config.DecodeConfig, got dict"):
        model.transcribe(wav, sample_rate=8000, decode={"beam_size": 2})
    with pytest.raises(TypeError, match="beam; decoding options: .*beam_size"):
        model.transcribe(wav, sample_rate=8000, beam=2)
    assert len(model.transcribe([wav, wav], sample_rate=8000, decode=DecodeConfig(beam_size=2))) == 2


@pytest.mark.parametrize("device, says", [("bogus", "'bogus' is not a device"), ("cuda:7", "'cuda:7' but"),
                                          ("mps", "'mps' but")])
def test_load_model_names_an_unusable_device(device, says):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    if device == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("this machine has that device")
    with pytest.raises(ConfigError, match=rf"load_model\(device=\.\.\.\): {says}"):
        earshot.load_model(MODEL, device=device)
    assert earshot.load_model(MODEL, device=None).device.type in ("cpu", "cuda", "mps")  # None: auto


@pytest.mark.parametrize("settings, says", [(dict(beam_size=True), "'beam_size': expected an integer"),
                                            (dict(nbest=2.5), "'nbest': expected an integer")])
def test_settings_of_the_wrong_type_are_named_as_a_config_file_would_have_them(model, settings, says):
    with pytest.raises(ConfigError, match=says):
        model.transcribe(torch.zeros(4000), sample_rate=8000, decode=DecodeConfig(**settings))

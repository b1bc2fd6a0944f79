"""Config: YAML <-> dataclasses, overrides, and errors that name the key."""

import pytest

from earshot.config import (DecodeConfig, ExperimentConfig, LMExperimentConfig,
                            PretrainExperimentConfig, from_dict, load_config, save_config, to_dict)
from earshot.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = ExperimentConfig()
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_reach_nested_fields_and_parse_yaml_values(tmp_path):
    cfg = load_config(None, ["model.encoder.rnn_layers=3", "model.encoder.cnn_channels=[8, 16]",
                             "model.encoder.time_pool=[1, 2]", "loss.ctc_weight=0.5",
                             "train.exp_dir=exp/x", "optim.lr=1e-4"])
    assert cfg.optim.lr == 1e-4  # YAML 1.1 alone would read "1e-4" as a string
    assert cfg.model.encoder.rnn_layers == 3
    assert cfg.model.encoder.cnn_channels == (8, 16)
    assert cfg.loss.ctc_weight == 0.5 and isinstance(cfg.loss.ctc_weight, float)
    assert cfg.train.exp_dir == "exp/x"


def test_unknown_key_in_yaml_names_file_and_dotted_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  encoder:\n    rnn_layer: 3\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*'model\.encoder\.rnn_layer'"):
        load_config(path)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=two", "train.epochs"),
    ("model.encoder.bidirectional=3", "model.encoder.bidirectional"),
    ("model.encoder.rnn_type=transformer", "model.encoder.rnn_type"),
    ("model.encoder.cnn_channels=5", "model.encoder.cnn_channels"),
    ("loss.ctc_weight=1.5", "loss.ctc_weight"),
    # the values a new user's fuzzing found crashing later or silently harmful (issue 11)
    ("data.num_workers=-1", "data.num_workers"),
    ("model.encoder.rnn_layers=-1", "model.encoder.rnn_layers"),
    ("model.features.num_mel_bins=0", "model.features.num_mel_bins"),
    ("train.device=tpu", "train.device"),
    ("data.speed_perturb=[0]", "data.speed_perturb"),
    ("optim.lr=.inf", "optim.lr"),
    ("optim.grad_clip=.nan", "optim.grad_clip"),
    ("model.decoder.units=0", "model.decoder.units"),
    ("data.num_buckets=-3", "data.num_buckets"),
    ("train.keep_last=-1", "train.keep_last"),
    ("train.average_best=0", "train.average_best"),
    ("train.average_last=-1", "train.average_last"),
    ("train.average_last=99", "train.average_last"),
    ("model.specaugment.freq_width=-5", "model.specaugment.freq_width"),
    ("model.features.sample_rate=-8000", "model.features.sample_rate"),
    ("data.max_utterance_duration=-1", "data.max_utterance_duration"),
    ("decode.batch_size=0", "decode.batch_size"),
    ("decode.max_len_ratio=0", "decode.max_len_ratio"),
    ("decode.max_len_ratio=1e9", "decode.max_len_ratio"),  # a search that never ends
    ("decode.length_bonus=.inf", "decode.length_bonus"),
    ("decode.pre_beam=-1", "decode.pre_beam"),
    ("decode.ctc_window=-5", "decode.ctc_window"),
    ("decode.eos_threshold=.nan", "decode.eos_threshold"),
    ("loss.label_smoothing=.nan", "loss.label_smoothing"),
])
def test_wrong_type_or_range_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_warmup_without_warmup_steps_names_the_key():
    with pytest.raises(ConfigError, match=r"optim\.scheduler\.warmup_steps"):
        load_config(None, ["optim.scheduler.type=warmup", "optim.scheduler.warmup_steps=0"])


def test_malformed_override_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="'train'.*mapping|train: expected a mapping"):
        from_dict(ExperimentConfig, {"train": 3})


def test_to_dict_is_plain_data():
    d = to_dict(DecodeConfig(beam_size=4))
    assert d["beam_size"] == 4 and isinstance(d, dict)


def test_recipes_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    recipes = sorted(root.glob("*/*.yaml"))
    assert recipes, "no recipe found"
    for path in recipes:
        kinds = {"lm": LMExperimentConfig, "pretrain": PretrainExperimentConfig}
        load_config(path, cls=kinds.get(path.stem.split("_")[0], ExperimentConfig))


def test_encoder_configs_are_tagged_by_type(tmp_path):
    from earshot.choices import ENCODERS
    from earshot.config import EncoderConfig
    from earshot.models.encoders.conformer import ConformerConfig
    from earshot.models.encoders.crdnn import CRDNNConfig

    for name in ENCODERS:  # one config dataclass per encoder, its default type its name
        assert EncoderConfig.member(name)().type == name
    cfg = load_config(None, ["model.encoder.type=conformer", "model.encoder.layers=3"])
    assert isinstance(cfg.model.encoder, ConformerConfig) and cfg.model.encoder.layers == 3
    assert isinstance(ExperimentConfig().model.encoder, CRDNNConfig)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg  # the type travels with the keys


@pytest.mark.parametrize("overrides, pattern", [
    (["model.encoder.type=transformerx"],
     r"'model\.encoder\.type': unknown encoder type 'transformerx' \(known: conformer, crdnn, ssl\)"),
    (["model.encoder.type=conformer", "model.encoder.rnn_units=3"],
     r"'model\.encoder\.rnn_units' is not a key of encoder type 'conformer'; it belongs to "
     r"encoder type crdnn \(valid keys for 'conformer': .*heads"),
    (["model.encoder.heads=2"], r"'model\.encoder\.heads' is not a key of encoder type 'crdnn'"),
    (["model.encoder.type=conformer", "model.encoder.dim=100", "model.encoder.heads=3"],
     r"'model\.encoder\.dim': must be a positive multiple of model\.encoder\.heads"),
    (["model.encoder.type=conformer", "model.encoder.conv_kernel=4"], r"model\.encoder\.conv_kernel"),
    (["model.encoder.type=conformer", "model.encoder.subsampling=5"], r"model\.encoder\.subsampling"),
    (["model.encoder.rnn_units=0"], r"model\.encoder\.rnn_units"),
    (["model.encoder.cnn_channels=[]", "model.encoder.time_pool=[]"], r"model\.encoder\.cnn_channels"),
    (["model.decoder.attention.type=multihead_location", "model.decoder.attention.heads=3"],
     r"model\.decoder\.attention\.heads"),
    # intermediate CTC: Conformer blocks below the top one, with a weight, and a CTC head
    (["loss.intermediate_ctc_weight=0.3", "loss.intermediate_ctc_layers=[1]"],
     r"'loss\.intermediate_ctc_layers': taps encoder blocks, which model\.encoder\.type crdnn does not offer"),
    (["model.encoder.type=conformer", "model.encoder.layers=4", "loss.intermediate_ctc_weight=0.3",
      "loss.intermediate_ctc_layers=[4]"],
     r"'loss\.intermediate_ctc_layers': must be distinct blocks in \[1, 3\].*got \[4\]"),
    (["model.encoder.type=conformer", "loss.intermediate_ctc_weight=0.3"],
     r"'loss\.intermediate_ctc_layers': must name at least one encoder block"),
    (["model.encoder.type=conformer", "loss.intermediate_ctc_layers=[2]"],
     r"'loss\.intermediate_ctc_weight': is 0, so loss\.intermediate_ctc_layers would do nothing"),
    (["model.encoder.type=conformer", "loss.intermediate_ctc_weight=1.0",
      "loss.intermediate_ctc_layers=[2]"], r"'loss\.intermediate_ctc_weight': must be in \[0, 1\)"),
    (["model.encoder.type=conformer", "loss.ctc_weight=0", "loss.intermediate_ctc_weight=0.3",
      "loss.intermediate_ctc_layers=[2]"], r"'loss\.ctc_weight': must be > 0 with intermediate CTC"),
])
def test_encoder_config_errors_name_the_key_and_the_type(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, overrides)


def test_unknown_encoder_type_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("model:\n  encoder: {type: lstm9, layers: 2}\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: config key 'model\.encoder\.type'"):
        load_config(path)


def _bomb(levels: int = 8) -> str:
    names = [chr(97 + i) for i in range(levels + 1)]
    lines = [f"{names[0]}: &{names[0]} [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip(names, names[1:]):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    anchors = "x-anchors:\n" + "".join(f"  {line}\n" for line in lines)  # (an unknown key, refused later)
    return anchors + "model:\n  encoder:\n    cnn_channels: *" + names[-1] + "\n"


@pytest.mark.parametrize("text, says", [
    (_bomb(), r"c\.yaml: its aliases expand to more than 100000 values"),
    ("train:\n  epochs: " + "[" * 5000 + "]" * 5000 + "\n", r"c\.yaml:2: nested deeper than 64 levels"),
    ("train:\n  epochs: 3\n  seed: 1\n  epochs: 4\n", r"c\.yaml:4: key 'epochs' given twice \(first on line 2\)"),
    ("train: {exp_dir: " + "x" * 100000 + ", epochs: [1]}\n", r"expected an integer, got \[1\]"),
    ("train:\n  epochs: " + "9" * 10000 + "\n", r"c\.yaml: a value yaml cannot build"),
])
def test_yaml_that_would_blow_up_or_silently_pick_a_value_is_refused_naming_file_and_line(tmp_path, text, says):
    import time

    path = tmp_path / "c.yaml"
    path.write_text(text)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=says) as err:
        load_config(path)
    assert len(str(err.value)) < 400 and time.monotonic() - start < 10


def test_a_huge_value_is_shown_cut_short_in_the_message(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: " + "9" * 50 + "x" * 100000 + "\n")
    with pytest.raises(ConfigError, match=r"train\.epochs': expected an integer, got '9{20}") as err:
        load_config(path)
    assert len(str(err.value)) < 300


@pytest.mark.parametrize("override, says", [
    ("model.decoder.units=100000000", r"'model\.decoder\.units': must be in \[1, 16384\], got 100000000"),
    ("model.encoder.rnn_units=1000000", r"'model\.encoder\.rnn_units': must be in \[1, 16384\]"),
    ("model.encoder.time_pool=[100,100]", r"'model\.encoder\.time_pool': subsamples time by 20000"),
    ("model.decoder.attention.location_kernel=-1", r"'model\.decoder\.attention\.location_kernel'"),
    ("model.features.num_mel_bins=1000", r"'model\.features\.num_mel_bins': 1000 mel filters .* leave \d+ of them"),
    ("model.features.frame_length_ms=10000", r"'model\.features\.frame_length_ms': must be at most 200"),
    ("optim.weight_decay=-1", r"'optim\.weight_decay': must be >= 0"),
    ("optim.scheduler.factor=-1", r"'optim\.scheduler\.factor': must be in \(0, 1\]"),
    ("optim.scheduler.patience=-5", r"'optim\.scheduler\.patience': must be >= 0"),
    ("loss.scheduled_sampling.ramp=-1", r"'loss\.scheduled_sampling\.ramp': must be >= 1"),
    ("train.seed=-1", r"'train\.seed': must be in \[0, 2\^32\)"),
    ("train.num_threads=-1", r"'train\.num_threads': must be >= 0"),
    ("decode.beam_size=100000", r"'decode\.beam_size': must be in \[1, 200\]"),
])
def test_sizes_and_rates_a_machine_or_model_could_not_use_are_refused_before_allocation(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, [override, "model.features.sample_rate=8000"])


def test_accepted_configs_hold_the_values_given():
    cfg = load_config(None, ["model.decoder.units=512", "decode.beam_size=200", "train.seed=0",
                             "model.features.num_mel_bins=80", "optim.scheduler.factor=1.0"])
    assert (cfg.model.decoder.units, cfg.decode.beam_size, cfg.train.seed) == (512, 200, 0)
    assert cfg.model.features.num_mel_bins == 80 and cfg.optim.scheduler.factor == 1.0

"""End-to-end training on a tiny synthetic corpus: resume equality, metrics, export, config errors."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from earshot.config import load_config
from earshot.errors import ConfigError, EarshotError
from earshot.models.artifacts import load_model_dir, save_model_dir
from earshot.models.factory import build_model
from earshot.train import checkpoint as ckpt
from earshot.tokenizer import load_tokenizer
from earshot.train.tasks.asr import train

# lhotse's bucket-size heuristic averages an empty list of bins for a 2-cut dev set.
pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")

RATE = 8000
TONES = {"a": 500.0, "b": 1500.0, " ": 0.0}  # one 0.1 s tone per character; space is silence
TRAIN_TEXTS = ["a b", "b a", "ab", "ba a", "b", "a", "bb", "a ab"]
DEV_TEXTS = ["ab", "b a"]

TINY_MODEL = [
    f"model.features.sample_rate={RATE}", "model.features.num_mel_bins=10",
    "model.encoder.cnn_channels=[2]", "model.encoder.time_pool=[1]", "model.encoder.rnn_layers=1",
    "model.encoder.rnn_units=8", "model.encoder.dnn_units=8", "model.encoder.dropout=0.2",
    "model.decoder.units=8", "model.decoder.embedding_dim=4", "model.decoder.dropout=0.2",
    "model.decoder.attention.dim=8", "model.decoder.attention.location_channels=2",
    "model.decoder.attention.location_kernel=3",
]


def _utterance(text: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.1 * RATE)) / RATE
    parts = [0.3 * np.sin(2 * np.pi * TONES[ch] * t) for ch in text]
    wav = np.concatenate(parts) + 0.01 * rng.standard_normal(len(parts) * len(t))
    return wav.astype(np.float32)


def _manifest(root, name, texts, rng):
    lines = ["id,path,text"]
    for i, text in enumerate(texts):
        path = root / f"{name}{i}.wav"
        sf.write(path, _utterance(text, rng), RATE)
        lines.append(f"{name}{i},{path.name},{text}")
    (root / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return root / f"{name}.csv"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    return _manifest(root, "train", TRAIN_TEXTS, rng), _manifest(root, "dev", DEV_TEXTS, rng)


def _cfg(corpus, exp_dir, *extra):
    train_csv, dev_csv = corpus
    return load_config(None, TINY_MODEL + [
        f"data.train={train_csv}", f"data.dev={dev_csv}", "data.max_duration=1.0",
        f"train.exp_dir={exp_dir}", "train.device=cpu", "train.epochs=2", "train.keep_last=1",
        "train.average_best=2", "optim.lr=0.01", "optim.accum_steps=2", "optim.grad_clip=1.0",
        "optim.scheduler.type=newbob", "loss.scheduled_sampling.max_prob=0.3", "train.log_every=1",
        *extra])


@pytest.fixture(scope="module")
def straight_run(corpus, tmp_path_factory):
    """Two epochs without a break."""
    exp_dir = tmp_path_factory.mktemp("straight")
    return train(_cfg(corpus, exp_dir)), exp_dir


def _rows(exp_dir, kind="epoch"):
    lines = (exp_dir / "metrics.jsonl").read_text().splitlines()
    return [row for line in lines if (row := json.loads(line))["kind"] == kind]


TIMING = {"seconds", "audio_seconds_per_second", "utterances_per_second", "max_rss_mb",
          "train_seconds", "dev_seconds", "peak_rss_mb"}


def _untimed(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_resumed_run_ends_with_exactly_the_same_parameters(corpus, straight_run, tmp_path):
    _, straight_dir = straight_run
    train(_cfg(corpus, tmp_path, "train.epochs=1"))  # "stopped" after epoch 1
    assert list(ckpt.list_checkpoints(tmp_path / "checkpoints")) == [1]
    train(_cfg(corpus, tmp_path), resume=True)
    a = ckpt.load_checkpoint(straight_dir / "checkpoints" / "epoch-0002.pt")
    b = ckpt.load_checkpoint(tmp_path / "checkpoints" / "epoch-0002.pt")
    assert a.model.keys() == b.model.keys()
    for name in a.model:
        assert torch.equal(a.model[name], b.model[name]), name
    assert a.optimizer["state"][0]["exp_avg"].equal(b.optimizer["state"][0]["exp_avg"])
    assert a.train_state == b.train_state and a.scheduler == b.scheduler
    for kind in ("epoch", "step"):
        assert _untimed(_rows(tmp_path, kind)) == _untimed(_rows(straight_dir, kind))


def _check_epoch_totals(rows, corpus):
    """What each epoch row says was trained: every training cut once, and its time."""
    from earshot.data.manifests import load_cuts

    cuts = load_cuts(corpus[0])
    for row in rows:
        assert row["train_seconds"] > 0 and row["dev_seconds"] >= 0 and row["peak_rss_mb"] > 0
        assert row["train_audio_seconds"] == pytest.approx(sum(c.duration for c in cuts), abs=1e-3)
        assert row["train_utterances"] == len(cuts) and row["skipped_rows"] == 0
        assert 0.3 < row["padding_efficiency"] <= 1.0  # audio over padded batch samples


def test_epoch_rows_say_what_was_trained_and_how_long_it_took(corpus, straight_run, tmp_path,
                                                              monkeypatch):
    _, straight_dir = straight_run
    rows = _rows(straight_dir)
    _check_epoch_totals(rows, corpus)
    assert all(row["dev_seconds"] > 0 for row in rows)  # a dev pass after every epoch
    assert all(row["train_seconds"] + row["dev_seconds"] <= row["seconds"] + 0.01 for row in rows)
    # killed at epoch 2's second step, after the mid-epoch checkpoint of its first; resumed
    from earshot.train import faults

    class Killed(Exception):
        pass

    kill_at = rows[0]["step"] + 2
    assert rows[1]["step"] >= kill_at

    def hit(event, step, rank=0):
        if event == "after-step" and step == kill_at:
            raise Killed

    cfg = _cfg(corpus, tmp_path, "train.save_every_steps=1")
    with monkeypatch.context() as patch:
        patch.setattr(faults, "hit", hit)
        with pytest.raises(Killed):
            train(cfg)
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name.startswith("epoch-0002-batch-")
    train(cfg, resume=True)
    resumed = _rows(tmp_path)
    _check_epoch_totals(resumed, corpus)
    assert _untimed(resumed) == _untimed(rows)


def test_metrics_lines_config_and_exported_model(corpus, straight_run):
    model_dir, exp_dir = straight_run
    rows = _rows(exp_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    keys = {"kind", "epoch", "step", "train_loss", "ctc", "nll", "dev_loss", "dev_wer", "dev_cer",
            "lr", "skipped_steps", "skipped_rows", "skipped", "dev_skipped", "seconds",
            "train_seconds", "dev_seconds", "train_audio_seconds", "train_utterances",
            "padding_efficiency", "peak_rss_mb"}
    assert all(set(r) == keys for r in rows)
    assert all(r["skipped_rows"] == 0 and r["dev_skipped"] == 0 for r in rows)
    steps = _rows(exp_dir, "step")
    assert [r["step"] for r in steps] == list(range(1, rows[-1]["step"] + 1))  # log_every=1
    assert all(r["audio_seconds_per_second"] > 0 and r["grad_norm"] >= 0 and r["max_rss_mb"] > 0
               and np.isfinite(r["ctc"]) and np.isfinite(r["nll"]) for r in steps)
    assert rows[1]["step"] > rows[0]["step"] > 0
    assert all(np.isfinite(r["train_loss"]) and r["dev_loss"] > 0 and 0 <= r["dev_cer"] for r in rows)
    assert load_config(exp_dir / "config.yaml") == _cfg(corpus, exp_dir)
    # average of the two best epochs, CMVN statistics included
    expected = ckpt.average_checkpoints(sorted(ckpt.list_checkpoints(exp_dir / "checkpoints").values()))
    _, tokenizer, model = load_model_dir(model_dir)
    assert tokenizer.decode(tokenizer.encode("a b")) == "a b"
    state = model.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert not torch.equal(state["frontend.normalizer.mean"], torch.zeros_like(state["frontend.normalizer.mean"]))


def test_model_dir_describes_the_model_not_the_run(corpus, straight_run):
    import yaml

    import earshot

    model_dir, exp_dir = straight_run
    written = yaml.safe_load((model_dir / "config.yaml").read_text())
    assert set(written) == {"format", "earshot_version", "model", "tokenizer", "decode", "card"}
    assert written["earshot_version"] == earshot.__version__
    assert written["model"]["encoder"]["type"] == "crdnn"
    assert str(exp_dir) not in (model_dir / "config.yaml").read_text()  # no run paths
    card = written["card"]
    rows = _rows(exp_dir)
    assert card["corpus"] == corpus[0].parent.name
    assert card["epochs"] == 2 and card["exported_epochs"] and card["parameters"] > 0
    assert card["train_hours"] > 0 and 0 <= card["dev_cer"] and card["dev_wer"] is not None
    assert set(card["exported_epochs"]) <= {r["epoch"] for r in rows}


def test_the_card_holds_what_evaluate_measures_on_the_exported_weights(corpus, straight_run,
                                                                      tmp_path):
    from earshot.config import DecodeConfig
    from earshot.inference import evaluate

    model_dir, _ = straight_run
    description, _, model = load_model_dir(model_dir)
    greedy = DecodeConfig(max_len_ratio=description.decode.max_len_ratio)
    rates = evaluate(model_dir, corpus[1], tmp_path / "dev", greedy, mode="greedy", device="cpu")
    card = description.card
    assert (card.dev_wer, card.dev_cer) == (round(rates.wer, 3), round(rates.cer, 3))
    assert card.parameters == sum(p.numel() for p in model.parameters())


def test_model_dir_round_trip_gives_the_same_outputs(corpus, straight_run, tmp_path):
    _, exp_dir = straight_run
    cfg, tokenizer, model = load_model_dir(exp_dir / "model")
    with torch.no_grad():
        model.state_dict()["frontend.normalizer.mean"].copy_(torch.rand(10))
    save_model_dir(tmp_path / "copy", cfg, tokenizer, model)
    save_model_dir(tmp_path / "copy", cfg, tokenizer, model)  # replacing an existing dir works
    _, _, again = load_model_dir(tmp_path / "copy")
    assert not again.training
    wavs, lens = torch.randn(2, 4000) * 0.1, torch.tensor([4000, 2500])
    with torch.no_grad():
        a, b = model.encode(wavs, lens), again.encode(wavs, lens)
    assert torch.equal(a.memory.enc, b.memory.enc) and torch.equal(a.lens, b.lens)
    assert torch.equal(a.ctc_log_probs, b.ctc_log_probs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no staging dirs left
    for left in (".copy.tmp-a1b2", ".copy.old-.copy.tmp-x"):  # what a killed export leaves
        (tmp_path / left).mkdir()
        (tmp_path / left / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".copyright.tmp-1").mkdir()  # another directory's: left alone
    save_model_dir(tmp_path / "copy", cfg, tokenizer, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".copyright.tmp-1", "copy"]
    (tmp_path / "copy" / "model.safetensors").unlink()
    with pytest.raises(EarshotError, match="model.safetensors"):
        load_model_dir(tmp_path / "copy")


def test_model_dir_refuses_weights_of_another_shape(corpus, straight_run, tmp_path):
    _, exp_dir = straight_run
    cfg, tokenizer, _ = load_model_dir(exp_dir / "model")
    bigger = load_config(None, TINY_MODEL + ["model.encoder.rnn_units=12"])
    save_model_dir(tmp_path / "m", cfg, tokenizer, build_model(bigger, tokenizer))
    with pytest.raises(ConfigError, match="do not fit"):
        load_model_dir(tmp_path / "m")


def test_config_typo_fails_before_any_training(corpus, tmp_path):
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text(f"optim:\n  lr: 0.01\n  schedular: {{type: none}}\ntrain:\n  exp_dir: {tmp_path / 'exp'}\n")
    with pytest.raises(ConfigError, match="optim.schedular"):
        train(load_config(yaml_path))
    with pytest.raises(ConfigError, match="train.epoch"):
        _cfg(corpus, tmp_path / "exp", "train.epoch=3")
    assert not (tmp_path / "exp").exists()


def test_resume_refuses_a_changed_model_and_fresh_run_refuses_an_old_dir(corpus, straight_run):
    _, exp_dir = straight_run
    with pytest.raises(ConfigError, match="model.encoder.rnn_units"):
        train(_cfg(corpus, exp_dir, "model.encoder.rnn_units=16"), resume=True)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(_cfg(corpus, exp_dir))
    assert load_config(exp_dir / "config.yaml") == _cfg(corpus, exp_dir)  # left untouched


def test_bf16_autocast_trains_on_cpu_and_fp16_is_refused_before_any_file(corpus, tmp_path):
    with pytest.raises(ConfigError, match="train.precision"):
        train(_cfg(corpus, tmp_path / "fp16", "train.precision=fp16"))
    assert not (tmp_path / "fp16").exists()
    train(_cfg(corpus, tmp_path / "bf16", "train.precision=bf16", "train.epochs=1"))
    (row,) = _rows(tmp_path / "bf16")
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["dev_loss"])


def test_unseen_dev_characters_are_named_in_a_warning(corpus, caplog):
    from earshot.config import TokenizerConfig
    from earshot.data.manifests import load_cuts
    from earshot.tokenizer import train_tokenizer, warn_unknown_chars

    tokenizer = train_tokenizer(["a a"], TokenizerConfig())
    texts = [cut.supervisions[0].text for cut in load_cuts(corpus[1])]
    with caplog.at_level("WARNING"):
        unseen = warn_unknown_chars(tokenizer, texts, "dev.csv")
    assert set(unseen) == {ch for text in texts for ch in text if ch not in "a "} != set()
    assert "dev.csv" in caplog.text and "<unk>" in caplog.text
    assert all(repr(ch) in caplog.text for ch in list(unseen)[:3])


def test_init_from_copies_weights_and_moves_token_rows_by_token(straight_run, tmp_path):
    from earshot.config import TokenizerConfig
    from earshot.models.factory import init_from_model_dir
    from earshot.tokenizer import train_tokenizer

    model_dir, _ = straight_run
    cfg, src_tokenizer, src = load_model_dir(model_dir)
    tokenizer = train_tokenizer(["b c", "cb"], TokenizerConfig())  # 'a' gone, 'c' new
    model = build_model(cfg, tokenizer)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_model_dir(model, cfg, tokenizer, model_dir)

    state, source = model.state_dict(), src.state_dict()
    assert set(report["token_rows"]) == set(model.token_indexed_names)
    assert "encoder.rnn.layers.0.0.weight_hh_l0" in report["copied"]
    assert all(torch.equal(state[k], source[k]) for k in report["copied"])
    assert torch.equal(state["frontend.normalizer.mean"], fresh["frontend.normalizer.mean"])  # new corpus, new stats
    rows = {t: i for i, t in enumerate(tokenizer.tokens)}
    src_rows = {t: i for i, t in enumerate(src_tokenizer.tokens)}
    for name in model.token_indexed_names:
        for token in ("b", " ", "<eos>", "<blank>"):
            assert torch.equal(state[name][rows[token]], source[name][src_rows[token]]), (name, token)
        assert torch.equal(state[name][rows["c"]], fresh[name][rows["c"]]), name


def test_training_from_a_model_dir_starts_at_its_weights(corpus, straight_run, tmp_path, monkeypatch):
    model_dir, _ = straight_run
    with pytest.raises(EarshotError, match="model directory not found"):
        train(_cfg(corpus, tmp_path / "bad", f"train.init_from={tmp_path / 'nowhere'}"))
    import shutil

    from earshot.train.tasks import asr

    shutil.copytree(model_dir, tmp_path / "damaged")
    weights = tmp_path / "damaged" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with monkeypatch.context() as patch:  # refused before the minutes of statistics
        patch.setattr(asr, "compute_cmvn", lambda *a: pytest.fail("statistics first"))
        with pytest.raises(EarshotError, match="model.safetensors: its SHA-256 differs"):
            train(_cfg(corpus, tmp_path / "bad2", f"train.init_from={tmp_path / 'damaged'}"))
        (tmp_path / "damaged" / "checksums.sha256").unlink()
        with pytest.raises(EarshotError, match="model.safetensors: not a readable safetensors"):
            train(_cfg(corpus, tmp_path / "bad3", f"train.init_from={tmp_path / 'damaged'}"))
    out = train(_cfg(corpus, tmp_path / "tuned", f"train.init_from={model_dir}", "train.epochs=1",
                     "optim.lr=1e-9", "loss.scheduled_sampling.max_prob=0"))
    tuned_model = load_model_dir(out)[2]
    model_statistics = set(tuned_model.statistics_names)
    tuned, source = tuned_model.state_dict(), load_model_dir(model_dir)[2].state_dict()
    for name, value in source.items():
        if name not in model_statistics:
            assert torch.allclose(tuned[name], value, atol=1e-6), name


def test_utterances_too_short_for_one_frame_are_skipped_in_training_and_dev(corpus, tmp_path, caplog):
    """``prepare`` leaves such audio out (tests/test_manifests.py); a CutSet made elsewhere
    can still hold one, and the trainer skips it by name."""
    from lhotse import CutSet, Recording, SupervisionSegment

    from earshot.data.manifests import import_csv

    sf.write(tmp_path / "click.wav", np.zeros(10, dtype=np.float32), RATE)  # 1.25 ms: no frame
    sf.write(tmp_path / "gone.wav", _utterance("ab", np.random.default_rng(2)), RATE)

    def cut(path, uid):
        c = Recording.from_file(path, recording_id=uid).to_cut()
        c.supervisions = [SupervisionSegment(id=c.id, recording_id=c.recording_id, start=0.0,
                                             duration=c.duration, text="a")]
        return c

    paths = []
    for name, csv in zip(("train", "dev"), corpus):
        paths.append(tmp_path / f"{name}.jsonl.gz")
        CutSet.from_cuts([*import_csv(csv), cut(tmp_path / "click.wav", f"click_{name}"),
                          cut(tmp_path / "gone.wav", f"gone_{name}")]).to_file(paths[-1])
    (tmp_path / "gone.wav").unlink()  # deleted after the manifests were made
    cfg = _cfg(tuple(paths), tmp_path / "exp", "train.epochs=1")
    with caplog.at_level("WARNING"):
        model_dir = train(cfg)
    assert (model_dir / "model.safetensors").is_file()
    for uid in ("click_train", "click_dev"):
        assert f"skipping utterance '{uid}': 10 samples give 0 encoder frames" in caplog.text
    assert ("epoch 1: 2 training utterances skipped (1 audio did not load, 1 too short for "
            "one encoder frame)") in caplog.text
    assert "epoch 1: 2 dev utterances not scored" in caplog.text
    (row,) = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert row["skipped"] == {"unreadable": 1, "unusable": 1, "out_of_memory": 0, "other_rank": 0}
    assert row["skipped_rows"] == 2 and row["dev_skipped"] == 2


def test_validate_reports_what_train_would_skip_without_training(corpus, tmp_path, capsys):
    from lhotse import CutSet, Recording, SupervisionSegment

    from earshot.cli import main
    from earshot.data.manifests import import_csv

    sf.write(tmp_path / "click.wav", np.zeros(10, dtype=np.float32), RATE)
    sf.write(tmp_path / "gone.wav", _utterance("ab", np.random.default_rng(2)), RATE)
    cuts = [*import_csv(corpus[0])]
    for uid in ("click", "gone"):
        cut = Recording.from_file(tmp_path / f"{uid}.wav", recording_id=uid).to_cut()
        cut.supervisions = [SupervisionSegment(id=uid, recording_id=uid, start=0.0,
                                               duration=cut.duration, text="a")]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(tmp_path / "train.jsonl.gz")
    (tmp_path / "gone.wav").unlink()
    dev = tmp_path / "dev.csv"  # a CSV: its bad rows are reported too
    dev.write_text(corpus[1].read_text().replace("dev1.wav", "nowhere.wav").replace("ab", "ab~"))
    for name in ("dev0.wav", "dev1.wav"):
        (tmp_path / name).write_bytes((corpus[1].parent / name).read_bytes())
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    args = ["validate", str(config), *TINY_MODEL, f"data.train={tmp_path / 'train.jsonl.gz'}",
            f"data.dev={dev}", "data.max_utterance_duration=0.35", f"train.exp_dir={tmp_path / 'exp'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    longest = max(c.duration for c in cuts)
    assert f"train      {len(cuts)} cuts" in out
    assert "usable" in out and "1 audio did not load" in out and "1 too short for one encoder frame" in out
    assert sum(c.duration > 0.35 for c in cuts) >= 1 and longest > 0.35
    assert f"{sum(c.duration > 0.35 for c in cuts)} longer than data.max_utterance_duration=0.35s" in out
    assert "gone: " in out and "click: 10 samples" in out
    assert "1 manifest row unusable" in out and "nowhere.wav" in out
    assert "dev characters the tokenizer cannot produce: '~'" in out
    assert out.strip().endswith("ok: earshot train would start (skipping the cuts above)")
    assert not (tmp_path / "exp").exists()  # nothing written
    # nothing usable in dev: train would stop, and validate says so
    (tmp_path / "dev0.wav").unlink()
    assert main(args) == 2
    assert "no usable rows" in capsys.readouterr().err


def test_a_click_in_a_transcribe_batch_decodes_to_empty_text(straight_run, tmp_path):
    import earshot

    model_dir, _ = straight_run
    sf.write(tmp_path / "click.wav", np.zeros(10, dtype=np.float32), RATE)
    sf.write(tmp_path / "ab.wav", _utterance("ab", np.random.default_rng(1)), RATE)
    model = earshot.load_model(model_dir)
    texts = [r.text for r in model.transcribe([tmp_path / "ab.wav", tmp_path / "click.wav"])]
    alone = model.transcribe(tmp_path / "ab.wav").text
    assert texts[1] == "" and texts[0] == alone
    for mode in ("beam", "ctc_beam", "rescore", "ctc_greedy"):
        assert model.transcribe(tmp_path / "click.wav", mode=mode).text == ""


def test_cosine_schedule_spans_the_whole_run(corpus, tmp_path):
    train(_cfg(corpus, tmp_path, "optim.scheduler.type=cosine", "optim.scheduler.warmup_steps=1",
               "optim.scheduler.min_lr_ratio=0.1"))
    saved = ckpt.load_checkpoint(tmp_path / "checkpoints" / "epoch-0002.pt").scheduler
    steps = _rows(tmp_path)[-1]["step"]
    # total = 2 epochs x the first epoch's optimizer steps: the run ends at the floor, 0.1 x lr
    assert saved["total_steps"] == steps == saved["steps_done"]  # this tiny set: equal epochs
    assert saved["lr"] == pytest.approx(0.001)


def test_adamw_with_a_frozen_parameter_group_leaves_those_weights_alone(corpus, tmp_path):
    train(_cfg(corpus, tmp_path, "train.epochs=1", "optim.name=adamw", "optim.weight_decay=0.01",
               "optim.param_groups=[{prefix: encoder., lr: 0.0}, {prefix: ctc., lr: 0.001}]"))
    first = ckpt.load_checkpoint(tmp_path / "checkpoints" / "epoch-0001.pt")
    torch.manual_seed(1234)  # train.seed: the trainer's initial weights
    init = build_model(_cfg(corpus, tmp_path), load_tokenizer(tmp_path / "tokenizer")).state_dict()
    enc = [k for k in first.model if k.startswith("encoder.") and "running_" not in k
           and "num_batches" not in k]
    assert enc and all(torch.equal(first.model[k], init[k]) for k in enc)
    assert not torch.equal(first.model["decoder.embedding.weight"], init["decoder.embedding.weight"])
    frozen = first.optimizer["param_groups"][0]["params"]
    assert frozen and not set(frozen) & set(first.optimizer["state"])  # no Adam moments either
    scales = [g["lr_scale"] for g in first.optimizer["param_groups"]]
    assert scales == pytest.approx([0.0, 0.1, 1.0])


def test_a_parameter_group_matching_nothing_names_the_key(corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"optim.param_groups\[0\].prefix.*encoder\."):
        train(_cfg(corpus, tmp_path, "optim.param_groups=[{prefix: enocder., lr: 0.1}]"))


def test_mid_epoch_checkpoints_are_pruned_once_the_epoch_is_saved(corpus, tmp_path):
    train(_cfg(corpus, tmp_path, "train.save_every_steps=1", "optim.accum_steps=1"))
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["epoch-0001.pt", "epoch-0002.pt"]  # the mid-epoch ones were pruned


def test_average_last_exports_the_mean_of_the_last_epochs_and_keeps_them(corpus, tmp_path):
    train(_cfg(corpus, tmp_path, "train.epochs=3", "train.average_last=2"))
    kept = ckpt.list_checkpoints(tmp_path / "checkpoints")
    assert sorted(kept) == [2, 3]  # keep_last=1, but the average needs the last two
    desc, _, model = load_model_dir(tmp_path / "model")
    assert desc.card.exported_epochs == (2, 3)
    expected = ckpt.average_checkpoints([kept[2], kept[3]])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_validate_every_runs_the_dev_pass_every_n_epochs_and_after_the_last(corpus, tmp_path):
    from earshot.cli import main

    exp = tmp_path / "exp"
    train(_cfg(corpus, exp, "train.epochs=3", "train.validate_every=2", "train.average_best=2",
               "optim.scheduler.type=cosine", "optim.scheduler.warmup_steps=1"))
    rows = _rows(exp)
    assert [("dev_wer" in r) for r in rows] == [False, True, True]  # epochs 2 and 3 (the last)
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(exp / "checkpoints", 3)).train_state
    assert [e for e, _ in state.history] == [2, 3] and state.epoch == 3
    assert load_model_dir(exp / "model")[0].card.exported_epochs in ((2, 3), (3, 2))
    assert main(["plot", str(exp)]) == 0
    with pytest.raises(ConfigError, match="train.validate_every.*newbob"):
        load_config(None, ["train.validate_every=2", "optim.scheduler.type=newbob"])


def test_validate_all_from_adds_a_dev_pass_after_every_late_epoch():
    from earshot.config import TrainConfig
    from earshot.train.engine import has_dev_pass

    cfg = TrainConfig(epochs=12, validate_every=5, validate_all_from=9)
    assert [e for e in range(1, 13) if has_dev_pass(cfg, e)] == [5, 9, 10, 11, 12]
    plain = TrainConfig(epochs=12, validate_every=5)
    assert [e for e in range(1, 13) if has_dev_pass(plain, e)] == [5, 10, 12]
    with pytest.raises(ConfigError, match="train.validate_all_from"):
        load_config(None, ["train.validate_all_from=-1"])


def test_repeated_non_finite_updates_stop_the_run_naming_the_batch(corpus, tmp_path, monkeypatch):
    from earshot.errors import TrainingError
    from earshot.train import engine

    monkeypatch.setattr(engine, "optimizer_step", lambda run: float("nan"))
    with pytest.raises(TrainingError, match=r"2 updates in a row.*train.max_bad_steps=2.*(train\d)"):
        train(_cfg(corpus, tmp_path, "train.max_bad_steps=2"))


def test_average_plot_tensorboard_and_alignment_plots(corpus, straight_run, tmp_path):
    from earshot.cli import main

    _, exp_dir = straight_run
    assert main(["average", str(exp_dir), "--last", "2", "--out", str(tmp_path / "avg")]) == 0
    paths = sorted(ckpt.list_checkpoints(exp_dir / "checkpoints").values())
    expected = ckpt.average_checkpoints(paths)
    desc, _, model = load_model_dir(tmp_path / "avg")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert desc.card.exported_epochs == (1, 2) and desc.card.dev_wer is not None
    assert main(["average", str(exp_dir), "--best", "5"]) == 2  # only 2 epochs are kept
    assert main(["plot", str(exp_dir)]) == 0
    assert (exp_dir / "plots" / "curves.png").stat().st_size > 1000
    aligned = sorted(p.name for p in (exp_dir / "plots").glob("align-e002-*.png"))
    assert len(aligned) == 2  # the dev set has two utterances
    assert list((exp_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_an_out_of_memory_batch_is_split_and_a_hopeless_utterance_skipped(corpus, tmp_path,
                                                                          monkeypatch, caplog):
    from earshot.train import engine

    real = engine.forward_backward

    def tight_memory(run, batch, *args, **kwargs):
        if len(batch) > 1 or batch.ids == ["train3"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(run, batch, *args, **kwargs)

    monkeypatch.setattr(engine, "forward_backward", tight_memory)
    train(_cfg(corpus, tmp_path, "train.epochs=1"))
    assert "retrying it in two halves" in caplog.text
    assert "skipping utterance 'train3'" in caplog.text and "out of memory even alone" in caplog.text
    (row,) = _rows(tmp_path)
    assert np.isfinite(row["train_loss"]) and row["step"] > 0


def test_non_finite_weights_are_never_exported(corpus, tmp_path, monkeypatch):
    from earshot.errors import TrainingError

    real = ckpt.average_checkpoints

    def poisoned(paths):
        weights = real(paths)
        name = next(k for k, v in weights.items() if v.is_floating_point())
        weights[name] = torch.full_like(weights[name], float("nan"))
        return weights

    monkeypatch.setattr(ckpt, "average_checkpoints", poisoned)
    with pytest.raises(TrainingError, match="hold nan or inf.*nothing exported"):
        train(_cfg(corpus, tmp_path))
    assert not (tmp_path / "model").exists()


def test_training_caps_onednn_primitive_cache_unless_the_user_set_it(monkeypatch):
    from earshot.config import TrainConfig
    from earshot.train import environment

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: True)
    environment.configure_torch(TrainConfig(num_threads=0))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(environment.ONEDNN_CACHE_CAPACITY)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    environment.configure_torch(TrainConfig(num_threads=0))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"


def test_adam_falls_back_to_its_default_kernel_where_torch_has_no_fused_one():
    from earshot.choices import OPTIMIZERS
    from earshot.config import OptimConfig
    from earshot.train import optim

    calls = []

    def adam(groups, fused=False, **kw):  # as torch < 2.4 on CPU parameters
        calls.append(fused)
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point "
                               "Tensors of supported devices: ['cuda']")
        return torch.optim.Adam(groups, **kw)

    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = optim._fused(adam)([{"params": params}], OptimConfig())
    assert calls == [True, False] and not optimizer.defaults["fused"]
    assert OPTIMIZERS.load("adam")([{"params": params}], OptimConfig()).defaults["fused"]


def test_intermediate_ctc_trains_a_conformer_and_logs_the_tapped_loss(corpus, tmp_path):
    train_csv, dev_csv = corpus
    cfg_args = [
        f"model.features.sample_rate={RATE}", "model.features.num_mel_bins=10",
        "model.encoder.type=conformer", "model.encoder.dim=8", "model.encoder.layers=2",
        "model.encoder.heads=2", "model.encoder.ffn_dim=8", "model.encoder.conv_kernel=3",
        "model.encoder.subsampling_channels=2", "model.decoder.units=8",
        "model.decoder.embedding_dim=4", "model.decoder.attention.dim=8",
        "model.decoder.attention.location_channels=2", "model.decoder.attention.location_kernel=3",
        "loss.intermediate_ctc_weight=0.3", "loss.intermediate_ctc_layers=[1]",
        f"data.train={train_csv}", f"data.dev={dev_csv}", "data.max_duration=1.0",
        f"train.exp_dir={tmp_path}", "train.device=cpu", "train.epochs=1", "train.log_every=1"]
    train(load_config(None, cfg_args))
    for row in _rows(tmp_path, "step") + _rows(tmp_path):
        assert np.isfinite(row["intermediate_ctc"]) and row["intermediate_ctc"] > 0
        assert np.isfinite(row["ctc"]) and np.isfinite(row["nll"])
    # the head is shared, so the exported model has the parameters it would have without
    _, tokenizer, model = load_model_dir(tmp_path / "model")
    plain = build_model(load_config(None, [a for a in cfg_args if "intermediate" not in a]), tokenizer)
    assert model.state_dict().keys() == plain.state_dict().keys()


def test_subsampling_that_leaves_ctc_too_few_frames_is_named_before_training(corpus, caplog):
    import logging

    from earshot.data.manifests import import_csv
    from earshot.errors import ConfigError
    from earshot.models.factory import build_model
    from earshot.tokenizer import train_tokenizer
    from earshot.train.tasks.asr import check_ctc_can_align

    cuts = import_csv(corpus[0])  # 0.1 s per character
    fine = _cfg(corpus, "unused")
    coarse = _cfg(corpus, "unused", "model.encoder.time_pool=[8]",
                  "model.encoder.rnn_time_pool=4")  # one frame per 320 ms
    tokenizer = train_tokenizer([c.supervisions[0].text for c in cuts], fine.tokenizer)
    with caplog.at_level(logging.WARNING):
        check_ctc_can_align(build_model(fine, tokenizer), tokenizer, cuts, fine)
        assert "CTC cannot align" not in caplog.text  # every one aligns
        check_ctc_can_align(build_model(coarse, tokenizer), tokenizer, cuts, coarse)
    assert "6 of 8 training utterances have fewer encoder frames than tokens" in caplog.text
    longer = cuts.filter(lambda c: len(c.supervisions[0].text) > 1)  # none of one character
    with pytest.raises(ConfigError, match=r"6 of 6 training utterances .* CTC cannot align"):
        check_ctc_can_align(build_model(coarse, tokenizer), tokenizer, longer, coarse)


def test_noise_and_reverberation_resume_exactly_mid_epoch(corpus, tmp_path, monkeypatch):
    """A run with noise and reverberation killed mid-epoch and resumed ends with the same
    parameters as the run that never stopped: every draw is seeded by (seed, epoch, cut)."""
    rng = np.random.default_rng(5)
    (tmp_path / "noise").mkdir()
    for i in range(2):
        sf.write(tmp_path / "noise" / f"n{i}.wav", (0.1 * rng.standard_normal(RATE)).astype(np.float32), RATE)
    corrupt = [f"data.noise.sources={tmp_path / 'noise'}", "data.noise.prob=0.7",
               "data.noise.snr_db=[0,15]", "data.reverb.rirs=simulated", "data.reverb.prob=0.5",
               "data.reverb.rt60=[0.1,0.3]"]
    a = _straight_and_resumed(corpus, tmp_path, corrupt, monkeypatch)
    clean = ckpt.load_checkpoint(_clean_run(corpus, tmp_path / "clean") / "checkpoints" / "epoch-0002.pt")
    assert any(not torch.equal(a.model[n], clean.model[n]) for n in a.model)  # it did something


def _clean_run(corpus, exp_dir):
    train(_cfg(corpus, exp_dir))
    return exp_dir


def _jsonl(csv_path, out):
    from earshot.data.manifests import import_csv

    import_csv(csv_path).to_file(out)
    return out


def test_shards_train_as_the_manifest_does_and_resume_exactly(corpus, tmp_path, monkeypatch):
    """Training from a shard folder: with shard shuffling off, the same loss curve as its
    manifest; with it on (3 shards), killed mid-epoch and resumed, the same parameters."""
    from earshot.cli import main

    manifest = _jsonl(corpus[0], tmp_path / "train.jsonl.gz")
    assert main(["shard", str(manifest), "--out", str(tmp_path / "shards"), "--shard-size", "3"]) == 0
    assert len(list((tmp_path / "shards").glob("recording.*.tar"))) == 3
    train(_cfg(corpus, tmp_path / "from_manifest", f"data.train={manifest}"))
    ordered = [f"data.train={tmp_path / 'shards'}", "data.shuffle_shards=false"]
    train(_cfg(corpus, tmp_path / "from_shards", *ordered))
    for kind in ("epoch", "step"):
        assert _untimed(_rows(tmp_path / "from_shards", kind)) == \
            _untimed(_rows(tmp_path / "from_manifest", kind))

    _straight_and_resumed(corpus, tmp_path, [f"data.train={tmp_path / 'shards'}"], monkeypatch)


def _straight_and_resumed(corpus, tmp_path, overrides, monkeypatch):
    """Train ``overrides`` straight through, and again killed after epoch 2's first step
    (its mid-epoch checkpoint written) then resumed; assert both end with the same
    parameters, and that the resumed epoch's batches were read from its plan, not drawn
    again. Returns the straight run's last checkpoint."""
    from earshot.train import faults

    overrides = [*overrides, "train.save_every_steps=1"]
    train(_cfg(corpus, tmp_path / "straight", *overrides))
    rows = _rows(tmp_path / "straight")
    kill_at = rows[0]["step"] + 2
    assert rows[1]["step"] >= kill_at

    class Killed(Exception):
        pass

    def hit(event, step, rank=0):
        if event == "after-step" and step == kill_at:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(faults, "hit", hit)
        with pytest.raises(Killed):
            train(_cfg(corpus, tmp_path / "resumed", *overrides))
    assert ckpt.latest_checkpoint(tmp_path / "resumed" / "checkpoints").name.startswith("epoch-0002-batch-")
    from earshot.data.epochs import EpochBatches

    draw = EpochBatches._mine

    def training_batches_not_drawn_again(self):
        assert self.plan_dir is None, "the resumed epoch was drawn again instead of read from its plan"
        return draw(self)

    with monkeypatch.context() as patch:  # epoch 2 is read from its plan, from batch n on
        patch.setattr(EpochBatches, "_mine", training_batches_not_drawn_again)
        train(_cfg(corpus, tmp_path / "resumed", *overrides), resume=True)
    assert sorted(p.name for p in (tmp_path / "resumed" / "plans").iterdir()) == \
        ["epoch-0002-rank-0.batches.gz", "epoch-0002-rank-0.index.json"]
    a = ckpt.load_checkpoint(tmp_path / "straight" / "checkpoints" / "epoch-0002.pt")
    b = ckpt.load_checkpoint(tmp_path / "resumed" / "checkpoints" / "epoch-0002.pt")
    for name in a.model:
        assert torch.equal(a.model[name], b.model[name]), name
    return a

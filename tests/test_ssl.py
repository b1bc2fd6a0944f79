"""Self-supervised encoders (model.encoder.type: ssl) and `earshot pretrain`, on tiny
randomly initialised transformers checkpoints made here (a few tens of thousands of
parameters); nothing is downloaded."""

import json
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers  # the ssl extra (the test setup installs it)

from earshot.cli import main  # noqa: E402
from earshot.config import (DecodeConfig, DecoderConfig, AttentionConfig, FeatureConfig,  # noqa: E402
                            ModelConfig, PretrainExperimentConfig, TokenizerConfig, load_config)
from earshot.errors import ConfigError  # noqa: E402
from earshot.models.asr import EncoderDecoderASR  # noqa: E402
from earshot.models.encoders.ssl import SSLConfig, span_mask  # noqa: E402
from earshot.models.wav2vec2_pretraining import sample_negatives  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")

RATE = 16000
SPECIALS = dict(blank=0, pad=1, bos=2, eos=3)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=2, layerdrop=0.0, vocab_size=8)
# the same, as `earshot pretrain` overrides of its default architecture
TINY_PRETRAIN = [
    "model.architecture.hidden_size=32", "model.architecture.num_hidden_layers=2",
    "model.architecture.num_attention_heads=2", "model.architecture.intermediate_size=64",
    "model.architecture.conv_dim=[16,16]", "model.architecture.conv_kernel=[10,3]",
    "model.architecture.conv_stride=[5,2]", "model.architecture.num_conv_pos_embeddings=8",
    "model.architecture.num_conv_pos_embedding_groups=2", "model.architecture.codevector_dim=16",
    "model.architecture.proj_codevector_dim=16", "model.architecture.num_codevectors_per_group=8",
    "model.mask_length=2", "model.num_negatives=8",
]


def tiny_checkpoint(path, model_type="wav2vec2", norm="layer", rate=RATE):
    """A randomly initialised checkpoint directory as transformers writes one."""
    config = transformers.AutoConfig.for_model(model_type, **TINY, feat_extract_norm=norm,
                                               do_stable_layer_norm=norm == "layer")
    if model_type == "wav2vec2":  # what `earshot pretrain` exports: the pretraining heads too
        config.codevector_dim = config.proj_codevector_dim = 16
        config.num_codevectors_per_group = 8
        model = transformers.Wav2Vec2ForPreTraining(config)
    else:
        model = transformers.AutoModel.from_config(config)
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": rate}))
    return path


def ssl_model(path, **encoder) -> EncoderDecoderASR:
    cfg = ModelConfig(features=FeatureConfig(kind="waveform", sample_rate=RATE),
                      encoder=SSLConfig(path=str(path), projection_dim=16, **encoder),
                      decoder=DecoderConfig(units=16, embedding_dim=8, dropout=0.0,
                                            attention=AttentionConfig(dim=16, location_channels=2,
                                                                      location_kernel=3)))
    return EncoderDecoderASR(cfg, vocab_size=12, specials=SPECIALS)


def batch(lens=(4000, 2600), seed=0):
    g = torch.Generator().manual_seed(seed)
    wavs = 0.1 * torch.randn(len(lens), max(lens), generator=g)
    for i, n in enumerate(lens):
        wavs[i, n:] = 0
    tokens = torch.tensor([[4, 5, 6, 7], [8, 9, 10, 1]])[: len(lens)]
    from types import SimpleNamespace

    return SimpleNamespace(wavs=wavs, wav_lens=torch.tensor(lens), tokens=tokens,
                           token_lens=torch.tensor([4, 3])[: len(lens)])


# ---------------------------------------------------------------------------
# the encoder


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm"])
def test_a_local_checkpoint_loads_with_exact_lengths_and_honours_padding(family, tmp_path):
    model = ssl_model(tiny_checkpoint(tmp_path / "ckpt", family), layer=1).eval()
    b = batch()
    with torch.no_grad():
        enc = model.encode(b.wavs, b.wav_lens)
        alone = model.encode(b.wavs[1:, :2600], b.wav_lens[1:])
    # wav2vec 2.0's feature encoder: (10, 5) then (3, 2): (4000 - 10) // 5 + 1 = 799 -> 399
    assert enc.lens.tolist() == [399, 259] == model.encoded_lengths(b.wav_lens).tolist()
    assert enc.memory.enc.shape == (2, 399, 16)
    assert torch.all(enc.memory.enc[1, 259:] == 0)
    torch.testing.assert_close(enc.memory.enc[1, :259], alone.memory.enc[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc.ctc_log_probs[1, :259], alone.ctc_log_probs[0], atol=1e-5, rtol=1e-4)


def test_an_utterance_shorter_than_the_receptive_field_decodes_to_nothing(tmp_path):
    from earshot.decoding.api import decode_batch
    from earshot.tokenizer import train_tokenizer

    model = ssl_model(tiny_checkpoint(tmp_path / "ckpt")).eval()
    tok = train_tokenizer(["ab", "ba"], TokenizerConfig())
    model = EncoderDecoderASR(model.cfg, tok.vocab_size, dict(tok.special_ids)).eval()
    b = batch(lens=(4000, 12))  # 12 samples: less than one 10-sample frame pair (needs 15)
    assert model.encoded_lengths(b.wav_lens).tolist() == [399, 0]
    hyps = decode_batch(model, b.wavs, b.wav_lens, DecodeConfig(), tok)
    assert hyps[1][0].text == "" and len(hyps) == 2
    hyps = decode_batch(model, b.wavs[1:, :12], b.wav_lens[1:], DecodeConfig(), tok)  # alone too
    assert hyps[0][0].text == ""


def _backward(model, step):
    model.train()
    model.set_training_step(step)
    model.zero_grad(set_to_none=True)
    from earshot.config import LossConfig

    model(batch(), LossConfig()).loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_frozen_parts_get_no_gradient_until_the_unfreeze_step_and_layer_weights_train(tmp_path):
    torch.manual_seed(0)
    model = ssl_model(tiny_checkpoint(tmp_path / "ckpt"), freeze="all", unfreeze_after=2,
                      weighted_layers=True, mask_prob=0.2, mask_length=4)
    assert model.may_leave_parameters_unused
    backbone = [n for n, _ in model.named_parameters() if n.startswith("encoder.model.")]
    for step in (0, 1):
        grads = _backward(model, step)
        assert all(grads[n] is None for n in backbone), step
        assert grads["encoder.layer_weights"] is not None and grads["encoder.layer_weights"].abs().sum() > 0
        assert grads["encoder.projection.net.weight"] is not None
    grads = _backward(model, 2)  # unfrozen: the whole encoder trains, the feature encoder too
    assert all(grads[n] is not None for n in backbone if "masked_spec_embed" not in n)
    assert grads["encoder.model.masked_spec_embed"] is not None  # masking ran in training
    before = model.encoder.layer_weights.detach().clone()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert not torch.equal(before, model.encoder.layer_weights)

    model = ssl_model(tmp_path / "ckpt", freeze="feature_encoder")
    grads = _backward(model, 10_000)  # unfreeze_after 0: frozen for good
    feature = [n for n in backbone if n.startswith("encoder.model.feature_extractor.")]
    assert feature and all(grads[n] is None for n in feature)
    assert all(grads[n] is not None for n in backbone if n.startswith("encoder.model.encoder.layers."))


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = ssl_model(ckpt, freeze="none", gradient_checkpointing=checkpointing, mask_prob=0.2,
                          mask_length=4)
        torch.manual_seed(1)
        grads.append(_backward(model, 0))
    assert model.encoder.model.is_gradient_checkpointing
    for name, grad in grads[0].items():
        if grad is not None:
            torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_a_frozen_encoder_tells_data_parallel_training_to_expect_unused_parameters(tmp_path):
    from earshot.config import ExperimentConfig, LossConfig
    from earshot.train.tasks.asr import ASRTask

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    loss = LossConfig(ctc_weight=0.3)
    assert ASRTask(ExperimentConfig(loss=loss), ssl_model(ckpt)).find_unused_parameters
    assert not ASRTask(ExperimentConfig(loss=loss), ssl_model(ckpt, freeze="none")).find_unused_parameters


def test_training_masks_are_drawn_from_torch_so_a_reseeded_step_repeats(tmp_path):
    model = ssl_model(tiny_checkpoint(tmp_path / "ckpt"), freeze="none", mask_prob=0.5, mask_length=4)
    model.train()
    b = batch()
    out = []
    for _ in range(2):
        torch.manual_seed(7)
        out.append(model.encode(b.wavs, b.wav_lens).memory.enc.detach())
    assert torch.equal(out[0], out[1])
    torch.manual_seed(8)
    assert not torch.equal(out[0], model.encode(b.wavs, b.wav_lens).memory.enc.detach())


def test_model_directory_stands_alone_after_the_checkpoint_is_deleted(tmp_path):
    from earshot.config import ExperimentConfig
    from earshot.inference import Transcriber
    from earshot.models.artifacts import load_model_dir, save_model_dir
    from earshot.tokenizer import train_tokenizer

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    tok = train_tokenizer(["ab ba", "abba"], TokenizerConfig())
    base = ssl_model(ckpt, weighted_layers=True)
    model = EncoderDecoderASR(base.cfg, tok.vocab_size, dict(tok.special_ids)).eval()
    cfg = ExperimentConfig(model=model.cfg)
    save_model_dir(tmp_path / "model", cfg, tok, model)
    shutil.rmtree(ckpt)
    description, _, again = load_model_dir(tmp_path / "model")
    assert description.model.encoder.path == ""
    assert description.model.encoder.architecture["hidden_size"] == 32
    b = batch()
    with torch.no_grad():
        x, y = model.encode(b.wavs, b.wav_lens), again.encode(b.wavs, b.wav_lens)
    assert torch.equal(x.memory.enc, y.memory.enc) and torch.equal(x.ctc_log_probs, y.ctc_log_probs)
    # and through files, 8 kHz audio resampled to the encoder's 16 kHz
    wav = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    sf.write(tmp_path / "a8k.wav", wav, 8000)
    transcriber = Transcriber.load(tmp_path / "model")
    first = transcriber.transcribe(tmp_path / "a8k.wav").text
    assert first == Transcriber.load(tmp_path / "model").transcribe(tmp_path / "a8k.wav").text
    from earshot.audio import load_audio

    assert load_audio(tmp_path / "a8k.wav", transcriber.sample_rate).numel() == 16000
    assert transcriber.model.encoded_lengths(torch.tensor([16000])).item() == 1599


def test_checkpoint_problems_say_what_was_expected(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="is not a directory; expected a local transformers"):
        ssl_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json; expected"):
        ssl_model(tmp_path / "empty")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ConfigError, match="describes a 'bert' model; expected one of .*wav2vec2"):
        ssl_model(other)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(ConfigError, match="but no weights"):
        ssl_model(bare)
    (bare / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ssl_model(bare)
    ckpt = tiny_checkpoint(tmp_path / "ckpt", rate=8000)
    with pytest.raises(ConfigError, match="model.features.sample_rate.*8000 Hz audio"):
        ssl_model(ckpt)
    tiny_checkpoint(ckpt)
    with pytest.raises(ConfigError, match="model.encoder.layer.*hidden states 0..2"):
        ssl_model(ckpt, layer=3)
    monkeypatch.setitem(sys.modules, "transformers", None)  # the extra not installed
    with pytest.raises(ConfigError, match=r"pip install 'earshot\[ssl\]'"):
        ssl_model(ckpt)


@pytest.mark.parametrize("overrides, key", [
    (["model.encoder.type=ssl", "model.encoder.path=x"], "model.features.kind"),
    (["model.encoder.type=ssl", "model.features.kind=waveform"], "model.encoder.path"),
    (["model.encoder.type=ssl", "model.features.kind=waveform", "model.encoder.path=x",
      "model.encoder.architecture.model_type=wav2vec2"], "model.encoder.path"),
    (["model.encoder.type=ssl", "model.features.kind=waveform", "model.encoder.path=x",
      "model.encoder.unfreeze_after=5", "model.encoder.freeze=none"], "model.encoder.unfreeze_after"),
    (["model.encoder.type=ssl", "model.encoder.rnn_units=4"], "model.encoder.rnn_units"),
])
def test_ssl_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)


def test_span_masks_stay_inside_each_row_and_cover_about_the_asked_share():
    torch.manual_seed(0)
    lens = torch.tensor([1000, 300, 10, 3, 0])
    mask = span_mask(lens, 1000, 0.5, 10)
    for row, n in enumerate(lens.tolist()):
        assert not mask[row, n:].any()
        assert mask[row, :n].any() == (n > 0)
    share = mask[0].float().mean().item()
    assert 0.3 < share < 0.5  # 50 spans of 10 over 1000 frames, overlapping: 1 - e^-0.5 ~ 0.39
    assert mask[3, :3].all()  # a row shorter than a span is masked whole
    assert not span_mask(lens, 1000, 0.0, 10).any()


def test_negatives_are_other_masked_frames_of_the_same_utterance():
    torch.manual_seed(0)
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[0, 2:9] = True
    mask[1, 10:12] = True
    mask[2, [0, 5, 19]] = True
    neg = sample_negatives(mask, 16)
    for row in range(3):
        for t in mask[row].nonzero().flatten().tolist():
            picked = neg[row, t]
            assert ((picked // 20) == row).all()
            frames = picked % 20
            assert mask[row, frames].all() and not (frames == t).any()


# ---------------------------------------------------------------------------
# pretraining


def _audio_folder(root, n=12, seed=0):
    """Tones rising and falling in pitch: something to predict from context."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    for i in range(n):
        t = np.arange(int(RATE * rng.uniform(0.4, 0.7))) / RATE
        f = rng.uniform(200, 800) * (1 + 2 * t)
        wav = 0.3 * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(root / f"u{i}.wav", wav.astype(np.float32), RATE)
    (root / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")  # left out, named in a warning
    return root


def _pretrain_args(folder, exp_dir, *extra):
    return ["pretrain", str(folder / "missing-ok.yaml"), f"data.train=[{folder}]",
            "data.dev_fraction=0.25", "data.max_duration=2.0", f"train.exp_dir={exp_dir}",
            "train.epochs=10", "optim.lr=0.003", "optim.scheduler.type=none", "train.log_every=1",
            *TINY_PRETRAIN, *extra]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    folder = _audio_folder(root / "wavs")
    (folder / "missing-ok.yaml").write_text("{}\n")
    exp = root / "straight"
    assert main(_pretrain_args(folder, exp)) == 0
    return folder, exp


def _epochs(exp_dir):
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "epoch"]


def test_pretraining_loss_falls_and_the_checkpoint_feeds_an_ssl_encoder(pretrained, tmp_path, caplog):
    folder, exp = pretrained
    rows = _epochs(exp)
    assert len(rows) == 10  # (chance is ln 9 = 2.2 with 8 negatives)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2
    assert rows[-1]["dev_loss"] < rows[0]["dev_loss"] - 0.2
    assert {"dev_contrastive", "dev_diversity", "dev_perplexity"} <= set(rows[0])
    out = exp / "model"
    assert {"config.json", "model.safetensors", "preprocessor_config.json",
            "earshot_pretraining.json"} <= {p.name for p in out.iterdir()}
    card = json.loads((out / "earshot_pretraining.json").read_text())
    assert card["epochs"] == 10 and card["corpus"] == "wavs"
    model = ssl_model(out, freeze="none")  # the exported directory is a model.encoder.path
    net = transformers.Wav2Vec2ForPreTraining.from_pretrained(out)
    for name, value in net.wav2vec2.state_dict().items():
        assert torch.equal(model.encoder.model.state_dict()[name], value), name


def test_resumed_pretraining_ends_with_the_same_parameters(pretrained, tmp_path):
    from earshot.train import checkpoint as ckpt

    folder, exp = pretrained
    assert main(_pretrain_args(folder, tmp_path, "train.epochs=4")) == 0
    assert main(_pretrain_args(folder, tmp_path) + ["--resume"]) == 0
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(exp / "checkpoints"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "checkpoints"))
    for name in a.model:
        assert torch.equal(a.model[name], b.model[name]), name
    assert [r["train_loss"] for r in _epochs(tmp_path)] == [r["train_loss"] for r in _epochs(exp)]
    assert _epochs(tmp_path)[-1]["dev_loss"] == _epochs(exp)[-1]["dev_loss"]


def test_fine_tuning_on_a_pretrained_checkpoint_trains_and_resumes_exactly(pretrained, tmp_path):
    from earshot.inference import Transcriber
    from earshot.train import checkpoint as ckpt
    from earshot.train.tasks.asr import train

    folder, exp = pretrained
    lines = ["id,path,text"] + [f"u{i},{folder / f'u{i}.wav'},{'ab'[i % 2] * (1 + i % 3)}" for i in range(8)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "dev.csv").write_text("\n".join(lines[:1] + lines[-2:]) + "\n")

    def cfg(exp_dir, *extra):
        return load_config(None, [
            "model.features.kind=waveform", "model.encoder.type=ssl", f"model.encoder.path={exp / 'model'}",
            "model.encoder.projection_dim=16", "model.encoder.mask_prob=0.2", "model.encoder.mask_length=3",
            "model.encoder.freeze=all", "model.encoder.unfreeze_after=3", "model.decoder.units=16",
            "model.decoder.attention.dim=16", f"data.train={tmp_path / 'train.csv'}",
            f"data.dev={tmp_path / 'dev.csv'}", "data.max_duration=1.5", f"train.exp_dir={exp_dir}",
            "train.epochs=2", "train.device=cpu", "optim.param_groups=[{prefix: encoder.model., lr: 0.0005}]",
            *extra])

    model_dir = train(cfg(tmp_path / "straight"))
    train(cfg(tmp_path / "resumed", "train.epochs=1"))
    train(cfg(tmp_path / "resumed"), resume=True)
    a = ckpt.load_checkpoint(tmp_path / "straight" / "checkpoints" / "epoch-0002.pt")
    b = ckpt.load_checkpoint(tmp_path / "resumed" / "checkpoints" / "epoch-0002.pt")
    for name in a.model:
        assert torch.equal(a.model[name], b.model[name]), name
    result = Transcriber.load(model_dir).transcribe(folder / "u0.wav")
    assert isinstance(result.text, str) and result.error is None


def test_an_utterance_over_the_batch_budget_is_left_out_with_its_name(pretrained, tmp_path, caplog):
    folder, _ = pretrained
    long_dir = tmp_path / "wavs"
    shutil.copytree(folder, long_dir)
    sf.write(long_dir / "long.wav", np.zeros(3 * RATE, dtype=np.float32) + 0.01, RATE)
    with caplog.at_level("WARNING"):
        assert main(_pretrain_args(long_dir, tmp_path / "exp", "train.epochs=1")) == 0
    text = caplog.text
    assert "left out 1 cuts longer than data.max_duration=2s: 'long' (3.0s)" in text
    assert "broken.wav: left out" in text


def test_pretraining_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.architecture.hiden_size' is not a Wav2Vec2Config key"):
        from earshot.train.tasks.pretrain import pretrain

        pretrain(load_config(None, ["data.train=[x]", "model.architecture.hiden_size=3",
                                    f"train.exp_dir={tmp_path}"], cls=PretrainExperimentConfig))
    with pytest.raises(ConfigError, match="data.train"):
        load_config(None, [], cls=PretrainExperimentConfig)
    with pytest.raises(ConfigError, match="'nowhere' is neither a manifest nor a folder"):
        from earshot.train.tasks.pretrain import pretrain

        pretrain(load_config(None, ["data.train=[nowhere]", f"train.exp_dir={tmp_path / 'e'}"],
                             cls=PretrainExperimentConfig))

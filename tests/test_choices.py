"""Every entry of every table in earshot.choices builds (or runs) on a tiny input.

A table is the one place a name is declared; this test reads each table and makes sure
each of its names reaches working code, so an entry can neither dangle nor be missed.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from earshot import choices
from earshot.choices import (ATTENTIONS, DECODE_MODES, ENCODERS, FRONTENDS, OPTIMIZERS, PREPARERS,
                             SCHEDULERS)
from earshot.config import (AttentionConfig, DecodeConfig, DecoderConfig, EncoderConfig,
                            FeatureConfig, LossConfig, ModelConfig, OptimConfig, SchedulerConfig,
                            load_config)
from earshot.models.asr import EncoderDecoderASR

SPECIALS = dict(blank=0, pad=1, bos=2, eos=3)
RATE = 8000
TINY_ENCODERS = {
    "crdnn": dict(cnn_channels=[2], time_pool=[2], rnn_layers=1, rnn_units=8, dnn_units=8),
    "conformer": dict(dim=8, heads=2, layers=2, ffn_dim=16, subsampling_channels=4, conv_kernel=3),
    "ssl": dict(architecture=dict(model_type="wav2vec2", hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=16, conv_dim=[8, 8],
                                  conv_kernel=[10, 3], conv_stride=[5, 2], num_conv_pos_embeddings=4,
                                  num_conv_pos_embedding_groups=2), projection_dim=8),
}


def test_every_table_is_listed_and_every_entry_has_help():
    tables = [v for v in vars(choices).values() if isinstance(v, choices.Table)]
    assert len(tables) == len(choices.TABLES) and all(t in choices.TABLES for t in tables)
    for table in choices.TABLES:
        assert len(table) >= 2 and all(table.entry(name).help for name in table), table.what


def test_an_unknown_name_is_an_error_naming_the_key_and_the_choices():
    with pytest.raises(Exception, match=r"optim\.name.*'sgdx'.*adam"):
        load_config(None, ["optim.name=sgdx"])
    with pytest.raises(Exception, match=r"option --mode: unknown decoding mode 'fast'"):
        DECODE_MODES.load("fast", "option --mode")


def _batch(lens=(2400, 1600)):
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor(lens)
    wavs = 0.1 * torch.randn(len(lens), int(lens.max()), generator=g)
    tokens = torch.tensor([[4, 5, 6], [5, 4, 1]])
    return type("Batch", (), dict(wavs=wavs, wav_lens=lens, tokens=tokens,
                                  token_lens=torch.tensor([3, 2])))()


def _model(encoder: str, attention: str = "location", frontend: str | None = None) -> EncoderDecoderASR:
    kind = frontend or ("waveform" if encoder == "ssl" else "fbank")
    enc_cfg = EncoderConfig.member(encoder)(**{k: tuple(v) if isinstance(v, list) else v
                                               for k, v in TINY_ENCODERS[encoder].items()})
    cfg = ModelConfig(features=FeatureConfig(kind=kind, sample_rate=RATE, num_mel_bins=10, num_ceps=6),
                      encoder=enc_cfg,
                      decoder=DecoderConfig(units=8, embedding_dim=4, dropout=0.0,
                                            attention=AttentionConfig(type=attention, dim=8, heads=2,
                                                                      location_channels=2,
                                                                      location_kernel=3)))
    return EncoderDecoderASR(cfg, vocab_size=9, specials=SPECIALS)


@pytest.mark.parametrize("name", ENCODERS.names)
def test_each_encoder_builds_and_trains_a_step(name):
    model = _model(name)
    assert isinstance(model.encoder, ENCODERS.load(name))
    out = model(_batch(), LossConfig())
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and model.encoder.output_dim > 0
    names = [n for n, _ in model.encoder.named_parameters()]
    for group, prefix in model.encoder.parameter_groups().items():  # declared groups exist
        assert any(n.startswith(prefix) for n in names), (name, group, prefix)
    unused = model.encoder.may_leave_parameters_unused
    assert isinstance(unused, bool) and (unused or all(p.grad is not None for p in model.encoder.parameters()))


@pytest.mark.parametrize("name", ATTENTIONS.names)
def test_each_attention_type_builds_and_trains_a_step(name):
    model = _model("crdnn", attention=name)
    assert isinstance(model.decoder.attention, ATTENTIONS.load(name))
    assert math.isfinite(model(_batch(), LossConfig()).loss.item())


@pytest.mark.parametrize("name", FRONTENDS.names)
def test_each_front_end_builds_and_runs(name):
    frontend = FRONTENDS.load(name)(FeatureConfig(kind=name, sample_rate=RATE, num_mel_bins=10,
                                                  num_ceps=6))
    feats, lens = frontend(torch.zeros(2, 1600), torch.tensor([1600, 800]))
    assert feats.shape[-1] == frontend.out_dim and lens.tolist()[0] >= lens.tolist()[1] > 0


@pytest.mark.parametrize("name", DECODE_MODES.names)
def test_each_decoding_mode_decodes(name):
    from earshot.decoding.api import decode_batch
    from earshot.tokenizer import train_tokenizer
    from earshot.config import TokenizerConfig

    tokenizer = train_tokenizer(["abc", "cab"], TokenizerConfig())
    model = EncoderDecoderASR(_model("crdnn").cfg, tokenizer.vocab_size, dict(tokenizer.special_ids)).eval()
    batch = _batch()
    hyps = decode_batch(model, batch.wavs, batch.wav_lens, DecodeConfig(beam_size=2, nbest=2,
                                                                        max_len_ratio=0.5),
                        tokenizer, mode=name)
    assert len(hyps) == 2 and all(1 <= len(nbest) <= 2 for nbest in hyps)


@pytest.mark.parametrize("name", OPTIMIZERS.names)
def test_each_optimizer_steps(name):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = OPTIMIZERS.load(name)([{"params": [param]}], OptimConfig(name=name, lr=0.1))
    (param ** 2).sum().backward()
    optimizer.step()
    assert not torch.equal(param.detach(), torch.ones(3))


@pytest.mark.parametrize("name", SCHEDULERS.names)
def test_each_scheduler_sets_a_positive_rate(name):
    from earshot.train.schedulers import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    scheduler = build_scheduler(SchedulerConfig(type=name, warmup_steps=2), optimizer, 0.1,
                                total_steps=10)
    rates = [scheduler.step_batch() for _ in range(4)] + [scheduler.step_epoch({"loss": 1.0})]
    assert all(r > 0 for r in rates) and optimizer.param_groups[0]["lr"] > 0


def _tone(path: Path, seconds: float = 0.1) -> None:
    import soundfile as sf

    t = torch.arange(int(RATE * seconds)) / RATE
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * torch.sin(2 * math.pi * 440 * t)).numpy(), RATE)


def _corpus_source(name: str, root: Path) -> Path | None:
    """A miniature ``name`` corpus in its real layout."""
    import corpus_layouts

    if name == "synthetic":
        return None
    if hasattr(corpus_layouts, name):
        return getattr(corpus_layouts, name)(root)
    if name == "mini_librispeech":
        return corpus_layouts.librispeech(root, parts=("train-clean-5", "dev-clean-2"))
    rows = []
    speakers = ("theo", "george", "jackson", "nicolas")
    for s, speaker in enumerate(speakers):
        for digit, word in ((0, "zero"), (1, "one")):
            for index in (3, 46):
                uid = f"{digit}_{speaker}_{index}"
                _tone(root / "recordings" / f"{uid}.wav")
                rows.append((uid, f"recordings/{uid}.wav", word, speaker))
    if name == "jsonl":
        import json

        path = root / "all.jsonl"
        path.write_text("".join(json.dumps(dict(id=i, path=p, text=t, speaker=s)) + "\n"
                                for i, p, t, s in rows))
        return path
    header, fname = {"csv": ("id,path,text,speaker", "all.csv"),
                     "fsdd": ("id,path,text,speaker", "manifest.csv"),
                     "an4": ("id,path,text,speaker", "manifest_train.csv")}[name]
    (root / fname).write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return root / fname if name == "csv" else root


@pytest.mark.parametrize("name", PREPARERS.names)
def test_each_corpus_preparer_writes_its_splits(name, tmp_path):
    from earshot.data.manifests import load_cuts

    options = {"an4": dict(dev_speakers=1), "synthetic": dict(utterances=3),
               "csv": dict(dev_fraction=0.25), "jsonl": dict(dev_fraction=0.25)}.get(name, {})
    splits = PREPARERS.load(name)(_corpus_source(name, tmp_path / "src"), tmp_path / "out", **options)
    expected = {"musan": {"noise", "music", "speech"},
                "librispeech": {"train", "dev-clean"}}.get(name, {"train", "dev"})
    assert expected <= set(splits) and all(len(splits[s]) > 0 for s in expected)
    for split, cuts in splits.items():
        written = load_cuts(tmp_path / "out" / f"{split}.jsonl.gz", need_text=name != "musan")
        assert sorted(written.ids) == sorted(cuts.ids)
    assert set(json.loads((tmp_path / "out" / "summary.json").read_text())["splits"]) == set(splits)

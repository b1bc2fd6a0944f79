"""ONNX export: graphs that match torch within 1e-4 (every encoder and attention type that
exports), transcripts and n-best lists that match the torch path, and clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'earshot[onnx]'")
pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'earshot[onnx]'")

from earshot.cli import main  # noqa: E402
from earshot.config import load_config  # noqa: E402
from earshot.errors import ConfigError, EarshotError  # noqa: E402
from earshot.export.onnx import export_model  # noqa: E402
from earshot.export.runtime import OnnxASR, check_parity  # noqa: E402
from earshot.models.artifacts import load_model_dir, save_model_dir  # noqa: E402
from earshot.models.factory import build_model  # noqa: E402
from earshot.tokenizer import train_tokenizer  # noqa: E402

from conftest import TEXTS  # noqa: E402

SMALL = ["model.features.sample_rate=8000", "model.features.num_mel_bins=12",
         "model.decoder.units=16", "model.decoder.embedding_dim=8", "model.decoder.attention.dim=16",
         "model.decoder.attention.heads=2", "model.decoder.attention.location_kernel=31"]
VARIANTS = {
    "crdnn-location-gru": ["model.encoder.cnn_channels=[4]", "model.encoder.time_pool=[2]",
                           "model.encoder.rnn_units=16", "model.encoder.dnn_units=16",
                           "model.encoder.rnn_type=gru", "model.encoder.rnn_layers=2",
                           "model.decoder.rnn_type=gru"],
    "crdnn-content-lstm-mfcc": ["model.encoder.cnn_channels=[4]", "model.encoder.time_pool=[1]", "model.encoder.rnn_units=16",
                                "model.encoder.dnn_units=16", "model.decoder.attention.type=content",
                                "model.decoder.rnn_type=lstm", "model.features.kind=mfcc",
                                "model.features.num_ceps=8", "model.decoder.layers=2"],
    "conformer-multihead": ["model.encoder.type=conformer", "model.encoder.dim=16",
                            "model.encoder.layers=2", "model.encoder.heads=2",
                            "model.encoder.ffn_dim=32", "model.encoder.subsampling_channels=4",
                            "model.decoder.attention.type=multihead_location"],
}


def _random_model_dir(tmp_path, overrides):
    cfg = load_config(None, SMALL + overrides)
    tokenizer = train_tokenizer(["yes no", "go stop"], cfg.tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer).eval()
    return save_model_dir(tmp_path / "model", cfg, tokenizer, model)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_encoder_and_attention_type_exports_within_tolerance(tmp_path, variant):
    model_dir = _random_model_dir(tmp_path, VARIANTS[variant])
    out = export_model(model_dir, tmp_path / "model.onnx")  # checks parity before it writes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"]["encoder.onnx"]["inputs"] == ["wavs", "wav_lens"]
    description, tokenizer, model = load_model_dir(model_dir)
    _, _, onnx_model = OnnxASR.load(out)
    assert check_parity(model, onnx_model) < 1e-4
    # a row too short for one frame beside a long one: zero frames, the other row unchanged
    wavs = torch.randn(2, 8000) * 0.1
    lens = torch.tensor([8000, 40])
    ref, got = model.encode(wavs, lens), onnx_model.encode(wavs, lens)
    assert got.lens.tolist() == ref.lens.tolist() and got.lens[1] == 0
    n = int(ref.lens[0])
    assert torch.allclose(ref.ctc_log_probs[0, :n], got.ctc_log_probs[0, :n], atol=1e-4)


@pytest.fixture(scope="module")
def exported(overfit_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", "--model", str(overfit_model / "exp" / "model"), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("options", [{}, {"beam_size": 10, "ctc_weight": 0.4, "nbest": 5}],
                         ids=["greedy", "beam10-ctc"])
def test_transcripts_and_nbest_order_match_torch(overfit_model, corpus, exported, options):
    import earshot

    files = [str(corpus / f"u{i}.wav") for i in range(len(TEXTS))]
    torch_model = earshot.load_model(overfit_model / "exp" / "model", device="cpu")
    onnx_model = earshot.load_model(exported)
    assert "onnx" in repr(onnx_model)
    ref = torch_model.transcribe(files, word_timestamps=True, **options)
    got = onnx_model.transcribe(files, word_timestamps=True, **options)
    assert [r.text for r in got] == [r.text for r in ref] and all(r.text for r in ref)
    for a, b in zip(ref, got):
        assert [h.text for h in b.nbest] == [h.text for h in a.nbest]
        assert [h.score for h in b.nbest] == pytest.approx([h.score for h in a.nbest], abs=1e-3)
        assert [(w.text, w.start, w.end) for w in b.words] == [(w.text, w.start, w.end) for w in a.words]


def test_cli_transcribe_onnx_prints_what_the_model_prints(overfit_model, corpus, exported, capsys):
    wav = str(corpus / "u0.wav")
    assert main(["transcribe", "--model", str(overfit_model / "exp" / "model"), wav]) == 0
    torch_line = capsys.readouterr().out
    assert main(["transcribe", "--onnx", str(exported), wav, "--beam-size", "1"]) == 0
    assert capsys.readouterr().out == torch_line


def test_int8_export_decodes(overfit_model, corpus, tmp_path):
    import earshot

    out = tmp_path / "int8.onnx"
    export_model(overfit_model / "exp" / "model", out, quantize="int8")
    assert json.loads((out / "manifest.json").read_text())["quantize"] == "int8"
    assert (out / "decoder_step.onnx").stat().st_size > 0
    result = earshot.load_model(out).transcribe(str(corpus / "u0.wav"))
    assert isinstance(result.text, str)


def test_onnx_on_a_directory_that_is_not_an_export_names_what_is_missing(overfit_model, capsys):
    assert main(["transcribe", "--onnx", str(overfit_model / "exp" / "model"), "x.wav"]) == 2
    err = capsys.readouterr().err
    assert "not an earshot ONNX export" in err and "encoder.onnx" in err and "earshot export" in err


def test_export_refuses_damaged_or_non_finite_models_naming_the_file(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model_dir = _random_model_dir(tmp_path, VARIANTS["crdnn-location-gru"])
    (model_dir / "tokenizer" / "extra").write_text("")  # unlisted files are ignored
    weights = load_file(str(model_dir / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name].clone().fill_(float("nan"))
    save_file(weights, str(model_dir / "model.safetensors"))
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err  # its checksum no longer matches
    (model_dir / "checksums.sha256").unlink()
    with pytest.raises(ConfigError, match="model.safetensors"):  # and it holds a NaN
        export_model(model_dir, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_a_changed_export_is_refused_on_load(tmp_path):
    model_dir = _random_model_dir(tmp_path, VARIANTS["crdnn-location-gru"])
    out = export_model(model_dir, tmp_path / "m.onnx")
    with open(out / "decoder_step.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(EarshotError, match="decoder_step.onnx"):
        OnnxASR.load(out)


def test_language_model_export_gives_the_same_fused_search(overfit_model, corpus, tmp_path, capsys):
    import earshot
    from earshot.config import LMConfig, LMExperimentConfig
    from earshot.models.artifacts import save_lm_dir
    from earshot.models.lm import RNNLM
    from earshot.tokenizer import load_tokenizer

    model_dir = overfit_model / "exp" / "model"
    tokenizer = load_tokenizer(model_dir / "tokenizer")
    torch.manual_seed(3)
    lm = RNNLM(LMConfig(embedding_dim=8, units=16, layers=2), tokenizer.vocab_size).eval()
    save_lm_dir(tmp_path / "lm", lm, LMExperimentConfig(model=lm.cfg), tokenizer)
    assert main(["export", "--lm", str(tmp_path / "lm"), "--out", str(tmp_path / "lm.onnx")]) == 0
    assert "lm_step.onnx" in capsys.readouterr().out
    files = [str(corpus / f"u{i}.wav") for i in range(len(TEXTS))]
    options = dict(beam_size=10, ctc_weight=0.4, lm_weight=0.5, nbest=4)
    ref = earshot.load_model(model_dir, device="cpu").transcribe(files, lm=tmp_path / "lm", **options)
    out = export_model(model_dir, tmp_path / "model.onnx")
    got = earshot.load_model(out).transcribe(files, lm=tmp_path / "lm.onnx", **options)
    for a, b in zip(ref, got):
        assert [h.text for h in b.nbest] == [h.text for h in a.nbest]
        assert [h.scores["lm"] for h in b.nbest] == pytest.approx([h.scores["lm"] for h in a.nbest],
                                                                  abs=1e-3)
    with pytest.raises(ConfigError, match="lm_step.onnx"):
        (tmp_path / "lm.onnx" / "lm_step.onnx").unlink()
        earshot.load_model(out).transcribe(files[0], lm=tmp_path / "lm.onnx", **options)


# -- beam search as one graph ------------------------------------------------------------

def _searches(onnx_model, wavs, lens, cfg, tokenizer, graphs):
    """n-best lists of one batch, the search run as one graph (``graphs``) or eagerly."""
    from earshot.decoding import api
    from earshot.decoding.beam_search import beam_search, length_limits

    enc = onnx_model.encode(wavs, lens)
    search = api.Search(onnx_model, enc, tokenizer.blank_id, tokenizer.bos_id, tokenizer.eos_id,
                        tokenizer.pad_id)
    min_lens, max_lens = length_limits(enc.lens, cfg)
    return beam_search(api.joint_scorers(search, cfg), onnx_model.vocab_size, min_lens, max_lens,
                       search.bos, search.eos, cfg, graphs=graphs)


def _assert_same(ref, got):
    for a, b in zip(ref, got, strict=True):
        if a[0].score == float("-inf"):  # every path pruned: which one is returned is arbitrary
            assert [(len(h.tokens), h.score) for h in b] == [(len(h.tokens), h.score) for h in a]
            continue
        assert [h.tokens for h in b] == [h.tokens for h in a]
        assert [h.score for h in b] == pytest.approx([h.score for h in a], abs=1e-4)
        for ha, hb in zip(a, b):
            assert hb.scores.keys() == ha.scores.keys()
            assert list(hb.scores.values()) == pytest.approx(list(ha.scores.values()), abs=1e-4)


GRAPH_OPTIONS = {
    "ctc-normalized": dict(beam_size=4, ctc_weight=0.4, length_normalize=True, nbest=3),
    "ctc-early-stop": dict(beam_size=3, ctc_weight=0.3, nbest=2, eos_threshold=0.0),
    "pre-beam-bonus": dict(beam_size=5, ctc_weight=0.5, pre_beam=3, length_bonus=0.5, nbest=5),
    "attention-only": dict(beam_size=4, nbest=4, temperature=1.5, min_len_ratio=0.2),
    "pruned-to-nothing": dict(beam_size=2, ctc_weight=0.9, max_len_ratio=3.0, min_len_ratio=2.5),
}


@pytest.mark.parametrize("variant", ["crdnn-location-gru", "crdnn-content-lstm-mfcc",
                                     "conformer-multihead"])
def test_search_graph_decides_as_the_eager_search_does(tmp_path, variant):
    """Every supported option, and batches whose utterances end at different steps (done
    ones are dropped by the eager loop, masked in the graph)."""
    from dataclasses import replace

    from earshot.config import DecodeConfig
    from earshot.export.search_graph import SearchGraphs

    out = export_model(_random_model_dir(tmp_path, VARIANTS[variant]), tmp_path / "m.onnx")
    _, tokenizer, onnx_model = OnnxASR.load(out)
    g = torch.Generator().manual_seed(4)
    lens = torch.tensor([8000, 2900, 5100, 1300])
    wavs = torch.randn(4, 8000, generator=g) * 0.1 * (torch.arange(8000) < lens[:, None])
    for name, options in GRAPH_OPTIONS.items():
        cfg = replace(DecodeConfig(), **options)
        graphs = SearchGraphs(onnx_model)
        for rows in (slice(0, 4), slice(1, 2)):
            ref = _searches(onnx_model, wavs[rows], lens[rows], cfg, tokenizer, None)
            got = _searches(onnx_model, wavs[rows], lens[rows], cfg, tokenizer, graphs)
            assert len(graphs.searches) == 1, name  # one graph per configuration
            _assert_same(ref, got)


def test_searches_a_graph_cannot_run_stay_eager(overfit_model, exported):
    """A language model, a CTC window, coverage: the step-by-step search, same results."""
    from earshot.config import DecodeConfig
    from earshot.export.search_graph import SearchGraphs
    from earshot.models.lm import RNNLM
    from earshot.config import LMConfig

    _, tokenizer, onnx_model = OnnxASR.load(exported)
    torch.manual_seed(3)
    lm = RNNLM(LMConfig(embedding_dim=8, units=16, layers=1), tokenizer.vocab_size).eval()
    wavs, lens = torch.randn(2, 9000) * 0.1, torch.tensor([9000, 7000])
    from earshot.decoding.api import decode_batch

    for cfg, with_lm in ((DecodeConfig(beam_size=3, ctc_weight=0.3, lm_weight=0.4), True),
                         (DecodeConfig(beam_size=3, ctc_weight=0.3, ctc_window=5), False),
                         (DecodeConfig(beam_size=3, coverage_weight=0.2), False)):
        onnx_model.search_graphs = SearchGraphs(onnx_model)
        got = decode_batch(onnx_model, wavs, lens, cfg, tokenizer, lm=lm if with_lm else None)
        assert onnx_model.search_graphs.searches == {}
        onnx_model.search_graphs = None
        ref = decode_batch(onnx_model, wavs, lens, cfg, tokenizer, lm=lm if with_lm else None)
        _assert_same(ref, got)


@pytest.mark.parametrize("frames", [1, 7, 33, 64, 65, 100])
def test_the_graphs_logcumsumexp_matches_torch_and_falls_back_to_the_exact_scan(frames):
    """The blocked scan's result, and its exact fallback where a block's shift would lose
    digits (a value far above the frames before it in its block)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from earshot.export.graph_join import _blocked_scan

    nodes = _blocked_scan("x", "y", "scan/")
    double = TensorProto.DOUBLE
    graph = helper.make_graph(
        nodes, "scan", [helper.make_tensor_value_info("x", double, [None, None])],
        [helper.make_tensor_value_info("y", double, [None, None]),
         helper.make_tensor_value_info("scan/any_lost", TensorProto.BOOL, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(5, frames, generator=g, dtype=torch.float64) * 40
    x[0] = float("-inf")  # no mass at all
    x[1, : frames // 2] = float("-inf")  # mass from the middle on
    cases = {"fast": (x, False)}
    if frames > 1:
        steep = x.clone()
        steep[2, 1] = steep[2, 0] + 2000.0  # frame 0 of its block vanishes under the shift
        cases["exact"] = (steep, True)
    for name, (inp, lost) in cases.items():
        y, any_lost = session.run(None, {"x": inp.numpy()})
        ref = torch.logcumsumexp(inp, dim=1).numpy()
        assert bool(any_lost) is lost, name
        assert np.array_equal(np.isneginf(y), np.isneginf(ref)), name
        finite = np.isfinite(ref)
        np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-12, atol=1e-12, err_msg=name)

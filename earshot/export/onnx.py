"""``earshot export``: a model directory -> ONNX graphs that onnxruntime runs.

An export directory holds what the search needs and nothing it does not:

    encoder.onnx        wavs (B, S) float32, wav_lens (B,) int64 -> enc (B, T', H),
                        enc_lens (B,), ctc_log_probs (B, T', V), keys (the attention's
                        precomputed keys): front end, encoder, CTC head in one graph
    decoder_step.onnx   tokens (N,), hidden (L, N, U)[, cell], context (N, H), attn,
                        enc, mask (N, T') bool, keys -> log_probs (N, V) and the new state
    config.yaml, tokenizer/   copied from the model directory

A language model exports on its own (``earshot export --lm LM_DIR``) to ``lm_step.onnx``:
tokens (N,), hidden, cell (L, N, U) -> log_probs (N, V), new_hidden, new_cell.
    manifest.json       earshot version, opset, every graph's input and output names
    checksums.sha256    checked on load, like a model directory's

The beam search itself stays the library's (``earshot.export.runtime.OnnxASR`` has the
model's step interface), so search, segmentation, timestamps and outputs are the same
code on both paths. Batch and time axes are dynamic; the export is checked against the
torch model on inputs of several lengths before it is written.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from earshot.errors import ConfigError, EarshotError

log = logging.getLogger(__name__)

OPSET = 18
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
LM_FILE = "lm_step.onnx"
EXPORT_FORMAT = 1
TOLERANCE = 1e-4


class _EncoderGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        m = self.model
        feats, lens = m.frontend(wavs, wav_lens)
        h, h_lens = m.encoder(feats, lens)
        return h, h_lens, m.ctc(h), m.decoder.attention.precompute(h)


class _DecoderStep(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.lstm = model.decoder.rnn_type == "lstm"

    def forward(self, tokens, hidden, cell, context, attn, enc, mask, keys):
        from earshot.models.decoder import DecoderState, Memory

        memory = Memory(enc, mask.sum(1), mask, keys)
        state = DecoderState(hidden, cell if self.lstm else None, context, attn)
        log_probs, new = self.model.decoder.step(tokens, state, memory)
        return (log_probs, new.hidden, new.cell if self.lstm else new.hidden, new.context,
                new.attn)


class _LMStep(nn.Module):
    def __init__(self, lm) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, tokens, hidden, cell):
        from earshot.models.lm import LMState

        log_probs, state = self.lm.step(tokens, LMState(hidden, cell))
        return log_probs, state.hidden, state.cell


def lm_names() -> tuple[list[str], list[str]]:
    return ["tokens", "hidden", "cell"], ["log_probs", "new_hidden", "new_cell"]


def export_lm(lm_dir: str | Path, out: str | Path) -> Path:
    """Export the language model directory ``lm_dir`` (``earshot train-lm``) to ``out``:
    lm_step.onnx, its config and tokenizer, a manifest; checked against torch first."""
    from earshot import __version__
    from earshot.export.runtime import OnnxLM
    from earshot.models.artifacts import load_lm, staged_directory

    _require_onnx()
    lm = load_lm(lm_dir).eval()
    source = Path(lm_dir)
    if not (source / "model.safetensors").exists():  # the train-lm experiment: its model/
        source = source / "model"
    with staged_directory(out) as staging:
        state = lm.init_state(3, torch.device("cpu"))
        tokens = torch.tensor([1, 2, 3]) % lm.vocab_size
        names_in, names_out = lm_names()
        rows = {1: "rows"}
        with torch.no_grad():
            _export(_LMStep(lm).eval(), (tokens, state.hidden, state.cell), staging / LM_FILE,
                    names_in, names_out, {"tokens": {0: "rows"}, "hidden": rows, "cell": rows,
                                          "log_probs": {0: "rows"}, "new_hidden": rows,
                                          "new_cell": rows})
        shutil.copy2(source / "config.yaml", staging / "config.yaml")
        shutil.copytree(source / "tokenizer", staging / "tokenizer")
        (staging / MANIFEST_FILE).write_text(json.dumps({
            "format": EXPORT_FORMAT, "earshot": __version__, "opset": OPSET, "kind": "lm",
            "torch": torch.__version__, "graphs": {LM_FILE: {"inputs": names_in,
                                                              "outputs": names_out}}},
            indent=2) + "\n")
        OnnxLM.from_files(staging, lm.cfg, lm.tokenizer).check_parity(lm)
    log.info("wrote %s (language model, opset %d)", out, OPSET)
    return Path(out)


def encoder_names() -> tuple[list[str], list[str]]:
    return ["wavs", "wav_lens"], ["enc", "enc_lens", "ctc_log_probs", "keys"]


def decoder_names() -> tuple[list[str], list[str]]:
    return (["tokens", "hidden", "cell", "context", "attn", "enc", "mask", "keys"],
            ["log_probs", "new_hidden", "new_cell", "new_context", "new_attn"])


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)


def _example_wavs(rate: int, seconds=(1.3, 0.7)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([int(s * rate) for s in seconds])
    wavs = torch.randn(len(seconds), int(lens.max()), generator=g) * 0.1
    for i, n in enumerate(lens.tolist()):
        wavs[i, n:] = 0
    return wavs, lens


def export_model(model_dir: str | Path, out: str | Path, quantize: str | None = None) -> Path:
    """Export the model directory ``model_dir`` to the export directory ``out`` (written
    whole or not at all); returns ``out``. Refuses a directory that fails its checksums
    or holds non-finite weights (load_model_dir names the file)."""
    from earshot import __version__
    from earshot.export.runtime import OnnxASR, check_parity
    from earshot.models.artifacts import CONFIG_FILE, TOKENIZER_DIR, load_model_dir, staged_directory

    _require_onnx()
    if quantize not in (None, "int8"):
        raise ConfigError(f"option --quantize: {quantize!r} is not one of: int8")
    model_dir = Path(model_dir)
    description, tokenizer, model = load_model_dir(model_dir)
    kind = description.model.encoder.type
    if kind == "ssl":
        raise ConfigError(f"{model_dir}: encoder type 'ssl' (a transformers wav2vec 2.0 model) "
                          f"does not export yet: its attention masks are built by transformers "
                          f"code the ONNX exporter traces to fixed shapes; export a crdnn or "
                          f"conformer model")
    model.eval()
    rate = model.sample_rate
    wavs, lens = _example_wavs(rate)
    with staged_directory(out) as staging:
        enc_in, enc_out = encoder_names()
        with torch.no_grad():
            _export(_EncoderGraph(model).eval(), (wavs, lens), staging / ENCODER_FILE, enc_in, enc_out,
                    {"wavs": {0: "batch", 1: "samples"}, "wav_lens": {0: "batch"},
                     "enc": {0: "batch", 1: "frames"}, "enc_lens": {0: "batch"},
                     "ctc_log_probs": {0: "batch", 1: "frames"}, "keys": {0: "batch", 1: "frames"}})
            enc = model.encode(wavs, lens)
            state = model.init_state(enc.memory)
            cell = state.cell if state.cell is not None else state.hidden
            tokens = torch.full((len(lens),), model.specials["bos"], dtype=torch.long)
            dec_in, dec_out = decoder_names()
            rows = {0: "rows"}
            _export(_DecoderStep(model).eval(), (tokens, state.hidden, cell, state.context, state.attn,
                                          enc.memory.enc, enc.memory.mask, enc.memory.keys),
                    staging / DECODER_FILE, dec_in, dec_out,
                    {"tokens": rows, "hidden": {1: "rows"}, "cell": {1: "rows"}, "context": rows,
                     "attn": {0: "rows", state.attn.dim() - 1: "frames"},
                     "enc": {0: "rows", 1: "frames"}, "mask": {0: "rows", 1: "frames"},
                     "keys": {0: "rows", 1: "frames"}, "log_probs": rows,
                     "new_hidden": {1: "rows"}, "new_cell": {1: "rows"}, "new_context": rows,
                     "new_attn": {0: "rows", state.attn.dim() - 1: "frames"}})
        _fold_vector_products(staging / DECODER_FILE)
        if quantize == "int8":
            _quantize(staging / DECODER_FILE)
            _quantize(staging / ENCODER_FILE)
        shutil.copy2(model_dir / CONFIG_FILE, staging / CONFIG_FILE)
        shutil.copytree(model_dir / TOKENIZER_DIR, staging / TOKENIZER_DIR)
        manifest = {
            "format": EXPORT_FORMAT, "earshot": __version__, "opset": OPSET, "kind": "asr",
            "torch": torch.__version__, "encoder_type": kind, "quantize": quantize,
            "graphs": {ENCODER_FILE: {"inputs": enc_in, "outputs": enc_out},
                       DECODER_FILE: {"inputs": dec_in, "outputs": dec_out}},
            "lstm_decoder": state.cell is not None,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if quantize is None:  # int8 changes the numbers by design; its WER is measured instead
            check_parity(model, OnnxASR.from_files(staging, description, tokenizer))
    log.info("wrote %s (%s encoder, opset %d%s)", out, kind, OPSET,
             ", int8 weights" if quantize else "")
    return Path(out)


def _fold_vector_products(path: Path) -> None:
    """Rewrite x @ w for a weight vector w (K,) as (x @ w[:, None]).squeeze(-1): onnxruntime
    runs the first as one small product per leading index (the attention energy, (N, T', A)
    @ (A,), as N products), the second as one matrix product over all rows; on the peer
    CRDNN's decoder step this takes 130 us to 85 us at 10 rows."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    nodes = []
    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or len(w.dims) != 1:
            nodes.append(node)
            continue
        column, product, axis = (f"{node.name}/column", f"{node.name}/column_product",
                                 f"{node.name}/last_axis")
        graph.initializer.append(numpy_helper.from_array(
            numpy_helper.to_array(w).reshape(-1, 1), column))
        graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axis))
        nodes.append(helper.make_node("MatMul", [node.input[0], column], [product],
                                      name=f"{node.name}/column"))
        nodes.append(helper.make_node("Squeeze", [product, axis], [node.output[0]],
                                      name=f"{node.name}/squeeze"))
    used = {i for n in nodes for i in n.input}
    kept = [w for w in graph.initializer if w.name in used]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept)
    onnx.save(model, str(path))


def _quantize(path: Path) -> None:
    """Dynamic int8 weights for the network's matrix products; the front end's (mel bank,
    DFT bases) stay float: they are features, not weights, and int8 would coarsen them."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [n.name for n in onnx.load(str(path)).graph.node if n.name.startswith("/frontend/")]
    tmp = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, nodes_to_exclude=keep)
    tmp.replace(path)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise EarshotError("ONNX export and decoding need the onnx extra: "
                           "pip install 'earshot[onnx]'") from None

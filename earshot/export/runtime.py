"""An export directory on onnxruntime, behind the model's own interface.

``OnnxASR`` has the methods the searches and the transcription pipeline call on an
``EncoderDecoderASR`` (``encode``, ``init_state``, ``step``, ``select_state``, ...): the
network runs in onnxruntime, the search, segmentation and alignment are the library's.
Tensors cross as numpy views (no copies on the CPU).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from earshot.errors import ConfigError
from earshot.masks import lengths_to_mask
from earshot.models.decoder import AttentionalDecoder, DecoderState, Memory
from earshot.models.lm import RNNLM

REQUIRED = ("manifest.json", "encoder.onnx", "decoder_step.onnx", "config.yaml", "tokenizer")


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def check_export_dir(path: str | Path) -> None:
    """A ConfigError naming what an export directory lacks."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a directory (an ONNX export from earshot export)")
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if missing:
        raise ConfigError(f"{path}: not an earshot ONNX export: missing {', '.join(missing)} "
                          f"(make one with: earshot export --model MODEL_DIR --out {path})")


def _session(model: Path | bytes, threads: int | None):
    """An onnxruntime CPU session for a graph file or its bytes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Worker threads spin while a call runs (a search graph hands them work hundreds of
    # times a call; waking a sleeping thread each time costs more than the work) and stop
    # when it returns, so that they never spin on the cores torch and Python use between
    # calls (beam 10 + CTC one utterance at a time: 8 % faster on the peer CRDNN, 18 % on
    # the AN4 Conformer, than with sleeping workers and one thread for small graphs).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    model = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _check_cpu(device) -> None:
    if torch.device(device).type != "cpu":
        raise ConfigError(f"device {device}: ONNX decoding runs on onnxruntime's CPU provider")


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


class OnnxASR:
    """The encoder + CTC and decoder-step graphs of an export directory. The length
    formulas (frames per waveform) come from a weightless torch skeleton of the model."""

    def __init__(self, directory: Path, skeleton, manifest: dict, threads: int | None = None):
        self.directory = directory
        self.manifest = manifest
        self.skeleton = skeleton
        self.specials = skeleton.specials
        self.vocab_size = skeleton.vocab_size
        self.cfg = skeleton.cfg
        self.lstm = bool(manifest.get("lstm_decoder"))
        self.threads = threads or torch.get_num_threads()
        self.enc_session = _session(directory / "encoder.onnx", self.threads)
        # one decoder step is a few hundred microseconds of small operators: handing them to
        # worker threads costs more than it saves
        self.dec_session = _session(directory / "decoder_step.onnx", 1)
        # an input the graph does not read (a GRU decoder's cell) is pruned by the exporter
        self.dec_inputs = {i.name for i in self.dec_session.get_inputs()}
        # beam search runs its step as a graph too, made per search configuration
        from earshot.export.search_graph import SearchGraphs

        self.search_graphs = SearchGraphs(self, self.threads)

    @classmethod
    def from_files(cls, directory: str | Path, description, tokenizer, threads: int | None = None):
        from earshot.models.factory import build_model

        directory = Path(directory)
        manifest = json.loads((directory / "manifest.json").read_text())
        skeleton = build_model(description, tokenizer).eval()
        return cls(directory, skeleton, manifest, threads)

    @classmethod
    def load(cls, directory: str | Path, threads: int | None = None):
        """(description, tokenizer, OnnxASR) of an export directory, checked first."""
        from earshot.export.onnx import _require_onnx
        from earshot.integrity import verify_checksums
        from earshot.models.artifacts import CONFIG_FILE, TOKENIZER_DIR, read_description
        from earshot.tokenizer import load_tokenizer

        _require_onnx()
        directory = Path(directory)
        check_export_dir(directory)
        verify_checksums(directory)
        description, _ = read_description(directory / CONFIG_FILE)
        tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
        return description, tokenizer, cls.from_files(directory, description, tokenizer, threads)

    # -- what the pipeline reads off a model ----------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.skeleton.sample_rate

    def encoded_lengths(self, wav_lens: torch.Tensor) -> torch.Tensor:
        return self.skeleton.encoded_lengths(wav_lens)

    @functools.cached_property
    def min_samples(self) -> int:
        """The fewest samples that give one encoder frame (frames never fall as samples
        grow): longer rows go straight to the encoder graph."""
        low, high = 1, 1
        while int(self.encoded_lengths(torch.tensor([high]))[0]) == 0:
            low, high = high + 1, high * 2
        while low < high:
            mid = (low + high) // 2
            if int(self.encoded_lengths(torch.tensor([mid]))[0]) > 0:
                high = mid
            else:
                low = mid + 1
        return high

    def parameters(self):
        return iter(())

    def to(self, device):
        _check_cpu(device)
        return self

    def eval(self):
        return self

    # -- encoding -------------------------------------------------------------------

    def encode(self, wavs: torch.Tensor, wav_lens: torch.Tensor, taps: tuple[int, ...] = ()):
        from earshot.models.asr import Encoded

        b = wavs.shape[0]
        if b and int(wav_lens.min()) >= self.min_samples:  # every row gives a frame
            enc, lens, lp, keys = self._run_encoder(wavs, wav_lens)
            return Encoded(Memory(enc, lens, lengths_to_mask(lens, enc.shape[1]), keys), lp, lens)
        frames = self.encoded_lengths(wav_lens)
        rows = (frames > 0).nonzero(as_tuple=True)[0]
        if len(rows) == b:
            enc, lens, lp, keys = self._run_encoder(wavs, wav_lens)
        else:
            h_dim = self.skeleton.encoder.output_dim
            if len(rows) == 0:
                enc = wavs.new_zeros(b, 0, h_dim)
                return Encoded(self.skeleton.decoder.memory(enc, frames), wavs.new_zeros(
                    b, 0, self.vocab_size), torch.zeros_like(frames))
            part = self._run_encoder(wavs[rows, : int(wav_lens[rows].max())], wav_lens[rows])

            def scatter(x: torch.Tensor) -> torch.Tensor:
                out = x.new_zeros(b, *x.shape[1:])
                out[rows] = x
                return out

            enc, lens, lp, keys = (scatter(x) for x in part)
        return Encoded(Memory(enc, lens, lengths_to_mask(lens, enc.shape[1]), keys), lp, lens)

    def _run_encoder(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        outs = self.enc_session.run(None, {"wavs": _np(wavs.float()),
                                           "wav_lens": _np(wav_lens.long())})
        return tuple(torch.from_numpy(o) for o in outs)

    # -- the decoder's step interface -------------------------------------------------

    def init_state(self, memory: Memory) -> DecoderState:
        return self.skeleton.decoder.init_state(memory)

    def step(self, tokens: torch.Tensor, state: DecoderState, memory: Memory):
        cell = state.cell if state.cell is not None else state.hidden
        feeds = {"tokens": _np(tokens.long()), "hidden": _np(state.hidden), "cell": _np(cell),
                 "context": _np(state.context), "attn": _np(state.attn), "enc": _np(memory.enc),
                 "mask": _np(memory.mask), "keys": _np(memory.keys)}
        feeds = {name: value for name, value in feeds.items() if name in self.dec_inputs}
        log_probs, hidden, cell, context, attn = (
            torch.from_numpy(o) for o in self.dec_session.run(None, feeds))
        return log_probs, DecoderState(hidden, cell if self.lstm else None, context, attn)

    select_state = staticmethod(AttentionalDecoder.select_state)
    select_memory = staticmethod(AttentionalDecoder.select_memory)
    repeat_memory = staticmethod(AttentionalDecoder.repeat_memory)

    def alignment(self, state: DecoderState) -> torch.Tensor:
        return self.skeleton.decoder.attention.alignment(state.attn)

    def teacher_forced(self, memory: Memory, tokens_in: torch.Tensor) -> torch.Tensor:
        """Log-probs (N, U, V) of whole sequences, one decoder step at a time (attention
        rescoring reads them like logits: log_softmax leaves log-probs unchanged)."""
        state = self.init_state(memory)
        out = []
        for t in range(tokens_in.shape[1]):
            log_probs, state = self.step(tokens_in[:, t], state, memory)
            out.append(log_probs)
        return torch.stack(out, dim=1)


class OnnxLM:
    """A language model export (``earshot export --lm``) with RNNLM's step interface."""

    def __init__(self, directory: Path, cfg, tokenizer, threads: int | None = 1):
        self.directory, self.cfg, self.tokenizer = directory, cfg, tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.session = _session(directory / "lm_step.onnx", threads)

    @classmethod
    def from_files(cls, directory: str | Path, cfg, tokenizer) -> OnnxLM:
        return cls(Path(directory), cfg, tokenizer)

    @classmethod
    def load(cls, directory: str | Path) -> OnnxLM:
        from earshot.config import LMExperimentConfig, load_config
        from earshot.export.onnx import _require_onnx
        from earshot.integrity import verify_checksums
        from earshot.tokenizer import load_tokenizer

        _require_onnx()
        directory = Path(directory)
        missing = [n for n in ("manifest.json", "lm_step.onnx", "config.yaml", "tokenizer")
                   if not (directory / n).exists()]
        if missing:
            raise ConfigError(f"{directory}: not an earshot language model export: missing "
                              f"{', '.join(missing)} (make one with: earshot export --lm LM_DIR "
                              f"--out {directory})")
        verify_checksums(directory)
        cfg = load_config(directory / "config.yaml", cls=LMExperimentConfig).model
        return cls(directory, cfg, load_tokenizer(directory / "tokenizer"))

    def to(self, device):
        _check_cpu(device)
        return self

    def eval(self):
        return self

    def init_state(self, batch: int, device: torch.device):
        from earshot.models.lm import LMState

        zeros = torch.zeros(self.cfg.layers, batch, self.cfg.units)
        return LMState(zeros, zeros.clone())

    def step(self, tokens: torch.Tensor, state):
        from earshot.models.lm import LMState

        log_probs, hidden, cell = (torch.from_numpy(o) for o in self.session.run(None, {
            "tokens": _np(tokens.long()), "hidden": _np(state.hidden), "cell": _np(state.cell)}))
        return log_probs, LMState(hidden, cell)

    select_state = staticmethod(RNNLM.select_state)

    def check_parity(self, lm, tolerance: float | None = None) -> float:
        """Three steps of torch and onnxruntime from the same state; ConfigError naming the
        graph and the largest difference beyond ``tolerance``."""
        from earshot.export.onnx import TOLERANCE

        g = torch.Generator().manual_seed(2)
        worst = 0.0
        for rows in (1, 7):
            state = lm.init_state(rows, torch.device("cpu"))
            tokens = torch.randint(0, self.vocab_size, (rows,), generator=g)
            for _ in range(3):
                with torch.no_grad():
                    ref, ref_state = lm.step(tokens, state)
                got, got_state = self.step(tokens, state)
                worst = max(worst, _compare("lm_step.onnx", {
                    "log_probs": (ref, got), "hidden": (ref_state.hidden, got_state.hidden),
                    "cell": (ref_state.cell, got_state.cell)}, None,
                    TOLERANCE if tolerance is None else tolerance))
                state, tokens = ref_state, ref.argmax(-1)
        return worst


def check_parity(model, onnx_model: OnnxASR, tolerance: float | None = None) -> float:
    """Run torch and onnxruntime on random waveforms of several lengths and batch sizes
    (padding included) and three decoder steps each; ConfigError naming the graph and the
    largest difference when it exceeds ``tolerance`` times the output's largest magnitude
    (at least 1). Returns the largest such relative difference."""
    from earshot.export.onnx import TOLERANCE

    tolerance = TOLERANCE if tolerance is None else tolerance
    rate = model.sample_rate
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for seconds in ((0.9,), (2.1, 0.613, 1.4), (1.017,), (0.537, 0.371), (3.7, 3.7)):
        lens = torch.tensor([int(s * rate) for s in seconds])
        wavs = torch.randn(len(lens), int(lens.max()), generator=g) * 0.05
        for i, n in enumerate(lens.tolist()):
            wavs[i, n:] = 0
        with torch.no_grad():
            ref = model.encode(wavs, lens)
            got = onnx_model.encode(wavs, lens)
            worst = max(worst, _compare("encoder.onnx", {
                "enc": (ref.memory.enc, got.memory.enc), "keys": (ref.memory.keys, got.memory.keys),
                "ctc_log_probs": (ref.ctc_log_probs, got.ctc_log_probs),
                "enc_lens": (ref.lens.float(), got.lens.float())}, ref.lens, tolerance))
            state = model.init_state(ref.memory)
            tokens = torch.randint(0, model.vocab_size, (len(lens),), generator=g)
            for _ in range(3):
                lp_ref, s_ref = model.step(tokens, state, ref.memory)
                lp_got, s_got = onnx_model.step(tokens, state, ref.memory)
                worst = max(worst, _compare("decoder_step.onnx", {
                    "log_probs": (lp_ref, lp_got), "hidden": (s_ref.hidden, s_got.hidden),
                    "context": (s_ref.context, s_got.context), "attn": (s_ref.attn, s_got.attn)},
                    None, tolerance))
                state, tokens = s_ref, lp_ref.argmax(-1)
    return worst


def _compare(graph: str, pairs: dict, lens, tolerance: float) -> float:
    worst = 0.0
    for name, (a, b) in pairs.items():
        if a.shape != b.shape:
            raise ConfigError(f"{graph}: output {name} has shape {tuple(b.shape)} on onnxruntime, "
                              f"{tuple(a.shape)} in torch")
        if lens is not None and a.dim() >= 2 and a.shape[1] == int(lens.max()) and name != "enc_lens":
            keep = (torch.arange(a.shape[1]).unsqueeze(0) < lens.unsqueeze(1))
            a, b = a[keep], b[keep]  # padding frames are never read
        finite = torch.isfinite(a) & torch.isfinite(b)
        if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
            raise ConfigError(f"{graph}: output {name} is finite in one runtime and not the other")
        if not finite.any():
            continue
        # float32 rounding grows with the values: the tolerance is relative to the largest
        # magnitude of the output (absolute below 1)
        scale = max(1.0, float(a[finite].abs().max()))
        diff = float((a[finite] - b[finite]).abs().max()) / scale
        if diff > tolerance:
            raise ConfigError(f"{graph}: output {name} differs from torch by {diff * scale:.3g} "
                              f"(largest value {scale:.3g}; tolerance {tolerance:g} of that)")
        worst = max(worst, diff)
    return worst


"""A loaded model and the transcription of what users hold: paths, arrays, lists of either.

>>> import earshot
>>> model = earshot.load_model("exp/an4/model")                    # doctest: +SKIP
>>> model                                                          # doctest: +SKIP
Transcriber(encoder=conformer, parameters=2.64M, sample_rate=16000, tokenizer=char (32), device=cpu)
>>> result = model.transcribe("meeting.flac", beam_size=10, ctc_weight=0.3,
...                           word_timestamps=True)                # doctest: +SKIP
>>> print(result)                                                  # doctest: +SKIP
YES GO
>>> [(w.text, round(w.start, 2), round(w.end, 2)) for w in result.words]  # doctest: +SKIP
[('YES', 0.41, 0.83), ('GO', 1.52, 1.8)]
>>> model.transcribe(samples, sample_rate=8000).text               # doctest: +SKIP
'NO'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from earshot.choices import DECODE_MODES
from earshot.config import DecodeConfig, ExperimentConfig, check, from_dict, to_dict
from earshot.devices import resolve_device
from earshot.errors import ConfigError
from earshot.inference import pipeline
from earshot.inference.scoring import load_lm_dir
from earshot.inference.results import Result
from earshot.inference.segment import SegmentOptions
from earshot.inference.sources import Source, from_api
from earshot.models.artifacts import load_model_dir

if TYPE_CHECKING:
    from earshot.models.lm import RNNLM

DECODE_OPTIONS = tuple(f.name for f in dataclasses.fields(DecodeConfig))
MIN_SEGMENT_SECONDS = 2.0
DEFAULT_SEGMENT_SECONDS = 20.0  # for model directories that do not record their longest utterance


def api_flag(name: str) -> str:
    return f"{name}="


def cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class Transcriber:
    """A loaded model directory plus the decoding that turns audio into text."""

    def __init__(self, cfg: ExperimentConfig, tokenizer, model, device: torch.device):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.model = model.to(device).eval()
        self.device = device

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device | None = "auto") -> Transcriber:
        """A model directory on ``device`` (``earshot.devices``: auto, cpu, cuda, cuda:N, mps).
        An ONNX export (``earshot export``) runs on onnxruntime's CPU provider with the same
        search, segmentation and outputs."""
        from earshot.export.runtime import is_export_dir

        if is_export_dir(model_dir):
            return cls.load_onnx(model_dir)
        dev = resolve_device(device, "load_model(device=...)")
        cfg, tokenizer, model = load_model_dir(model_dir, device=dev)
        return cls(cfg, tokenizer, model, dev)

    @classmethod
    def load_onnx(cls, export_dir: str | Path) -> Transcriber:
        """An export directory from ``earshot export`` on onnxruntime (CPU); a ConfigError
        naming what is missing when ``export_dir`` is not one."""
        from earshot.export.runtime import OnnxASR

        cfg, tokenizer, model = OnnxASR.load(export_dir)
        return cls(cfg, tokenizer, model, torch.device("cpu"))

    @property
    def sample_rate(self) -> int:
        return self.cfg.model.features.sample_rate

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        size = "onnx" if params == 0 else f"{params / 1e6:.2f}M"
        return (f"Transcriber(encoder={self.cfg.model.encoder.type}, parameters={size}, "
                f"sample_rate={self.sample_rate}, tokenizer={self.tokenizer.kind} "
                f"({self.tokenizer.vocab_size}), device={self.device})")

    # -- the Python API -----------------------------------------------------------

    def transcribe(self, audio: Any, *, sample_rate: int | None = None, mode: str = "auto",
                   lm: str | Path | RNNLM | None = None, word_timestamps: bool = False,
                   max_segment_seconds: float | None = None, decode: DecodeConfig | None = None,
                   on_error: str = "keep", progress: bool = False, **options: Any
                   ) -> Result | list[Result]:
        """Transcribe ``audio``: a path (str or Path), a numpy array or torch tensor of
        samples (1-D, or 2-D channels x samples; ``sample_rate`` required, resampled to the
        model's), or a list of these. One input gives one Result, a list gives a list.

        Recordings of any length are cut at their pauses (``max_segment_seconds``: default
        the longest utterance the model trained on). Keywords are the command line's
        decoding options: ``beam_size``, ``ctc_weight``, ``lm_weight``, ``nbest``,
        ``batch_size``... (``earshot.config.DecodeConfig``; ``decode`` gives them all at
        once), ``mode`` (``earshot.choices.DECODE_MODES``) and ``lm``, a language model
        directory or a loaded one. An input in a list that cannot be read gets a Result
        whose ``error`` says why while the others decode; ``on_error="raise"`` raises its
        ``AudioError`` instead (a single input always raises). Arrays that are not finite
        floating-point samples raise ``ValueError`` naming the item.

        >>> model.transcribe(["a.wav", "b.flac"], beam_size=10, ctc_weight=0.4)  # doctest: +SKIP
        [Result(id='a.wav', ...), Result(id='b.flac', ...)]
        """
        if on_error not in ("raise", "keep"):
            raise ValueError(f"on_error must be 'raise' or 'keep', not {on_error!r}")
        unknown = sorted(set(options) - set(DECODE_OPTIONS))
        if unknown:
            raise TypeError(f"transcribe() got unexpected keyword argument(s) {', '.join(unknown)}; "
                            f"decoding options: {', '.join(DECODE_OPTIONS)}")
        settings = self.settings(decode, options, mode=mode, lm=lm,
                                 word_timestamps=word_timestamps,
                                 max_segment_seconds=max_segment_seconds, flag=api_flag)
        single = not isinstance(audio, (list, tuple))
        sources = from_api(audio, sample_rate, self.sample_rate)
        results = list(self.stream(sources, settings, progress=progress))
        for r in results:
            if r.error is not None and (single or on_error == "raise"):
                from earshot.errors import AudioError

                raise AudioError(r.id, r.error.split(": ", 1)[-1] if r.error.startswith(r.id)
                                 else r.error)
        return results[0] if single else results

    def stream(self, sources: Iterable[Source], settings: pipeline.Settings,
               progress: bool | None = False) -> Iterator[Result]:
        """Results of ``sources`` in order, each as soon as it is complete (the command
        line writes them as they come); ``progress`` shows a bar of audio seconds (None:
        only on a terminal)."""
        from tqdm import tqdm

        with tqdm(desc="transcribe", unit="s", unit_scale=False,
                  disable=None if progress is None else not progress,
                  dynamic_ncols=True, bar_format="{desc}: {n:.0f} s of audio [{elapsed}, "
                  "{rate_fmt}]") as bar:
            yield from pipeline.run(self, sources, settings, on_audio=bar.update)

    # -- settings ---------------------------------------------------------------------

    def decoding(self, decode: DecodeConfig | None, mode: str = "auto") -> DecodeConfig:
        """``decode`` (default: the model's own settings) and ``mode`` checked as the CLI
        checks its options: a ConfigError naming the setting, before any audio is read."""
        decode = self.cfg.decode if decode is None else decode
        if not isinstance(decode, DecodeConfig):
            raise ConfigError(f"decode: expected an earshot.config.DecodeConfig, got "
                              f"{type(decode).__name__}")
        decode = from_dict(DecodeConfig, to_dict(decode))  # the types, as a config file's
        check(decode)
        DECODE_MODES.entry(mode, "mode")
        return decode

    def settings(self, decode: DecodeConfig | None, options: dict[str, Any], *, mode: str = "auto",
                 lm: str | Path | RNNLM | None = None, word_timestamps: bool = False,
                 max_segment_seconds: float | None = None, flag=api_flag) -> pipeline.Settings:
        """One call's settings: the model's decoding section, ``decode`` and the options
        given, checked; an option that cannot apply is a ConfigError naming it as the
        caller typed it (``flag``: keyword or command-line spelling)."""
        base = self.decoding(decode, mode)
        try:
            decode = self.decoding(dataclasses.replace(base, **options), mode)
        except ConfigError as err:
            for name in options:
                key = f"config key '{name}'"
                if str(err).startswith(key):
                    raise ConfigError(str(err).replace(key, f"option {flag(name)}", 1)) from None
            raise
        if isinstance(lm, (str, Path)):
            lm = load_lm_dir(lm, self)
        given = set(options) | set(_changed(decode, self.cfg.decode))
        _check_applicable(decode, given, lm, flag)
        card = getattr(self.cfg, "card", None)
        ctc_trained = getattr(card, "ctc_weight", None) != 0.0
        if word_timestamps and not ctc_trained:
            raise ConfigError(f"option {flag('word_timestamps')}: word times come from the CTC "
                              f"head, and this model was trained without one (loss.ctc_weight 0)")
        longest = float(getattr(card, "longest_utterance", 0.0) or DEFAULT_SEGMENT_SECONDS)
        seconds = max(longest, MIN_SEGMENT_SECONDS) if max_segment_seconds is None else max_segment_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not MIN_SEGMENT_SECONDS <= seconds <= 3600:
            raise ConfigError(f"option {flag('max_segment_seconds')}: must be in "
                              f"[{MIN_SEGMENT_SECONDS:g}, 3600] seconds, got {seconds!r}")
        return pipeline.Settings(decode, mode, lm, word_timestamps,
                                 SegmentOptions(max_seconds=seconds), ctc_trained)


def _changed(decode: DecodeConfig, base: DecodeConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(DecodeConfig)
            if getattr(decode, f.name) != getattr(base, f.name)]


def _check_applicable(decode: DecodeConfig, given: set[str], lm, flag) -> None:
    """Options the user set that the rest of the settings make meaningless."""
    if "lm_weight" in given and decode.lm_weight > 0 and lm is None:
        raise ConfigError(f"option {flag('lm_weight')} {decode.lm_weight:g} needs a language "
                          f"model: give {flag('lm')} (a directory from earshot train-lm)")
    if lm is not None and decode.lm_weight == 0:
        raise ConfigError(f"option {flag('lm')}: the language model is weighted 0; give "
                          f"{flag('lm_weight')} above 0 (e.g. 0.3)")
    if ("nbest" in given or "beam_size" in given) and decode.nbest > decode.beam_size:
        raise ConfigError(f"option {flag('nbest')} {decode.nbest} is above {flag('beam_size')} "
                          f"{decode.beam_size}: the search keeps only beam-size hypotheses")
    if "ctc_window" in given and decode.ctc_window > 0 and decode.ctc_weight == 0:
        raise ConfigError(f"option {flag('ctc_window')} limits the CTC prefix score, which "
                          f"{flag('ctc_weight')} 0 turns off; give {flag('ctc_weight')} above 0")

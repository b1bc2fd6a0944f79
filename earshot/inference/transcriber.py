"""Run a trained model: transcribe files and evaluate manifests.

>>> import earshot                                   # doctest: +SKIP
>>> model = earshot.load_model("exp/an4/model")       # doctest: +SKIP
>>> model.transcribe(["a.wav", "b.flac"])             # doctest: +SKIP
['yes', 'go']
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from earshot.audio import check_waveform, load_audio
from earshot.choices import DECODE_MODES
from earshot.config import DecodeConfig, ExperimentConfig, check, from_dict, to_dict
from earshot.decoding.api import Hypothesis, decode_batch
from earshot.devices import resolve_device
from earshot.errors import AudioError, ConfigError, EarshotError
from earshot.metrics import ErrorRates, write_report
from earshot.models.artifacts import load_model_dir

if TYPE_CHECKING:
    from lhotse import CutSet

    from earshot.models.lm import RNNLM

log = logging.getLogger(__name__)


@dataclass
class Utterance:
    """One decoded utterance: its n-best list, best first."""

    id: str
    hypotheses: list[Hypothesis]
    reference: str | None = None
    error: str | None = None  # why it was not decoded (its audio did not load)

    @property
    def text(self) -> str:
        return self.hypotheses[0].text if self.hypotheses else ""


class Transcriber:
    """A loaded model directory plus the decoding that turns audio into text."""

    def __init__(self, cfg: ExperimentConfig, tokenizer, model, device: torch.device):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.model = model.to(device).eval()
        self.device = device

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device | None = "auto") -> Transcriber:
        """A model directory on ``device`` (``earshot.devices``: auto, cpu, cuda, cuda:N, mps)."""
        dev = resolve_device(device, "load_model(device=...)")
        cfg, tokenizer, model = load_model_dir(model_dir, device=dev)
        return cls(cfg, tokenizer, model, dev)

    @property
    def sample_rate(self) -> int:
        return self.cfg.model.features.sample_rate

    def transcribe(self, paths: list[str | Path], decode: DecodeConfig | None = None,
                   lm: RNNLM | None = None, mode: str = "auto", on_error: str = "raise") -> list[str | None]:
        """Transcribe audio files; returns one text per path, in order. A file that cannot
        be read raises ``AudioError`` naming it, before anything is decoded; with
        ``on_error="keep"`` its text is None and the other files are transcribed."""
        return [None if u.error else u.text
                for u in self.transcribe_detailed(paths, decode, lm, mode, on_error)]

    def transcribe_detailed(self, paths: list[str | Path], decode: DecodeConfig | None = None,
                            lm: RNNLM | None = None, mode: str = "auto", on_error: str = "raise") -> list[Utterance]:
        """Like ``transcribe`` but returns each file's n-best list with scores; with
        ``on_error="keep"`` an unreadable file's Utterance has no hypotheses and its
        ``error`` says why."""
        if on_error not in ("raise", "keep"):
            raise ValueError(f"on_error must be 'raise' or 'keep', not {on_error!r}")
        decode = self.decoding(decode, mode)
        readable, wavs, errors = [], [], {}
        for i, path in enumerate(paths):
            try:
                wavs.append(load_audio(path, self.sample_rate))
                readable.append(i)
            except AudioError as err:
                if on_error == "raise":
                    raise
                errors[i] = str(err)
        # (files are checked by load_audio; resampling may leave a 1-sample file empty,
        # which decodes to '' like any audio shorter than a frame)
        decoded = self._decode_all([str(paths[i]) for i in readable], wavs, decode, lm,
                                   mode) if wavs else []
        out: list[Utterance] = [None] * len(paths)  # type: ignore[list-item]
        for i, utt in zip(readable, decoded):
            out[i] = utt
        for i, reason in errors.items():
            out[i] = Utterance(str(paths[i]), [], error=reason)
        return out

    def decoding(self, decode: DecodeConfig | None, mode: str) -> DecodeConfig:
        """``decode`` (default: the model's own settings) and ``mode`` checked as the CLI
        checks its options (``earshot.config.check``, ``earshot.choices.DECODE_MODES``):
        a ConfigError naming the setting, before any audio is read."""
        decode = self.cfg.decode if decode is None else decode
        if not isinstance(decode, DecodeConfig):
            raise ConfigError(f"decode: expected an earshot.config.DecodeConfig, got "
                              f"{type(decode).__name__}")
        decode = from_dict(DecodeConfig, to_dict(decode))  # the types, as a config file's
        check(decode)
        DECODE_MODES.entry(mode, "mode")
        return decode

    def decode_waveforms(self, ids: list[str], wavs: list[torch.Tensor],
                         decode: DecodeConfig | None = None, lm: RNNLM | None = None,
                         mode: str = "auto") -> list[Utterance]:
        """Decode mono waveforms (S,) at ``self.sample_rate``, batched longest first.
        Each must be floating-point samples in [-1, 1], finite and not empty (AudioError
        naming its id otherwise); one shorter than an encoder frame decodes to ''."""
        decode = self.decoding(decode, mode)
        if len(ids) != len(wavs):
            raise ConfigError(f"decode_waveforms: {len(ids)} ids for {len(wavs)} waveforms; "
                              f"give one id per waveform")
        wavs = [check_waveform(name, wav) for name, wav in zip(ids, wavs)]
        return self._decode_all(ids, wavs, decode, lm, mode)

    def _decode_all(self, ids: list[str], wavs: list[torch.Tensor], decode: DecodeConfig,
                    lm, mode: str) -> list[Utterance]:
        order = sorted(range(len(wavs)), key=lambda i: -len(wavs[i]))
        results: dict[int, Utterance] = {}
        for start in range(0, len(order), decode.batch_size):
            idx = order[start:start + decode.batch_size]
            hyps = self._decode([wavs[i] for i in idx], decode, lm, mode)
            for i, nbest in zip(idx, hyps):
                results[i] = Utterance(ids[i], nbest)
        return [results[i] for i in range(len(wavs))]

    @torch.inference_mode()
    def _decode(self, wavs: list[torch.Tensor], decode: DecodeConfig, lm, mode: str):
        lens = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        batch = torch.zeros(len(wavs), int(lens.max()))
        for i, w in enumerate(wavs):
            batch[i, : len(w)] = w
        return decode_batch(self.model, batch.to(self.device), lens.to(self.device), decode,
                            self.tokenizer, lm=lm, mode=mode)

    @torch.inference_mode()
    def decode_cuts(self, cuts: CutSet, decode: DecodeConfig | None = None, lm: RNNLM | None = None,
                    mode: str = "auto", progress: bool = True) -> list[Utterance]:
        """Decode every cut of a CutSet (batched by duration); unreadable audio is skipped."""
        from tqdm import tqdm

        from earshot.data.batching import make_loader

        decode = self.decoding(decode, mode)
        loader = make_loader(cuts, self.tokenizer, self.sample_rate,
                             max_duration=decode_max_duration(decode), shuffle=False)
        out = []
        for batch in tqdm(loader, desc="decode", unit="batch", disable=not progress,
                          dynamic_ncols=True):
            hyps = decode_batch(self.model, batch.wavs.to(self.device),
                                batch.wav_lens.to(self.device), decode, self.tokenizer,
                                lm=lm, mode=mode)
            for uid, ref, nbest in zip(batch.ids, batch.texts, hyps):
                out.append(Utterance(uid, nbest, self.tokenizer.normalize(ref)))
        return out


def decode_max_duration(decode: DecodeConfig) -> float:
    """Seconds of audio per decoding batch: batch_size utterances of ~10 s."""
    return max(10.0, 10.0 * decode.batch_size)


def evaluate(model_dir: str | Path, manifest: str | Path, out_dir: str | Path,
             decode: DecodeConfig | None = None, lm_dir: str | Path | None = None,
             mode: str = "auto", device: str | torch.device | None = "auto") -> ErrorRates:
    """Decode a manifest, write summary.json, alignments and hypotheses to ``out_dir``."""
    from earshot.data.manifests import load_cuts

    transcriber = Transcriber.load(model_dir, device=device)
    decode = decode or transcriber.cfg.decode
    lm = load_lm_dir(lm_dir, transcriber) if lm_dir else None
    from earshot.tokenizer import warn_unknown_chars

    cuts = load_cuts(manifest)
    unseen = warn_unknown_chars(transcriber.tokenizer, (c.supervisions[0].text for c in cuts), str(manifest))
    start = time.perf_counter()
    utts = transcriber.decode_cuts(cuts, decode, lm=lm, mode=mode)
    seconds = time.perf_counter() - start
    if not utts:
        raise EarshotError(f"{manifest}: no utterance could be decoded")
    decoded = {u.id for u in utts}
    dropped = [cut.id for cut in cuts if cut.id not in decoded]
    if dropped:
        log.warning("%s: %d of %d utterances could not be decoded (their audio did not load; "
                    "see the warnings above) and are not scored", manifest, len(dropped), len(cuts))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_nbest(out_dir / "hypotheses.jsonl", utts)
    extra = {"model": str(model_dir), "manifest": str(manifest), "mode": mode,
             "lm": str(lm_dir) if lm_dir else None, "decode_seconds": round(seconds, 3),
             "decode": to_dict(decode), "manifest_utterances": len(cuts),
             "dropped": len(dropped), "dropped_ids": dropped[:50],
             "dropped_reason": "audio could not be loaded" if dropped else None,
             "unknown_reference_chars": unseen}
    return write_report(out_dir, [u.id for u in utts], [u.reference for u in utts],
                        [u.text for u in utts], extra=extra)


def load_lm_dir(lm_dir: str | Path, transcriber: Transcriber) -> RNNLM:
    """The language model in ``lm_dir``, on the transcriber's device, checked to share its
    tokenizer's vocabulary."""
    from earshot.models.artifacts import load_lm

    lm = load_lm(lm_dir, device=transcriber.device)
    lm_vocab = getattr(lm, "vocab_size", None)
    if lm_vocab is not None and lm_vocab != transcriber.tokenizer.vocab_size:
        raise EarshotError(f"{lm_dir}: LM vocabulary ({lm_vocab}) does not match the ASR "
                           f"tokenizer ({transcriber.tokenizer.vocab_size}); train the LM "
                           "with this model's tokenizer")
    return lm


def write_nbest(path: Path, utts: list[Utterance]) -> None:
    """One JSON line per utterance: id, ref, and its n-best hypotheses with scores."""
    with open(path, "w") as f:
        for u in utts:
            row = {"id": u.id, "ref": u.reference,
                   "nbest": [{"text": h.text, "tokens": list(h.tokens), "score": float(h.score),
                              "scores": {k: float(v) for k, v in h.scores.items()}}
                             for h in u.hypotheses]}
            f.write(json.dumps(row) + "\n")

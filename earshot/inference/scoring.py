"""Scoring a model on a manifest: decode every cut, write the WER/CER report and n-best lists.

>>> from earshot.inference import evaluate
>>> evaluate("exp/an4/model", "data/an4/dev.jsonl.gz", "exp/an4/dev")  # doctest: +SKIP
ErrorRates(wer=9.5, cer=5.7, ...)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from earshot.config import DecodeConfig, to_dict
from earshot.decoding.api import decode_batch
from earshot.errors import EarshotError
from earshot.inference.results import Result, Segment, hypothesis_dict
from earshot.metrics import ErrorRates, write_report

if TYPE_CHECKING:
    from lhotse import CutSet

    from earshot.inference.transcriber import Transcriber
    from earshot.models.lm import RNNLM

log = logging.getLogger(__name__)


def decode_max_duration(decode: DecodeConfig) -> float:
    """Seconds of audio per decoding batch: batch_size utterances of ~10 s."""
    return max(10.0, 10.0 * decode.batch_size)


@torch.inference_mode()
def decode_cuts(t: Transcriber, cuts: CutSet, decode: DecodeConfig, lm: RNNLM | None = None,
                mode: str = "auto", progress: bool = True) -> list[Result]:
    """Decode every cut of a CutSet as one utterance (batched by duration; unreadable audio
    is skipped); each Result keeps the cut's normalised reference."""
    from tqdm import tqdm

    from earshot.data.batching import make_loader

    loader = make_loader(cuts, t.tokenizer, t.sample_rate,
                         max_duration=decode_max_duration(decode), shuffle=False)
    out = []
    rate = t.sample_rate
    for batch in tqdm(loader, desc="decode", unit="batch", disable=not progress,
                      dynamic_ncols=True):
        hyps = decode_batch(t.model, batch.wavs.to(t.device), batch.wav_lens.to(t.device),
                            decode, t.tokenizer, lm=lm, mode=mode)
        for uid, ref, n, nbest in zip(batch.ids, batch.texts, batch.wav_lens.tolist(), hyps):
            segment = Segment(0, n, rate, nbest[0].text if nbest else "", [], nbest)
            out.append(Result(uid, [segment], rate, n, reference=t.tokenizer.normalize(ref)))
    return out


def evaluate(model_dir: str | Path, manifest: str | Path, out_dir: str | Path,
             decode: DecodeConfig | None = None, lm_dir: str | Path | None = None,
             mode: str = "auto", device: str | torch.device | None = "auto") -> ErrorRates:
    """Decode a manifest, write summary.json, alignments and hypotheses to ``out_dir``."""
    from earshot.data.manifests import load_cuts

    from earshot.inference.transcriber import Transcriber

    transcriber = Transcriber.load(model_dir, device=device)
    decode = transcriber.decoding(decode, mode)
    lm = load_lm_dir(lm_dir, transcriber) if lm_dir else None
    from earshot.tokenizer import warn_unknown_chars

    cuts = load_cuts(manifest)
    unseen = warn_unknown_chars(transcriber.tokenizer, (c.supervisions[0].text for c in cuts), str(manifest))
    start = time.perf_counter()
    utts = decode_cuts(transcriber, cuts, decode, lm=lm, mode=mode)
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


def write_nbest(path: Path, results: list[Result]) -> None:
    """One JSON line per result: id, ref, and its n-best hypotheses with scores."""
    with open(path, "w") as f:
        for r in results:
            row = {"id": r.id, "ref": r.reference, "nbest": [hypothesis_dict(h) for h in r.nbest]}
            f.write(json.dumps(row) + "\n")

"""The transcription pipeline: sources -> segments -> batches -> results, in bounded memory.

Each source is planned (``segment.plan``) and its segments' samples are read as a stream;
segments of many sources wait in a pool of at most ``POOL_SECONDS`` of audio, are sorted
by length and decoded in batches; a batch that runs out of memory is split in two and
retried down to one segment. A result is yielded, in input order, as soon as all of its
segments are decoded, so memory is bounded by the pool, not by the length of a file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from earshot.audio import audio_info, load_audio
from earshot.decoding.api import decode_encoded
from earshot.decoding.beam_search import Hypothesis
from earshot.errors import AudioError
from earshot.inference import align
from earshot.inference.results import Result, Segment
from earshot.inference.segment import FRAME_SECONDS, Planned, SegmentOptions, frame_energies, plan
from earshot.inference.sources import Source, check_readable, file_blocks

if TYPE_CHECKING:
    from earshot.config import DecodeConfig
    from earshot.inference.transcriber import Transcriber

log = logging.getLogger(__name__)

POOL_SECONDS = 600.0  # audio waiting to be decoded, across sources


@dataclass
class Settings:
    """One call's checked settings."""

    decode: DecodeConfig
    mode: str
    lm: object | None
    word_timestamps: bool
    segments: SegmentOptions
    ctc_trained: bool  # the CTC head can align and detect non-speech


@dataclass
class _Job:
    source: int
    index: int
    span: Planned
    wav: torch.Tensor


@dataclass
class _Decoded:
    span: Planned
    nbest: list[Hypothesis]
    # the best hypothesis's tokens that CTC can emit (no blank), each one's absolute
    # [start, end) samples and confidence
    tokens: list[int] = field(default_factory=list)
    token_spans: list[tuple[int, int]] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)


@dataclass
class _Pending:
    source: Source
    num_samples: int = 0
    planned: int | None = None  # segments, once the source is fully read
    done: dict[int, _Decoded] = field(default_factory=dict)
    error: str | None = None


def run(t: Transcriber, sources: Iterable[Source], s: Settings,
        on_audio: Callable[[float], None] | None = None) -> Iterator[Result]:
    """Results for ``sources`` in their order, each as soon as it and those before it are
    complete; ``on_audio(seconds)`` is called as audio is decoded (a progress bar)."""
    pending: dict[int, _Pending] = {}
    pool: list[_Job] = []
    next_out = 0

    def flush() -> None:
        for job, decoded in decode_jobs(t, pool, s, on_audio):
            entry = pending.get(job.source)
            if entry is None:  # (its source failed and was reported already)
                continue
            if isinstance(decoded, str):
                entry.error = entry.error or decoded
            else:
                entry.done[job.index] = decoded
        pool.clear()

    def ready() -> Iterator[Result]:
        nonlocal next_out
        while next_out in pending:
            entry = pending[next_out]
            if entry.planned is None or (entry.error is None and len(entry.done) < entry.planned):
                break
            yield finish(t, pending.pop(next_out), s)
            next_out += 1

    for number, source in enumerate(sources):
        entry = pending[number] = _Pending(source, error=source.error)
        if entry.error is None:
            try:
                count = 0
                entry.num_samples, segments = read_segments(t, source, s)
                for count, (span, wav) in enumerate(segments, 1):
                    pool.append(_Job(number, count - 1, span, wav))
                    if sum(len(j.wav) for j in pool) >= POOL_SECONDS * t.sample_rate:
                        flush()
                        yield from ready()
                entry.planned = count
            except AudioError as err:
                entry.error = str(err)
            finally:
                if source.temporary and source.path is not None:
                    source.path.unlink(missing_ok=True)
        entry.planned = entry.planned if entry.planned is not None else 0
        if entry.error is not None:
            pool[:] = [j for j in pool if j.source != number]
        yield from ready()
    flush()
    yield from ready()


def read_segments(t: Transcriber, source: Source, s: Settings
                  ) -> tuple[int, Iterator[tuple[Planned, torch.Tensor]]]:
    """The length of ``source`` in samples and (span, samples) of each of its segments."""
    rate, max_samples = t.sample_rate, int(s.segments.max_seconds * t.sample_rate)
    if source.array is not None:
        wav = source.array
        spans = ([Planned(0, len(wav))] if len(wav) <= max_samples else
                 plan(frame_energies(wav.numpy(), _hop(rate)), _hop(rate), len(wav), rate, s.segments))
        return len(wav), ((span, wav[span.start:span.end]) for span in spans)
    check_readable(source)
    info = audio_info(source.path)
    if info.duration <= s.segments.max_seconds:
        wav = load_audio(source.path, rate)
        return len(wav), iter([(Planned(0, len(wav)), wav)])
    energies, total = _file_energies(source, rate)
    return total, _slices(source, rate, plan(energies, _hop(rate), total, rate, s.segments))


def _hop(rate: int) -> int:
    return max(1, round(rate * FRAME_SECONDS))


def _file_energies(source: Source, rate: int) -> tuple[np.ndarray, int]:
    """Frame energies of a whole file, read a block at a time, and its length in samples."""
    hop, parts, carry, total = _hop(rate), [], np.zeros(0, np.float32), 0
    for block in file_blocks(source.path, rate):
        total += len(block)
        block = np.concatenate([carry, block])
        whole = len(block) // hop * hop
        parts.append(frame_energies(block[:whole], hop))
        carry = block[whole:]
    parts.append(frame_energies(carry, hop))
    return np.concatenate(parts), total


def _slices(source: Source, rate: int, spans: list[Planned]) -> Iterator[tuple[Planned, torch.Tensor]]:
    """The samples of each span (in order; they may overlap), reading the file once more."""
    buffer, base, i = np.zeros(0, np.float32), 0, 0
    blocks = file_blocks(source.path, rate)
    while i < len(spans):
        span = spans[i]
        while base + len(buffer) < span.end:
            block = next(blocks, None)
            if block is None:
                break
            buffer = np.concatenate([buffer, block])
        yield span, torch.from_numpy(buffer[span.start - base:span.end - base].copy())
        i += 1
        keep_from = spans[i].start if i < len(spans) else base + len(buffer)
        drop = min(keep_from - base, len(buffer))  # (the next span may start past the buffer)
        buffer, base = buffer[drop:], base + drop


# -- decoding -----------------------------------------------------------------


def decode_jobs(t: Transcriber, jobs: list[_Job], s: Settings,
                on_audio: Callable[[float], None] | None) -> list[tuple[_Job, _Decoded | str]]:
    """Decode ``jobs`` in batches of similar length; an item that cannot be decoded even
    alone gets the reason instead of its result."""
    order = sorted(jobs, key=lambda j: -len(j.wav))
    max_samples = int(max(10.0, 10.0 * s.decode.batch_size) * t.sample_rate)
    out: list[tuple[_Job, _Decoded | str]] = []
    batch: list[_Job] = []
    for job in order:
        if batch and (len(batch) == s.decode.batch_size
                      or len(batch[0].wav) * (len(batch) + 1) > max_samples):
            out += _decode_splitting(t, batch, s)
            if on_audio:
                on_audio(sum(len(j.wav) for j in batch) / t.sample_rate)
            batch = []
        batch.append(job)
    if batch:
        out += _decode_splitting(t, batch, s)
        if on_audio:
            on_audio(sum(len(j.wav) for j in batch) / t.sample_rate)
    return out


def _out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate" in text)


def _decode_splitting(t: Transcriber, jobs: list[_Job], s: Settings) -> list[tuple[_Job, _Decoded | str]]:
    try:
        return list(zip(jobs, decode_batch(t, jobs, s)))
    except (RuntimeError, MemoryError) as err:
        if not _out_of_memory(err):
            raise
        if t.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(jobs) == 1:
            job = jobs[0]
            seconds = len(job.wav) / t.sample_rate
            return [(job, f"{job.span.start / t.sample_rate:.2f} s: ran out of memory decoding "
                          f"a {seconds:.1f} s segment on its own (try --max-segment-seconds "
                          f"below {seconds:.0f} or a smaller --beam-size)")]
        half = len(jobs) // 2
        log.info("out of memory decoding %d segments; retrying as %d and %d", len(jobs), half,
                 len(jobs) - half)
        return _decode_splitting(t, jobs[:half], s) + _decode_splitting(t, jobs[half:], s)


@torch.inference_mode()
def decode_batch(t: Transcriber, jobs: list[_Job], s: Settings) -> list[_Decoded]:
    """Encode, search and align one batch."""
    lens = torch.tensor([len(j.wav) for j in jobs], dtype=torch.long)
    # Padded to whole seconds: a handful of batch shapes instead of one per length, so the
    # CPU kernels' per-shape caches (oneDNN keeps up to 1024 primitives) stay small.
    width = -(-int(lens.max()) // t.sample_rate) * t.sample_rate
    wavs = torch.zeros(len(jobs), width)
    for i, j in enumerate(jobs):
        wavs[i, :len(j.wav)] = j.wav
    enc = t.model.encode(wavs.to(t.device), lens.to(t.device))
    nbests = decode_encoded(t.model, enc, s.decode, t.tokenizer, s.lm, s.mode)
    log_probs, enc_lens = enc.ctc_log_probs.float().cpu(), enc.lens.cpu()
    out = [_Decoded(j.span, nbest) for j, nbest in zip(jobs, nbests)]
    if not s.ctc_trained:
        return out
    blank = t.tokenizer.blank_id
    speech = [bool((log_probs[b, :int(enc_lens[b])].argmax(-1) != blank).any())
              for b in range(len(jobs))]
    for d, has_speech in zip(out, speech):
        if not has_speech:  # the CTC head hears nothing: an attention decoder would invent
            d.nbest = [Hypothesis([], 0.0, {}, "")]
    vocab = log_probs.size(-1)
    targets = [[tok for tok in d.nbest[0].tokens if tok != blank and 0 <= tok < vocab] for d in out]
    spans = align.ctc_forced_align(log_probs, enc_lens, targets, blank)
    for b, d in enumerate(out):
        if not targets[b]:
            continue
        per_frame = len(jobs[b].wav) / max(int(enc_lens[b]), 1)
        d.tokens = targets[b]
        d.confidences = align.token_confidences(log_probs[b], spans[b], targets[b])
        d.token_spans = [(d.span.start + round(first * per_frame),
                          d.span.start + min(round((last + 1) * per_frame), len(jobs[b].wav)))
                         for first, last in spans[b].tolist()]
    return out


# -- assembling results --------------------------------------------------------------


def finish(t: Transcriber, entry: _Pending, s: Settings) -> Result:
    """The Result of a source whose segments are all decoded (or that failed)."""
    rate, source = t.sample_rate, entry.source
    if entry.error is not None:
        return Result(source.id, [], rate, entry.num_samples, error=entry.error)
    decoded = [entry.done[i] for i in sorted(entry.done)]
    segments: list[Segment] = []
    i = 0
    while i < len(decoded):
        group = decoded[i].span.group
        j = i + 1
        while group >= 0 and j < len(decoded) and decoded[j].span.group == group:
            j += 1
        piece = decoded[i] if j == i + 1 else merge_windows(decoded[i:j], t)
        segment = _segment(piece, t, s)
        if segment.text or len(decoded) == 1:
            segments.append(segment)
        i = j
    return Result(source.id, segments, rate, entry.num_samples)


def merge_windows(windows: list[_Decoded], t: Transcriber) -> _Decoded:
    """One stretch from overlapping windows: each keeps the tokens whose centre lies before
    the middle of its overlap with the next window."""
    tokens: list[int] = []
    token_spans: list[tuple[int, int]] = []
    confidences: list[float] = []
    for k, w in enumerate(windows):
        lo = (windows[k - 1].span.end + w.span.start) // 2 if k else -1
        hi = (w.span.end + windows[k + 1].span.start) // 2 if k + 1 < len(windows) else None
        for tok, span, conf in zip(w.tokens, w.token_spans, w.confidences):
            centre = (span[0] + span[1]) // 2
            if centre >= lo and (hi is None or centre < hi):
                tokens.append(tok)
                token_spans.append(span)
                confidences.append(conf)
    scores: dict[str, float] = {}
    for w in windows:
        for name, value in w.nbest[0].scores.items():
            scores[name] = scores.get(name, 0.0) + value
    best = Hypothesis(tokens, sum(w.nbest[0].score for w in windows), scores,
                      t.tokenizer.decode(tokens))
    span = Planned(windows[0].span.start, windows[-1].span.end, windows[0].span.group,
                   windows[0].span.speech[0], windows[-1].span.speech[1])
    return _Decoded(span, [best], tokens, token_spans, confidences)


def _segment(d: _Decoded, t: Transcriber, s: Settings) -> Segment:
    rate = t.sample_rate
    best = d.nbest[0] if d.nbest else Hypothesis([], 0.0, {}, "")
    text = " ".join(best.text.split())
    words = []
    if d.token_spans:  # (token spans are absolute samples: one "frame" a sample)
        inclusive = torch.tensor([[a, max(a, b - 1)] for a, b in d.token_spans], dtype=torch.long)
        words = align.words_from_alignment(d.tokens, inclusive, d.confidences, t.tokenizer,
                                           1.0, 0, rate, d.span.end)
    start, end = d.span.speech  # the speech itself, not the pauses padded around it
    if words:  # (CTC may place a word's first token before the detector's onset)
        start, end = min(start, words[0].start_sample), max(end, words[-1].end_sample)
    for hyp in d.nbest:
        hyp.text = " ".join(hyp.text.split())
    return Segment(start, end, rate, text, words if s.word_timestamps else [], d.nbest)

"""The built-in demo corpus: short English sentences spoken by espeak-ng voices.

Sentences come from a small grammar (about 175 words, numbers spelled out) and are
drawn deterministically from a seed; every sentence is unique across the splits.
Train and dev are spoken by ``TRAIN_VOICES``; test is spoken only by
``HELD_OUT_VOICES``, whose variants never occur in training. Each utterance gets a
random speaking rate, pitch, pitch range, gain, a little leading/trailing silence and
white noise at 25-35 dB SNR.

>>> from earshot.data.synth import synthesize_corpus
>>> cuts = synthesize_corpus("exp/demo_data", num_train=12, num_dev=4, num_test=4)
>>> sorted(cuts)
['dev', 'test', 'train']
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from earshot.data.espeak import EspeakError, speak

if TYPE_CHECKING:
    from lhotse import CutSet, MonoCut

# --- the grammar ------------------------------------------------------------------
# Homophones of other vocabulary words (read/red, ate/eight, for/four, new/knew,
# blew/blue, buy/by, to/two/too) are left out, so the audio always determines the text.
WORDS: dict[str, tuple[str, ...]] = {
    "name": ("alice", "bob", "carol", "david", "emma", "frank", "grace", "henry",
             "isaac", "julia", "kevin", "laura", "mary", "nancy", "oscar", "peter",
             "rachel", "sarah", "thomas", "victor", "wendy", "james", "lucy", "martin"),
    "verb": ("bought", "sold", "found", "lost", "took", "moved", "cleaned", "painted",
             "washed", "carried", "dropped", "counted", "kept", "hid", "broke", "fixed",
             "wanted", "needed", "liked", "saw", "packed", "opened", "closed", "stole"),
    "number": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
               "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
               "seventeen", "eighteen", "nineteen", "twenty", "thirty", "forty",
               "fifty", "sixty", "seventy", "eighty", "ninety", "hundred"),
    "color": ("red", "green", "blue", "yellow", "black", "white", "brown", "orange",
              "purple", "pink", "gray", "golden", "silver"),
    "size": ("big", "small", "old", "little", "heavy", "tiny", "large", "clean", "dirty"),
    "noun": ("cups", "books", "chairs", "tables", "boxes", "apples", "bottles", "shoes",
             "hats", "keys", "lamps", "pens", "plates", "rings", "coats", "bags", "balls",
             "bells", "boats", "cars", "clocks", "dogs", "cats", "birds", "flowers",
             "stones", "trucks", "shirts", "spoons", "toys", "chickens", "candles"),
    "prep": ("in", "on", "at", "near", "under", "behind", "beside", "inside"),
    "place": ("kitchen", "garden", "market", "office", "station", "park", "river",
              "house", "school", "library", "yard", "hall", "shop", "bedroom", "garage",
              "church", "village", "forest", "beach", "bridge", "castle", "farm"),
    "time": ("today", "yesterday", "tonight", "again", "quickly", "slowly", "carefully",
             "early", "later", "twice", "always", "never"),
}

# Each template is a sequence of slot names or literal words; 4 to 6 words long.
TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("name", "verb", "number", "noun"),
    ("name", "verb", "number", "color", "noun"),
    ("name", "verb", "number", "size", "noun"),
    ("number", "color", "noun", "prep", "the", "place"),
    ("name", "verb", "the", "noun", "time"),
    ("name", "and", "name", "verb", "noun"),
    ("name", "verb", "number", "noun", "time"),
    ("the", "size", "noun", "prep", "the", "place"),
    ("name", "verb", "the", "color", "noun", "time"),
    ("name", "was", "prep", "the", "place", "time"),
)

# --- the voices ---------------------------------------------------------------------
# (language + variant) combos. Test variants (f3, m2, m6) never occur in training.
TRAIN_VOICES: tuple[str, ...] = (
    "en-us", "en+f2", "en-us+m3", "en-gb-x-rp+f4", "en-029+m1",
    "en-gb-scotland+f1", "en+m7", "en-us+f5", "en-gb-x-rp+m5",
)
HELD_OUT_VOICES: tuple[str, ...] = ("en-us+m2", "en+f3", "en-gb-x-rp+m6")

SPLITS = ("train", "dev", "test")
SHARD_SIZE = 200  # utterances per fresh worker process (see _render_all)


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything needed to render one utterance; drawn in the parent from the seed."""

    id: str
    split: str
    text: str
    voice: str
    rate: int         # words per minute
    pitch: int        # 0-100
    pitch_range: int  # 0-100
    peak: float       # peak amplitude before noise
    snr_db: float
    lead_s: float     # leading silence
    trail_s: float    # trailing silence
    seed: int         # for the noise
    path: str


def vocabulary() -> set[str]:
    """All words the grammar can produce (174)."""
    words = {w for ws in WORDS.values() for w in ws}
    words |= {tok for t in TEMPLATES for tok in t if tok not in WORDS}
    return words


def make_sentences(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct lower-case sentences from the grammar, in random order."""
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"the grammar cannot produce {n} distinct sentences")
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        words = [_pick(tok, rng) for tok in template]
        if len(set(words)) == len(words):  # "bob and bob" reads oddly
            seen.setdefault(" ".join(words), None)
    return list(seen)


def _pick(token: str, rng: np.random.Generator) -> str:
    options = WORDS.get(token)
    return token if options is None else options[rng.integers(len(options))]


def plan_corpus(out_dir: Path, num_train: int, num_dev: int, num_test: int,
                seed: int) -> list[UtteranceSpec]:
    """Draw texts, voices and per-utterance perturbations for every split."""
    counts = {"train": num_train, "dev": num_dev, "test": num_test}
    if min(counts.values()) < 0:
        raise ValueError(f"utterance counts must be >= 0, got {counts}")
    rng = np.random.default_rng(seed)
    sentences = make_sentences(sum(counts.values()), rng)
    specs, start = [], 0
    for split in SPLITS:
        voices = HELD_OUT_VOICES if split == "test" else TRAIN_VOICES
        offset = int(rng.integers(len(voices)))  # balanced voices, random phase
        for i in range(counts[split]):
            specs.append(_draw_spec(out_dir, split, i, sentences[start + i],
                                    voices[(i + offset) % len(voices)], rng))
        start += counts[split]
    return specs


def _draw_spec(out_dir: Path, split: str, index: int, text: str, voice: str,
               rng: np.random.Generator) -> UtteranceSpec:
    utt_id = f"{split}-{index:05d}"
    return UtteranceSpec(
        id=utt_id, split=split, text=text, voice=voice,
        rate=int(rng.integers(130, 201)), pitch=int(rng.integers(30, 71)),
        pitch_range=int(rng.integers(30, 81)), peak=float(rng.uniform(0.3, 0.9)),
        snr_db=float(rng.uniform(25.0, 35.0)),
        lead_s=float(rng.uniform(0.05, 0.2)), trail_s=float(rng.uniform(0.05, 0.2)),
        seed=int(rng.integers(2**31)), path=str(out_dir / "wav" / split / f"{utt_id}.wav"),
    )


def render(spec: UtteranceSpec, sample_rate: int) -> np.ndarray:
    """Speak ``spec.text`` and apply gain, silence padding and noise -> (S,) float32."""
    speech, _ = speak(spec.text, voice=spec.voice, rate=spec.rate, pitch=spec.pitch,
                      pitch_range=spec.pitch_range, sample_rate=sample_rate,
                      seed=spec.seed)
    peak = float(np.abs(speech).max()) if speech.size else 0.0
    if peak == 0.0:
        raise EspeakError(f"espeak produced no audio for {spec.text!r} ({spec.voice})")
    speech = speech * (spec.peak / peak)
    lead, trail = int(spec.lead_s * sample_rate), int(spec.trail_s * sample_rate)
    wav = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)])
    # Noise power is set against the speech alone, so silence padding doesn't dilute it.
    noise_std = np.sqrt(np.mean(speech**2) / 10 ** (spec.snr_db / 10))
    noise = np.random.default_rng(spec.seed).standard_normal(wav.size) * noise_std
    return np.clip(wav + noise, -1.0, 1.0).astype(np.float32)


def _render_and_write(spec: UtteranceSpec, sample_rate: int) -> int:
    """Render one utterance to its 16-bit WAV; returns its sample count."""
    wav = render(spec, sample_rate)
    sf.write(spec.path, wav, sample_rate, subtype="PCM_16")
    return int(wav.size)


def _render_shard(job: tuple[list[UtteranceSpec], int]) -> list[int]:
    specs, sample_rate = job
    return [_render_and_write(spec, sample_rate) for spec in specs]


def _render_all(specs: list[UtteranceSpec], sample_rate: int, workers: int) -> list[int]:
    """Render every spec in fixed shards, each in a fresh process.

    espeak-ng carries hidden state from one utterance to the next (its pitch flutter
    keeps running), so the same request gives slightly different audio depending on
    what was spoken before. Rendering fixed shards, each in a process that has spoken
    nothing yet, makes the audio bit-exact for a seed, whatever ``workers`` is.
    """
    shards = [(specs[i:i + SHARD_SIZE], sample_rate) for i in range(0, len(specs), SHARD_SIZE)]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ctx.Pool(max(1, workers), maxtasksperchild=1) as pool:
        per_shard = pool.map(_render_shard, shards, chunksize=1)
    return [n for shard in per_shard for n in shard]


def _to_cut(spec: UtteranceSpec, num_samples: int, sample_rate: int) -> MonoCut:
    # lhotse is imported here, not at the top: it takes about a second to import and
    # every rendering worker process imports this module.
    from lhotse import MonoCut, Recording, SupervisionSegment
    from lhotse.audio import AudioSource

    duration = num_samples / sample_rate
    recording = Recording(
        id=spec.id, sources=[AudioSource(type="file", channels=[0], source=spec.path)],
        sampling_rate=sample_rate, num_samples=num_samples, duration=duration,
    )
    sup = SupervisionSegment(id=spec.id, recording_id=spec.id, start=0.0, duration=duration,
                             channel=0, text=spec.text, language="en", speaker=spec.voice)
    return MonoCut(id=spec.id, start=0.0, duration=duration, channel=0,
                   supervisions=[sup], recording=recording)


def synthesize_corpus(out_dir: str | Path, num_train: int = 2000, num_dev: int = 100,
                      num_test: int = 150, seed: int = 0, sample_rate: int = 16000,
                      workers: int = 2, verbose: bool = True) -> dict[str, CutSet]:
    """Synthesise the demo corpus -> {"train", "dev", "test"}: lhotse CutSet.

    Writes ``out_dir/wav/{split}/*.wav`` (16-bit PCM), ``out_dir/{split}.jsonl.gz``
    (one supervision per cut: lower-case text, speaker = voice name) and
    ``out_dir/synthesis.json`` (voices, counts, audio hours, seconds taken).
    The same arguments always give the same texts, voices and audio.
    """
    from earshot.data.corpora import write_splits

    out_dir = Path(out_dir).resolve()
    start = time.perf_counter()
    specs = plan_corpus(out_dir, num_train, num_dev, num_test, seed)
    for split in SPLITS:
        (out_dir / "wav" / split).mkdir(parents=True, exist_ok=True)
    lengths = _render_all(specs, sample_rate, workers)
    cuts = write_splits({split: [_to_cut(s, n, sample_rate) for s, n in zip(specs, lengths)
                                 if s.split == split] for split in SPLITS}, out_dir)
    seconds = time.perf_counter() - start
    info = _summary(specs, lengths, sample_rate, seconds, workers, seed)
    (out_dir / "synthesis.json").write_text(json.dumps(info, indent=2) + "\n")
    if verbose:
        print(f"synthesised {len(specs)} utterances ({info['audio_hours'] * 60:.1f} min "
              f"of audio) in {seconds:.1f} s with {workers} worker(s) -> {out_dir}")
    return cuts


def _summary(specs: list[UtteranceSpec], lengths: list[int], sample_rate: int,
             seconds: float, workers: int, seed: int) -> dict:
    return {
        "seconds": round(seconds, 2), "workers": workers, "seed": seed,
        "sample_rate": sample_rate,
        "counts": {s: sum(1 for x in specs if x.split == s) for s in SPLITS},
        "audio_hours": round(sum(lengths) / sample_rate / 3600, 4),
        "train_voices": list(TRAIN_VOICES), "held_out_voices": list(HELD_OUT_VOICES),
        "vocabulary_size": len(vocabulary()),
        "example": asdict(specs[0]) if specs else None,
    }

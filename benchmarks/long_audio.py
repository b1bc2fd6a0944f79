"""Long-form transcription: real-time factor, peak memory, WER and boundary error.

Builds recordings of 1, 10 and 60 minutes from real utterances (a manifest's cuts, each
trimmed to its speech, cycled in shuffled order) joined by pauses of random length filled
with each utterance's own background (the recording before and after its speech), every
utterance scaled so that its background sits at one level, as in one room; the true
utterance boundaries (where speech rises above its background) are known. Each recording is written to FLAC and transcribed from the file in a fresh
process (its peak RSS is the process's), greedy and with joint beam search + CTC; the
transcript is scored against the joined references next to the same utterances decoded
one at a time; segment starts and ends are compared with the true boundaries.

    python benchmarks/long_audio.py --model exp/an4_conformer/model \\
        --manifest data/an4/dev.jsonl.gz --minutes 1 10 60 --out long_audio.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = {"greedy": {"mode": "greedy", "beam_size": 1, "ctc_weight": 0.0},
         "joint beam 10 + CTC": {"mode": "beam", "beam_size": 10, "ctc_weight": 0.3}}
PAUSE = (0.5, 2.5)  # seconds, uniform
BACKGROUND_DB = -60.0  # dBFS: every utterance's background is brought to this level


def trim(wav: np.ndarray, rate: int, below_peak_db: float = 40.0,
         above_floor_db: float = 10.0) -> tuple[int, int]:
    """[first, last) sample of the speech: from the first to the last 10 ms frame within
    ``below_peak_db`` of the recording's peak and ``above_floor_db`` above its background
    (its 10th-percentile frame)."""
    hop = rate // 100
    frames = wav[: len(wav) // hop * hop].reshape(-1, hop)
    db = 10 * np.log10((frames.astype(np.float64) ** 2).mean(1) + 1e-12)
    loud = np.flatnonzero(db > max(db.max() - below_peak_db, np.percentile(db, 10) + above_floor_db))
    return int(loud[0]) * hop, int(loud[-1] + 1) * hop


def background(wav: np.ndarray, first: int, last: int, rate: int) -> np.ndarray:
    """The recording's own background: what lies before and after its speech (200 ms away
    from it, clear of breaths and weak tails); white noise at the quietest frames' level where there is too little."""
    guard = rate // 5
    rest = np.concatenate([wav[: max(0, first - guard)], wav[last + guard:]])
    if len(rest) >= rate // 10:
        return rest.astype(np.float32)
    hop = rate // 100
    frames = wav[: len(wav) // hop * hop].reshape(-1, hop)
    level = max(float(np.percentile(np.sqrt((frames.astype(np.float64) ** 2).mean(1)), 10)), 1e-4)
    return (level * np.random.default_rng(0).standard_normal(rate)).astype(np.float32)


def pause_of(noise: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of ``noise``, tiled from a random offset."""
    start = int(rng.integers(len(noise)))
    return np.resize(np.roll(noise, -start), n).astype(np.float32)


def load_clips(manifest: str, rate: int, margin: float = 0.1) -> list[dict]:
    """Each cut's audio cut to its speech plus ``margin`` seconds, where its speech lies
    in the clip, its background and its reference text."""
    from earshot.audio import load_audio
    from earshot.data.manifests import load_cuts

    clips = []
    for cut in load_cuts(manifest):
        wav = load_audio(cut.recording.sources[0].source, rate)
        first, last = trim(wav.numpy(), rate)
        pad = int(margin * rate)
        lo, hi = max(0, first - pad), min(len(wav), last + pad)
        samples, noise = wav.numpy(), background(wav.numpy(), first, last, rate)
        # One room for the whole recording: each utterance scaled so that its background
        # sits at BACKGROUND_DB (its speech keeps its own signal-to-noise ratio).
        level = 10 * np.log10(float(np.mean(noise.astype(np.float64) ** 2)) + 1e-12)
        gain = min(10 ** ((BACKGROUND_DB - level) / 20), 0.95 / float(np.abs(samples).max()))
        clips.append({"id": cut.id, "wav": gain * samples[lo:hi], "speech": (first - lo, last - lo),
                      "noise": gain * noise, "text": cut.supervisions[0].text})
    return clips


def build(clips: list[dict], minutes: float, rate: int, path: Path, seed: int) -> list[dict]:
    """Write a recording of at least ``minutes`` to ``path`` (FLAC, a piece at a time);
    returns the utterances in it: clip index, true speech [start, end) samples."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    placed, pos = [], 0
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC") as out:
        while pos < minutes * 60 * rate:
            for i in rng.permutation(len(clips)):
                clip = clips[i]
                pause = int(rng.uniform(*PAUSE) * rate)
                out.write(pause_of(clip["noise"], pause, rng))
                pos += pause
                out.write(clip["wav"])
                placed.append({"clip": int(i), "start": pos + clip["speech"][0],
                               "end": pos + clip["speech"][1]})
                pos += len(clip["wav"])
                if pos >= minutes * 60 * rate:
                    break
        tail = int(PAUSE[0] * rate)
        out.write(pause_of(clips[0]["noise"], tail, rng))
    return placed


def child(args: argparse.Namespace) -> None:
    """Transcribe one file in this process; print JSON with the result, time and peak RSS."""
    import torch

    import earshot

    torch.set_num_threads(args.threads)
    model = earshot.load_model(args.model, device="cpu")
    options = dict(MODES[args.mode_name])
    mode = options.pop("mode")
    start = time.perf_counter()
    result = model.transcribe(args.audio, mode=mode, word_timestamps=True,
                              max_segment_seconds=args.max_segment_seconds, **options)
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": rss_mb, "duration": result.duration,
                      "text": result.text,
                      "segments": [[s.start_sample, s.end_sample] for s in result.segments]}))


def per_utterance(model_dir: str, clips: list[dict], mode_name: str, rate: int,
                  max_segment_seconds: float | None) -> list[str]:
    import earshot

    model = earshot.load_model(model_dir, device="cpu")
    options = dict(MODES[mode_name])
    mode = options.pop("mode")
    results = model.transcribe([c["wav"] for c in clips], sample_rate=rate, mode=mode,
                               max_segment_seconds=max_segment_seconds, **options)
    return [r.text for r in results]


def boundary_errors(placed: list[dict], segments: list[list[int]], rate: int) -> dict:
    """Start and end errors (ms) of the segment overlapping each utterance most."""
    starts, ends, missed = [], [], 0
    seg = np.array(segments or [[0, 0]])
    for u in placed:
        overlap = np.minimum(seg[:, 1], u["end"]) - np.maximum(seg[:, 0], u["start"])
        best = int(np.argmax(overlap))
        if overlap[best] <= 0:
            missed += 1
            continue
        starts.append(abs(int(seg[best, 0]) - u["start"]) * 1000 / rate)
        ends.append(abs(int(seg[best, 1]) - u["end"]) * 1000 / rate)
    both = np.array(starts + ends) if starts else np.zeros(1)
    return {"median_ms": float(np.median(both)), "p90_ms": float(np.percentile(both, 90)),
            "missed_utterances": missed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True, help="utterances to join (e.g. AN4 dev)")
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--max-segment-seconds", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--audio", help=argparse.SUPPRESS)
    p.add_argument("--mode-name", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    import earshot
    from earshot.metrics import error_rates

    model = earshot.load_model(args.model, device="cpu")
    rate, tokenizer = model.sample_rate, model.tokenizer
    clips = load_clips(args.manifest, rate)
    refs = [tokenizer.normalize(c["text"]) for c in clips]
    print(f"{len(clips)} utterances, {sum(len(c['wav']) for c in clips) / rate / 60:.1f} min "
          f"of trimmed speech; model {args.model}", file=sys.stderr)
    alone = {m: per_utterance(args.model, clips, m, rate, args.max_segment_seconds)
             for m in args.modes}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            audio = Path(tmp) / f"long_{minutes:g}.flac"
            placed = build(clips, minutes, rate, audio, args.seed)
            ref = " ".join(refs[u["clip"]] for u in placed)
            for mode_name in args.modes:
                cmd = [sys.executable, __file__, "--child", "--model", args.model, "--manifest",
                       args.manifest, "--audio", str(audio), "--mode-name", mode_name,
                       "--threads", str(args.threads)]
                if args.max_segment_seconds:
                    cmd += ["--max-segment-seconds", str(args.max_segment_seconds)]
                out = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                text=True).stdout.strip().splitlines()[-1])
                long_wer = error_rates([ref], [out["text"]]).wer
                one_by_one = error_rates([refs[u["clip"]] for u in placed],
                                         [alone[mode_name][u["clip"]] for u in placed]).wer
                row = {"minutes": round(out["duration"] / 60, 2), "decoding": mode_name,
                       "seconds": round(out["seconds"], 1),
                       "rtf": round(out["seconds"] / out["duration"], 4),
                       "peak_rss_mb": round(out["peak_rss_mb"]),
                       "wer_long": round(long_wer, 2), "wer_one_by_one": round(one_by_one, 2),
                       "utterances": len(placed), "segments": len(out["segments"]),
                       **boundary_errors(placed, out["segments"], rate)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print("| audio (min) | decoding | time (s) | RTF | peak RSS (MB) | WER long-form | WER one by one "
          "| utterances / segments | boundary error median / p90 (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['minutes']:.1f} | {r['decoding']} | {r['seconds']:.0f} | {r['rtf']:.3f} | "
              f"{r['peak_rss_mb']} | {r['wer_long']:.2f} | {r['wer_one_by_one']:.2f} | "
              f"{r['utterances']} / {r['segments']} | {r['median_ms']:.0f} / {r['p90_ms']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

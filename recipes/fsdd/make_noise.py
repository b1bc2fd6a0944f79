"""Noise recordings for the FSDD noise experiment, from material on this disk.

    python recipes/fsdd/make_noise.py AN4_DIR --out data/fsdd_noise

Writes OUT/train/ and OUT/test/: 10-second 8 kHz files of babble (four AN4 utterances
of different speakers at once, repeated to fill the file) and of coloured noise (white,
pink, brown). The two folders share no AN4 speaker and no noise seed, so the test noise
is never heard in training. Deterministic: the same files on every run.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 8000
SECONDS = 10.0
FILES_PER_KIND = 6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("an4", type=Path, help="the AN4 folder (manifest_train.csv and wav/)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    rows = list(csv.DictReader(open(args.an4 / "manifest_train.csv", newline="")))
    speakers = sorted({r["speaker"] for r in rows})
    random.Random(0).shuffle(speakers)
    half = len(speakers) // 2
    for part, chosen, seed in (("train", speakers[:half], 1), ("test", speakers[half:], 2)):
        folder = args.out / part
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        pool = [r for r in rows if r["speaker"] in set(chosen)]
        for i in range(FILES_PER_KIND):
            write(folder / f"babble-{i}.wav", babble(args.an4, pool, rng))
        for kind in ("white", "pink", "brown"):
            for i in range(FILES_PER_KIND // 3):
                write(folder / f"{kind}-{i}.wav", coloured(kind, rng))
        print(f"wrote {folder}: {FILES_PER_KIND * 2} files, {len(chosen)} AN4 speakers in the babble")
    return 0


def babble(root: Path, pool: list[dict], rng: np.random.Generator) -> np.ndarray:
    """Four utterances of four different speakers, each looped to fill the file, summed."""
    n = int(SECONDS * RATE)
    by_speaker: dict[str, list[dict]] = {}
    for r in pool:
        by_speaker.setdefault(r["speaker"], []).append(r)
    names = sorted(by_speaker)
    out = np.zeros(n, dtype=np.float64)
    for speaker in rng.choice(names, size=4, replace=False):
        talk = []
        while sum(len(t) for t in talk) < n:
            row = by_speaker[speaker][int(rng.integers(len(by_speaker[speaker])))]
            wav, rate = sf.read(root / row["path"], dtype="float32", always_2d=True)
            wav = wav.mean(axis=1)
            talk.append(soxr.resample(wav, rate, RATE) if rate != RATE else wav)
        voice = np.concatenate(talk)[:n]
        out += voice / max(np.sqrt(np.mean(voice ** 2)), 1e-6)
    return out


def coloured(kind: str, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2) Gaussian noise."""
    n = int(SECONDS * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / RATE), 1.0)
    spectrum *= {"white": 1.0, "pink": 1 / np.sqrt(f), "brown": 1 / f}[kind]
    return np.fft.irfft(spectrum, n)


def write(path: Path, wav: np.ndarray) -> None:
    wav = 0.5 * wav / max(np.abs(wav).max(), 1e-9)
    sf.write(path, wav.astype(np.float32), RATE, subtype="PCM_16")


if __name__ == "__main__":
    sys.exit(main())

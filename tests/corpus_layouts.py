"""Miniature corpora in their real on-disk layouts, with synthesised audio (tones and
noise), for the preparers' tests. Each builder returns the folder a user would point
``earshot prepare NAME`` at and what it put there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def audio(path: Path, seconds: float = 0.4, rate: int = 16000, seed: int = 0,
          fmt: str | None = None, subtype: str | None = None) -> Path:
    """A tone over a little noise; ``fmt``: soundfile's format (NIST, MP3, FLAC...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wave = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t) + 0.01 * rng.standard_normal(len(t))
    sf.write(path, wave.astype(np.float32), rate, format=fmt, subtype=subtype)
    return path


def librispeech(root: Path, parts=("train-clean-100", "dev-clean"), missing_audio: bool = True):
    """LibriSpeech/PART/SPEAKER/CHAPTER/{SPEAKER-CHAPTER-NNNN.flac, SPEAKER-CHAPTER.trans.txt};
    with ``missing_audio`` one transcript line of each part has no .flac."""
    base = root / "LibriSpeech"
    for p, part in enumerate(parts):
        for speaker in (100 + p * 10, 101 + p * 10):
            chapter = 2000 + speaker
            folder = base / part / str(speaker) / str(chapter)
            lines = []
            for n in range(2):
                uid = f"{speaker}-{chapter}-{n:04d}"
                audio(folder / f"{uid}.flac", 0.3 + 0.1 * n, seed=n)
                lines.append(f"{uid} HELLO WORLD NUMBER {n}")
            if missing_audio and speaker % 10 == 1:
                lines.append(f"{speaker}-{chapter}-0009 THIS ONE HAS NO AUDIO")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


CV_HEADER = ("client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\t"
             "locale\tsegment")


def commonvoice(root: Path, language: str = "en", missing_audio: bool = True) -> Path:
    """cv-corpus/LANG/{train,dev,test}.tsv and clips/*.mp3 (MP3, as Common Voice ships)."""
    folder = root / "cv-corpus-20.0" / language
    for s, split in enumerate(("train", "dev", "test")):
        rows = [CV_HEADER]
        for n in range(3 if split == "train" else 2):
            name = f"common_voice_{language}_{s}{n:03d}.mp3"
            audio(folder / "clips" / name, 0.5, rate=24000 if n else 48000, seed=n, fmt="MP3")
            rows.append(f"client{n}\t{name}\tHello, world {n}!\t2\t0\t\t\t\t\t{language}\t")
        if missing_audio and split == "train":
            rows.append(f"client9\tcommon_voice_{language}_gone.mp3\tNo audio.\t2\t0\t\t\t\t\t{language}\t")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root / "cv-corpus-20.0"


def tedlium(root: Path) -> Path:
    """TEDLIUM_release-3/legacy/{train,dev,test}/{sph,stm}/TALK.{sph,stm}: one 3 s talk
    per part with two scored segments and one ``ignore_time_segment_in_scoring``."""
    base = root / "TEDLIUM_release-3"
    for p, part in enumerate(("train", "dev", "test")):
        talk = f"Speaker{p}_2010"
        audio(base / "legacy" / part / "sph" / f"{talk}.sph", 3.0, seed=p, fmt="NIST", subtype="PCM_16")
        stm = [f"{talk} 1 {talk} 0.10 1.20 <o,f0,male> hello there world",
               f"{talk} 1 {talk} 1.20 1.60 <o,f0,male> ignore_time_segment_in_scoring",
               f"{talk} 1 {talk} 1.60 2.90 <o,f0,male> a second segment {{NOISE}}"]
        stm_path = base / "legacy" / part / "stm" / f"{talk}.stm"
        stm_path.parent.mkdir(parents=True, exist_ok=True)
        stm_path.write_text("\n".join(stm) + "\n")
    return base


def timit(root: Path, missing_transcript: bool = True) -> Path:
    """TIMIT/data/{TRAIN,TEST}/DR1/SPEAKER/SX1.{WAV,TXT,WRD,PHN}; NIST SPHERE audio. TEST
    speakers are from lhotse's dev and core-test lists."""
    from lhotse.recipes.timit import get_speakers

    dev_speakers, test_speakers = get_speakers()
    base = root / "TIMIT"
    speakers = [("TRAIN", "FCJF0"), ("TRAIN", "MDAB0"), ("TEST", dev_speakers[0].upper()),
                ("TEST", test_speakers[0].upper())]
    for i, (part, speaker) in enumerate(speakers):
        folder = base / "data" / part / "DR1" / speaker
        wav = audio(folder / "SX1.WAV", 0.5, seed=i, fmt="NIST", subtype="PCM_16")
        samples = sf.info(wav).frames
        (folder / "SX1.TXT").write_text(f"0 {samples} She had your dark suit.\n")
        half = samples // 2
        (folder / "SX1.WRD").write_text(f"0 {half} she\n{half} {samples} had\n")
        (folder / "SX1.PHN").write_text(f"0 {half} sh\n{half} {samples} iy\n")
    if missing_transcript:  # a sentence whose .PHN is missing
        folder = base / "data" / "TRAIN" / "DR1" / "FCJF0"
        wav = audio(folder / "SX2.WAV", 0.5, seed=9, fmt="NIST", subtype="PCM_16")
        (folder / "SX2.TXT").write_text(f"0 {sf.info(wav).frames} Orphan.\n")
    return base


def musan(root: Path) -> Path:
    """musan/{noise,music,speech}/SOURCE/*.wav, with music's ANNOTATIONS file."""
    base = root / "musan"
    for i in range(2):
        audio(base / "noise" / "free-sound" / f"noise-free-sound-{i:04d}.wav", 1.0, seed=i)
        audio(base / "speech" / "librivox" / f"speech-librivox-{i:04d}.wav", 1.0, seed=i + 2)
        audio(base / "music" / "jamendo" / f"music-jamendo-{i:04d}.wav", 1.0, seed=i + 4)
    (base / "music" / "jamendo" / "ANNOTATIONS").write_text(
        "music-jamendo-0000 rock Y someone\nmusic-jamendo-0001 jazz N someone\n")
    return base

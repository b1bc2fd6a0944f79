"""Peak memory of the training data path against corpus size: lazy manifests.

    python benchmarks/manifest_memory.py --audio ../shared/data/fsdd/recordings \
        [--sizes 10000 1000000] [--batches 200] [--out /tmp/manifest-memory]

For each size N a manifest of N cuts is written (ids of their own, each pointing at one
of the real audio files under --audio, in turn), then a fresh process runs what
``earshot train`` does with a training manifest before and while it trains: open and
check it (``load_data``: lazy, one pass), train the character tokenizer on its texts,
draw the epoch's batches through the bucketing sampler and write them down (the epoch
plan, which also gives the progress bar's total), load the first --batches batches of
audio through the training loader, shuffled, and then resume: a fresh loader that starts
the epoch 10 batches before its end and loads one batch. Printed per size: seconds of
each stage and the process's peak resident set size (VmHWM). The model and its optimizer take the same memory whatever the corpus
size, so they are left out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = "zero one two three four five six seven eight nine".split()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(Path(args.audio).rglob("*.wav"))[: args.files]
    if not files:
        print(f"no .wav files under {args.audio}", file=sys.stderr)
        return 2
    rows = []
    for size in args.sizes:
        manifest = out / f"train-{size}.jsonl.gz"
        start = time.perf_counter()
        write_manifest(manifest, files, size)
        written = time.perf_counter() - start
        result = subprocess.run([sys.executable, __file__, "--child", str(manifest),
                                 "--batches", str(args.batches)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            return 1
        row = json.loads(result.stdout.strip().splitlines()[-1])
        row.update(cuts=size, write_s=round(written, 1),
                   manifest_mb=round(manifest.stat().st_size / 2**20, 1))
        rows.append(row)
    print(f"{len(files)} audio files under {args.audio}; {args.batches} batches loaded")
    keys = ("cuts", "manifest_mb", "write_s", "open_s", "tokenizer_s", "plan_s", "batches_s",
            "resume_s", "epoch_batches", "peak_rss_mb")
    print("  ".join(f"{k:>13}" for k in keys))
    for row in rows:
        print("  ".join(f"{row[k]:>13,}" if isinstance(row[k], int) else f"{row[k]:>13}"
                        for k in keys))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def write_manifest(path: Path, files: list[Path], size: int) -> None:
    """``size`` cuts over ``files`` in turn, written line by line (never all in memory)."""
    from earshot.audio import audio_info

    infos = [(str(f.resolve()), audio_info(f)) for f in files]
    with gzip.open(path, "wt", compresslevel=1) as handle:
        for i in range(size):
            source, info = infos[i % len(infos)]
            uid = f"utt{i:08d}"
            duration = info.frames / info.sample_rate
            handle.write(json.dumps({
                "id": uid, "start": 0.0, "duration": duration, "channel": 0, "type": "MonoCut",
                "supervisions": [{"id": uid, "recording_id": uid, "start": 0.0,
                                  "duration": duration, "channel": 0, "speaker": f"s{i % 97}",
                                  "text": " ".join(WORDS[int(d)] for d in f"{i % 1000:03d}")}],
                "recording": {"id": uid, "sources": [{"type": "file", "channels": [0],
                                                      "source": source}],
                              "sampling_rate": info.sample_rate, "num_samples": info.frames,
                              "duration": duration, "channel_ids": [0]}}) + "\n")


def child(manifest: str, batches: int) -> None:
    """What the trainer does with the manifest; one JSON line of timings and peak RSS."""
    import torch

    from earshot.config import ExperimentConfig, TokenizerConfig, replace
    from earshot.data.batching import batches_in_epoch, make_loader, set_epoch
    from earshot.tokenizer import train_tokenizer
    from earshot.train.meters import max_rss_mb
    from earshot.train.tasks.asr import load_data

    torch.set_num_threads(1)
    cfg = ExperimentConfig()
    cfg = replace(cfg, data=replace(cfg.data, train=manifest, dev=manifest, max_duration=60.0))
    row, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        row[name] = round(now - clock, 1)
        clock = now

    train_cuts, _ = load_data(cfg)
    lap("open_s")
    tokenizer = train_tokenizer((c.supervisions[0].text for c in train_cuts), TokenizerConfig())
    lap("tokenizer_s")
    plans = Path(manifest).with_suffix(".plans")

    def loader():
        return make_loader(train_cuts, tokenizer, 8000, cfg.data.max_duration, shuffle=True,
                           seed=1, keep_empty=True, plan_dir=plans)

    first = loader()
    row["epoch_batches"] = batches_in_epoch(first, 1)
    lap("plan_s")
    set_epoch(first, 1)
    for i, _ in enumerate(first):
        if i + 1 == batches:
            break
    lap("batches_s")
    resumed = loader()
    set_epoch(resumed, 1, skip=row["epoch_batches"] - 10)
    next(iter(resumed))
    lap("resume_s")
    row["peak_rss_mb"] = max_rss_mb()
    print(json.dumps(row))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--audio", default="../shared/data/fsdd/recordings",
                   help="folder of real .wav files the cuts point at")
    p.add_argument("--files", type=int, default=50, help="use this many of them")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--batches", type=int, default=200, help="batches of audio to load")
    p.add_argument("--out", default="/tmp/earshot-manifest-memory")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = parse_args(sys.argv[1:])
    if ns.child:
        child(ns.child, ns.batches)
        sys.exit(0)
    sys.exit(main())

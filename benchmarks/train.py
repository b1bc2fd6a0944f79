"""Training throughput of the real engine: audio-seconds/s, utterances/s and peak memory.

    python benchmarks/train.py --manifest data/an4/train.jsonl.gz \
        --configs recipes/an4/crdnn.yaml recipes/an4/conformer.yaml \
        --precisions fp32 bf16 --procs 1 2 --utts 160

For each (config, precision, processes) this runs ``earshot train`` for one epoch on the
first ``--utts`` utterances of the manifest (through ``torchrun`` with gloo for 2
processes; each process gets ``cores / processes`` threads), and reads the engine's own
``step`` rows from ``metrics.jsonl``: audio-seconds and utterances per second of the whole
job (all ranks), medians over the steps after the first ``--warmup``, and rank 0's peak
resident memory. Data loading, augmentation and the optimizer are in the numbers; the
dev pass is not (its set is 4 utterances).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lhotse import CutSet


def run(config: str, precision: str, procs: int, train: Path, dev: Path, work: Path,
        threads: int, warmup: int, extra: list[str]) -> dict:
    exp = work / f"{Path(config).stem}-{precision}-{procs}p"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={procs}"] if procs > 1 else [sys.executable]
    cmd = launcher + ["-m", "earshot.cli", "train", config, f"data.train={train}",
                      f"data.dev={dev}", f"train.exp_dir={exp}", "train.epochs=1",
                      f"train.precision={precision}", f"train.num_threads={threads}",
                      "train.log_every=1", "train.plot_alignments=0", "train.tensorboard=false",
                      "train.average_best=1", *extra]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"][warmup:]
    return {
        "config": Path(config).stem, "precision": precision, "procs": procs, "threads": threads,
        "steps": len(steps),
        "audio_s_per_s": statistics.median(r["audio_seconds_per_second"] for r in steps),
        "utts_per_s": statistics.median(r["utterances_per_second"] for r in steps),
        "peak_rss_mb": max(r["max_rss_mb"] for r in steps), "wall_s": round(wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="training CutSet (jsonl/jsonl.gz)")
    p.add_argument("--configs", nargs="+", default=["recipes/an4/crdnn.yaml", "recipes/an4/conformer.yaml"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--utts", type=int, default=160, help="training utterances (the first N)")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the medians")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("overrides", nargs="*", help="key=value for every run (e.g. data.max_duration=60)")
    args = p.parse_args()
    cuts = CutSet.from_file(args.manifest)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train, dev = work / "train.jsonl.gz", work / "dev.jsonl.gz"
        subset = list(cuts)[: args.utts]
        CutSet.from_cuts(subset).to_file(train)
        CutSet.from_cuts(subset[:4]).to_file(dev)
        hours = sum(c.duration for c in subset) / 3600
        print(f"{len(subset)} utterances ({hours * 60:.1f} min of audio) from {args.manifest}; "
              f"{args.cores} cores")
        print(f"{'config':12s} {'prec':5s} {'procs':>5s} {'thr':>3s} {'steps':>5s} "
              f"{'audio s/s':>9s} {'utt/s':>6s} {'peak RSS MB':>11s} {'wall s':>7s}")
        results = []
        for config in args.configs:
            for precision in args.precisions:
                for procs in args.procs:
                    threads = max(1, args.cores // procs)
                    r = run(config, precision, procs, train, dev, work, threads, args.warmup,
                            args.overrides)
                    results.append(r)
                    print(f"{r['config']:12s} {precision:5s} {procs:5d} {threads:3d} {r['steps']:5d} "
                          f"{r['audio_s_per_s']:9.1f} {r['utts_per_s']:6.1f} {r['peak_rss_mb']:11.0f} "
                          f"{r['wall_s']:7.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Loader throughput against what training consumes.

    python benchmarks/data.py --config recipes/an4/conformer.yaml \
        --manifest data/an4/train.jsonl.gz [--workers 0 1 2 4] [--batches 80] [--steps 12]

For each worker count the training loader of the config (its batch budget, buckets,
speed perturbation, noise and reverberation; shuffled) yields --batches batches after a
first one: batches per second and audio-seconds per second, alone on the machine. Then
the config's model trains --steps steps (forward, backward, Adam) on batches loaded
beforehand: the audio-seconds per second training consumes. Also printed: the padding
efficiency of a whole epoch of the config's batches (audio over padded batch size). The ratio says how many
times over a loader keeps training fed; the loader shares the cores with training in a
real run, so the margin is what is needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from earshot.config import load_config
    from earshot.data.batching import make_loader, set_epoch
    from earshot.data.corruption import Corruption
    from earshot.data.manifests import load_cuts
    from earshot.tokenizer import train_tokenizer

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"data.train={args.manifest}", *args.overrides])
    cuts = load_cuts(args.manifest)
    tokenizer = train_tokenizer((c.supervisions[0].text for c in cuts), cfg.tokenizer)
    rate, data = cfg.model.features.sample_rate, cfg.data

    def loader(workers: int):
        made = make_loader(cuts, tokenizer, rate, data.max_duration, shuffle=True, seed=1,
                           num_buckets=data.num_buckets, num_workers=workers,
                           speed_factors=data.speed_perturb,
                           corruption=Corruption.from_config(data, rate))
        set_epoch(made, 1)
        return made

    print(f"{args.config}: max_duration {data.max_duration} s, speed {list(data.speed_perturb)}, "
          f"noise {data.noise.prob}, reverb {data.reverb.prob}; {args.threads} torch threads")
    print(f"{'loader':<22}{'batches/s':>11}{'audio s/s':>11}")
    rows = {}
    for workers in args.workers:
        it = iter(loader(workers))
        next(it)  # workers started, first batch out
        start, seconds, n = time.perf_counter(), 0.0, 0
        for batch in it:
            seconds += float(batch.wav_lens.sum()) / rate
            n += 1
            if n == args.batches:
                break
        elapsed = time.perf_counter() - start
        rows[workers] = seconds / elapsed
        print(f"{f'{workers} workers':<22}{n / elapsed:>11.1f}{seconds / elapsed:>11.1f}")
    efficiency = padding_efficiency(loader(0))
    print(f"padding efficiency of epoch 1 (audio over padded batch size): {100 * efficiency:.1f}%")
    consumed = training_rate(cfg, tokenizer, loader(0), args.steps, rate)
    print(f"{'training consumes':<22}{'':>11}{consumed:>11.1f}")
    best = max(rows, key=rows.get)
    print(f"best: {best} workers, {rows[best] / consumed:.1f}x what training consumes")
    return 0


def padding_efficiency(loader) -> float:
    """Audio over padded batch size, over a whole epoch's batches as the sampler draws
    them (perturbed durations; no audio read)."""
    audio = padded = 0.0
    for cuts in loader.sampler:
        durations = [c.duration for c in cuts]
        audio += sum(durations)
        padded += len(durations) * max(durations)
    return audio / padded


def training_rate(cfg, tokenizer, loader, steps: int, rate: int) -> float:
    """Audio-seconds per second of forward + backward + Adam on preloaded batches."""
    from earshot.models.factory import build_model

    model = build_model(cfg, tokenizer).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == steps + 2:
            break
    seconds, start = 0.0, None
    for i, batch in enumerate(batches):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        out = model(batch, cfg.loss, 0.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if i >= 2:
            seconds += float(batch.wav_lens.sum()) / rate
    return seconds / (time.perf_counter() - start)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a recipe config (its model and data section)")
    p.add_argument("--manifest", required=True, help="training CutSet manifest")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    p.add_argument("--batches", type=int, default=80, help="batches timed per worker count")
    p.add_argument("--steps", type=int, default=12, help="training steps timed")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the training steps")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())

"""Where a training step's time goes, on real batches of a corpus.

    python benchmarks/profile_train.py CONFIG [key=value ...] --batches 40 --threads 2

Builds CONFIG's model and training loader exactly as ``earshot train`` does (tokenizer
fitted on the training manifest, global CMVN from the first batches), then runs
``--batches`` training steps under ``torch.profiler`` and prints milliseconds per batch
for each stage (data loading, the model's parts forward: front end, encoder, CTC head,
CTC loss, decoder; backward; optimizer) with its share of the step, and the operators
that took the most time (self time, forward and backward together). ``--json`` writes
the same figures to a file.
"""

import argparse
import json
import time

import torch

from earshot.config import load_config
from earshot.data.batching import make_loader
from earshot.data.manifests import load_cuts
from earshot.models.factory import build_model
from earshot.tokenizer import train_tokenizer
from earshot.train.optim import build_optimizer
from earshot.train.tasks.asr import drop_short_utterances

STAGES = ("data", "frontend", "encoder", "ctc", "ctc_loss", "decoder", "backward", "optimizer")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    cfg = load_config(args.config, args.overrides)
    cuts = load_cuts(cfg.data.train)
    tok = train_tokenizer([c.supervisions[0].text for c in cuts], cfg.tokenizer)
    model = build_model(cfg, tok)
    loader = make_loader(cuts, tok, model.sample_rate, cfg.data.max_duration, shuffle=True,
                         num_buckets=cfg.data.num_buckets, num_workers=cfg.data.num_workers,
                         seed=cfg.train.seed, speed_factors=tuple(cfg.data.speed_perturb))
    acc = model.new_statistics()
    if acc is not None:
        for i, batch in zip(range(20), loader):
            model.accumulate_statistics(acc, batch.wavs, batch.wav_lens)
        model.set_statistics(acc)
    optimizer = build_optimizer(model, cfg.optim)
    model.train()
    batches = iter(loader)
    audio = [0.0]

    def step():
        with torch.autograd.profiler.record_function("data"):
            batch = drop_short_utterances(model, next(batches))
        audio[0] += float(batch.wav_lens.sum()) / model.sample_rate
        out = model(batch, cfg.loss)
        with torch.autograd.profiler.record_function("backward"):
            out.loss.backward()
        with torch.autograd.profiler.record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or 1e9)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    audio[0] = 0.0
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.batches):
            step()
    wall = (time.perf_counter() - start) * 1000 / args.batches
    events = prof.key_averages()
    spent = {e.key: e.cpu_time_total / args.batches / 1000 for e in events}
    stages = {name: spent.get(name, 0.0) for name in STAGES}
    other = wall - sum(stages.values())
    print(f"{cfg.model.encoder.type}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
          f"params, {args.batches} batches ({audio[0] / args.batches:.1f} s of audio each), "
          f"{torch.get_num_threads()} threads; under the profiler {wall:.1f} ms per batch, "
          f"{audio[0] / args.batches / wall * 1000:.1f} audio-s/s")
    for name, ms in [*stages.items(), ("other", other)]:
        print(f"  {name:10s} {ms:8.1f} ms  {100 * ms / wall:5.1f} %")
    ops = sorted((e for e in events if e.key not in STAGES and not e.key.startswith("ProfilerStep")),
                 key=lambda e: -e.self_cpu_time_total)[: args.top]
    print("operators by self time (ms per batch):")
    for e in ops:
        print(f"  {e.self_cpu_time_total / args.batches / 1000:8.2f}  {e.count // args.batches:5d}x  {e.key}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "overrides": args.overrides, "ms_per_batch": wall,
                       "stages_ms": stages, "other_ms": other,
                       "ops_self_ms": {e.key: e.self_cpu_time_total / args.batches / 1000 for e in ops}},
                      f, indent=2)


if __name__ == "__main__":
    main()

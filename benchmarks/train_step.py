"""Time one training step of a recipe's model, split into its parts.

    python benchmarks/train_step.py recipes/an4/crdnn.yaml --seconds 60 --utts 16 [key=value ...]

Prints milliseconds for the model's parts (front end, encoder, CTC head, CTC loss,
decoder: the ``record_function`` scopes of ``EncoderDecoderASR``, read from
``torch.profiler``) and for a whole training step (forward + backward) on a synthetic
batch of ``--utts`` utterances of ``--seconds`` total audio. Works for every encoder type.
"""

import argparse
import time

import torch

from earshot.config import load_config
from earshot.data.batching import Batch
from earshot.models.asr import EncoderDecoderASR


def timed(fn, repeat=3):
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return out, (time.perf_counter() - start) / repeat * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--utts", type=int, default=24)
    p.add_argument("--tokens-per-second", type=float, default=12.0)
    p.add_argument("--vocab", type=int, default=40)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    cfg = load_config(args.config, args.overrides)
    model = EncoderDecoderASR(cfg.model, args.vocab, dict(blank=0, pad=1, unk=2, bos=3, eos=4))
    sr = model.sample_rate
    per = args.seconds / args.utts
    s = int(per * sr)
    u = max(1, int(per * args.tokens_per_second))
    batch = Batch(ids=[str(i) for i in range(args.utts)], wavs=torch.randn(args.utts, s) * 0.1,
                  wav_lens=torch.full((args.utts,), s), texts=[""] * args.utts,
                  tokens=torch.randint(5, args.vocab, (args.utts, u)),
                  token_lens=torch.full((args.utts,), u))
    params = sum(p.numel() for p in model.parameters())
    print(f"params {params / 1e6:.2f} M ({cfg.model.encoder.type}), batch {args.utts} x "
          f"{per:.2f} s, {u} tokens each, threads {torch.get_num_threads()}")
    model.train()

    def step():
        model.zero_grad()
        out = model(batch, cfg.loss)
        out.loss.backward()

    _, t_step = timed(step)
    repeat = 3
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            step()
    spent = {e.key: e.cpu_time_total / repeat / 1000 for e in prof.key_averages()}
    parts = " | ".join(f"{name} fwd {spent.get(name, 0.0):7.1f}" for name in PARTS)
    frames = int(model.encoded_lengths(batch.wav_lens).max())
    print(f"{parts} | full train step {t_step:7.1f} ms | T'={frames}")


PARTS = ("frontend", "encoder", "ctc", "ctc_loss", "decoder")


if __name__ == "__main__":
    main()

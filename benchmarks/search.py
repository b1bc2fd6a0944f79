"""The search alone: tensor operators a decoder step dispatches, and seconds on encoded batches.

    python benchmarks/search.py --model exp/peer/model --manifest data/fsdd/test.jsonl.gz \
        [--batch-size 1] [--limit 160] [--count-limit 40] [--repeats 5] [--threads 2]

The batches (``decode.py``'s: sorted by duration) are encoded once, outside every figure.
Per mode (``decode.py``'s greedy, beam10, beam10+ctc): the number of tensor operators the
search dispatches per decoder step, counted with a ``TorchDispatchMode`` over the first
``--count-limit`` utterances (views and in-place ops included; an operator that dispatches
others counts once per dispatch), and the search's wall time over all batches, the best of
``--repeats`` passes in this process. Comparing two commits: run this file from each
checkout (a worktree), alternating; the best-of-N time is steadier than one pass, the
operator count does not depend on the host at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import load_batches, modes  # noqa: E402
from earshot.decoding.api import decode_encoded  # noqa: E402
from earshot.models.artifacts import load_model_dir  # noqa: E402


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--manifest", required=True, help="CutSet manifest (.jsonl.gz)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--limit", type=int, default=160, help="utterances timed (0 = all)")
    p.add_argument("--count-limit", type=int, default=40, help="utterances counted")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    cfg, tokenizer, model = load_model_dir(args.model, device=torch.device("cpu"))
    model.eval()
    batches, _ = load_batches(args.manifest, model.sample_rate, args.batch_size, args.limit,
                              torch.device("cpu"))
    with torch.inference_mode():
        encoded = [model.encode(wavs, lens) for wavs, lens in batches]
    n_count = max(1, -(-args.count_limit // args.batch_size))  # batches counted
    steps = [0]
    step = model.step

    def counted_step(*a, **kw):
        steps[0] += 1
        return step(*a, **kw)

    print(f"{sum(len(e) for e in encoded)} utterances at batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'mode':<12}{'ops/step':>10}{'steps':>8}{'best s':>9}{'all passes s':>30}")
    for name, decode, _ in modes(cfg.decode, None):
        with torch.inference_mode():
            counter, steps[0] = _Count(), 0
            model.step = counted_step
            try:
                with counter:
                    for enc in encoded[:n_count]:
                        decode_encoded(model, enc, decode, tokenizer)
            finally:
                del model.step  # back to the class's method
            passes = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for enc in encoded:
                    decode_encoded(model, enc, decode, tokenizer)
                passes.append(time.perf_counter() - start)
        print(f"{name:<12}{counter.ops / max(steps[0], 1):>10.1f}{steps[0]:>8}"
              f"{min(passes):>9.3f}{' '.join(f'{s:.3f}' for s in passes):>30}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

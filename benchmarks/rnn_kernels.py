"""The recurrent kernel alone: oneDNN's against ATen's own, microseconds a call by length.

    python benchmarks/rnn_kernels.py [--type lstm] [--input 640] [--units 128] [--layers 2] \
        [--unidirectional] [--batch 1] [--lengths 10,20,40,100] [--repeats 200] [--threads 2]

The defaults are the peer-bench model's encoder RNN (2 x 128 bidirectional LSTM on
64 channels x 10 frequency bins). One ``nn.LSTM``/``nn.GRU`` in inference mode, the same
weights and input for both kernels: ``torch.backends.mkldnn`` enabled (what earshot runs
on CPU) and disabled (ATen's per-step loop). Each figure is the mean of ``--repeats``
calls after 20 warm-up calls; the last column is the largest difference between the two
outputs. A call's cost that hardly moves with the length is the kernel's fixed cost (for
oneDNN, mostly reordering the weights into its layout, which it does on every call).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch


def time_call(module: torch.nn.Module, x: torch.Tensor, mkldnn: bool, repeats: int):
    """Mean seconds of one ``module(x)`` with oneDNN on or off, and the output."""
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=mkldnn):
        for _ in range(20):
            out = module(x)[0]
        start = time.perf_counter()
        for _ in range(repeats):
            out = module(x)[0]
        return (time.perf_counter() - start) / repeats, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--type", choices=("lstm", "gru"), default="lstm")
    p.add_argument("--input", type=int, default=640, help="input features a frame")
    p.add_argument("--units", type=int, default=128, help="units per direction")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--unidirectional", action="store_true")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lengths", default="10,20,40,100", help="frames, comma-separated")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kind = torch.nn.LSTM if args.type == "lstm" else torch.nn.GRU
    module = kind(args.input, args.units, num_layers=args.layers, batch_first=True,
                  bidirectional=not args.unidirectional).eval()
    directions = 1 if args.unidirectional else 2
    print(f"{args.type} {args.layers} x {args.units} x {directions} directions, input "
          f"{args.input}, batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"{'frames':>7}{'oneDNN us':>11}{'ATen us':>10}{'ATen/oneDNN':>13}{'max diff':>11}")
    for length in (int(n) for n in args.lengths.split(",")):
        x = torch.randn(args.batch, length, args.input)
        with warnings.catch_warnings():  # "TF32 on oneDNN needs an Intel GPU", every flags()
            warnings.simplefilter("ignore", UserWarning)
            fast, a = time_call(module, x, True, args.repeats)
            slow, b = time_call(module, x, False, args.repeats)
        print(f"{length:>7}{fast * 1e6:>11.0f}{slow * 1e6:>10.0f}{slow / fast:>13.2f}"
              f"{(a - b).abs().max().item():>11.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

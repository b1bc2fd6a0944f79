"""``earshot export``: a model directory to ONNX graphs for onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, default=None,
                       help="a model directory (train.exp_dir/model) (this or --lm)")
    which.add_argument("--lm", type=Path, default=None,
                       help="a language model directory (earshot train-lm), exported on its "
                            "own (this or --model)")
    p.add_argument("--out", required=True, type=Path,
                   help="the export directory to write (replaced as a whole), e.g. MODEL.onnx")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="int8 weights (dynamic quantisation): about a third of the size; transcripts "
                        "may change and the speed depends on the CPU (default: float32)")


def run(args: argparse.Namespace) -> int:
    from earshot.errors import ConfigError
    from earshot.export.onnx import export_lm, export_model

    if args.lm is not None:
        if args.quantize:
            raise ConfigError("option --quantize applies to --model exports only")
        out = export_lm(args.lm, args.out)
        print(f"wrote {out}: lm_step.onnx, tokenizer/, manifest.json (give it as --lm)")
        return 0
    out = export_model(args.model, args.out, quantize=args.quantize)
    print(f"wrote {out}: encoder.onnx, decoder_step.onnx, tokenizer/, manifest.json "
          f"(earshot transcribe --onnx {out} ...)")
    return 0

"""``earshot export``: a model directory to ONNX graphs for onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="a model directory (train.exp_dir/model)")
    p.add_argument("--out", required=True, type=Path,
                   help="the export directory to write (replaced as a whole), e.g. MODEL.onnx")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="dynamic int8 weights (smaller, faster on CPU; the transcripts may change)")


def run(args: argparse.Namespace) -> int:
    from earshot.export.onnx import export_model

    out = export_model(args.model, args.out, quantize=args.quantize)
    print(f"wrote {out}: encoder.onnx, decoder_step.onnx, tokenizer/, manifest.json "
          f"(earshot transcribe --onnx {out} ...)")
    return 0

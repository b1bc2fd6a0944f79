"""earshot: train and run joint CTC/attention speech recognisers.

    earshot demo --out exp/demo
    earshot prepare an4 ../shared/data/an4 --out data/an4
    earshot validate recipes/an4/crdnn.yaml        (config, manifests and audio; no training)
    earshot train recipes/an4/crdnn.yaml train.epochs=30 [--resume]
    earshot pretrain recipes/an4/pretrain.yaml     (wav2vec 2.0 on unlabeled audio; earshot[ssl])
    earshot average exp/an4 --best 5         earshot plot exp/an4
    earshot evaluate --model exp/an4/model --manifest data/an4/dev.jsonl.gz --out exp/an4/dev
    earshot transcribe --model exp/an4/model a.wav b.flac
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

from earshot.config import DECODE_MODES, DecodeConfig, replace
from earshot.errors import ConfigError, EarshotError

log = logging.getLogger("earshot")



# ---------------------------------------------------------------------------
# decoding options: one flag per DecodeConfig field, generated from the dataclass


DECODE_HELP = {
    "max_len_ratio": "max output tokens per encoder frame",
    "min_len_ratio": "min output tokens per encoder frame",
    "beam_size": "hypotheses kept per utterance (1 with no CTC/LM weight = greedy)",
    "ctc_weight": "lambda: weight of the CTC prefix score in [0, 1]",
    "lm_weight": "beta: weight of the language model (needs --lm)",
    "length_bonus": "gamma: score added per output token",
    "length_normalize": "rank finished hypotheses by score per token",
    "eos_threshold": "end only if log p(eos) >= this factor times the best log-score (<=0: off)",
    "max_attn_shift": "max frames the attention peak may move per step (0: off)",
    "coverage_weight": "weight of the attention coverage score",
    "temperature": "softmax temperature of the attention decoder",
    "nbest": "hypotheses returned per utterance",
    "ctc_window": "CTC prefix scoring only within this many frames of the attention peak (0: all)",
    "pre_beam": "CTC scores only the decoder's top-k tokens (0: the whole vocabulary)",
    "batch_size": "utterances decoded together",
}


def add_decode_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (defaults: the model's decode section)")
    hints = typing.get_type_hints(DecodeConfig)
    for f in dataclasses.fields(DecodeConfig):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        if tp is bool:
            group.add_argument(flag, dest=f"decode_{f.name}", action=argparse.BooleanOptionalAction,
                               default=None, help=DECODE_HELP.get(f.name))
        else:
            group.add_argument(flag, dest=f"decode_{f.name}", type=tp, default=None,
                               metavar="N", help=DECODE_HELP.get(f.name))
    group.add_argument("--mode", choices=sorted(DECODE_MODES), default="auto",
                       help="auto: greedy for beam 1 without CTC/LM, else joint beam search")
    group.add_argument("--lm", type=Path, default=None, help="language model directory (train-lm)")


def check_device(name: str) -> str:
    """``--device`` as given, or a ConfigError naming the flag when it cannot be used."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"option --device: {name!r} is not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"option --device: {name!r} but no CUDA device is available "
                              f"(torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"option --device: {name!r} but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return name


def decode_config(args: argparse.Namespace, base: DecodeConfig) -> DecodeConfig:
    from earshot.config import validate

    changes = {f.name: getattr(args, f"decode_{f.name}") for f in dataclasses.fields(DecodeConfig)
               if getattr(args, f"decode_{f.name}") is not None}
    cfg = replace(base, **changes)
    try:
        validate(cfg)
    except ConfigError as err:  # name the flag the user typed, not the config key
        for name in changes:
            key = f"config key '{name}'"
            if str(err).startswith(key):
                raise ConfigError(str(err).replace(key, f"option --{name.replace('_', '-')}", 1)) from None
        raise
    return cfg


# ---------------------------------------------------------------------------
# subcommands


def cmd_demo(args) -> int:
    from earshot.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0


def cmd_prepare(args) -> int:
    from earshot.data import manifests

    out = Path(args.out)
    if args.corpus == "synthetic":
        from earshot.data.synth import synthesize_corpus

        synthesize_corpus(out, num_train=args.utterances, seed=args.seed)
        for name in ("train", "dev", "test"):
            print(f"wrote {out / (name + '.jsonl.gz')}")
        return 0
    if args.source is None:
        raise ConfigError(f"prepare {args.corpus}: give the source (a file, or the corpus folder)")
    if args.corpus == "fsdd":
        splits = manifests.prepare_fsdd(args.source, out)
    elif args.corpus == "an4":
        splits = manifests.prepare_an4(args.source, out, dev_speakers=args.dev_speakers)
    else:
        splits = manifests.prepare_csv(args.source, out, dev_fraction=args.dev_fraction,
                                       audio_root=args.audio_root, kind="." + args.corpus)
    for name in splits:  # counts and hours are logged by the importer
        print(f"wrote {out / (name + '.jsonl.gz')}")
    return 0


def cmd_train(args) -> int:
    from earshot.config import load_config
    from earshot.train.trainer import train

    cfg = load_config(args.config, args.overrides)
    model_dir = train(cfg, resume=args.resume)
    print(f"model: {model_dir}")
    return 0


def cmd_validate(args) -> int:
    from earshot.config import load_config
    from earshot.validate import format_report, validate_experiment

    report = validate_experiment(load_config(args.config, args.overrides), decode=args.decode_audio)
    print(format_report(report))
    if not report.ok:
        empty = ", ".join(s.name for s in report.splits if s.usable == 0)
        print(f"error: no usable cut in {empty}: earshot train would stop", file=sys.stderr)
        return 2
    print("ok: earshot train would start" + (" (skipping the cuts above)"
                                             if any(s.skipped for s in report.splits) else ""))
    return 0


def cmd_average(args) -> int:
    from earshot.train.trainer import average_experiment

    device = check_device(args.device)
    print(f"model: {average_experiment(args.exp_dir, args.best, args.last, args.out, device)}")
    return 0


def cmd_plot(args) -> int:
    from earshot.train.monitor import plot_curves

    print(plot_curves(args.exp_dir, args.out))
    return 0


def cmd_train_lm(args) -> int:
    from earshot.config import LMExperimentConfig, load_config
    from earshot.train.lm_trainer import train_lm

    cfg = load_config(args.config, args.overrides, cls=LMExperimentConfig)
    lm_dir = train_lm(cfg, resume=args.resume)
    print(f"language model: {lm_dir}")
    return 0


def cmd_pretrain(args) -> int:
    from earshot.config import PretrainExperimentConfig, load_config
    from earshot.train.pretrain import pretrain

    cfg = load_config(args.config, args.overrides, cls=PretrainExperimentConfig)
    print(f"checkpoint: {pretrain(cfg, resume=args.resume)}")
    return 0


def cmd_evaluate(args) -> int:
    from earshot.inference import evaluate
    from earshot.metrics import format_table
    from earshot.modeldir import CONFIG_FILE, check_model_dir, read_description

    check_model_dir(args.model)
    base = read_description(Path(args.model) / CONFIG_FILE)[0].decode
    decode = decode_config(args, base)
    rates = evaluate(args.model, args.manifest, args.out, decode, lm_dir=args.lm,
                     mode=args.mode, device=check_device(args.device))
    print(format_table([{"set": Path(args.manifest).name, **rates.to_dict()}]))
    print(f"report: {Path(args.out) / 'summary.json'}")
    return 0


def cmd_transcribe(args) -> int:
    from earshot.inference import Transcriber, load_lm_dir, write_nbest

    model = Transcriber.load(args.model, device=check_device(args.device))
    decode = decode_config(args, model.cfg.decode)
    lm = load_lm_dir(args.lm, model) if args.lm else None
    utts = model.transcribe_detailed(args.audio, decode, lm=lm, mode=args.mode, on_error="keep")
    for u in utts:
        if u.error:
            print(f"error: {u.error}", file=sys.stderr)
        elif args.json:
            print(json.dumps({"path": u.id, "text": u.text,
                              "nbest": [{"text": h.text, "score": float(h.score)}
                                        for h in u.hypotheses]}))
        else:
            print(f"{u.id}\t{u.text}")
    decoded = [u for u in utts if not u.error]
    if args.nbest_out:
        write_nbest(Path(args.nbest_out), decoded)
    failed = len(utts) - len(decoded)
    if failed:
        print(f"error: {failed} of {len(utts)} files could not be read (named above); the "
              f"other {len(decoded)} were transcribed", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="earshot", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthesise a spoken corpus, train, evaluate (about 6 min on 2 cores)")
    p.add_argument("--out", default="exp/demo", help="output directory (default: exp/demo)")
    p.add_argument("--quick", action="store_true", help="tiny corpus and 1 epoch: a smoke test")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("prepare", help="corpus -> lhotse CutSet manifests (no downloads)")
    p.add_argument("corpus", choices=["csv", "jsonl", "fsdd", "an4", "synthetic"])
    p.add_argument("source", nargs="?", default=None,
                   help="csv/jsonl file, or the corpus folder for fsdd/an4 (synthetic: none)")
    p.add_argument("--out", required=True, help="output directory for {split}.jsonl.gz")
    p.add_argument("--audio-root", default=None, help="csv/jsonl: base for relative audio paths")
    p.add_argument("--dev-fraction", type=float, default=0.0, help="csv/jsonl: hold out a dev set")
    p.add_argument("--dev-speakers", type=int, default=8, help="an4: speakers held out for dev")
    p.add_argument("--utterances", type=int, default=2000,
                   help="synthetic: training utterances spoken by espeak-ng (the demo's corpus; "
                        "2000 are about 1.2 h)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: texts and voices")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train an ASR model from a YAML config")
    p.add_argument("config", type=Path)
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=5")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate", help="check a training config and its data without training")
    p.add_argument("config", type=Path)
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, as for train")
    p.add_argument("--decode-audio", action="store_true",
                   help="decode every file (slow; also finds corrupt bodies and NaN samples), "
                        "not only read its header")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("average", help="average a run's saved epoch checkpoints into a model directory")
    p.add_argument("exp_dir", type=Path, help="the run's train.exp_dir")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", type=int, default=0, help="the N epochs with the best dev metric")
    which.add_argument("--last", type=int, default=0, help="the last N epochs")
    p.add_argument("--out", type=Path, default=None, help="default: EXP_DIR/model-bestN or -lastN")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("plot", help="draw loss / WER / lr curves of a run to EXP_DIR/plots/curves.png")
    p.add_argument("exp_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: EXP_DIR/plots/curves.png")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("train-lm", help="train an RNN language model with a model's tokenizer")
    p.add_argument("config", type=Path)
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.asr_model=DIR")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_train_lm)

    p = sub.add_parser("pretrain", help="self-supervised wav2vec 2.0 pretraining on unlabeled audio "
                                        "(needs earshot[ssl])")
    p.add_argument("config", type=Path)
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.train=[a.jsonl.gz,wavs/]")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("evaluate", help="decode a manifest; write WER/CER report and alignments")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cpu")
    add_decode_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("transcribe", help="print transcripts of audio files")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("audio", nargs="+", type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.add_argument("--nbest-out", type=Path, default=None, help="write n-best JSONL here")
    add_decode_args(p)
    p.set_defaults(func=cmd_transcribe)
    return parser


def _version() -> str:
    from earshot import __version__

    return f"earshot {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except EarshotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""earshot: train and run joint CTC/attention speech recognisers.

    earshot demo --out exp/demo
    earshot prepare an4 /corpora/an4 --out data/an4
    earshot validate recipes/an4/crdnn.yaml        (config, manifests and audio; no training)
    earshot train recipes/an4/crdnn.yaml train.epochs=30 [--resume]
    earshot pretrain recipes/an4/pretrain.yaml     (wav2vec 2.0 on unlabeled audio; earshot[ssl])
    earshot average exp/an4 --best 5         earshot plot exp/an4
    earshot evaluate --model exp/an4/model --manifest data/an4/dev.jsonl.gz --out exp/an4/dev
    earshot transcribe --model exp/an4/model a.wav b.flac
    earshot serve --model exp/an4/model --port 8000     (HTTP, OpenAI-style; earshot[serve])

Each command parses its arguments, turns them into a config, and calls one library
function; errors a user can fix are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import signal
import sys
import threading
import typing
from pathlib import Path

from earshot.choices import DECODE_MODES
from earshot.config import DecodeConfig, replace
from earshot.errors import ConfigError, EarshotError

log = logging.getLogger("earshot")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help texts with their defaults ("(default: X)" unless the text says it already or
    there is none to say) and the examples epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False
                or default == argparse.SUPPRESS or action.required or action.nargs in ("*", "+")):
            return text
        return f"{text} (default: %(default)s)"


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


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
    """``--beam-size`` etc. (one per DecodeConfig field), ``--mode`` and ``--lm``."""
    group = parser.add_argument_group("decoding (each default: the model's decode section)")
    hints = typing.get_type_hints(DecodeConfig)
    for f in dataclasses.fields(DecodeConfig):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        text = f"{DECODE_HELP[f.name]} (default: the model's; earshot's own: {f.default})"
        if tp is bool:
            group.add_argument(flag, dest=f"decode_{f.name}", action=argparse.BooleanOptionalAction,
                               default=None, help=text)
        else:
            group.add_argument(flag, dest=f"decode_{f.name}", type=tp, default=None,
                               metavar="N", help=text)
    group.add_argument("--mode", choices=DECODE_MODES.names, default="auto",
                       help="the search: " + DECODE_MODES.help())
    group.add_argument("--lm", type=Path, default=None,
                       help="language model directory from train-lm (default: none)")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, else mps, else CPU), cpu, cuda, cuda:N or mps")


def add_config_args(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("config", type=Path, help="the YAML config (a recipe, e.g. recipes/...)")
    parser.add_argument("overrides", nargs="*",
                        help=f"key.sub=value overrides of the config, e.g. {example}")


def decode_config(args: argparse.Namespace, base: DecodeConfig) -> DecodeConfig:
    """The model's decoding settings with the flags given; an error names the flag."""
    from earshot.config import check

    changes = {f.name: getattr(args, f"decode_{f.name}") for f in dataclasses.fields(DecodeConfig)
               if getattr(args, f"decode_{f.name}") is not None}
    cfg = replace(base, **changes)
    try:
        check(cfg)
    except ConfigError as err:  # name the flag the user typed, not the config key
        for name in changes:
            key = f"config key '{name}'"
            if str(err).startswith(key):
                raise ConfigError(str(err).replace(key, f"option --{name.replace('_', '-')}", 1)) from None
        raise
    return cfg


def device_of(args: argparse.Namespace) -> str:
    """``--device``, checked against this machine (the torch device's name)."""
    from earshot.devices import resolve_device

    return str(resolve_device(args.device, "option --device"))


# ---------------------------------------------------------------------------
# subcommands


def cmd_demo(args: argparse.Namespace) -> int:
    from earshot.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from earshot.data.command import run_prepare

    return run_prepare(args)


def cmd_corrupt(args: argparse.Namespace) -> int:
    from earshot.data.command import run_corrupt

    return run_corrupt(args)


def cmd_shard(args: argparse.Namespace) -> int:
    from earshot.data.command import run_shard

    return run_shard(args)


def cmd_train(args: argparse.Namespace) -> int:
    from earshot.config import load_config
    from earshot.train.tasks.asr import train

    cfg = load_config(args.config, args.overrides)
    model_dir = train(cfg, resume=args.resume)
    print(f"model: {model_dir}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
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


def cmd_average(args: argparse.Namespace) -> int:
    from earshot.train.average import average_experiment

    device = device_of(args)
    print(f"model: {average_experiment(args.exp_dir, args.best or 0, args.last or 0, args.out, device)}")
    return 0


def run_dir(path: Path) -> Path:
    """The run directory holding ``metrics.jsonl``: ``path`` itself, or the single run
    below it (``earshot demo --out DIR`` trains in ``DIR/train``)."""
    if (path / "metrics.jsonl").is_file() or not path.is_dir():
        return path
    found = sorted(p.parent for p in path.glob("*/metrics.jsonl"))
    return found[0] if len(found) == 1 else path


def cmd_plot(args: argparse.Namespace) -> int:
    from earshot.train.monitor import plot_curves

    print(plot_curves(run_dir(args.exp_dir), args.out))
    return 0


def cmd_train_lm(args: argparse.Namespace) -> int:
    from earshot.config import LMExperimentConfig, load_config
    from earshot.train.tasks.lm import train_lm

    cfg = load_config(args.config, args.overrides, cls=LMExperimentConfig)
    lm_dir = train_lm(cfg, resume=args.resume)
    print(f"language model: {lm_dir}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from earshot.config import PretrainExperimentConfig, load_config
    from earshot.train.tasks.pretrain import pretrain

    cfg = load_config(args.config, args.overrides, cls=PretrainExperimentConfig)
    print(f"checkpoint: {pretrain(cfg, resume=args.resume)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from earshot.inference import evaluate
    from earshot.metrics import format_table
    from earshot.models.artifacts import check_model_dir, CONFIG_FILE, read_description

    from earshot.export.runtime import check_export_dir, is_export_dir

    (check_export_dir if is_export_dir(args.model) else check_model_dir)(args.model)
    base = read_description(Path(args.model) / CONFIG_FILE)[0].decode
    decode = decode_config(args, base)
    rates = evaluate(args.model, args.manifest, args.out, decode, lm_dir=args.lm,
                     mode=args.mode, device=device_of(args))
    print(format_table([{"set": Path(args.manifest).name, **rates.to_dict()}]))
    print(f"report: {Path(args.out) / 'summary.json'}")
    return 0


def tsv_field(text: str) -> str:
    """``text`` for one field of a tab-separated line: backslash, tab, newline and carriage
    return written as ``\\``, ``\\t``, ``\\n``, ``\\r`` (--json keeps paths as they are)."""
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def cmd_export(args: argparse.Namespace) -> int:
    from earshot.export.command import run

    return run(args)


def cmd_transcribe(args: argparse.Namespace) -> int:
    from earshot.inference import Transcriber
    from earshot.inference.command import run

    if args.onnx is not None:
        from earshot.export.runtime import check_export_dir

        check_export_dir(args.onnx)
    model = Transcriber.load(args.onnx or args.model, device=device_of(args))
    options = {f.name: getattr(args, f"decode_{f.name}") for f in dataclasses.fields(DecodeConfig)
               if getattr(args, f"decode_{f.name}") is not None}
    return run(args, model, options)


def cmd_serve(args: argparse.Namespace) -> int:
    from earshot.serve.command import run

    return run(args)


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="earshot", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter,
                                     epilog=examples("earshot demo", "earshot COMMAND --help"))
    parser.add_argument("--version", action="version", version=_version(),
                        help="print earshot's version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, *example_lines: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter,
                              epilog=examples(*example_lines))

    p = command("demo", "synthesise a spoken corpus, train, evaluate (about 6 min on 2 cores)",
                "earshot demo", "earshot demo --quick --out /tmp/demo")
    p.add_argument("--out", type=Path, default=Path("exp/demo"),
                   help="output directory: data/, train/ (the run), model/, summary.json")
    p.add_argument("--quick", action="store_true", help="tiny corpus and 1 epoch: a smoke test")
    p.add_argument("--seed", type=int, default=0, help="seeds the corpus (texts, voices) and training")
    p.set_defaults(func=cmd_demo)

    from earshot.data import command as data_commands

    p = command("prepare", "corpus -> lhotse CutSet manifests OUT/{split}.jsonl.gz (no downloads)",
                "earshot prepare fsdd /corpora/fsdd --out data/fsdd",
                "earshot prepare csv my_corpus.csv --out data/mine --dev-fraction 0.1")
    data_commands.add_prepare_arguments(p)
    p.set_defaults(func=cmd_prepare)

    p = command("corrupt", "a noisy and/or reverberant copy of a manifest's audio (test sets)",
                "earshot corrupt data/fsdd/test.jsonl.gz --noise data/musan/noise.jsonl.gz "
                "--snr-db 5 --out data/fsdd/test-snr5",
                "earshot corrupt data/an4/dev.jsonl.gz --reverb simulated --out data/an4/dev-reverb")
    data_commands.add_corrupt_arguments(p)
    p.set_defaults(func=cmd_corrupt)

    p = command("shard", "a manifest's cuts and audio (FLAC) in lhotse Shar shards, read "
                         "sequentially in training",
                "earshot shard data/an4/train.jsonl.gz --out data/an4/train_shards",
                "earshot train recipes/an4/crdnn.yaml data.train=data/an4/train_shards",
                "earshot shard --verify data/an4/train_shards")
    data_commands.add_shard_arguments(p)
    p.set_defaults(func=cmd_shard)

    p = command("train", "train an ASR model from a YAML config",
                "earshot train recipes/fsdd/crdnn.yaml train.epochs=30",
                "earshot train recipes/fsdd/crdnn.yaml --resume")
    add_config_args(p, "train.epochs=5")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_train)

    p = command("validate", "check a training config and its data without training",
                "earshot validate recipes/an4/crdnn.yaml",
                "earshot validate recipes/an4/crdnn.yaml --decode-audio")
    add_config_args(p, "data.train=data/mine/train.jsonl.gz")
    p.add_argument("--decode-audio", action="store_true",
                   help="decode every file (slow; also finds corrupt bodies and NaN samples), "
                        "not only read its header")
    p.set_defaults(func=cmd_validate)

    p = command("average", "average a run's saved epoch checkpoints into a model directory",
                "earshot average exp/an4 --best 5", "earshot average exp/an4 --last 3 --out exp/an4/avg")
    p.add_argument("exp_dir", type=Path, help="the run's train.exp_dir")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", type=int, default=None,
                       help="the N epochs with the best dev metric (this or --last)")
    which.add_argument("--last", type=int, default=None, help="the last N epochs (this or --best)")
    p.add_argument("--out", type=Path, default=None, help="default: EXP_DIR/model-bestN or -lastN")
    add_device_arg(p)
    p.set_defaults(func=cmd_average)

    p = command("plot", "draw loss / WER / lr curves of a run to EXP_DIR/plots/curves.png",
                "earshot plot exp/an4", "earshot plot exp/demo --out curves.png")
    p.add_argument("exp_dir", type=Path,
                   help="the run's train.exp_dir (holding metrics.jsonl), or a folder with one "
                        "run below it, as earshot demo --out writes")
    p.add_argument("--out", type=Path, default=None, help="default: EXP_DIR/plots/curves.png")
    p.set_defaults(func=cmd_plot)

    p = command("train-lm", "train an RNN language model with a model's tokenizer",
                "earshot train-lm recipes/an4/lm.yaml data.asr_model=exp/an4/model",
                "earshot train-lm recipes/an4/lm.yaml --resume")
    add_config_args(p, "data.asr_model=DIR")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_train_lm)

    p = command("pretrain", "self-supervised wav2vec 2.0 pretraining on unlabeled audio "
                            "(needs earshot[ssl])",
                "earshot pretrain recipes/an4/pretrain.yaml",
                "earshot pretrain recipes/an4/pretrain.yaml 'data.train=[a.jsonl.gz,wavs/]'")
    add_config_args(p, "data.train=[a.jsonl.gz,wavs/]")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_pretrain)

    p = command("evaluate", "decode a manifest; write WER/CER report and alignments",
                "earshot evaluate --model exp/an4/model --manifest data/an4/dev.jsonl.gz --out exp/an4/dev",
                "earshot evaluate ... --beam-size 10 --ctc-weight 0.4 --lm exp/an4/lm --lm-weight 0.3")
    p.add_argument("--model", required=True, type=Path,
                   help="a model directory (train.exp_dir/model) or an ONNX export of one")
    p.add_argument("--manifest", required=True, type=Path,
                   help="a CutSet manifest with transcripts (.jsonl.gz from earshot prepare)")
    p.add_argument("--out", required=True, type=Path,
                   help="report directory: summary.json, hypotheses.jsonl, alignments")
    add_device_arg(p)
    add_decode_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = command("export", "write ONNX graphs of a model for onnxruntime (needs earshot[onnx])",
                "earshot export --model exp/an4/model --out exp/an4/model.onnx",
                "earshot export --model exp/an4/model --out exp/an4/int8.onnx --quantize int8",
                "earshot export --lm exp/an4/lm --out exp/an4/lm.onnx")
    from earshot.export.command import add_arguments as add_export_arguments

    add_export_arguments(p)
    p.set_defaults(func=cmd_export)

    p = command("transcribe", "transcribe recordings of any length: one 'path<TAB>text' line each\n"
                              "(a tab, newline or backslash in them written as \\t, \\n, \\\\),\n"
                              "and with --output-format txt/json/srt/vtt/tsv files",
                "earshot transcribe --model exp/an4/model a.wav b.flac",
                "earshot transcribe --model exp/an4/model --beam-size 10 --ctc-weight 0.4 --json a.wav",
                "earshot transcribe --model exp/an4/model --word-timestamps --output-format srt "
                "--output-dir subs/ --recursive recordings/",
                "cat talk.flac | earshot transcribe --model exp/an4/model -")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, default=None,
                       help="a model directory (train.exp_dir/model) or an ONNX export (this or --onnx)")
    which.add_argument("--onnx", type=Path, default=None,
                       help="an ONNX export (earshot export): decode on onnxruntime (this or --model)")
    add_device_arg(p)
    from earshot.inference.command import add_arguments

    add_arguments(p)
    add_decode_args(p)
    p.set_defaults(func=cmd_transcribe)

    p = command("serve", "serve a model over HTTP: POST /v1/audio/transcriptions (as OpenAI's), "
                         "batching concurrent requests (needs earshot[serve])",
                "earshot serve --model exp/an4/model",
                "earshot serve --model exp/an4/model --host 0.0.0.0 --port 9000 --max-batch-size 32",
                "earshot serve --model exp/an4/model --beam-size 10 --ctc-weight 0.3")
    from earshot.serve.command import add_arguments as add_serve_arguments

    add_serve_arguments(p)
    add_device_arg(p)
    add_decode_args(p)
    p.set_defaults(func=cmd_serve)
    return parser


def _version() -> str:
    from earshot import __version__

    return f"earshot {__version__}"


def describe_os_error(err: OSError) -> str:
    """"PATH: reason" of a filesystem fault (disk full, read-only, permission denied, a file
    where a folder should be, ...), with what to do for the common ones."""
    path = err.filename if err.filename is not None else "(a file)"
    reason = err.strerror or str(err)
    advice = {errno.ENOSPC: "; free some space or write elsewhere",
              errno.EROFS: "; the filesystem is read-only: write elsewhere",
              errno.EACCES: "; write elsewhere or change its permissions",
              errno.EPERM: "; write elsewhere or change its permissions"}.get(err.errno, "")
    return f"{path}: {reason}{advice}"


def _first_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C: unwind (a run stops where it is; checkpoints are written whole or not at all);
    a second one while unwinding stops the process at once, quietly."""
    signal.signal(signal.SIGINT, _second_interrupt)
    raise KeyboardInterrupt


def _second_interrupt(signum: int, frame: object) -> None:
    sys.stderr.write("interrupted again: stopping now\n")
    sys.stderr.flush()
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    handles = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _first_interrupt) if handles else None
    try:
        return args.func(args)
    except EarshotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a filesystem fault: one line naming the path
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if handles:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())

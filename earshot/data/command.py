"""``earshot prepare``, ``earshot corrupt`` and ``earshot shard``: their options and what
they run (the data commands; ``earshot.cli`` registers them)."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

from earshot.choices import PREPARERS
from earshot.errors import ConfigError, EarshotError


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", choices=PREPARERS.names, metavar="CORPUS",
                   help="one of: " + PREPARERS.help())
    p.add_argument("source", nargs="?", default=None,
                   help="the csv/jsonl file, or the corpus folder (synthetic: none)")
    p.add_argument("--out", required=True, help="output directory for {split}.jsonl.gz")
    p.add_argument("--audio-root", default=None,
                   help="csv/jsonl: base for relative audio paths (default: the file's folder)")
    p.add_argument("--dev-fraction", type=float, default=None,
                   help="csv/jsonl: hold out this share as dev (default: 0, one cuts.jsonl.gz)")
    p.add_argument("--dev-speakers", type=int, default=None,
                   help="an4: speakers held out for dev (default: 8)")
    p.add_argument("--utterances", type=int, default=None,
                   help="synthetic: training utterances spoken by espeak-ng (default: 2000, "
                        "about 1.2 h)")
    p.add_argument("--seed", type=int, default=None,
                   help="csv/jsonl/an4: the dev split's draw; synthetic: texts and voices; "
                        "--shuffle: the order (default: 0)")
    p.add_argument("--shuffle", action="store_true",
                   help="write the training split(s) in a seeded random order (--seed): lazily "
                        "read manifests are shuffled only within a buffer")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="also write each split as Shar shards of N cuts, OUT/SPLIT_shards/ "
                        "(as earshot shard does; default: none)")
    p.add_argument("--language", default=None,
                   help="commonvoice: the language folder to prepare where a release holds "
                        "several (default: the only one there)")


def add_corrupt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, help="a CutSet manifest (.jsonl.gz)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder: audio/*.flac, cuts.jsonl.gz, summary.json")
    p.add_argument("--noise", default=None,
                   help="noise audio: a folder of files or a manifest (earshot prepare musan; "
                        "default: no noise)")
    p.add_argument("--snr-db", type=float, nargs="+", default=[10.0],
                   help="signal-to-noise ratio in dB, or LOW HIGH to draw it per utterance "
                        "(default: 10)")
    p.add_argument("--reverb", default=None,
                   help="room impulse responses: a folder of files, a manifest, or 'simulated' "
                        "(default: no reverberation)")
    p.add_argument("--rt60", type=float, nargs=2, default=[0.2, 0.8],
                   help="simulated responses' reverberation time range in seconds "
                        "(default: 0.2 0.8)")
    p.add_argument("--seed", type=int, default=0, help="seeds every draw (with each cut's id)")


def add_shard_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, nargs="?", default=None,
                   help="a CutSet manifest (.jsonl.gz)")
    p.add_argument("--out", type=Path, default=None,
                   help="an empty or new folder: cuts.NNNNNN.jsonl.gz, recording.NNNNNN.tar, "
                        "checksums.sha256, sizes.json (default: none; required with MANIFEST)")
    p.add_argument("--shard-size", type=int, default=1000, help="cuts per shard")
    p.add_argument("--verify", type=Path, default=None,
                   help="instead: check every file of this shard folder against its checksum "
                        "(default: none)")


# What ``prepare`` passes on, by the preparer's keyword name: (flag, value) of the options.
PREPARE_OPTIONS = {"dev_fraction": "--dev-fraction", "audio_root": "--audio-root",
                   "dev_speakers": "--dev-speakers", "utterances": "--utterances", "seed": "--seed",
                   "language": "--language"}


def run_prepare(args: argparse.Namespace) -> int:
    from earshot.data.corpora import SUMMARY_FILE, format_summary, shuffle_manifest

    prepare = PREPARERS.load(args.corpus)
    accepted = inspect.signature(prepare).parameters
    options = {}
    for name, flag in PREPARE_OPTIONS.items():
        value = getattr(args, name)
        if name in accepted:
            if value is not None:
                options[name] = value
        elif value is not None and not (name == "seed" and args.shuffle):
            raise ConfigError(f"option {flag}: prepare {args.corpus} does not take it")
    if args.source is None and args.corpus != "synthetic":
        raise ConfigError(f"prepare {args.corpus}: give the source (a file, or the corpus folder)")
    out = Path(args.out)
    splits = prepare(args.source, out, **options)
    if args.shuffle:
        for name in splits:
            if name.startswith("train"):
                shuffle_manifest(out / f"{name}.jsonl.gz", args.seed or 0)
    print(format_summary(json.loads((out / SUMMARY_FILE).read_text())))
    for name in splits:
        print(f"wrote {out / (name + '.jsonl.gz')}")
        if args.shards:
            from earshot.data.shards import write_shards

            print(f"wrote {write_shards(out / f'{name}.jsonl.gz', out / f'{name}_shards', args.shards)}")
    print(f"wrote {out / SUMMARY_FILE}")
    return 0


def run_corrupt(args: argparse.Namespace) -> int:
    from earshot.data.corruption import corrupt_manifest

    snr = tuple(args.snr_db) if len(args.snr_db) == 2 else (args.snr_db[0], args.snr_db[0])
    if len(args.snr_db) > 2 or snr[0] > snr[1]:
        raise ConfigError("option --snr-db: one value, or LOW HIGH with LOW <= HIGH")
    written = corrupt_manifest(args.manifest, args.out, args.noise or "", snr, args.reverb or "",
                               tuple(args.rt60), args.seed)
    print(f"wrote {written}")
    return 0


def run_shard(args: argparse.Namespace) -> int:
    from earshot.data.shards import verify_shards, write_shards

    if args.verify is not None:
        problems = verify_shards(args.verify)
        if problems:
            raise EarshotError(f"{len(problems)} shard file(s) fail their checksums: "
                               + "; ".join(problems))
        print(f"{args.verify}: every shard file matches its checksum")
        return 0
    if args.manifest is None or args.out is None:
        raise ConfigError("earshot shard: give MANIFEST and --out (or --verify DIR)")
    out = write_shards(args.manifest, args.out, args.shard_size)
    print(f"wrote {out} (give it as data.train, data.dev or --manifest)")
    return 0

"""``earshot transcribe``: files, lists, folders or standard input to text, subtitles and JSON.

Each input's line goes to standard output as soon as it is transcribed; with
``--output-format`` its files (txt, json, srt, vtt, tsv) are written to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from earshot.errors import ConfigError

SUBTITLE_FORMATS = ("srt", "vtt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``earshot transcribe`` takes besides --model, --device and decoding."""
    p.add_argument("audio", nargs="+",
                   help="audio files (any format soundfile reads), folders of them, @LIST "
                        "(a file with one path a line) or - (audio on standard input)")
    p.add_argument("--recursive", action="store_true",
                   help="also transcribe the audio in the folders below a folder given")
    p.add_argument("--output-format", default=None, metavar="FMT",
                   help="also write files: txt, json, srt, vtt, tsv, all, or a comma list "
                        "(default: none, only the standard output lines)")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="where --output-format files go, one per input and format "
                        "(default: the current directory)")
    p.add_argument("--word-timestamps", action="store_true",
                   help="time every word (CTC forced alignment) in json, srt and vtt output")
    p.add_argument("--max-line-width", type=int, default=None, metavar="N",
                   help="subtitle lines of at most N characters (default: no limit)")
    p.add_argument("--max-words-per-line", type=int, default=None, metavar="N",
                   help="subtitle lines of at most N words (needs --word-timestamps; default: "
                        "no limit)")
    p.add_argument("--max-segment-seconds", type=float, default=None, metavar="S",
                   help="longest stretch decoded at once; longer recordings are cut at pauses "
                        "(default: the longest utterance the model trained on)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per input (segments, words, n-best) instead "
                        "of 'path<TAB>text'")
    p.add_argument("--nbest-out", type=Path, default=None,
                   help="also write the n-best lists as JSONL here (default: not written)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: one on a terminal, counting audio seconds)")


def check_arguments(args: argparse.Namespace) -> tuple[str, ...]:
    """The output formats asked for; a ConfigError naming a flag that cannot apply."""
    from earshot.inference.outputs import expand_formats

    formats = expand_formats(args.output_format) if args.output_format else ()
    if args.output_dir is not None and not formats:
        raise ConfigError("option --output-dir: give --output-format too (e.g. txt, srt, all)")
    subtitles = any(f in SUBTITLE_FORMATS for f in formats)
    for name in ("max_line_width", "max_words_per_line"):
        value = getattr(args, name)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if not subtitles:
            raise ConfigError(f"option {flag} shapes subtitles: give --output-format srt, vtt "
                              f"or all")
        if value < 1:
            raise ConfigError(f"option {flag}: must be at least 1, got {value}")
    if args.max_words_per_line is not None and not args.word_timestamps:
        raise ConfigError("option --max-words-per-line splits lines at word times: give "
                          "--word-timestamps too")
    return formats


def run(args: argparse.Namespace, model, decode_options: dict) -> int:
    """Transcribe ``args.audio`` with ``model`` (a Transcriber); 1 when an input failed."""
    from earshot.inference import write_nbest
    from earshot.inference.outputs import write_outputs
    from earshot.inference.sources import from_cli
    from earshot.inference.transcriber import cli_flag

    formats = check_arguments(args)
    settings = model.settings(None, decode_options, mode=args.mode, lm=args.lm,
                              word_timestamps=args.word_timestamps,
                              max_segment_seconds=args.max_segment_seconds, flag=cli_flag)
    out_dir = args.output_dir or Path(".")
    cue_options = {"max_line_width": args.max_line_width,
                   "max_words_per_line": args.max_words_per_line}
    failed, done, nbest_rows = 0, 0, []
    seen_stems: dict[str, int] = {}
    progress = False if args.no_progress else None
    for result in model.stream(from_cli(args.audio, args.recursive), settings, progress=progress):
        done += 1
        if result.error:
            failed += 1
            print(f"error: {result.error}", file=sys.stderr, flush=True)
            continue
        if args.json:
            print(json.dumps({"path": result.id, **result.to_dict()}, ensure_ascii=False),
                  flush=True)
        else:
            from earshot.cli import tsv_field

            print(f"{tsv_field(result.id)}\t{tsv_field(result.text)}", flush=True)
        if formats:
            stem = _stem(result.id, seen_stems)
            write_outputs(result, out_dir, formats, stem=stem, **cue_options)
        if args.nbest_out:
            nbest_rows.append(result)
    if args.nbest_out:
        write_nbest(args.nbest_out, nbest_rows)
    if failed:
        print(f"error: {failed} of {done} inputs could not be transcribed (named above); the "
              f"other {done - failed} were", file=sys.stderr)
    return 1 if failed else 0


def _stem(source_id: str, seen: dict[str, int]) -> str:
    """A file name for an input's outputs, unique within the run (a.wav twice: a, a-2)."""
    from earshot.inference.outputs import unique_stems

    base = "stdin" if source_id == "-" else unique_stems([source_id])[0]
    count = seen.get(base, 0) + 1
    seen[base] = count
    return base if count == 1 else f"{base}-{count}"

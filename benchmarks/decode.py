"""Decoding speed and memory: greedy vs beam 10 vs beam 10 + CTC vs beam 10 + CTC + LM.

    python benchmarks/decode.py --model exp/an4/model --manifest data/an4/dev.jsonl.gz \
        [--lm exp/an4/lm] [--json bench.json] [--batch-size 16] [--limit 200] [--threads 2] \
        [--profile greedy] [--onnx exp/an4/model.onnx] [--rounds 3]

Audio is loaded into memory first; each mode then encodes and decodes the same batches
(so every mode pays for the encoder, as a user does). Reported per mode: utterances per
second, real-time factor (decode seconds / audio seconds), peak memory (CUDA: peak
allocated; CPU: the kernel's peak resident set size of the process while the mode ran),
and the time relative to greedy. CTC and LM weights come from the
model's decode section when set there, else 0.4 and 0.3. A last row, "encode only", times
the front end, encoder and CTC head alone (what every mode's figure includes), so the
search's share of a mode is its time less that row's. ``--profile MODE`` then runs that
mode's pass once more under ``torch.profiler`` and prints its top operators by self time.
With ``--onnx`` each mode also runs on onnxruntime, and the texts of the two are compared;
both run ``--rounds`` passes in turns (3 by default), and each runtime's time is the sum
over batches of each batch's fastest pass, which gives the speed-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from earshot.data.batching import load_cut_audio  # noqa: E402
from earshot.decoding.api import decode_batch  # noqa: E402
from earshot.models.artifacts import load_model_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    cfg, tokenizer, model = load_model_dir(args.model, device=device)
    model.eval()
    lm = None
    if args.lm:
        from earshot.models.artifacts import load_lm

        lm = load_lm(args.lm, device)
    batches, audio_seconds = load_batches(args.manifest, model.sample_rate,
                                          args.batch_size, args.limit, device)
    onnx_model = None
    if args.onnx:
        from earshot.export.runtime import OnnxASR

        onnx_model = OnnxASR.load(args.onnx)[2]
    rounds = args.rounds or (3 if onnx_model is not None else 1)
    runners = [("", model)] + ([("onnx ", onnx_model)] if onnx_model is not None else [])
    rows = []
    for name, decode, mode_lm in modes(cfg.decode, lm):
        passes = alternate(rounds, runners, lambda prefix, m: measure(
            prefix + name, m, batches, decode, tokenizer, mode_lm, audio_seconds, device))
        rows += passes
        if onnx_model is not None:
            torch_row, onnx_row = passes
            onnx_row["speedup"] = round(torch_row["seconds"] / onnx_row["seconds"], 2)
            onnx_row["texts_differing"] = sum(
                a != b for a, b in zip(torch_row["texts"], onnx_row["texts"]))
    rows += alternate(rounds, runners, lambda prefix, m: measure_encode(
        m, batches, audio_seconds, device, prefix + "encode only"))
    greedy = rows[0]["seconds"]
    for row in rows:
        row["relative_to_greedy"] = round(row["seconds"] / greedy, 3)
    print_table(rows, audio_seconds, sum(len(b[0]) for b in batches))
    if args.profile:
        name, decode, mode_lm = next(m for m in modes(cfg.decode, lm) if m[0] == args.profile)
        print_profile(name, model, batches, decode, tokenizer, mode_lm)
    if args.json:
        keys = ("mode", "rtf", "utt_per_s", "relative_to_greedy", "peak_mem_mb", "speedup",
                "texts_differing")
        Path(args.json).write_text(json.dumps([{k: r[k] for k in keys if k in r} for r in rows],
                                              indent=2))
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--manifest", required=True, help="CutSet manifest (.jsonl.gz)")
    p.add_argument("--lm", default=None, help="language model directory (adds beam10+ctc+lm)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=0, help="first N utterances only (0 = all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--onnx", default=None,
                   help="an earshot export of --model: also decode on onnxruntime and compare")
    p.add_argument("--rounds", type=int, default=0,
                   help="passes per mode and runtime, each batch's fastest kept (0: 3 with --onnx, else 1)")
    p.add_argument("--profile", default=None,
                   choices=("greedy", "beam10", "beam10+ctc", "beam10+ctc+lm"),
                   help="also profile this mode's pass (top operators by self time)")
    args = p.parse_args(argv)
    if args.profile == "beam10+ctc+lm" and not args.lm:
        p.error("--profile beam10+ctc+lm needs --lm")
    return args


def modes(base, lm):
    """(name, DecodeConfig, lm) per benchmarked mode."""
    ctc = base.ctc_weight or 0.4
    lm_weight = base.lm_weight or 0.3
    plain = replace(base, beam_size=1, ctc_weight=0.0, lm_weight=0.0, length_bonus=0.0,
                    coverage_weight=0.0, max_attn_shift=0, temperature=1.0, nbest=1)
    out = [("greedy", plain, None),
           ("beam10", replace(plain, beam_size=10), None),
           ("beam10+ctc", replace(plain, beam_size=10, ctc_weight=ctc), None)]
    if lm is not None:
        out.append(("beam10+ctc+lm", replace(plain, beam_size=10, ctc_weight=ctc,
                                             lm_weight=lm_weight), lm))
    return out


def load_batches(manifest, sample_rate, batch_size, limit, device):
    """Padded (wavs (B, S), wav_lens (B,)) batches of similar durations, and total seconds."""
    from lhotse import CutSet

    cuts = sorted(CutSet.from_file(manifest), key=lambda c: c.duration)
    if limit:
        cuts = cuts[:limit]
    wavs = [load_cut_audio(c, sample_rate) for c in cuts]
    batches = []
    for start in range(0, len(wavs), batch_size):
        chunk = wavs[start:start + batch_size]
        lens = torch.tensor([len(w) for w in chunk])
        padded = torch.zeros(len(chunk), int(lens.max()))
        for i, w in enumerate(chunk):
            padded[i, : len(w)] = w
        batches.append((padded.to(device), lens.to(device)))
    return batches, sum(len(w) for w in wavs) / sample_rate


def measure(name, model, batches, decode, tokenizer, lm, audio_seconds, device) -> dict:
    texts = []

    def run(wavs, lens):
        hyps = decode_batch(model, wavs, lens, decode, tokenizer, lm=lm, mode="auto")
        texts.extend(h[0].text for h in hyps)
        return hyps
    row = timed(name, run, batches, audio_seconds, device)
    row["texts"] = texts[len(batches[0][1]):]  # without the warm-up batch's
    return row


def print_profile(name, model, batches, decode, tokenizer, lm, rows: int = 15) -> None:
    """One more pass of a mode under torch.profiler; its top operators by self CPU time."""
    with torch.profiler.profile() as prof:
        for wavs, lens in batches:
            decode_batch(model, wavs, lens, decode, tokenizer, lm=lm, mode="auto")
    print(f"\nprofile of {name}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def alternate(rounds: int, runners: list, run) -> list[dict]:
    """``run(prefix, model)`` for each runner, ``rounds`` times in alternating order (torch
    then onnxruntime, then the other way round, ...). Per runner: each batch's fastest
    time over its passes, summed, and the highest peak memory of its passes. A shared
    host's speed drifts by tens of percent within a minute; the fastest time of every
    batch, taken from passes run in turns, compares the runtimes on the same machine."""
    passes: list[list[dict]] = [[] for _ in runners]
    for r in range(rounds):
        order = range(len(runners)) if r % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            passes[i].append(run(*runners[i]))
    best = []
    for rows in passes:
        row = dict(rows[0])
        row["seconds"] = sum(min(times) for times in zip(*(x["batch_seconds"] for x in rows)))
        row["rtf"] = round(row["seconds"] / row["audio_seconds"], 4)
        row["utt_per_s"] = round(row["utterances"] / row["seconds"], 2)
        row["peak_mem_mb"] = max(x["peak_mem_mb"] for x in rows)
        best.append(row)
    return best


def measure_encode(model, batches, audio_seconds, device, name="encode only") -> dict:
    @torch.inference_mode()
    def run(wavs, lens):
        return model.encode(wavs, lens).lens  # one entry per utterance
    return timed(name, run, batches, audio_seconds, device)


def timed(name, run, batches, audio_seconds, device) -> dict:
    """One warm-up call on the first batch, then every batch, timed."""
    run(*batches[0])
    times = []
    with PeakMemory(device) as mem:
        n = 0
        for wavs, lens in batches:
            start = time.perf_counter()
            n += len(run(wavs, lens))
            times.append(time.perf_counter() - start)
    seconds = sum(times)
    return {"mode": name, "seconds": seconds, "rtf": round(seconds / audio_seconds, 4),
            "utt_per_s": round(n / seconds, 2), "peak_mem_mb": round(mem.peak_mb, 1),
            "batch_seconds": times, "audio_seconds": audio_seconds, "utterances": n}


class PeakMemory:
    """Peak CUDA allocation, or on CPU the peak resident set size of the process while the
    block ran (the kernel's high-water mark VmHWM, reset on entry through
    /proc/self/clear_refs), in MB. Nothing runs beside the decoder: a sampling thread
    would take the GIL from it every few milliseconds and slow batch-1 decoding."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
            except OSError:
                pass  # not Linux, or not allowed: the process-wide peak is reported
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = _status_mb("VmHWM")


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def print_table(rows, audio_seconds, n_utts):
    print(f"{n_utts} utterances, {audio_seconds:.1f} s of audio, torch threads "
          f"{torch.get_num_threads()}")
    header = f"{'mode':<22}{'utt/s':>10}{'RTF':>10}{'peak MB':>10}{'vs greedy':>11}"
    onnx = any("speedup" in r for r in rows)
    if onnx:
        header += f"{'onnx speed-up':>15}{'texts differing':>17}"
    print(header)
    print("-" * len(header))
    for r in rows:
        line = (f"{r['mode']:<22}{r['utt_per_s']:>10.2f}{r['rtf']:>10.4f}"
                f"{r['peak_mem_mb']:>10.1f}{r['relative_to_greedy']:>10.2f}x")
        if "speedup" in r:
            line += f"{r['speedup']:>14.2f}x{r['texts_differing']:>17d}"
        print(line)


if __name__ == "__main__":
    sys.exit(main())

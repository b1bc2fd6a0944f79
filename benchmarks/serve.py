"""``earshot serve`` under load: requests/s and latency, batched against one at a time.

Starts ``earshot serve`` on loopback once per server setting (``--max-batch-size 16``, the
batching server, and ``--max-batch-size 1``, one request per decode), then for each client
count sends real recordings from that many threads at once (each thread with its own
keep-alive connection, one request in flight), for ``--requests`` requests or
``--seconds`` seconds, whichever ends first. Prints a markdown table: requests/s, p50 and
p95 latency (upload to answer, as the client sees it) and the mean number of requests
per decode (from ``/health``). Clients and server share the machine's cores.

    python benchmarks/serve.py --model exp/an4/model
    python benchmarks/serve.py --model exp/an4/model --audio ../shared/data/an4/wav \\
        --clients 1 4 16 32 --requests 128 --json serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = (ROOT.parent / "shared" / "data" / "fsdd" / "recordings",
                 ROOT.parent / "shared" / "data" / "an4" / "wav")
URL = "/v1/audio/transcriptions"


def find_audio(folder: Path | None, count: int) -> list[tuple[str, bytes, float]]:
    """Up to ``count`` recordings (name, bytes, seconds) from ``folder`` (searched
    recursively; default: FSDD, else AN4, beside the checkout), in name order."""
    folders = [folder] if folder else [f for f in DEFAULT_AUDIO if f.is_dir()]
    if not folders or not folders[0].is_dir():
        sys.exit(f"error: no audio folder ({folder or ', '.join(map(str, DEFAULT_AUDIO))}); "
                 f"give --audio DIR")
    paths = sorted(p for p in folders[0].rglob("*") if p.suffix.lower() in (".wav", ".flac"))
    # spread the choice over the folder (FSDD sorts by digit, AN4 by speaker)
    step = max(1, len(paths) // count)
    chosen = paths[::step][:count]
    if not chosen:
        sys.exit(f"error: no .wav or .flac files under {folders[0]}")
    return [(p.name, p.read_bytes(), sf.info(str(p)).duration) for p in chosen]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``earshot serve`` in a subprocess, up once /health answers."""

    def __init__(self, model: Path, batch: int, device: str, extra: list[str]):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # its log (a line per request) goes to a file: an unread pipe would fill and stall it
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "earshot.cli", "serve", "--model", str(model),
             "--port", str(self.port), "--device", device, "--max-batch-size", str(batch),
             "--max-queue", "1024", *extra], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                sys.exit(f"error: earshot serve stopped:\n{self.log.read().decode()}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                sys.exit("error: earshot serve did not come up in 180 s")
            time.sleep(0.2)

    def calls(self) -> int:
        return httpx.get(self.base + "/health").json()["decode_calls"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def load(server: Server, files: list, clients: int, requests: int, seconds: float) -> dict:
    """``clients`` threads posting ``files`` in turn until ``requests`` are answered or
    ``seconds`` have passed; latencies in ms, failures counted."""
    latencies: list[float] = []
    failures = 0
    counter = iter(range(requests))
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        nonlocal failures
        with httpx.Client(base_url=server.base, timeout=300) as http:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data, _ = files[i % len(files)]
                began = time.perf_counter()
                response = http.post(URL, files={"file": (name, data, "audio/wav")})
                elapsed = (time.perf_counter() - began) * 1000
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        failures += 1

    calls = server.calls()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    done = len(latencies)
    cuts = statistics.quantiles(latencies, n=20) if done >= 2 else latencies * 19
    return {"clients": clients, "requests": done, "failures": failures, "seconds": wall,
            "rps": done / wall, "p50_ms": statistics.median(latencies) if latencies else 0.0,
            "p95_ms": cuts[18] if cuts else 0.0,
            "mean_batch": (done + failures) / max(1, server.calls() - calls)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a model directory")
    ap.add_argument("--audio", type=Path, default=None,
                    help="folder of recordings (default: ../shared/data/fsdd, else an4)")
    ap.add_argument("--files", type=int, default=64, help="recordings taken from the folder")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 1],
                    help="the servers' --max-batch-size")
    ap.add_argument("--requests", type=int, default=1000, help="requests per measurement (at most)")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds per measurement (at most)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("serve_args", nargs="*", help="more `earshot serve` flags, after --")
    args = ap.parse_args()

    files = find_audio(args.audio, args.files)
    mean_seconds = statistics.mean(f[2] for f in files)
    rows = []
    for batch in args.batch_sizes:
        server = Server(args.model, batch, args.device, args.serve_args)
        try:
            load(server, files, 2, 8, 30.0)  # warm up: first calls pay for lazy set-up
            for clients in args.clients:
                row = {"max_batch_size": batch,
                       **load(server, files, clients, args.requests, args.seconds)}
                rows.append(row)
                print(f"batch {batch:>2} clients {clients:>2}: {row['rps']:.1f} req/s, "
                      f"p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms", file=sys.stderr)
        finally:
            server.stop()

    print(f"model {args.model}; {len(files)} recordings (mean {mean_seconds:.2f} s) from "
          f"{args.audio or 'the default folder'}; {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}), device {args.device}; "
          f"at most {args.requests} requests or {args.seconds:g} s per row\n")
    print("| server | clients | requests | req/s | p50 ms | p95 ms | requests per decode |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        name = "batched (--max-batch-size 16)" if r["max_batch_size"] > 1 else "one at a time (1)"
        if r["max_batch_size"] not in (1, 16):
            name = f"--max-batch-size {r['max_batch_size']}"
        failed = f" ({r['failures']} failed)" if r["failures"] else ""
        print(f"| {name} | {r['clients']} | {r['requests']}{failed} | {r['rps']:.1f} | "
              f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['mean_batch']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""``earshot serve``: its arguments, and the run that loads the model and serves it.

Nothing here imports FastAPI or uvicorn until ``run``: ``earshot --help`` builds this
parser without them, and without the ``serve`` extra ``run`` says how to install it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import socket
from pathlib import Path

from earshot.errors import ConfigError

log = logging.getLogger("earshot.serve")

MISSING_EXTRA = "earshot serve needs the serve extra: pip install 'earshot[serve]'"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``earshot serve`` takes besides --device and the decoding flags."""
    p.add_argument("--model", required=True, type=Path,
                   help="a model directory (train.exp_dir/model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (0: any free one)")
    p.add_argument("--max-batch-size", type=int, default=16, metavar="N",
                   help="requests decoded together in one call")
    p.add_argument("--max-wait-ms", type=float, default=10.0, metavar="MS",
                   help="how long the first request of a batch waits for others to join it")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests waiting to be decoded; one more is answered 503 with Retry-After")
    p.add_argument("--max-upload-mb", type=float, default=25.0, metavar="MB",
                   help="largest audio file accepted, in MiB (larger: 413)")
    p.add_argument("--max-audio-seconds", type=float, default=600.0, metavar="S",
                   help="longest audio accepted, in seconds (longer: 413)")
    p.add_argument("--language", default="en",
                   help="the language the model transcribes: verbose_json reports it, and a "
                        "request's language field must match it")


# flag -> (lowest value, whether the lowest is allowed)
LIMITS = {"max_batch_size": (1, True), "max_wait_ms": (0, True), "max_queue": (1, True),
          "max_upload_mb": (0, False), "max_audio_seconds": (0, False), "port": (0, True)}


def check_arguments(args: argparse.Namespace) -> None:
    """A ConfigError naming the first flag out of range."""
    for name, (low, inclusive) in LIMITS.items():
        value = getattr(args, name)
        if value < low or (value == low and not inclusive) or value != value:
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"option --{name.replace('_', '-')}: must be {bound}, got {value}")
    if args.port > 65535:
        raise ConfigError(f"option --port: must be at most 65535, got {args.port}")


def model_name(path: Path) -> str:
    """The name a model directory is served as: its folder's name, or its run's when
    the folder is the usual ``model`` (exp/an4/model -> an4)."""
    path = path.resolve()
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (listening starts with the server), or a ConfigError
    naming --host/--port when it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"option --host: cannot resolve {host!r} ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ConfigError(f"option --port: cannot listen on {host}:{port} "
                          f"({err.strerror or err})") from None
    return sock


def run(args: argparse.Namespace) -> int:
    """Serve ``args.model`` until interrupted (Ctrl-C or SIGTERM)."""
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: form parsing)
        import uvicorn
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    from earshot import load_model
    from earshot.cli import device_of
    from earshot.serve.app import ServeOptions, create_app

    check_arguments(args)
    device = device_of(args)
    sock = listen(args.host, args.port)
    try:
        transcriber = load_model(args.model, device=device)
        options = ServeOptions(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                               max_queue=args.max_queue, max_upload_mb=args.max_upload_mb,
                               max_audio_seconds=args.max_audio_seconds, decode=options_of(args),
                               mode=args.mode, lm=args.lm, model_name=model_name(args.model),
                               language=args.language)
        app = create_app(transcriber, options)
        host, port = sock.getsockname()[:2]
        log.info("serving %s (%r) on http://%s:%d/ : POST /v1/audio/transcriptions, "
                 "GET /health", options.model_name, transcriber, _url_host(host), port)
        config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def options_of(args: argparse.Namespace) -> dict:
    """The decoding flags given (``--beam-size`` etc.): the server's defaults."""
    from earshot.config import DecodeConfig

    return {f.name: getattr(args, f"decode_{f.name}") for f in dataclasses.fields(DecodeConfig)
            if getattr(args, f"decode_{f.name}") is not None}

"""The FastAPI application: ``POST /v1/audio/transcriptions``, ``GET /health``, ``GET /``.

>>> import earshot
>>> from fastapi.testclient import TestClient
>>> app = create_app(earshot.load_model("exp/an4/model"), ServeOptions())   # doctest: +SKIP
>>> with TestClient(app) as client:                                          # doctest: +SKIP
...     client.post("/v1/audio/transcriptions", files={"file": open("a.wav", "rb")}).json()
{'text': 'YES'}

A request goes: the body, read up to its limit -> the form fields, checked -> the audio,
decoded in a worker thread -> the batching queue (``batching.Batcher``), which decodes it
with other requests of the same options -> the response format asked for. Every refusal
is an ``ApiError``, answered as the OpenAI API does: ``{"error": {"message", "type",
"param", "code"}}``. Each request logs one line on logger ``earshot.serve``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from earshot.errors import AudioError, ConfigError
from earshot.serve.batching import Batcher, QueueFull, ShuttingDown
from earshot.serve.formats import respond
from earshot.serve.upload import (FORM_OVERHEAD, MB, ApiError, BodyTooLarge, Fields,
                                  check_content_length, limit_receive, read_audio, read_fields,
                                  too_large)

log = logging.getLogger("earshot.serve")

ALIASES = ("earshot", "whisper-1")  # model names accepted besides the served model's own
RETRY_AFTER_SECONDS = 1


@dataclass
class ServeOptions:
    """The server's limits, batching and default decoding (``earshot serve``'s flags)."""

    max_batch_size: int = 16  # requests decoded in one call
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # requests waiting; one more is answered 503
    max_upload_mb: float = 25.0  # MiB of audio file per request
    max_audio_seconds: float = 600.0  # seconds of audio per request
    decode: dict[str, Any] = field(default_factory=dict)  # DecodeConfig fields: the defaults
    mode: str = "auto"  # earshot.choices.DECODE_MODES
    lm: Any = None  # a language model directory (or a loaded one), or None
    model_name: str = "earshot"  # what /health reports and a request's `model` may name
    language: str = "en"  # what the model transcribes; a request's `language` must match


def form_flag(name: str) -> str:
    """How an error names an option: as the form field that sets it."""
    return "timestamp_granularities[]" if name == "word_timestamps" else name


class Service:
    """The transcriber, its checked defaults and the batching queue behind the routes."""

    def __init__(self, transcriber, options: ServeOptions):
        from earshot.inference.transcriber import cli_flag

        self.transcriber = transcriber
        self.options = options
        self.rate = int(transcriber.sample_rate)
        # The defaults, checked once (an error names the command-line flag); the LM loaded once.
        defaults = transcriber.settings(None, dict(options.decode), mode=options.mode,
                                        lm=options.lm, flag=cli_flag)
        self.model_decode = transcriber.settings(None, {}, mode=options.mode).decode
        self.default_decode = defaults.decode
        self.lm = defaults.lm
        self.names = (options.model_name, *ALIASES)
        self.body_limit = int(options.max_upload_mb * MB) + FORM_OVERHEAD
        self.batcher = Batcher(self.decode, options.max_batch_size, options.max_wait_ms / 1000,
                               options.max_queue)

    def key(self, fields: Fields) -> Hashable:
        """The request's decoding, checked (ApiError 400 naming the field), as the key the
        batcher groups by: the options that differ from the model's own, and word times."""
        if self.lm is None and fields.decode.get("lm_weight", 0) > 0:
            raise ApiError(400, "lm_weight: this server has no language model to weight (it "
                                "is given one with earshot serve --lm DIR)", param="lm_weight")
        merged = {**_changed(self.default_decode, self.model_decode), **fields.decode}
        # lm_weight 0 turns the server's language model off for this request
        use_lm = self.lm is not None and merged.get("lm_weight", self.model_decode.lm_weight) > 0
        try:
            settings = self.transcriber.settings(None, merged, mode=self.options.mode,
                                                 lm=self.lm if use_lm else None,
                                                 word_timestamps=fields.word_timestamps,
                                                 flag=form_flag)
        except ConfigError as err:
            message = str(err).removeprefix("option ")
            raise ApiError(400, message, param=message.split(":")[0].split(" ")[0]) from None
        return (tuple(sorted(_changed(settings.decode, self.model_decode).items())),
                fields.word_timestamps, use_lm)

    def decode(self, key: Hashable, arrays: Sequence[np.ndarray]) -> list:
        """One batch of equal options, in the decoding thread."""
        options, word_timestamps, use_lm = key
        return self.transcriber.transcribe(list(arrays), sample_rate=self.rate,
                                           mode=self.options.mode,
                                           lm=self.lm if use_lm else None,
                                           word_timestamps=word_timestamps, on_error="keep",
                                           **dict(options))

    async def transcribe(self, request: Request, stats: dict[str, Any]) -> Response:
        """The endpoint's work; ApiError for every refusal. While the request is read the
        batcher counts it as arriving (a batch being formed waits for it)."""
        self.batcher.arriving += 1
        try:
            fields, key, audio = await self.receive(request, stats)
        finally:
            self.batcher.arriving -= 1
        result = await self.result(audio, key, stats)
        if result.error:
            raise ApiError(422, f"file: {fields.upload.filename or 'the upload'} could not be "
                                f"transcribed: {result.error}", "invalid_audio", "file")
        body, media_type = respond(result, fields.response_format, self.options.language,
                                   fields.word_timestamps)
        return Response(body, media_type=media_type)

    async def receive(self, request: Request, stats: dict[str, Any]):
        """The request's checked fields, their batching key and its samples."""
        check_content_length(request.headers, self.body_limit, self.options.max_upload_mb)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "send the audio as multipart/form-data with a 'file' field "
                                "(e.g. curl -F file=@talk.wav URL)", param="file")
        bounded = Request(request.scope, limit_receive(request.receive, self.body_limit))
        try:
            form = await bounded.form(max_files=1, max_fields=64)
        except BodyTooLarge:
            raise too_large("the upload", f"{self.options.max_upload_mb:g} MiB") from None
        except HTTPException as err:  # malformed multipart
            raise ApiError(400, f"the form cannot be read: {err.detail}") from None
        try:
            fields = read_fields(form, self.names, self.options.language)
            key = self.key(fields)
            data = await fields.upload.read()
            name = fields.upload.filename or "the upload"
        finally:
            await form.close()
        if len(data) > self.options.max_upload_mb * MB:
            raise too_large(f"the file ({len(data) / MB:.1f} MiB)",
                            f"{self.options.max_upload_mb:g} MiB")
        if not data:
            raise ApiError(400, "file: the upload is empty", param="file")
        audio = await run_in_threadpool(read_audio, data, name, self.rate,
                                        self.options.max_audio_seconds)
        stats["audio"] = len(audio) / self.rate
        return fields, key, audio

    async def result(self, audio: np.ndarray, key: Hashable, stats: dict[str, Any]):
        """The queued decode of ``audio``; its failures as ApiErrors."""
        try:
            job = self.batcher.submit(audio, key)
        except QueueFull as err:
            raise ApiError(503, f"the server is busy ({err}); retry in a moment", "server_busy",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except ShuttingDown as err:
            raise ApiError(503, str(err), "server_busy",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        stats["job"] = job
        try:
            return await job.future
        except ShuttingDown as err:
            raise ApiError(503, str(err), "server_busy") from None
        except (AudioError, ValueError, TypeError) as err:
            raise ApiError(422, f"file: the audio could not be decoded: {err}", "invalid_audio",
                           "file") from None
        except ConfigError as err:
            raise ApiError(400, str(err)) from None
        except Exception as err:
            log.exception("decoding failed")
            raise ApiError(500, f"decoding failed: {type(err).__name__}: {err}",
                           "server_error") from None

    def health(self) -> dict[str, Any]:
        t = self.transcriber
        return {"status": "ok" if self.batcher.running else "stopped",
                "model": self.options.model_name, "description": repr(t),
                "sample_rate": self.rate, "device": str(getattr(t, "device", "")),
                "language": self.options.language,
                "queue_depth": self.batcher.depth, "max_queue": self.options.max_queue,
                "max_batch_size": self.options.max_batch_size, "decode_calls": self.batcher.calls,
                "decoding": {"mode": self.options.mode,
                             **dataclasses.asdict(self.default_decode)}}


def _changed(decode, base) -> dict[str, Any]:
    return {f.name: getattr(decode, f.name) for f in dataclasses.fields(decode)
            if getattr(decode, f.name) != getattr(base, f.name)}


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _log_line(request: Request, status: int, began: float, stats: dict[str, Any]) -> None:
    job = stats.get("job")
    audio = stats.get("audio")
    parts = [f"{request.method} {request.url.path} {status}",
             f"audio={audio:.2f}s" if audio is not None else "audio=-"]
    if job is not None and job.started_at is not None:
        parts += [f"queue={job.queue_seconds * 1000:.0f}ms",
                  f"decode={job.decode_seconds * 1000:.0f}ms", f"batch={job.batch_size}"]
    else:
        parts += ["queue=-", "decode=-"]
    parts.append(f"total={(time.monotonic() - began) * 1000:.0f}ms")
    log.info(" ".join(parts))


def create_app(transcriber, options: ServeOptions | None = None) -> FastAPI:
    """The application serving ``transcriber`` (from ``earshot.load_model``) with
    ``options``; a ConfigError naming the flag when the default decoding is wrong. The
    batching worker runs while the application does (its lifespan)."""
    service = Service(transcriber, options or ServeOptions())
    page = resources.files("earshot.serve").joinpath("page.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    app = FastAPI(title="earshot", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        kind = "not_found" if err.status_code == 404 else "invalid_request_error"
        return _error(ApiError(err.status_code, str(err.detail), kind))

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        began, stats = time.monotonic(), {}
        try:
            response = await service.transcribe(request, stats)
        except ApiError as err:
            response = _error(err)
        except ClientDisconnect:
            _log_line(request, 499, began, stats)  # (nginx's "client closed request")
            return Response(status_code=499)
        except Exception as err:  # a bug: say so, keep serving
            log.exception("request failed")
            response = _error(ApiError(500, f"{type(err).__name__}: {err}", "server_error"))
        _log_line(request, response.status_code, began, stats)
        return response

    @app.get("/health")
    async def health() -> JSONResponse:
        body = service.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app

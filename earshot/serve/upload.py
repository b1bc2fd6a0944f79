"""What a client sends: a bounded request body, its form fields, and the audio in it.

The body is counted as it arrives and reading stops as soon as it passes the limit
(``limit_receive``), so an oversized upload costs the server no more than the limit. Form
fields are turned into checked options (``read_fields``): an unknown or malformed field is
an ``ApiError`` naming it. The audio is decoded with earshot's own reader
(``read_audio``), so the server accepts exactly what ``earshot transcribe`` accepts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earshot.config import DecodeConfig
from earshot.errors import AudioError

DECODE_FIELDS = tuple(f.name for f in dataclasses.fields(DecodeConfig))
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
OPENAI_FIELDS = ("file", "model", "language", "response_format", "timestamp_granularities[]")
FORM_OVERHEAD = 64 * 1024  # bytes of multipart headers and small fields beside the file
MB = 1024 * 1024


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a one-line ``message``, the OpenAI
    error ``type``, the form field at fault (``param``) and extra response headers."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.status}}


def too_large(what: str, limit: str, param: str | None = "file") -> ApiError:
    return ApiError(413, f"{what} is larger than this server's limit of {limit}",
                    "request_too_large", param)


# -- the body ---------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """Raised from inside ``receive`` when the body passes its limit."""


def limit_receive(receive, limit: int):
    """An ASGI ``receive`` that counts the body's bytes and raises BodyTooLarge as soon as
    they pass ``limit``, before the rest is read."""
    seen = 0

    async def bounded() -> dict:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(seen)
        return message

    return bounded


def check_content_length(headers, limit: int, max_upload_mb: float) -> None:
    """413 before reading anything when the declared body is over ``limit``."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(f"the request ({int(declared) / MB:.1f} MiB)", f"{max_upload_mb:g} MiB")


# -- form fields ------------------------------------------------------------------------


@dataclass
class Fields:
    """The form fields of one request, read and type-checked (not yet the decoding
    options' ranges: ``Transcriber.settings`` checks those)."""

    upload: Any  # the starlette UploadFile of field ``file``
    response_format: str = "json"
    word_timestamps: bool = False
    decode: dict[str, Any] = field(default_factory=dict)


def read_fields(form, model_names: tuple[str, ...], language: str) -> Fields:
    """``form`` (a starlette FormData) as Fields; ApiError 400 naming the first field
    that is unknown, repeated or malformed."""
    names = list(dict.fromkeys(form.keys()))
    for name in names:
        if name not in OPENAI_FIELDS and name not in DECODE_FIELDS \
                and name != "timestamp_granularities":
            raise ApiError(400, f"{name}: unknown field; earshot takes {', '.join(OPENAI_FIELDS)} "
                                f"and the decoding options {', '.join(DECODE_FIELDS)}", param=name)
        if len(form.getlist(name)) > 1 and not name.startswith("timestamp_granularities"):
            raise ApiError(400, f"{name}: given {len(form.getlist(name))} times; give it once",
                           param=name)
    upload = form.get("file")
    if upload is None:
        raise ApiError(400, "file: missing; send the audio as the multipart file field 'file'",
                       param="file")
    if isinstance(upload, str):
        raise ApiError(400, "file: expected an uploaded file (a multipart file field, e.g. "
                            "curl -F file=@talk.wav), got a text field", param="file")
    fields = Fields(upload)
    fields.response_format = _text(form, "response_format", "json")
    if fields.response_format not in RESPONSE_FORMATS:
        raise ApiError(400, f"response_format: {fields.response_format!r} is not one of "
                            f"{', '.join(RESPONSE_FORMATS)}", param="response_format")
    granularities = [*form.getlist("timestamp_granularities[]"),
                     *form.getlist("timestamp_granularities")]
    for value in granularities:
        if value not in GRANULARITIES:
            raise ApiError(400, f"timestamp_granularities[]: {value!r} is not one of "
                                f"{', '.join(GRANULARITIES)}", param="timestamp_granularities[]")
    fields.word_timestamps = "word" in granularities
    _check_model(_text(form, "model", ""), model_names)
    asked = _text(form, "language", "")
    if asked and asked.lower() != language.lower():
        raise ApiError(400, f"language: this model transcribes {language!r}, not {asked!r} "
                            f"(leave the field out or give {language!r})", param="language")
    hints = typing.get_type_hints(DecodeConfig)
    for name in DECODE_FIELDS:
        if name in form:
            fields.decode[name] = _parse(name, _text(form, name, ""), hints[name])
    return fields


def _text(form, name: str, default: str) -> str:
    value = form.get(name, default)
    if not isinstance(value, str):
        raise ApiError(400, f"{name}: expected a text field, got a file", param=name)
    return value.strip()


def _check_model(asked: str, names: tuple[str, ...]) -> None:
    if asked and asked not in names:
        raise ApiError(400, f"model: this server serves {names[0]!r}, not {asked!r} (also "
                            f"accepted: {', '.join(repr(n) for n in names[1:])})",
                       "invalid_request_error", "model")


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse(name: str, text: str, tp: type) -> Any:
    """A decoding option's form value as its DecodeConfig type."""
    try:
        if tp is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if tp is int:
            return int(text)
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
        return value
    except ValueError:
        kind = {bool: "true or false", int: "an integer"}.get(tp, "a finite number")
        raise ApiError(400, f"{name}: expected {kind}, got {text!r}", param=name) from None


# -- the audio ----------------------------------------------------------------------------


def read_audio(data: bytes, name: str, rate: int, max_seconds: float) -> np.ndarray:
    """The upload's mono float32 samples at ``rate``: ApiError 415 for what is not audio
    earshot reads (with the reason), 413 past ``max_seconds`` (from the header, before
    decoding, and again from the samples), 400 for a file holding no samples."""
    from earshot.audio import audio_info, load_audio

    fd, path = tempfile.mkstemp(prefix="earshot-upload-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            info = audio_info(path)
            if info.frames == 0:
                raise ApiError(400, f"file: {name} holds no audio samples", param="file")
            _check_seconds(info.duration, max_seconds)
            samples = load_audio(path, sample_rate=rate).numpy()
        except AudioError as err:
            raise ApiError(415, f"file: {name} is not audio earshot can read: {err.reason}",
                           "invalid_audio", "file") from None
    finally:
        os.unlink(path)
    _check_seconds(len(samples) / rate, max_seconds)
    return samples


def _check_seconds(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise too_large(f"the audio ({seconds:.1f} s)", f"{max_seconds:g} s")

"""A small ctypes binding to libespeak-ng, used to synthesise the built-in demo corpus.

The shared library and its data directory come from the ``espeakng-loader`` wheel.
espeak-ng keeps one global synthesiser per process, so every call goes through one
lock, and the library is initialised lazily once per process (also inside
multiprocessing workers, which re-initialise after a fork).

>>> from earshot.data.espeak import speak
>>> wav, sr = speak("hello world", voice="en-us+f3", rate=150)
>>> wav.dtype, sr
(dtype('float32'), 16000)
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

# Values from espeak-ng's public header speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EE_OK = 0
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_INIT_DONT_EXIT = 0x8000  # report errors instead of calling exit() inside the library

# int callback(short *wav, int numsamples, espeak_EVENT *events); events are unused here.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

DEFAULT_SAMPLE_RATE = 16000


class EspeakError(RuntimeError):
    """libespeak-ng cannot be loaded, or it failed to synthesise a request."""


@dataclass
class _Engine:
    """The per-process library handle; ``chunks`` collects the callback's samples."""

    lib: ctypes.CDLL
    native_rate: int
    callback: object  # kept referenced so ctypes does not free the trampoline
    chunks: list
    libc: ctypes.CDLL | None  # for srand(); None where the C library can't be opened


_lock = threading.Lock()
_engine: _Engine | None = None
_engine_pid: int | None = None


def _reset_after_fork() -> None:
    # A forked child must not inherit a lock held by another parent thread.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as e:
        raise EspeakError(
            "the demo corpus needs espeak-ng: `pip install espeakng-loader` "
            f"(import failed: {e})"
        ) from e
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    if hasattr(lib, "espeak_ng_SetRandSeed"):  # newer than 1.51; seeds breath/klatt noise
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int


def _load_engine() -> _Engine:
    lib_path, data_path = _paths()
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as e:
        raise EspeakError(f"{lib_path}: cannot load libespeak-ng ({e})") from e
    _declare(lib)
    # espeak_Initialize wants the directory that *contains* espeak-ng-data.
    root = str(Path(data_path).parent).encode()
    native_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, root, _INIT_DONT_EXIT)
    if native_rate <= 0:
        raise EspeakError(f"{data_path}: espeak_Initialize failed (returned {native_rate})")
    chunks: list = []

    def on_audio(wav, num_samples, _events):
        if num_samples > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = keep synthesising

    callback = _SYNTH_CALLBACK(on_audio)
    lib.espeak_SetSynthCallback(callback)
    return _Engine(lib, native_rate, callback, chunks, _open_libc())


def _open_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the symbols already loaded into this process
    except (OSError, TypeError):
        return None


def _get_engine() -> _Engine:
    """The engine of this process, initialised on first use (call with the lock held)."""
    global _engine, _engine_pid
    if _engine is None or _engine_pid != os.getpid():
        _engine = _load_engine()
        _engine_pid = os.getpid()
    return _engine


def _check(code: int, what: str) -> None:
    if code != _EE_OK:
        raise EspeakError(f"{what} failed with espeak error code {code}")


def _seed(engine: _Engine, seed: int) -> None:
    # Noise in breathy and Klatt voices comes from espeak's own generator (newer
    # versions) or from libc rand() (older ones): seed both.
    if hasattr(engine.lib, "espeak_ng_SetRandSeed"):
        engine.lib.espeak_ng_SetRandSeed(seed)
    if engine.libc is not None:
        engine.libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))


def _synthesise(engine: _Engine, text: str, voice: str, rate: int, pitch: int,
                pitch_range: int, seed: int | None) -> np.ndarray:
    lib = engine.lib
    if seed is not None:
        _seed(engine, seed)
    _check(lib.espeak_SetVoiceByName(voice.encode()), f"espeak_SetVoiceByName({voice!r})")
    for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch),
                         (_PARAM_RANGE, pitch_range), (_PARAM_VOLUME, 100)):
        _check(lib.espeak_SetParameter(param, int(value), 0), f"espeak_SetParameter({param})")
    buf = ctypes.create_string_buffer(text.encode("utf-8"))
    engine.chunks.clear()
    code = lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
    _check(code, f"espeak_Synth({text!r})")
    samples = np.concatenate(engine.chunks) if engine.chunks else np.zeros(0, np.int16)
    engine.chunks.clear()
    return samples


def speak(text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50,
          pitch_range: int = 50, sample_rate: int = DEFAULT_SAMPLE_RATE,
          seed: int | None = None) -> tuple[np.ndarray, int]:
    """Synthesise ``text`` -> (wav (S,) float32 in [-1, 1], sample_rate).

    ``voice`` is an espeak voice name, optionally with a variant (``"en-us+f3"``);
    ``rate`` is in words per minute (80-450), ``pitch`` and ``pitch_range`` are 0-100.
    Audio is resampled from espeak's native rate (22050 Hz) to ``sample_rate``.
    ``seed`` fixes the noise of breathy voices. espeak also carries a little state
    from one utterance to the next (pitch flutter), so audio is bit-exact only for
    the same sequence of calls in a fresh process.
    Raises EspeakError when the library is missing or the voice is unknown.
    """
    with _lock:
        engine = _get_engine()
        samples = _synthesise(engine, text, voice, rate, pitch, pitch_range, seed)
        native_rate = engine.native_rate
    wav = samples.astype(np.float32) / 32768.0
    if sample_rate != native_rate and wav.size:
        wav = soxr.resample(wav, native_rate, sample_rate).astype(np.float32)
    return np.clip(wav, -1.0, 1.0), sample_rate


def available_variants() -> list[str]:
    """Names of the voice variants shipped in the data dir (``voices/!v``), sorted.

    Append one to a language with ``+``: ``speak(..., voice="en+" + name)``.
    """
    _, data_path = _paths()
    variant_dir = Path(data_path) / "voices" / "!v"
    if not variant_dir.is_dir():
        raise EspeakError(f"{variant_dir}: espeak-ng variant directory not found")
    return sorted(p.name for p in variant_dir.iterdir() if p.is_file())

"""``earshot serve``: the OpenAI-style endpoint, its limits and errors, and the batching queue.

Most tests drive the FastAPI application in process (``TestClient``) with the tiny model
of ``conftest.overfit_model``; one starts a real ``earshot serve`` and talks to it over
loopback. Batching and the full queue are observed through a transcriber whose decode
can be held on an event.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="earshot serve needs the serve extra (fastapi)")
pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx")
pytest.importorskip("multipart", reason="earshot serve needs python-multipart")

from fastapi.testclient import TestClient  # noqa: E402

import earshot  # noqa: E402
from conftest import TEXTS  # noqa: E402
from earshot.cli import main  # noqa: E402
from earshot.serve.app import ServeOptions, create_app  # noqa: E402
from earshot.serve.command import MISSING_EXTRA, model_name  # noqa: E402

URL = "/v1/audio/transcriptions"


@pytest.fixture
def serve(transcriber):
    """serve(**options) -> a started TestClient (``transcriber=`` to wrap the model)."""
    clients = []

    def start(transcriber=transcriber, **options):
        client = TestClient(create_app(transcriber, ServeOptions(**options)))
        client.__enter__()  # runs the lifespan: the batching worker
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def wav(corpus: Path, i: int) -> bytes:
    return (corpus / f"u{i}.wav").read_bytes()


def post(client, data: bytes, name: str = "a.wav", **fields):
    return client.post(URL, files={"file": (name, data, "audio/wav")}, data=fields)


class Held:
    """A transcriber whose decode waits for ``release`` and records each call's batch."""

    def __init__(self, inner, hold: bool = True, fail_length: int | None = None):
        self.inner = inner
        self.calls: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail_length = fail_length

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def transcribe(self, audio, **kwargs):
        self.calls.append(len(audio))
        self.started.set()
        assert self.release.wait(60)
        if self.fail_length is not None and any(len(a) == self.fail_length for a in audio):
            raise ValueError("a poisoned input")
        return self.inner.transcribe(audio, **kwargs)


def wait_for(condition, seconds: float = 30.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


# -- the endpoint ---------------------------------------------------------------------


def test_each_response_format(serve, corpus):
    client = serve()
    data = wav(corpus, 0)
    assert post(client, data).json() == {"text": TEXTS[0]}
    text = post(client, data, response_format="text")
    assert text.text == TEXTS[0] + "\n" and text.headers["content-type"].startswith("text/plain")
    srt = post(client, data, response_format="srt").text
    assert srt.startswith("1\n00:00:0") and " --> " in srt and TEXTS[0] in srt
    vtt = post(client, data, response_format="vtt")
    assert vtt.text.startswith("WEBVTT\n\n") and TEXTS[0] in vtt.text
    assert vtt.headers["content-type"].startswith("text/vtt")
    body = post(client, data, response_format="verbose_json").json()
    duration = sf.info(str(corpus / "u0.wav")).duration
    assert body["task"] == "transcribe" and body["language"] == "en"
    assert body["text"] == TEXTS[0] and abs(body["duration"] - duration) < 0.01
    assert [s["id"] for s in body["segments"]] == [0] and body["segments"][0]["text"] == TEXTS[0]
    assert body["segments"][0]["tokens"] and "words" not in body


def test_verbose_json_with_word_timestamps(serve, corpus):
    client = serve()
    body = post(client, wav(corpus, 2), response_format="verbose_json",
                **{"timestamp_granularities[]": "word"}).json()
    words = body["words"]
    assert [w["word"] for w in words] == TEXTS[2].split()
    assert all(0 <= w["start"] < w["end"] <= body["duration"] + 1e-3 for w in words)
    assert words[0]["end"] <= words[1]["start"]
    # model and language that match are accepted and change nothing
    same = post(client, wav(corpus, 2), model="whisper-1", language="en").json()
    assert same == {"text": TEXTS[2]}


def test_decoding_options_as_form_fields(serve, corpus, transcriber):
    client = serve(decode={"beam_size": 2})  # the server's default, as --beam-size 2 sets it
    body = post(client, wav(corpus, 1), response_format="verbose_json", beam_size="4",
                ctc_weight="0.3", nbest="3", length_normalize="true").json()
    assert body["text"] == TEXTS[1]
    nbest = body["segments"][0]["nbest"]
    assert len(nbest) == 3 and nbest[0]["text"] == TEXTS[1]
    assert nbest[0]["score"] >= nbest[1]["score"] >= nbest[2]["score"]
    health = client.get("/health").json()
    assert health["decoding"]["beam_size"] == 2


@pytest.mark.parametrize("fields, param, words", [
    ({"beam_size": "0"}, "beam_size", "must be in"),
    ({"beam_size": "wide"}, "beam_size", "expected an integer"),
    ({"ctc_weight": "nan"}, "ctc_weight", "finite number"),
    ({"nbest": "5", "beam_size": "2"}, "nbest", "above"),
    ({"lm_weight": "0.3"}, "lm_weight", "no language model"),
    ({"length_normalize": "maybe"}, "length_normalize", "true or false"),
    ({"beam": "4"}, "beam", "unknown field"),
    ({"response_format": "xml"}, "response_format", "not one of"),
    ({"timestamp_granularities[]": "char"}, "timestamp_granularities[]", "not one of"),
    ({"model": "gpt-4o"}, "model", "this server serves"),
    ({"language": "fr"}, "language", "transcribes 'en'"),
])
def test_a_bad_field_is_400_naming_it(serve, corpus, fields, param, words):
    response = post(serve(), wav(corpus, 0), **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(param)
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"


def test_missing_or_text_file_field_is_400(serve):
    client = serve()
    no_file = client.post(URL, data={"response_format": "json"},
                          files={"other": ("x", b"", "text/plain")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] in ("file", "other")
    assert client.post(URL, data={"file": "hello"}, files={"x": ("", b"")}).status_code == 400
    not_form = client.post(URL, content=b"abc", headers={"content-type": "audio/wav"})
    assert not_form.status_code == 400
    assert "multipart/form-data" in not_form.json()["error"]["message"]


def test_empty_upload_is_400(serve):
    response = post(serve(), b"")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "file: the upload is empty"


def test_garbage_is_415_with_the_reason(serve, corpus):
    client = serve()
    response = post(client, b"this is not audio at all" * 100, name="notes.txt")
    error = response.json()["error"]
    assert response.status_code == 415 and error["type"] == "invalid_audio"
    assert error["message"].startswith("file: notes.txt is not audio earshot can read: ")
    truncated = post(client, wav(corpus, 0)[:30])  # a header cut short
    assert truncated.status_code == 415
    assert post(client, wav(corpus, 0)).status_code == 200  # and it keeps serving


def test_too_large_upload_is_413(serve, corpus):
    data = wav(corpus, 0)
    client = serve(max_upload_mb=len(data) / 2 / 2**20)
    response = post(client, data)
    assert response.status_code == 413 and response.json()["error"]["type"] == "request_too_large"
    assert "MiB" in response.json()["error"]["message"]


def test_too_large_upload_stops_reading_at_the_limit(transcriber):
    """No Content-Length: the body is read until it passes the limit, and no further."""
    app = create_app(transcriber, ServeOptions(max_upload_mb=0.1))
    chunk, sent = b"x" * 65536, []
    boundary = b"b0undary"
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="a.wav"\r\n\r\n')

    async def receive():
        sent.append(len(chunk))
        return {"type": "http.request", "body": head if len(sent) == 1 else chunk,
                "more_body": len(sent) < 1000}

    status, body = asyncio.run(_call(app, receive, boundary))
    assert status == 413 and b"request_too_large" in body
    assert len(sent) < 10  # of the 1000 chunks the client would have sent


def test_client_disconnecting_mid_upload_breaks_nothing(transcriber, corpus):
    app = create_app(transcriber, ServeOptions())
    boundary, messages = b"b0undary", []
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="a.wav"\r\n\r\n' + wav(corpus, 0)[:1000])

    async def receive():
        messages.append(1)
        if len(messages) == 1:
            return {"type": "http.request", "body": head, "more_body": True}
        return {"type": "http.disconnect"}

    async def both():
        async with _lifespan(app):
            status, _ = await _call(app, receive, boundary, lifespan=False)
            assert app.state.service.batcher.depth == 0
            return status

    assert asyncio.run(both()) == 499
    with TestClient(app) as client:
        assert post(client, wav(corpus, 0)).json() == {"text": TEXTS[0]}


def test_too_long_audio_is_413(serve, corpus):
    client = serve(max_audio_seconds=0.5)
    response = post(client, wav(corpus, 0))
    assert response.status_code == 413 and "0.5 s" in response.json()["error"]["message"]


def test_a_wav_without_samples_is_400(serve, corpus, tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    response = post(serve(), (tmp_path / "empty.wav").read_bytes())
    assert response.status_code == 400 and "no audio samples" in response.json()["error"]["message"]


def test_health_and_page(serve, model_dir):
    client = serve(model_name="tiny")
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["queue_depth"] == 0
    assert health["sample_rate"] == 16000 and health["max_batch_size"] == 16
    assert "Transcriber(" in health["description"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "MediaRecorder" in page.text and "verbose_json" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Not Found"
    assert model_name(Path("exp/an4/model")) == "an4" and model_name(Path("exp/avg5")) == "avg5"


def test_lm_weight_0_turns_the_servers_language_model_off(corpus):
    frozen = Path(__file__).parent / "data" / "frozen"
    model = earshot.load_model(frozen / "crdnn_v2", device="cpu")
    seen = []

    class Spy:
        def __getattr__(self, name):
            return getattr(model, name)

        def transcribe(self, audio, **kwargs):
            seen.append((kwargs["lm"] is not None, kwargs.get("lm_weight")))
            return model.transcribe(audio, **kwargs)

    app = create_app(Spy(), ServeOptions(lm=frozen / "lm", decode={"beam_size": 2,
                                                                    "lm_weight": 0.5}))
    with TestClient(app) as client:
        assert post(client, wav(corpus, 0)).status_code == 200
        assert post(client, wav(corpus, 0), lm_weight="0").status_code == 200
    assert seen == [(True, 0.5), (False, None)]


# -- the queue ---------------------------------------------------------------------------


def _concurrently(client, requests):
    pool = ThreadPoolExecutor(len(requests))
    return [pool.submit(post, client, data, **fields) for data, fields in requests]


def test_concurrent_requests_are_decoded_in_one_call(serve, transcriber, corpus):
    held = Held(transcriber)
    client = serve(transcriber=held, max_batch_size=8, max_wait_ms=50)
    service = client.app.state.service
    first = _concurrently(client, [(wav(corpus, 0), {})])
    assert held.started.wait(30)  # the first is decoding, held: the others queue up
    rest = _concurrently(client, [(wav(corpus, i), {"response_format": "text"}) for i in range(4)]
                         + [(wav(corpus, 1), {"beam_size": "3"})])
    wait_for(lambda: service.batcher.depth == 5)
    held.release.set()
    assert first[0].result().json() == {"text": TEXTS[0]}
    assert [f.result().text for f in rest[:4]] == [t + "\n" for t in TEXTS]
    assert rest[4].result().json() == {"text": TEXTS[1]}
    # one call for the first, then one for the four with the same options and one for
    # beam_size 3, in the order their first requests reached the queue
    assert held.calls[0] == 1 and sorted(held.calls[1:]) == [1, 4]


def test_a_lone_request_does_not_wait_for_company(serve, corpus):
    client = serve(max_wait_ms=5000)
    began = time.monotonic()
    assert post(client, wav(corpus, 0)).json() == {"text": TEXTS[0]}
    assert time.monotonic() - began < 4  # not the 5 s a batch may wait for requests arriving


def test_a_full_queue_is_503_with_retry_after(serve, transcriber, corpus):
    held = Held(transcriber)
    client = serve(transcriber=held, max_batch_size=1, max_queue=1)
    first = _concurrently(client, [(wav(corpus, 0), {})])
    assert held.started.wait(30)
    second = _concurrently(client, [(wav(corpus, 1), {})])
    wait_for(lambda: client.app.state.service.batcher.depth == 1)
    busy = post(client, wav(corpus, 2))
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["type"] == "server_busy"
    assert client.get("/health").json()["queue_depth"] == 1
    held.release.set()
    assert first[0].result().status_code == second[0].result().status_code == 200
    assert post(client, wav(corpus, 2)).json() == {"text": TEXTS[2]}


def test_a_failing_input_fails_only_its_request(serve, transcriber, corpus):
    poison = len(earshot.audio.load_audio(corpus / "u1.wav", 16000))
    held = Held(transcriber, fail_length=poison)
    client = serve(transcriber=held, max_wait_ms=50)
    first = _concurrently(client, [(wav(corpus, 3), {})])
    assert held.started.wait(30)
    others = _concurrently(client, [(wav(corpus, i), {}) for i in range(3)])
    wait_for(lambda: client.app.state.service.batcher.depth == 3)
    held.release.set()
    statuses = [f.result().status_code for f in first + others]
    assert statuses == [200, 200, 422, 200]
    assert "poisoned" in others[1].result().json()["error"]["message"]
    assert held.calls == [1, 3, 1, 1, 1]  # the failed batch again one by one
    assert post(client, wav(corpus, 0)).json() == {"text": TEXTS[0]}


# -- the command ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """An ``earshot serve`` process on a free loopback port, up once /health answers."""

    def __init__(self, model_dir: Path, *flags: str) -> None:
        import httpx

        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "earshot.cli", "serve",
                                      "--model", str(model_dir), "--port", str(port),
                                      "--device", "cpu", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = ""
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(self.stop())
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"earshot serve did not come up: {self.stop()}")
            time.sleep(0.2)

    def stop(self) -> str:
        """SIGTERM; the server's whole output."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.output = self.proc.communicate(timeout=30)[0].decode()
        return self.output


@pytest.fixture
def live_server(model_dir):
    """live_server(*flags) -> a started ``LiveServer``; stopped after the test."""
    servers = []

    def start(*flags: str) -> LiveServer:
        servers.append(LiveServer(model_dir, *flags))
        return servers[-1]

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.stop()


def test_earshot_serve_answers_over_loopback(live_server, corpus):
    import httpx

    server = live_server("--beam-size", "2")
    with open(corpus / "u3.wav", "rb") as f:
        response = httpx.post(f"{server.base}{URL}", files={"file": ("u3.wav", f, "audio/wav")},
                              data={"response_format": "verbose_json"}, timeout=60)
    assert response.status_code == 200 and response.json()["text"] == TEXTS[3]
    assert httpx.get(f"{server.base}/health").json()["decoding"]["beam_size"] == 2
    out = server.stop()
    # uvicorn shuts down cleanly, then lets SIGTERM end the process as it would have
    assert server.proc.returncode in (0, -15) and "Application shutdown complete" in out, out
    line = [x for x in out.splitlines() if "POST /v1/audio/transcriptions 200" in x]
    assert line and "audio=" in line[0] and "queue=" in line[0] and "decode=" in line[0] \
        and "total=" in line[0], out


def _headless_chromium():
    """A headless Chromium under selenium, or a skip naming what is missing."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="the page test needs selenium")
    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), \
        shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("the page test needs Chromium and ChromeDriver (Debian: apt install "
                    "chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def test_the_page_transcribes_an_upload_in_headless_chromium(live_server, corpus, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _headless_chromium()
    server = live_server()
    try:
        browser.get(f"{server.base}/")
        wait = WebDriverWait(browser, 60)
        text = lambda id_: browser.find_element(By.ID, id_).text  # noqa: E731
        wait.until(lambda _: text("model").startswith("model "))  # the page read /health
        browser.find_element(By.ID, "file").send_keys(str(corpus / "u3.wav"))
        browser.find_element(By.ID, "send").click()
        wait.until(lambda _: text("text") or text("error"))
        assert (text("text"), text("error")) == (TEXTS[3], "")
        rows = browser.find_elements(By.CSS_SELECTOR, "#words tr.word")
        assert [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows] == TEXTS[3].split()
        assert "s of audio, answered in" in text("status")
        # an upload that is not audio: the reason is shown, and the next upload works
        junk = tmp_path / "notes.wav"
        junk.write_text("not audio at all")
        browser.find_element(By.ID, "file").send_keys(str(junk))
        browser.find_element(By.ID, "send").click()
        wait.until(lambda _: text("error"))
        assert text("text") == ""
        browser.find_element(By.ID, "file").send_keys(str(corpus / "u1.wav"))
        browser.find_element(By.ID, "send").click()
        wait.until(lambda _: text("text"))
        assert (text("text"), text("error")) == (TEXTS[1], "")
    finally:
        browser.quit()


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {MISSING_EXTRA}"


def test_serve_refuses_bad_limits_and_decoding_flags(capsys, model_dir):
    assert main(["serve", "--model", str(model_dir), "--max-batch-size", "0"]) == 2
    assert "option --max-batch-size: must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--model", str(model_dir), "--port", "0", "--device", "cpu",
                 "--beam-size", "0"]) == 2
    assert "option --beam-size: must be in" in capsys.readouterr().err


def test_serve_refuses_a_port_in_use(capsys, model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--model", str(model_dir), "--port", str(port)]) == 2
    assert f"option --port: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# -- raw ASGI calls (a body without Content-Length, a client that goes away) ---------------


async def _call(app, receive, boundary: bytes, lifespan: bool = True):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": URL, "raw_path": URL.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary)]}
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    if lifespan:
        async with _lifespan(app):
            await app(scope, receive, send)
    else:
        await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body


class _lifespan:
    """The application's lifespan (the batching worker) around a raw ASGI call."""

    def __init__(self, app):
        self.context = app.router.lifespan_context(app)

    async def __aenter__(self):
        await self.context.__aenter__()

    async def __aexit__(self, *exc):
        await self.context.__aexit__(*exc)


def test_formats_verbose_json_is_valid_json_for_empty_results():
    from earshot.inference.results import Result
    from earshot.serve.formats import respond

    body, media_type = respond(Result("x", [], 16000, 800), "verbose_json", "en", True)
    assert json.loads(body) == {"task": "transcribe", "language": "en", "duration": 0.05,
                                "text": "", "segments": [], "words": []}

"""The web player follows the client contract (CONTRACT section 7) in a real browser.

The page under test is recsvc/player/web/player.html with recsvc/player/web/player.js,
driven by headless Chromium (tests/chromium.py). The server side here is a
scripted stand-in, `FakeRecsvc`, whose call_sid names the scenario it plays:

    ready-after-2_<n>       202 (Retry-After: 0), 202 (Retry-After: 1), then 200 with a WAV
    missing_<n>             404 call_not_found
    no-url_<n>              404 no_recording_url
    worker-offline_<n>      500 worker_not_processing_queue
    processing_<n>          202 (Retry-After: 1) forever
    unavailable_<n>         a dropped connection, a 503, then 200

A wrong token gets 401 whatever the scenario.

The tests speak to a `backend` fixture through four members only: base_url,
token, call_sid(scenario) and file_requests(call_sid). A fixture that starts a
real recsvc can take its place: it arranges each scenario with the real API
(no recording URL, paused workers, a stalled upstream, ...) and returns None
from file_requests, which skips the assertions that need to see the requests.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import json
import math
import re
import struct
import threading
import time
import urllib.parse
import wave
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from chromium import Browser, require_chromium

from recsvc.player.outcomes import OUTCOMES

STATIC_DIR = Path(__file__).resolve().parent.parent / "recsvc" / "player" / "web"
TOKEN = "player-test-token"
WAV_SECONDS = 1.0

# CONTRACT 7, the messages table ({X} for X), as recsvc.player.outcomes holds it.
MESSAGES = {(name, lang): getattr(outcome, lang) for name, outcome in OUTCOMES.items() for lang in ("he", "en")}

# What the page looks like, read in one evaluation.
SNAPSHOT_JS = """(() => {
  const player = document.getElementById("player");
  const audio = player.querySelector("audio");
  return {
    state: player.dataset.state,
    message: document.getElementById("player-message").textContent,
    classes: [...player.classList],
    html_lang: document.documentElement.lang,
    html_dir: document.documentElement.dir,
    player_dir: player.dir,
    audio: audio && {
      src: audio.getAttribute("src"),
      controls: audio.controls,
      error: audio.error && audio.error.code,
      ready_state: audio.readyState,
      duration: audio.duration,
    },
  };
})()"""

# Done: a final state, and when playing, the audio has its metadata or an error.
SETTLED_JS = """(() => {
  const player = document.getElementById("player");
  if (!player || player.dataset.state === "waiting") return false;
  if (player.dataset.state !== "playing") return true;
  const audio = player.querySelector("audio");
  return !!audio && (audio.readyState >= 1 || !!audio.error);
})()"""


def make_wav(seconds: float = WAV_SECONDS, rate: int = 8000) -> bytes:
    """A short mono 16-bit tone, made with the wave module."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        frames = int(seconds * rate)
        wav.writeframes(b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(frames)))
    return buffer.getvalue()


# -- the scripted stand-in for recsvc ----------------------------------------

@dataclass(frozen=True)
class SeenRequest:
    """One request the fake received, as the tests need to see it."""
    method: str
    path: str
    query: dict
    headers: dict          # lower-case names
    at: float              # time.monotonic()

    @property
    def bearer(self) -> bool:
        return self.headers.get("authorization", "").startswith("Bearer ")

    @property
    def prefer_wait(self) -> int | None:
        match = re.fullmatch(r"\s*wait=(\d+)\s*", self.headers.get("prefer", ""))
        return int(match.group(1)) if match else None


@dataclass
class FakeRecsvc:
    """Serves the player page and answers the recording routes by scenario."""
    token: str = TOKEN
    secret: bytes = b"fake-link-secret"
    wav: bytes = field(default_factory=make_wav)
    seen: list = field(default_factory=list)
    polls: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)   # guards seen and polls
    _numbers: itertools.count = field(default_factory=itertools.count)

    def start(self) -> "FakeRecsvc":
        fake = self

        class Handler(_FakeHandler):
            backend = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-recsvc", daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # The backend interface the tests use.

    def call_sid(self, scenario: str) -> str:
        return f"{scenario}_{next(self._numbers)}"

    def file_requests(self, call_sid: str) -> list[SeenRequest]:
        with self.lock:
            return [r for r in self.seen if r.path == f"/api/recordings/file/{call_sid}"]

    def link_requests(self, call_sid: str) -> list[SeenRequest]:
        with self.lock:
            return [r for r in self.seen if r.path == f"/api/recordings/{call_sid}/link"]

    def signed_link(self, call_sid: str, lifetime: float = 900) -> str:
        exp = int(time.time() + lifetime)
        return f"/api/recordings/file/{call_sid}?exp={exp}&sig={self._signature(call_sid, exp)}"

    def _signature(self, call_sid: str, exp: int) -> str:
        return hmac.new(self.secret, f"{call_sid}:{exp}".encode(), hashlib.sha256).hexdigest()

    def link_is_valid(self, call_sid: str, query: dict) -> bool:
        try:
            exp = int(query.get("exp", ""))
        except ValueError:
            return False
        return exp > time.time() and hmac.compare_digest(query.get("sig", ""), self._signature(call_sid, exp))


class _FakeHandler(BaseHTTPRequestHandler):
    backend: FakeRecsvc
    protocol_version = "HTTP/1.0"     # one request per connection: simple to reason about

    def log_message(self, format, *args):   # keep pytest output clean
        pass

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def _route(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        seen = SeenRequest(self.command, url.path, query,
                           {k.lower(): v for k, v in self.headers.items()}, time.monotonic())
        backend = self.backend
        with backend.lock:
            backend.seen.append(seen)
        try:
            if self.command == "GET" and url.path == "/player":
                return self._send(200, "text/html; charset=utf-8", (STATIC_DIR / "player.html").read_bytes())
            if self.command == "GET" and url.path == "/player.js":
                return self._send(200, "application/javascript; charset=utf-8",
                                  (STATIC_DIR / "player.js").read_bytes())
            match = re.fullmatch(r"/api/recordings/file/([A-Za-z0-9_-]{1,64})", url.path)
            if self.command == "GET" and match:
                return self._file(match.group(1), seen)
            match = re.fullmatch(r"/api/recordings/([A-Za-z0-9_-]{1,64})/link", url.path)
            if self.command == "POST" and match:
                return self._link(match.group(1), seen)
            self._json(404, {"error": "not_found", "message": "No such path."})
        except (BrokenPipeError, ConnectionResetError):
            pass        # the player aborts a ready poll once it has the status

    def _authorized(self, call_sid: str, seen: SeenRequest) -> bool:
        if seen.headers.get("authorization") == f"Bearer {self.backend.token}":
            return True
        return "sig" in seen.query and self.backend.link_is_valid(call_sid, seen.query)

    def _unauthorized(self):
        self._json(401, {"error": "unauthorized", "message": "Missing or wrong credentials."},
                   {"WWW-Authenticate": "Bearer"})

    def _link(self, call_sid: str, seen: SeenRequest):
        if seen.headers.get("authorization") != f"Bearer {self.backend.token}":
            return self._unauthorized()
        link = self.backend.signed_link(call_sid)
        exp = int(urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["exp"][0])
        expires_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
        self._json(200, {"url": link, "expires_at": expires_at})

    def _file(self, call_sid: str, seen: SeenRequest):
        if not self._authorized(call_sid, seen):
            return self._unauthorized()
        scenario = call_sid.rsplit("_", 1)[0]
        with self.backend.lock:
            n = self.backend.polls.get(call_sid, 0) + 1
            self.backend.polls[call_sid] = n
        if scenario == "ready-after-2":
            if n <= 2:
                return self._processing(retry_after=n - 1)    # 0 first: the player must still wait 1 s
            return self._audio()
        if scenario == "missing":
            return self._json(404, {"error": "call_not_found", "message": "No such call."})
        if scenario == "no-url":
            return self._json(404, {"error": "no_recording_url", "message": "The call has no recording URL."})
        if scenario == "worker-offline":
            return self._json(500, {"error": "worker_not_processing_queue", "message": "No worker is running.",
                                    "reason": "no live worker", "retry_after": 15}, {"Retry-After": "15"})
        if scenario == "processing":
            return self._processing(retry_after=1)
        if scenario == "unavailable":
            if n == 1:
                self.close_connection = True
                return self.connection.shutdown(2)         # no answer at all: a network error
            if n == 2:
                return self._json(503, {"error": "busy", "message": "Try again."})
            return self._audio()
        self._json(404, {"error": "call_not_found", "message": "Unknown scenario."})

    def _processing(self, retry_after: int):
        self._json(202, {"status": "processing", "job_id": 1, "job_status": "queued", "attempt": 0,
                         "max_attempts": 3, "retry_after": retry_after, "message": "Preparing."},
                   {"Retry-After": str(retry_after)})

    def _audio(self):
        body = self.backend.wav
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2) or len(body) - 1), len(body) - 1)
            return self._send(206, "audio/wav", body[start:end + 1], {
                "Content-Range": f"bytes {start}-{end}/{len(body)}", "Accept-Ranges": "bytes"})
        self._send(200, "audio/wav", body, {"Accept-Ranges": "bytes"})

    def _json(self, status: int, body: dict, headers: dict | None = None):
        self._send(status, "application/json", json.dumps(body).encode(), headers)

    def _send(self, status: int, content_type: str, body: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


# -- fixtures -----------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    require_chromium()
    with Browser() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def backend():
    """The server the page talks to; a real recsvc fixture can stand in (module docstring)."""
    fake = FakeRecsvc().start()
    yield fake
    fake.close()


def player_url(backend, call_sid: str, *, lang: str = "en", max_wait: float | None = None,
               token: str | None = None) -> str:
    query = {"call_sid": call_sid, "lang": lang}
    if max_wait is not None:
        query["max_wait"] = max_wait
    fragment = urllib.parse.urlencode({"token": backend.token if token is None else token})
    return f"{backend.base_url}/player?{urllib.parse.urlencode(query)}#{fragment}"


def settle(browser, url: str, timeout: float = 20.0) -> dict:
    """Load the player page, wait for its final state, and read it."""
    with browser.open(url) as page:
        page.wait_for(SETTLED_JS, timeout=timeout)
        return page.evaluate(SNAPSHOT_JS)


def requests_or_skip(backend, call_sid: str) -> list:
    requests = backend.file_requests(call_sid)
    if requests is None:
        pytest.skip("this backend does not record the requests it receives")
    return requests


# -- playing ------------------------------------------------------------------

@pytest.fixture(scope="module")
def ready_recording(browser, backend):
    """A call answered 202, 202, then 200, and the page as it ends."""
    call_sid = backend.call_sid("ready-after-2")
    return call_sid, settle(browser, player_url(backend, call_sid, max_wait=30))


def test_ready_recording_plays_from_a_signed_link(backend, ready_recording):
    call_sid, snapshot = ready_recording
    assert snapshot["state"] == "playing"
    assert "recsvc-player--playing" in snapshot["classes"]
    audio = snapshot["audio"]
    assert audio["controls"] is True
    assert audio["error"] is None
    assert audio["src"].startswith(f"/api/recordings/file/{call_sid}?exp=")
    assert "&sig=" in audio["src"]
    assert audio["duration"] == pytest.approx(WAV_SECONDS, abs=0.05)


def test_ready_recording_is_fetched_with_bearer_token_and_prefer_wait(backend, ready_recording):
    call_sid, _ = ready_recording
    polls = [r for r in requests_or_skip(backend, call_sid) if r.bearer]
    assert len(polls) == 3, "two 202 answers, then the 200"
    for poll in polls:
        assert poll.headers["authorization"] == f"Bearer {backend.token}"
        assert poll.prefer_wait is not None and 1 <= poll.prefer_wait <= 30
    assert [p.prefer_wait for p in polls] == sorted((p.prefer_wait for p in polls), reverse=True)


def test_ready_recording_link_is_asked_for_once_with_bearer_and_content_length(backend, ready_recording):
    call_sid, _ = ready_recording
    links = backend.link_requests(call_sid)
    assert len(links) == 1
    assert links[0].headers["authorization"] == f"Bearer {backend.token}"
    assert links[0].headers.get("content-length") == "0", "recsvc answers a POST without it 411"


def test_processing_answers_are_followed_by_a_wait_of_retry_after_at_least_one_second(backend, ready_recording):
    call_sid, _ = ready_recording
    polls = [r for r in requests_or_skip(backend, call_sid) if r.bearer]
    gaps = [later.at - earlier.at for earlier, later in zip(polls, polls[1:])]
    # Retry-After 0 is clamped up to 1 s; Retry-After 1 is 1 s.
    assert all(gap >= 0.95 for gap in gaps), gaps
    assert all(gap < 3 for gap in gaps), gaps


def test_signed_link_player_polls_without_a_token_and_plays_the_link(browser, backend):
    call_sid = backend.call_sid("ready-after-2")
    link = backend.signed_link(call_sid)
    with browser.open(f"{backend.base_url}/player?call_sid=none") as page:
        result = page.evaluate(f"""import("/player.js").then(async ({{mountPlayer}}) => {{
            const element = document.createElement("div");
            document.body.append(element);
            const signals = [];
            const fetchImpl = (url, init) => {{ signals.push(init.signal); return fetch(url, init); }};
            const player = mountPlayer(element, {{link: {json.dumps(link)}, maxWait: 20, fetchImpl}});
            const state = await player.finished;
            return {{state, src: player.audio && player.audio.getAttribute("src"),
                     readyPollAborted: signals[signals.length - 1].aborted,
                     dataState: element.dataset.state,
                     message: element.querySelector(".recsvc-player__message").textContent}};
        }})""", timeout=20)
    assert result["state"] == result["dataState"] == "playing"
    assert result["src"] == link
    assert result["readyPollAborted"] is True, "the 200 body is left to the <audio> element"
    polls = requests_or_skip(backend, call_sid)
    assert not any(r.bearer for r in polls)
    assert len([r for r in polls if "range" not in r.headers]) >= 3
    assert backend.link_requests(call_sid) == []


# -- stopping -----------------------------------------------------------------

@pytest.mark.parametrize("lang", ["he", "en"])
@pytest.mark.parametrize("scenario, state", [
    pytest.param("missing", "call_not_found", id="404-call_not_found"),
    pytest.param("no-url", "not_found", id="404-no_recording_url-not_found"),
])
def test_a_404_stops_at_once_naming_call_or_recording_with_the_contract_message(browser, backend, lang, scenario,
                                                                                state):
    call_sid = backend.call_sid(scenario)
    snapshot = settle(browser, player_url(backend, call_sid, lang=lang))
    assert snapshot["state"] == state
    assert snapshot["message"] == MESSAGES[(state, lang)]
    assert snapshot["audio"] is None
    assert_language(snapshot, lang)
    assert len(requests_or_skip(backend, call_sid)) == 1


@pytest.mark.parametrize("lang", ["he", "en"])
def test_server_error_stops_at_worker_offline_with_the_contract_message(browser, backend, lang):
    call_sid = backend.call_sid("worker-offline")
    snapshot = settle(browser, player_url(backend, call_sid, lang=lang))
    assert snapshot["state"] == "worker_offline"
    assert snapshot["message"] == MESSAGES[("worker_offline", lang)]
    assert_language(snapshot, lang)
    assert len(requests_or_skip(backend, call_sid)) == 1, "a 500 is final, whatever its Retry-After"


def test_recording_still_processing_at_max_wait_stops_at_timeout(browser, backend):
    call_sid = backend.call_sid("processing")
    snapshot = settle(browser, player_url(backend, call_sid, max_wait=3))
    assert snapshot["state"] == "timeout"
    # X is the player's own count of the seconds it waited: max_wait, not more.
    assert snapshot["message"] == MESSAGES[("timeout", "en")].format(X=3)
    polls = requests_or_skip(backend, call_sid)
    assert 3 <= len(polls) <= 4, "Retry-After: 1 within a 3 s max_wait"
    first = polls[0].at
    # The last request goes out when the cut wait ends, at max_wait by the browser's timer, which may fire a
    # little late on a busy machine; one more Retry-After (1 s) would put it past 4 s.
    assert polls[-1].at - first < 3.5, "no request once max_wait has passed"
    for poll in polls:
        left = 3 - (poll.at - first)
        assert poll.prefer_wait is None or poll.prefer_wait <= left + 0.2, (poll.prefer_wait, left)


def test_hebrew_player_shows_preparing_with_attempt_then_timeout_with_seconds_waited(browser, backend):
    call_sid = backend.call_sid("processing")
    with browser.open(player_url(backend, call_sid, lang="he", max_wait=2)) as page:
        waiting = page.wait_for("""(() => {
            const text = document.querySelector(".recsvc-player__progress").textContent;
            return document.getElementById("player").dataset.state === "waiting"
                && text.includes("ניסיון 2") && [document.getElementById("player-message").textContent, text];
        })()""", timeout=5)
        page.wait_for(SETTLED_JS, timeout=10)
        snapshot = page.evaluate(SNAPSHOT_JS)
    assert waiting[0] == "מכינים את ההקלטה…"
    assert re.fullmatch(rf"ניסיון 2, חיכינו [01] שניות\. פונים אל {re.escape(backend.base_url)}; "
                        r"נשמע לאחרונה: 202 ניסיון 0/3, העבודה בתור", waiting[1]), waiting
    assert snapshot["state"] == "timeout"
    assert snapshot["message"] == MESSAGES[("timeout", "he")].format(X=2)
    assert_language(snapshot, "he")


@pytest.mark.parametrize("lang, prefix", [
    pytest.param("en", "The recording could not be loaded (HTTP 401 unauthorized): ", id="en"),
    pytest.param("he", "לא ניתן לטעון את ההקלטה (HTTP 401 unauthorized): ", id="he"),
])
def test_wrong_token_stops_at_error_showing_the_server_message(browser, backend, lang, prefix):
    call_sid = backend.call_sid("ready-after-2")
    snapshot = settle(browser, player_url(backend, call_sid, lang=lang, token="not-the-token"))
    assert snapshot["state"] == "error"
    assert snapshot["message"] == prefix + "Missing or wrong credentials."
    assert_language(snapshot, lang)
    assert len(requests_or_skip(backend, call_sid)) == 1


def test_page_without_token_stops_at_error_without_asking_the_server(browser, backend):
    call_sid = backend.call_sid("ready-after-2")
    url = f"{backend.base_url}/player?call_sid={call_sid}"
    snapshot = settle(browser, url)
    assert snapshot["state"] == "error"
    assert requests_or_skip(backend, call_sid) == []


# -- retrying -----------------------------------------------------------------

def test_network_error_and_503_are_retried_with_backoff_of_one_then_two_seconds(browser, backend):
    call_sid = backend.call_sid("unavailable")
    snapshot = settle(browser, player_url(backend, call_sid, max_wait=30))
    assert snapshot["state"] == "playing"
    polls = [r for r in requests_or_skip(backend, call_sid) if r.bearer]
    assert len(polls) == 3
    gaps = [later.at - earlier.at for earlier, later in zip(polls, polls[1:])]
    assert 0.95 <= gaps[0] < 1.9, gaps
    assert 1.95 <= gaps[1] < 3.5, gaps


def test_wait_rules_clamp_retry_after_and_cap_backoff(browser, backend):
    with browser.open(f"{backend.base_url}/player?call_sid=none") as page:
        rules = page.evaluate("""import("/player.js").then((m) => ({
            retry_after: ["0", "1", "2", "2.5", "10", "60", "", "soon", null].map((v) => m.retryAfterSeconds(v)),
            backoff: [1, 2, 3, 4, 5, 9].map(m.backoffSeconds),
            prefer_wait: [180000, 179999, 2500, 999, 0, -5].map(m.preferWaitSeconds),
            outcomes: [200, 206, 202, 404, 500, 400, 401, 403, 502, 503, 504].map((s) => m.outcomeForStatus(s)),
            coded: [[404, "call_not_found"], [404, "no_recording_url"], [404, "recording_not_found_upstream"],
                    [500, "worker_not_processing_queue"], [500, "recording_download_failed"],
                    [500, "internal_error"], [503, "storage_unavailable"]].map(([s, c]) => m.outcomeForStatus(s, c)),
        }))""")
    assert rules["retry_after"] == [1, 1, 2, 2.5, 10, 10, 1, 1, 1]
    assert rules["backoff"] == [1, 2, 4, 8, 8, 8]
    assert rules["prefer_wait"] == [180, 179, 2, 0, 0, 0]
    assert rules["outcomes"] == ["ready", "ready", "processing", "not_found", "server_error",
                                 "error", "error", "error", "unavailable", "unavailable", "unavailable"]
    assert rules["coded"] == ["call_not_found", "not_found", "not_found", "worker_offline", "download_failed",
                              "server_error", "unavailable"]


def test_stop_ends_the_polling_and_keeps_the_last_state(browser, backend):
    with browser.open(f"{backend.base_url}/player?call_sid=none") as page:
        result = page.evaluate("""import("/player.js").then(async ({mountPlayer}) => {
            let calls = 0;
            const fetchImpl = async () => {
                calls += 1;
                return new Response("{}", {status: 202, headers: {"Retry-After": "1"}});
            };
            const element = document.createElement("div");
            document.body.append(element);
            const player = mountPlayer(element, {callSid: "CA1", token: "t", fetchImpl});
            await new Promise((resolve) => setTimeout(resolve, 100));
            player.stop();
            const finished = await player.finished;
            const callsAtStop = calls;
            await new Promise((resolve) => setTimeout(resolve, 1500));
            return {finished, state: player.state, callsAtStop, callsLater: calls};
        })""", timeout=10)
    assert result == {"finished": "stopped", "state": "waiting", "callsAtStop": 1, "callsLater": 1}


def assert_language(snapshot: dict, lang: str) -> None:
    if lang == "he":
        assert (snapshot["html_lang"], snapshot["html_dir"], snapshot["player_dir"]) == ("he", "rtl", "rtl")
    else:
        assert (snapshot["html_lang"], snapshot["html_dir"], snapshot["player_dir"]) == ("en", "ltr", "ltr")

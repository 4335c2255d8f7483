"""The conformance kit's side of the wire: the ``Target`` it asks, the ``Answer`` it gets, the ``expect_*`` verdicts.

A check (``recsvc.kit.checks``) talks to the implementation under
test only through a ``Target``: ``ask`` sends one request on a fresh
connection through ``http.client`` with the path exactly as written, so a
check can send a raw path that a URL library would re-encode; ``play``,
``admin``, ``ready`` and ``client`` are the requests the checks repeat.
What comes back is an ``Answer`` (status, headers, body, seconds taken).

A check judges answers with the ``expect_*`` assertions, which raise
``Fail(reason)`` when a promise is broken; a check that cannot run raises
``Skip(reason)``. The reason is what the kit prints.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field

from ..http.answers import meaning
from ..player.client import RecordingClient


class Fail(Exception):
    """The implementation broke the promise; the message says how."""


class Skip(Exception):
    """The check cannot run against this target with what it was given."""


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    seconds: float = 0.0

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)

    def json(self) -> dict:
        try:
            payload = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise Fail(f"HTTP {self.status} body is not JSON: {self.body[:60]!r}") from None
        if not isinstance(payload, dict):
            raise Fail(f"HTTP {self.status} body is JSON but not an object")
        return payload


_OWN = object()  # "use the target's token"


@dataclass
class Target:
    """One implementation under test and what the kit knows about it."""

    base_url: str
    token: str
    admin_token: str | None = None
    calls: dict[str, tuple[str, str]] = field(default_factory=dict)  # state -> (business token, call_sid)
    upstream_url: str | None = None       # serves audio
    own_upstream: object = None           # a recsvc.demo.fake_upstream.FakeUpstream the kit scripts
    timeout: float = 30.0
    notes: dict = field(default_factory=dict)  # what one check leaves for a later one
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))

    def __post_init__(self):
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--base-url must be an http(s) URL, got {self.base_url!r}")
        self._parts = parts
        self.prefix = parts.path.rstrip("/")

    def has(self, need: str) -> bool:
        if need == "admin":
            return self.admin_token is not None
        if need == "upstream":
            return self.upstream_url is not None
        if need == "own_upstream":
            return self.own_upstream is not None
        return need in self.calls

    def call(self, state: str) -> tuple[str, str]:
        return self.calls[state]

    def ask(self, method: str, path: str, *, token=_OWN, headers: dict | None = None, body=None) -> Answer:
        """One request on a fresh connection; ``path`` is sent as is, after the base URL's own path."""
        parts = self._parts
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        all_headers = dict(headers or {})
        token = self.token if token is _OWN else token
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            conn.request(method, self.prefix + path, body=data, headers=all_headers)
            response = conn.getresponse()
            payload = response.read()
            return Answer(response.status, response.getheaders(), payload, time.monotonic() - started)
        except (OSError, http.client.HTTPException) as exc:
            raise Fail(f"{method} {path}: no HTTP answer ({type(exc).__name__}: {exc})") from None
        finally:
            conn.close()

    def play(self, state: str, method: str = "GET", headers: dict | None = None) -> Answer:
        token, call_sid = self.call(state)
        return self.ask(method, f"/api/recordings/file/{call_sid}", token=token, headers=headers)

    def client(self, token: str | None, max_wait: float = 15) -> RecordingClient:
        return RecordingClient(self.base_url, token, max_wait=max_wait, request_timeout=self.timeout)

    def ready(self) -> Answer:
        """The ready call's plain GET, asked once and remembered."""
        if "ready_get" not in self.notes:
            answer = self.play("ready")
            expect(answer.status == 200, f"GET of the ready call answered {answer.status}, not 200")
            self.notes["ready_get"] = answer
        return self.notes["ready_get"]

    def admin(self, method: str, path: str, body=None) -> Answer:
        return self.ask(method, path, token=self.admin_token, body=body)

    def new_sid(self, label: str) -> str:
        return f"conf-{label}-{self.run_id}"


# ---------------------------------------------------------------- assertions

def expect(condition: bool, reason: str) -> None:
    if not condition:
        raise Fail(reason)


def expect_status(answer: Answer, status: int) -> None:
    if answer.status != status:
        try:
            said = f" {answer.json().get('error')}"
        except Fail:
            said = ""
        raise Fail(f"answered {answer.status}{said}, not {status}")


def expect_error(answer: Answer, status: int | None, code: str | None) -> dict:
    """CONTRACT 3: every error body is JSON {"error": code, "message": sentence, ...}.

    A code's status and the headers it always carries are the table of answers'
    (``recsvc.http.answers.ERRORS``); ``status`` is for an answer expected without a code."""
    if code is not None:
        row = meaning(code)
        if status is not None and status != row.status:
            raise ValueError(f"the check expects {code} with {status}; the table of answers says {row.status}")
        status = row.status
    expect_status(answer, status)
    content_type = (answer.header("content-type") or "").split(";")[0].strip().lower()
    expect(content_type == "application/json", f"{status} Content-Type is {content_type or 'missing'}, not application/json")
    body = answer.json()
    expect(isinstance(body.get("error"), str), f"{status} body has no string 'error'")
    expect(code is None or body["error"] == code, f"error is {body.get('error')!r}, not {code!r}")
    expect(isinstance(body.get("message"), str) and body["message"], f"{status} body has no 'message' sentence")
    if code is not None:
        for name, _ in row.headers:
            expect(answer.header(name) is not None, f"{status} {code} has no {name} header")
        if row.retry_after:
            expect_retry_after(answer)
    return body


def expect_header(answer: Answer, name: str, pattern: str) -> str:
    value = answer.header(name)
    expect(value is not None, f"no {name} header")
    expect(re.fullmatch(pattern, value) is not None, f"{name}: {value!r} does not match {pattern}")
    return value


def expect_retry_after(answer: Answer) -> int:
    seconds = int(expect_header(answer, "Retry-After", r"[0-9]+"))
    expect(seconds >= 1, f"Retry-After is {seconds}, not at least 1")
    return seconds

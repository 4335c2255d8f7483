"""The conformance kit passes recsvc, and names exactly the promises a broken implementation breaks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ADMIN_TOKEN, ROOT, make_settings, request
from recsvc.run.app import App
from recsvc.kit.conformance import main
from recsvc.kit.checks import CHECKS
from recsvc.demo.audio import tune_for
from recsvc.core.media import Conditions, plan_response, strong_etag

SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$", re.M)


def run_kit(*args: str) -> tuple[int, str, dict[str, str]]:
    """Run the kit in-process: exit status, output, and each check's verdict by id."""
    out = io.StringIO()
    status = main(list(args), stdout=out, stderr=out)
    text = out.getvalue()
    verdicts = {}
    for line in text.splitlines():
        verdict, _, rest = line.partition("  ")
        if verdict in ("PASS", "FAIL", "SKIP"):
            verdicts[rest.split("  ")[0]] = verdict
    return status, text, verdicts


def failed(verdicts: dict[str, str]) -> set[str]:
    return {check_id for check_id, verdict in verdicts.items() if verdict == "FAIL"}


@pytest.fixture
def recsvc_app(tmp_path):
    """recsvc in-process on 127.0.0.1 with the real clock, as the kit would meet it deployed."""
    app = App(make_settings(tmp_path / "data", download_timeout=30.0)).start()
    yield app
    app.stop(grace=0.5)


def new_business(base_url: str) -> str:
    answer = request(base_url, "POST", "/admin/businesses", token=ADMIN_TOKEN, body={"name": "tested"})
    assert answer.status == 201
    return answer.json["token"]


# ---------------------------------------------------------------- against recsvc itself

def test_recsvc_passes_every_check_when_run_from_the_command_line(recsvc_app):
    token = new_business(recsvc_app.base_url)
    proc = subprocess.run([sys.executable, "-m", "recsvc", "conformance", "--base-url", recsvc_app.base_url,
                           "--token", token, "--admin-token", ADMIN_TOKEN],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(CHECKS)} passed, 0 failed, 0 skipped" in proc.stdout, proc.stdout
    assert len([line for line in proc.stdout.splitlines() if line.startswith("PASS  ")]) == len(CHECKS)


def test_recsvc_passes_with_call_states_given_and_no_admin_token(recsvc_app, upstream):
    base = recsvc_app.base_url
    token = new_business(base)
    for sid, url in (("READY1", upstream.set("/r.wav", body=tune_for("r"))), ("NOURL1", None),
                     ("PENDING1", upstream.set("/hang.wav", hang=True))):
        assert request(base, "PUT", f"/api/calls/{sid}", token=token, body={"recording_url": url}).status == 201
    assert request(base, "GET", "/api/recordings/file/PENDING1", token=token).status == 202
    assert request(base, "GET", "/api/recordings/file/READY1", token=token, headers={"Prefer": "wait=10"}).status == 200

    status, text, verdicts = run_kit("--base-url", base, "--token", token, "--ready", "READY1", "--no-url", "NOURL1",
                                     "--pending", "PENDING1", "--missing", "NOSUCHCALL")
    assert status == 0, text
    assert not failed(verdicts)
    assert {check_id for check_id, verdict in verdicts.items() if verdict == "SKIP"} == {
        check.id for check in CHECKS if "admin" in check.needs} | {"isolation.other_business_404"}


# ---------------------------------------------------------------- against a broken implementation

FAKE_TOKEN = "fake-business-token"
FAKE_AUDIO = tune_for("fake target")
FAKE_ETAG = strong_etag(hashlib.sha256(FAKE_AUDIO).hexdigest())
FAKE_LINK = "/api/recordings/file/READY?exp=1893456000&sig=5ca1ab1e"
SID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class FakeTarget(ThreadingHTTPServer):
    """Another "implementation" of the contract, small and stdlib-only, broken on purpose where told.

    Calls: READY (cached), NOURL (no recording_url), PENDING (an active job);
    every other call_sid is unknown. ``breaks`` names the defects to show.
    """

    daemon_threads = True

    def __init__(self, breaks: frozenset[str]):
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.breaks = breaks
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:
        pass

    def send_error(self, code, message=None, explain=None) -> None:  # http.server's own 501 and 400, as JSON
        self._json(code, "not_implemented" if code == 501 else "bad_request")

    def _send(self, status: int, headers, body: bytes = b"", content_length: int | None = None) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if not any(name == "Content-Length" for name, _ in headers):
            self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, code: str, headers=(), **extra) -> None:
        body = json.dumps({"error": code, "message": "Refused.", **extra}).encode()
        self._send(status, [("Content-Type", "application/json"), *headers], body)

    def _route(self) -> None:
        breaks = self.server.breaks
        path = self.path
        if path == "/healthz" and self.command in ("GET", "HEAD"):
            return self._send(200, [("Content-Type", "application/json")], b'{"status": "ok"}')
        if path == "/api/recordings/READY/link" and self.command == "POST":
            return self._send(200, [("Content-Type", "application/json")],
                              json.dumps({"url": FAKE_LINK, "expires_at": "2030-01-01T00:00:00Z"}).encode())
        if not path.startswith("/api/recordings/file/"):
            return self._json(404, "not_found")
        if self.command not in ("GET", "HEAD"):
            return self._json(405, "method_not_allowed", [("Allow", "GET, HEAD")])
        signed = path == FAKE_LINK and "Authorization" not in self.headers
        if self.headers.get("Authorization") != f"Bearer {FAKE_TOKEN}" and not signed:
            return self._json(401, "unauthorized", [("WWW-Authenticate", "Bearer")])
        sid = path.removeprefix("/api/recordings/file/").split("?")[0]
        if not SID.fullmatch(sid):
            return self._json(400, "invalid_call_sid")
        if sid == "READY":
            return self._ready(ignore_range="range_ignored" in breaks)
        if sid == "NOURL":
            if "no_url_500_text" in breaks:
                return self._send(500, [("Content-Type", "text/plain")], b"Internal Server Error\n")
            return self._json(404, "no_recording_url")
        if sid == "PENDING":
            return self._processing(with_retry_after="no_retry_after" not in breaks)
        return self._json(404, "call_not_found")

    def _ready(self, ignore_range: bool) -> None:
        conditions = Conditions(if_none_match=self.headers.get("If-None-Match"),
                                if_range=None if ignore_range else self.headers.get("If-Range"))
        plan = plan_response(self.command, conditions, None if ignore_range else self.headers.get("Range"),
                             len(FAKE_AUDIO), FAKE_ETAG, 1_800_000_000.0, content_type="audio/wav")
        if plan.status == 416:
            return self._json(416, "range_not_satisfiable", plan.headers)
        self._send(plan.status, list(plan.headers), FAKE_AUDIO[plan.offset:plan.offset + plan.count])

    def _processing(self, with_retry_after: bool) -> None:
        body = {"status": "processing", "job_id": 1, "job_status": "running", "attempt": 0, "max_attempts": 3,
                "retry_after": 2, "message": "Ask again in 2 seconds."}
        headers = [("Content-Type", "application/json")]
        if with_retry_after:
            headers.append(("Retry-After", "2"))
        if "wait=" in (self.headers.get("Prefer") or ""):
            headers.append(("Preference-Applied", "wait=1"))
        self._send(202, headers, json.dumps(body).encode())

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _route


@pytest.fixture
def fake_target():
    servers = []

    def start(*breaks: str) -> FakeTarget:
        server = FakeTarget(frozenset(breaks))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run_against(server: FakeTarget) -> tuple[int, str, dict[str, str]]:
    return run_kit("--base-url", server.base_url, "--token", FAKE_TOKEN, "--ready", "READY", "--no-url", "NOURL",
                   "--pending", "PENDING", "--missing", "NOSUCHCALL")


def test_a_faithful_fake_implementation_passes_what_it_was_asked(fake_target):
    status, text, verdicts = run_against(fake_target())
    assert status == 0, text
    assert not failed(verdicts)
    assert SUMMARY.search(text)


@pytest.mark.parametrize("defect, broken_checks", [
    pytest.param("no_retry_after", {"pending.202_retry_after", "pending.processing_body"},
                 id="a 202 without Retry-After fails the processing checks"),
    pytest.param("no_url_500_text", {"no_url.no_recording_url_404", "client.no_url_stops_not_found"},
                 id="a 500 with a text body fails the no-url checks"),
    pytest.param("range_ignored", {"ready.range_closed_206", "ready.range_open_206", "ready.range_suffix_206",
                                   "ready.range_unsatisfiable_416", "ready.if_range_current_206"},
                 id="ignoring Range fails the range checks"),
])
def test_a_broken_implementation_fails_exactly_the_checks_of_its_defect(fake_target, defect, broken_checks):
    status, text, verdicts = run_against(fake_target(defect))
    assert status == 1, text
    assert failed(verdicts) == broken_checks, text
    passed, failures, skipped = map(int, SUMMARY.search(text).groups())
    assert failures == len(broken_checks) and passed + failures + skipped == len(CHECKS)


def test_a_failure_line_names_the_check_the_contract_and_the_reason(fake_target):
    _, text, _ = run_against(fake_target("no_retry_after"))
    line = next(line for line in text.splitlines() if line.startswith("FAIL  pending.202_retry_after"))
    assert "[CONTRACT 3 processing body]" in line and "no Retry-After header" in line


def test_an_unreachable_target_fails_rather_than_crashes():
    status, text, verdicts = run_kit("--base-url", "http://127.0.0.1:9", "--token", "t", "--timeout", "2")
    assert status == 1
    assert failed(verdicts) == {check.id for check in CHECKS}
    assert "target unreachable" in text


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("args", [
    pytest.param([], id="nothing"),
    pytest.param(["--base-url", "http://127.0.0.1:1"], id="no token"),
    pytest.param(["--base-url", "ftp://x", "--token", "t"], id="not an http URL"),
    pytest.param(["--base-url", "http://127.0.0.1:1", "--token", "t", "--bogus"], id="an unknown flag"),
])
def test_usage_errors_exit_2(args):
    status, _, _ = run_kit(*args)
    assert status == 2


def test_list_names_every_check_with_its_contract_reference():
    status, text, _ = run_kit("--list")
    assert status == 0
    assert len(text.splitlines()) == len(CHECKS)


def test_checks_are_data_with_unique_ids_and_contract_references():
    ids = [check.id for check in CHECKS]
    assert len(ids) == len(set(ids))
    assert all(check.ref.startswith("CONTRACT ") for check in CHECKS)

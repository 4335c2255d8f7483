"""Every error the running server answers is documented in /openapi.json where it was answered.

Each row below makes a real recsvc answer one error over a socket. The code
in the body must be a documented code, with the status the document gives
it, listed under that status of the operation that answered (or under the
transport errors every operation may answer). Together the rows provoke
every code the document lists, so a code that no longer exists, or one the
server answers and the document forgets, fails here.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from contract_steps import call_with_recording, new_business, play_until_cached, wait_for_job

from recsvc.http.openapi import ERROR_CODES, openapi_document
from recsvc.storage.store import StoreBusy, StoreUnavailable

TWILIO_SID = "AC" + "0" * 32


def exchange(h, raw: bytes) -> tuple[int, dict]:
    """Send raw bytes and read the answer to the close; (status, JSON body)."""
    with socket.create_connection(h.app.address, timeout=10) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def http(method: str, path: str, token: str | None = None, body: bytes | None = None, **headers) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@pytest.fixture(scope="module")
def document() -> dict:
    return openapi_document()


def documented_where(document: dict, template: str | None, method: str, status: int) -> set[str]:
    """The codes the document allows for this answer: the operation's, then the transport's."""
    codes = set(document["components"]["responses"]["TransportError"]["x-error-codes"])
    if template is not None:
        response = document["paths"][template][method.lower()]["responses"].get(str(status), {})
        codes |= set(response.get("x-error-codes", []))
    return codes


def provoke_all(make_harness, monkeypatch) -> list[tuple[str | None, str, int, str]]:
    """(path template, method, status, error) of one answer per documented code, from running servers."""
    h = make_harness(workers=1, max_retry_attempts=0, idle_timeout=0.5, download_timeout=0.3)
    h.app.downloader.backoff = 0.01
    acme = new_business(h)
    token, admin = acme.token, h.settings.admin_token
    play, calls = "/api/recordings/file/{call_sid}", "/api/calls/{call_sid}"
    call_with_recording(h, acme, "CAOK")
    play_until_cached(h, acme, "CAOK")
    call_with_recording(h, acme, "CAGONE", status=404, body=b"")
    call_with_recording(h, acme, "CAFAIL", status=500, body=b"oops")
    for call_sid in ("CAGONE", "CAFAIL"):
        exchange(h, http("GET", f"/api/recordings/file/{call_sid}", token))
        wait_for_job(h, acme, call_sid)
    h.put_call(token, "CANOURL", None)
    twilio = f"/admin/businesses/{acme.id}/twilio"
    account = {"account_sid": TWILIO_SID, "auth_token": "secret-token"}
    assert h.admin("PUT", twilio, account).status == 200
    other = new_business(h, "other")
    rows = [
        (play, "GET", http("GET", "/api/recordings/file/CAOK")),
        (play, "GET", http("GET", "/api/recordings/file/a.b", token)),
        (play, "GET", http("GET", "/api/recordings/file/CANONE", token)),
        (play, "GET", http("GET", "/api/recordings/file/CANOURL", token)),
        (play, "GET", http("GET", "/api/recordings/file/CAGONE", token)),
        (play, "GET", http("GET", "/api/recordings/file/CAFAIL", token)),
        (play, "GET", http("GET", "/api/recordings/file/CAOK", token, Range="bytes=99999999-")),
        (calls, "PUT", http("PUT", "/api/calls/CANEW", token, b"not json")),
        (calls, "PUT", http("PUT", "/api/calls/CANEW", token, b"{}")),
        (calls, "PUT", http("PUT", "/api/calls/CANEW", token, b'{"recording_url": "http://example.com/a.wav"}')),
        ("/admin/businesses/{business_id}/twilio", "PUT", http("PUT", "/admin/businesses/x/twilio", admin, b"{}")),
        ("/admin/businesses/{business_id}/twilio", "PUT", http("PUT", twilio.replace(str(acme.id), "999999"), admin,
                                                             json.dumps({"account_sid": TWILIO_SID, "auth_token": "secret-token"}).encode())),
        ("/admin/businesses/{business_id}/twilio", "PUT", http("PUT", f"/admin/businesses/{other.id}/twilio", admin,
                                                             json.dumps(account).encode())),
        ("/webhooks/twilio/recording-status", "POST", http("POST", "/webhooks/twilio/recording-status", None,
                                                           b"CallSid=CA1", Content_Type="application/x-www-form-urlencoded")),
        (None, "GET", http("GET", "/no/such/path")),
        (None, "DELETE", http("DELETE", "/healthz")),  # no operation: the transport answers
        (None, "BREW", http("BREW", "/healthz")),
        (None, "GET", b"GET\r\n\r\n"),
        (None, "POST", http("POST", "/admin/businesses", admin, Transfer_Encoding="gzip")),
        (None, "PUT", http("PUT", "/api/calls/CA1", token, b"0\r\n\r\n", Transfer_Encoding="chunked")),
        (None, "PUT", http("PUT", "/api/calls/CA1", token, None, Transfer_Encoding="chunked") + b"zz\r\n\r\n"),
        ("/admin/jobs", "GET", http("GET", "/admin/jobs?business_id=%D9%A1", admin)),
        (None, "PUT", http("PUT", "/api/calls/CA1", token, None, Content_Length="-1")),
        (None, "PUT", http("PUT", "/api/calls/CA1", token)),
        (None, "PUT", http("PUT", "/api/calls/CA1", token, None, Content_Length="70000")),
        (None, "GET", http("GET", "/" + "a" * 9000)),
        (None, "GET", http("GET", "/healthz", None, X_Long="a" * 9000)),
        (None, "GET", b"GET /healthz HTTP/2.0\r\n\r\n"),
    ]
    answers = [(template, method, *exchange(h, raw)) for template, method, raw in rows]
    status, body = exchange(h, b"GET /healthz HTTP/1.1\r\n")  # the head never ends: idle timeout
    answers.append((None, "GET", status, body))

    monkeypatch.setattr(h.app.service, "businesses_with_call", lambda call_sid: (_ for _ in ()).throw(StoreBusy("locked")))
    answers.append((play, "GET", *exchange(h, http("GET", "/api/recordings/file/CAOK?exp=1&sig=x"))))
    monkeypatch.setattr(h.app.service, "businesses_with_call",
                        lambda call_sid: (_ for _ in ()).throw(StoreUnavailable("disk full")))
    answers.append((play, "GET", *exchange(h, http("GET", "/api/recordings/file/CAOK?exp=1&sig=x"))))
    monkeypatch.setattr(h.app.service, "businesses_with_call", lambda call_sid: 1 / 0)
    answers.append((play, "GET", *exchange(h, http("GET", "/api/recordings/file/CAOK?exp=1&sig=x"))))
    assert h.admin("POST", "/admin/workers/pause").status == 200
    call_with_recording(h, acme, "CAPAUSED")
    answers.append((play, "GET", *exchange(h, http("GET", "/api/recordings/file/CAPAUSED", token))))

    down = make_harness(counter="redis://127.0.0.1:1/0")
    answers.append(("/admin/retry-counters/{business_id}/{call_sid}", "GET",
                    *exchange(down, http("GET", "/admin/retry-counters/1/CA1", admin))))

    crowded = make_harness(workers=0, max_connections=1)
    with socket.create_connection(crowded.app.address, timeout=10) as holder:
        holder.sendall(b"GET /healthz HTTP/1.1\r\n")  # holds the one connection open
        deadline = time.monotonic() + 5
        while True:
            status, body = exchange(crowded, http("GET", "/openapi.json"))  # probes have a reserve of their own
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    answers.append((None, "GET", status, body))
    return [(template, method, status, body.get("error")) for template, method, status, body in answers]


def test_every_error_answered_is_documented_under_its_status_and_every_documented_code_is_answered(
        make_harness, monkeypatch, document):
    answered = provoke_all(make_harness, monkeypatch)
    enumerated = set(document["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    for template, method, status, code in answered:
        assert code in enumerated, f"{method} {template}: {code} is not in the Error schema"
        assert ERROR_CODES[code][0] == status, f"{method} {template}: {code} answered {status}"
        assert code in documented_where(document, template, method, status), (
            f"{method} {template} answered {status} {code}, which its operation does not list")
    assert {code for *_, code in answered} == set(ERROR_CODES)

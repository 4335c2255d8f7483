"""Hostile clients against a whole recsvc (App + Api + transport), not the transport's echo app.

CONTRACT 2 (--idle-timeout, --max-connections) and 6 (HTTP hygiene): slow
heads are cut at the deadline, smuggled bytes never run, odd paths never
reach a file, a client that resets costs one log line, the listen backlog
absorbs a burst, and the N+1th connection gets a 503.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from conftest import wait_until
from rawhttp import connect, exchange, parse_answer, read_until_closed, request_bytes, reset
from recsvc.demo.audio import sized_wav


def _address(svc):
    return svc.app.address


def _tracebacks(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


# ---------------------------------------------------------------- slow heads (--idle-timeout)


def test_a_head_trickled_one_byte_every_200ms_is_closed_at_the_idle_deadline(make_harness):
    svc = make_harness(idle_timeout=1.0)
    head = request_bytes("GET", "/healthz")
    with connect(_address(svc)) as sock:
        started = time.monotonic()
        answer = b""
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.2)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            answer = chunk + read_until_closed(sock, 2)
            break
        closed_after = time.monotonic() - started
    assert closed_after < 1.5, f"a trickling head held its connection {closed_after:.2f}s with --idle-timeout 1"
    assert answer == b"" or parse_answer(answer).status == 408, answer[:200]


def test_200_trickling_connections_do_not_hold_200_threads_past_the_deadline(make_harness):
    svc = make_harness(idle_timeout=1.0)
    baseline = threading.active_count()
    sockets = [connect(_address(svc)) for _ in range(200)]
    try:
        assert wait_until(lambda: svc.app.http.connections == 200, 3), svc.app.http.connections
        peak = threading.active_count()
        started = time.monotonic()
        open_sockets = list(sockets)
        while open_sockets and time.monotonic() - started < 3:  # one byte each, every 0.2 s
            for sock in list(open_sockets):
                try:
                    sock.send(b"G")
                except OSError:
                    open_sockets.remove(sock)
            time.sleep(0.2)
        released = wait_until(lambda: svc.app.http.connections == 0, 2)
        after = threading.active_count()
    finally:
        for sock in sockets:
            sock.close()
    print(f"\ntrickling connections: 200, threads at peak {peak}, baseline {baseline}, after the deadline {after}")
    assert peak >= baseline + 150, "the connections were not being served at all"
    assert released, f"{svc.app.http.connections} trickling connections still served after the deadline"
    assert wait_until(lambda: threading.active_count() <= baseline + 5, 2), \
        f"{threading.active_count()} threads after the deadline, {baseline} before"


# ---------------------------------------------------------------- smuggling (CONTRACT 6)


SMUGGLED_SID = "SMUGGLED1"


def _smuggled_put(token: str) -> bytes:
    return request_bytes("PUT", f"/api/calls/{SMUGGLED_SID}", token=token, body=b'{"recording_url": null}')


@pytest.mark.parametrize("shape", ["body-is-a-request", "leftover-after-body", "chunked-get", "content-length-then-te",
                                   "te-then-content-length-post", "chunked-with-gzip", "chunk-longer-than-its-size"])
def test_bytes_after_a_get_never_run_as_a_second_request(svc, shape):
    token = svc.business()
    put = _smuggled_put(token)
    if shape == "body-is-a-request":  # GET whose body, fully declared, is a PUT
        data = request_bytes("GET", "/healthz", body=put)
    elif shape == "leftover-after-body":  # GET with a 2-byte body, and a PUT right behind it
        data = request_bytes("GET", "/healthz", body=b"{}") + put
    elif shape == "chunked-get":
        chunk = b"%x\r\n" % len(put) + put + b"\r\n0\r\n\r\n"
        data = request_bytes("GET", "/healthz", headers=(("Transfer-Encoding", "chunked"),)) + chunk
    elif shape == "content-length-then-te":
        data = request_bytes("GET", "/healthz", headers=(("Content-Length", "0"), ("Transfer-Encoding", "chunked"))) + put
    elif shape == "te-then-content-length-post":  # CL.TE / TE.CL: whichever a proxy believed, the PUT is not run
        data = request_bytes("POST", "/admin/cleanup", headers=(("Transfer-Encoding", "chunked"),
                                                                ("Content-Length", "3"))) + b"0\r\n\r\n" + put
    elif shape == "chunked-with-gzip":
        data = request_bytes("POST", "/admin/cleanup", headers=(("Transfer-Encoding", "gzip, chunked"),)) + b"0\r\n\r\n" + put
    else:  # a chunk whose data runs past its declared size into a request
        data = request_bytes("POST", "/admin/cleanup", headers=(("Transfer-Encoding", "chunked"),)) + b"1\r\nx" + put
    raw = exchange(_address(svc), data, half_close=False)
    assert raw.count(b"HTTP/1.1 ") == 1, f"more than one answer came back: {raw!r}"
    assert svc.request("GET", f"/api/calls/{SMUGGLED_SID}", token=token).status == 404, \
        "the smuggled PUT created the call"


def test_a_chunked_put_creates_the_call(svc):
    token = svc.business()
    body = b'{"recording_url": null}'
    data = (f"PUT /api/calls/CACHUNK HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    data += b"%x\r\n%s\r\n%x;ext\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (5, body[:5], len(body) - 5, body[5:])
    answer = parse_answer(exchange(_address(svc), data))
    assert answer.status == 201, answer.raw[:300]
    assert answer.json["call_sid"] == "CACHUNK"
    assert svc.request("GET", "/api/calls/CACHUNK", token=token).status == 200


@pytest.mark.parametrize("value", ["abc", "1e3", "-1", "+5", "0x10", "5 5", "", "１２"])
def test_a_non_numeric_content_length_is_400_json(svc, value):
    token = svc.business()
    data = (f"PUT /api/calls/CA1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {value}\r\n\r\n").encode("utf-8") + b'{"recording_url": null}'
    answer = parse_answer(exchange(_address(svc), data))
    assert answer.status == 400, answer.raw[:300]
    assert answer.json["error"] == "bad_content_length"
    assert svc.request("GET", "/api/calls/CA1", token=token).status == 404


# ---------------------------------------------------------------- odd paths never reach a file


ODD_PATHS = [
    "/api/recordings/file/%00",
    "/api/recordings/file/CA%00",
    "/api/recordings/file/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/recordings/file/..%2f..%2fetc%2fpasswd",
    "/api/calls/..%2f..%2frecsvc.sqlite3",
    "/api/calls/%2e%2e",
    "/api/recordings/%2e%2e%2f/link",
    "/static/..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/static/../../etc/passwd",
    "/static/..%2f..%2f..%2frecsvc%2fapp.py",
    "/static/%00index.html",
    "/static/index.html%00.js",
    "/static/....//....//etc/passwd",
    "/player.js%00",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/../../etc/passwd",
    "/admin/../healthz",
]


@pytest.mark.parametrize("path", ODD_PATHS)
def test_traversal_and_nul_paths_are_400_or_404_json_and_never_a_file(svc, path, caplog):
    token = svc.business()
    methods = ("POST",) if path.endswith("/link") else ("GET", "HEAD")
    for method in methods:
        body = b"{}" if method == "POST" else None
        answer = parse_answer(exchange(_address(svc), request_bytes(method, path, token=token, body=body)))
        assert answer.status in (400, 404), (method, path, answer.raw[:300])
        assert answer.headers.get("content-type") == "application/json"
        if method != "HEAD":
            assert answer.json["error"] in ("not_found", "invalid_call_sid", "bad_request")
            assert b"root:" not in answer.body and b"import" not in answer.body and b"SQLite" not in answer.body
    assert not _tracebacks(caplog)


# ---------------------------------------------------------------- resets cost one line


def test_every_client_reset_costs_at_most_one_log_line_and_no_traceback(svc, upstream, caplog):
    token = svc.business()
    body = sized_wav(4 << 20, seed="reset")
    assert svc.put_call(token, "CARESET", upstream.set("/reset.wav", body=body)).status == 201
    svc.play(token, "CARESET")
    svc.wait_for_job("CARESET")
    assert svc.play(token, "CARESET").status == 200
    address = _address(svc)
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    resets = 0
    shapes = [
        b"",                                                     # connect, then reset
        b"GET /heal",                                            # mid request line
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",                 # mid head
        request_bytes("PUT", "/api/calls/CAX", token=token, headers=(("Content-Length", "100"),))[:-2] + b"\r\n\r\n{",
        request_bytes("GET", "/api/recordings/file/CARESET", token=token),  # mid a 4 MiB answer
    ]
    for round_ in range(4):
        for data in shapes:
            sock = connect(address)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            if data:
                sock.sendall(data)
            if b"CARESET" in data:
                sock.recv(1024)  # the answer has begun
            else:
                time.sleep(0.02)
            reset(sock)
            resets += 1
    assert wait_until(lambda: svc.app.http.connections == 0, 5)
    time.sleep(0.1)
    lines = [r for r in caplog.records if r.name.startswith("recsvc") and r.name != "recsvc.access"]
    print(f"\nclient resets: {resets}, log lines (access log aside): {len(lines)}")
    assert not _tracebacks(caplog), [r.getMessage() for r in _tracebacks(caplog)]
    assert len(lines) <= resets, [r.getMessage() for r in lines]
    assert svc.request("GET", "/healthz").status == 200


# ---------------------------------------------------------------- backlog and --max-connections


def test_the_listen_backlog_holds_128_connects_while_nothing_accepts(make_harness):
    svc = make_harness()
    http = svc.app.http
    http.shutdown()  # the accept loop stops; the listening socket stays open
    pending = []
    try:
        for _ in range(128):
            sock = socket.socket()
            sock.settimeout(2)
            sock.connect(http.server_address)  # completes only when the backlog has room
            pending.append(sock)
    finally:
        thread = threading.Thread(target=http.serve_forever, daemon=True)
        thread.start()
    for sock in pending:
        sock.sendall(request_bytes("GET", "/healthz", headers=(("Connection", "close"),)))
    statuses = [parse_answer(read_until_closed(sock, 10)).status for sock in pending]
    for sock in pending:
        sock.close()
    assert statuses.count(200) == 128, statuses


def test_a_burst_of_300_connects_all_complete_and_get_an_answer(make_harness):
    svc = make_harness()
    address = _address(svc)
    results: list[object] = []
    results_lock = threading.Lock()
    start = threading.Event()

    def one() -> None:
        start.wait()
        try:
            answer = parse_answer(exchange(address, request_bytes("GET", "/healthz", headers=(("Connection", "close"),)), 10))
            outcome: object = answer.status if answer.status else answer.raw[:80]
        except OSError as exc:
            outcome = repr(exc)
        with results_lock:
            results.append(outcome)

    threads = [threading.Thread(target=one) for _ in range(300)]
    for thread in threads:
        thread.start()
    start.set()
    for thread in threads:
        thread.join(15)
    failures = [r for r in results if r not in (200, 503)]
    print(f"\nburst of 300 connects: {results.count(200)} x 200, {results.count(503)} x 503, {len(failures)} failed")
    assert len(results) == 300 and not failures, failures[:5]


def test_the_connection_after_max_connections_gets_503_and_is_closed(make_harness):
    svc = make_harness(max_connections=3, idle_timeout=5)
    address = _address(svc)
    held = [connect(address) for _ in range(3)]
    try:
        assert wait_until(lambda: svc.app.http.connections == 3, 2)
        with connect(address) as extra:  # a reserve slot: it serves health probes only (CONTRACT 6)
            started = time.monotonic()
            extra.sendall(request_bytes("GET", "/api/calls/CA1"))
            answer = parse_answer(read_until_closed(extra, 2))  # returns only once closed
            assert time.monotonic() - started < 1
        assert answer.status == 503 and answer.json["error"] == "too_many_connections"
        assert answer.headers.get("retry-after")
        held[0].sendall(request_bytes("GET", "/healthz", headers=(("Connection", "close"),)))
        assert parse_answer(read_until_closed(held[0])).status == 200  # the admitted ones still work
    finally:
        for sock in held:
            sock.close()
    assert wait_until(lambda: svc.app.http.connections == 0, 2)
    assert svc.request("GET", "/healthz").status == 200


@pytest.mark.parametrize("data", [b"GET /healthz\r\n", b"GET /healthz\r\n\r\n", b"GET /healthz HTTP/0.9\r\n\r\n", b"GET\r\n"],
                         ids=["simple-request", "simple-request-blank", "version-0.9", "method-only"])
def test_http_09_is_refused_with_an_http_11_error(svc, data):
    raw = exchange(_address(svc), data)
    answer = parse_answer(raw)
    assert answer.status in (400, 505), raw[:300]
    assert answer.headers.get("connection") == "close"
    assert b'"status": "ok"' not in raw and b'"status":"ok"' not in raw

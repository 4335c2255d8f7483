"""The HTTP transport's promises (CONTRACT 6), proven through real sockets on 127.0.0.1.

Clients here are raw sockets so every byte on the wire is the test's choice.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import socket
import struct
import threading
import time

import pytest

from recsvc.http.protocol import FileBody, Request, Response, json_error, render_response
from recsvc.http.server import HTTPServer

# ---------------------------------------------------------------- fixtures


class EchoApp:
    """Answers JSON of what it received; a few paths do something special."""

    def __init__(self):
        self.requests: list[Request] = []
        self.gone_seen = threading.Event()
        self.file_path = None
        self.opened = []

    def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        if request.path == "/boom":
            raise RuntimeError("the app has a bug")
        if request.path == "/big":
            return Response(200, [("Content-Type", "application/octet-stream")], b"x" * (16 << 20))
        if request.path == "/file":
            params = dict(part.split("=") for part in request.query.split("&"))
            file = open(self.file_path, "rb")
            self.opened.append(file)
            return Response(200, [], FileBody(file, int(params["offset"]), int(params["count"])))
        if request.path == "/held":
            deadline = time.monotonic() + float(request.query or 3)
            while time.monotonic() < deadline:
                if request.client_gone():
                    self.gone_seen.set()
                    break
                time.sleep(0.02)
            return Response(200, [], b"late")
        if request.path == "/status":
            status = int(request.query)
            return Response(status, [("ETag", '"v1"')], b"ignored body")
        if request.path == "/head-length":
            return Response(200, [("Content-Length", "1234")], b"")
        if request.path == "/close":
            return Response(200, [], b"bye", close=True)
        if request.path == "/inject":
            return Response(200, [("X-Bad", "a\r\nSet-Cookie: x=1")], b"")
        if request.path == "/lying-length":
            return Response(200, [("Content-Length", "10")], b"short")
        payload = {
            "method": request.method,
            "target": request.target,
            "path": request.path,
            "query": request.query,
            "version": request.version,
            "headers": [list(pair) for pair in request.headers],
            "body": request.body.decode("latin-1"),
        }
        return Response(200, [("Content-Type", "application/json")], json.dumps(payload).encode())


@pytest.fixture
def make_server():
    servers = []

    def start(app=None, **options):
        options.setdefault("idle_timeout", 2)
        server = HTTPServer(("127.0.0.1", 0), app or EchoApp(), **options)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


@pytest.fixture
def app():
    return EchoApp()


@pytest.fixture
def server(make_server, app):
    return make_server(app)


class Client:
    """A raw socket with just enough HTTP parsing to read answers back."""

    def __init__(self, server, timeout=3.0):
        self.sock = socket.create_connection(server.server_address[:2], timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        data = self.sock.recv(65536)
        self.buffer += data
        return data

    def response(self, head_request=False):
        """(status, headers dict with lower-cased names, body)."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._more():
                raise EOFError(f"connection closed; got {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        length = 0 if head_request or status in (204, 304) else int(headers.get("content-length", 0))
        while len(self.buffer) < length:
            if not self._more():
                raise EOFError("connection closed mid-body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def is_closed(self, within=2.0) -> bool:
        """True when the server closes (EOF or reset) within ``within`` seconds, with no stray bytes."""
        self.sock.settimeout(within)
        try:
            data = self._more()
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        assert data == b"", f"unexpected bytes after the response: {self.buffer!r}"
        return True

    def close(self):
        self.sock.close()


@pytest.fixture
def client(server):
    clients = []

    def connect(target_server=None, **kwargs):
        c = Client(target_server or server, **kwargs)
        clients.append(c)
        return c

    yield connect
    for c in clients:
        c.close()


def get(path="/", version="HTTP/1.1", extra=b""):
    return f"GET {path} {version}\r\nHost: test\r\n".encode() + extra + b"\r\n"


def wait_for_records(caplog, logger_name: str, within=2.0) -> list[str]:
    """Messages of ``logger_name``, once there is one (the server logs after it writes)."""
    deadline = time.monotonic() + within
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == logger_name]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]


# ---------------------------------------------------------------- keep-alive and framing


def test_keep_alive_serves_two_requests_on_one_socket(client, app):
    c = client()
    c.send(get("/one"))
    status, headers, body = c.response()
    assert status == 200 and json.loads(body)["path"] == "/one"
    assert "connection" not in headers
    c.send(get("/two?x=1"))
    status, _, body = c.response()
    assert json.loads(body)["path"] == "/two" and json.loads(body)["query"] == "x=1"
    assert len({r.client_address for r in app.requests}) == 1


def test_pipelined_requests_in_one_packet_are_answered_in_order(client):
    c = client()
    c.send(get("/a") + get("/b"))
    assert json.loads(c.response()[2])["path"] == "/a"
    assert json.loads(c.response()[2])["path"] == "/b"


def test_http10_closes_after_the_response(client):
    c = client()
    c.send(get("/", version="HTTP/1.0"))
    status, headers, _ = c.response()
    assert status == 200 and headers["connection"] == "close"
    assert c.is_closed()


def test_http10_keep_alive_header_keeps_the_connection(client):
    c = client()
    c.send(get("/", "HTTP/1.0", b"Connection: keep-alive\r\n"))
    assert c.response()[1]["connection"] == "keep-alive"
    c.send(get("/", "HTTP/1.0", b"Connection: keep-alive\r\n"))
    assert c.response()[0] == 200


def test_connection_close_is_honoured(client):
    c = client()
    c.send(get("/", extra=b"Connection: close\r\n"))
    assert c.response()[1]["connection"] == "close"
    assert c.is_closed()


def test_app_asking_to_close_closes(client):
    c = client()
    c.send(get("/close"))
    status, headers, body = c.response()
    assert body == b"bye" and headers["connection"] == "close"
    assert c.is_closed()


def test_responses_carry_date_server_and_content_length(client):
    c = client()
    c.send(get("/"))
    _, headers, body = c.response()
    assert headers["server"] == "recsvc"
    assert headers["date"].endswith(" GMT")
    assert int(headers["content-length"]) == len(body)


def test_bare_lf_line_endings_are_accepted(client):
    c = client()
    c.send(b"GET /lf HTTP/1.1\nHost: x\nX-A: b\n\n")
    status, _, body = c.response()
    assert status == 200 and ["x-a", "b"] in json.loads(body)["headers"]


def test_headers_are_lowercased_stripped_and_in_order(client):
    c = client()
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-One:  1 \t\r\nx-ONE: 2\r\nAuthorization: Bearer t\r\n\r\n")
    headers = json.loads(c.response()[2])["headers"]
    assert headers == [["host", "x"], ["x-one", "1"], ["x-one", "2"], ["authorization", "Bearer t"]]


def test_head_sends_no_body_and_keeps_the_apps_content_length(client):
    c = client()
    c.send(b"HEAD /head-length HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = c.response(head_request=True)
    assert status == 200 and headers["content-length"] == "1234"
    c.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")  # no length from the app: the one GET would have
    _, headers, _ = c.response(head_request=True)
    assert int(headers["content-length"]) > 0
    c.send(get("/after"))  # any stray body bytes would corrupt this answer
    assert json.loads(c.response()[2])["path"] == "/after"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_send_no_body(client, status):
    c = client()
    c.send(get(f"/status?{status}"))
    got, headers, _ = c.response()
    assert got == status and "content-length" not in headers
    c.send(get("/after"))
    assert json.loads(c.response()[2])["path"] == "/after"


def test_expect_100_continue_gets_an_interim_answer(client):
    c = client()
    c.send(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    c.sock.settimeout(2)
    interim = c.sock.recv(100)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"hello")
    assert json.loads(c.response()[2])["body"] == "hello"


# ---------------------------------------------------------------- limits (boundaries on both sides)


def request_line_of(length: int) -> bytes:
    fixed = len(b"GET / HTTP/1.1")
    return b"GET /" + b"a" * (length - fixed) + b" HTTP/1.1"


def test_request_line_of_8192_bytes_is_served(client):
    c = client()
    line = request_line_of(8192)
    assert len(line) == 8192
    c.send(line + b"\r\nHost: x\r\n\r\n")
    assert c.response()[0] == 200


def test_request_line_of_8193_bytes_is_414(client):
    c = client()
    c.send(request_line_of(8193) + b"\r\n\r\n")
    status, _, body = c.response()
    assert status == 414 and error_code(body) == "uri_too_long"
    assert c.is_closed()


def test_endless_request_line_is_414_before_it_ends(client):
    c = client()
    c.send(b"GET /" + b"a" * 20000)
    status, _, body = c.response()
    assert status == 414


def header_of(length: int) -> bytes:
    return b"X-Long: " + b"v" * (length - len(b"X-Long: "))


def test_header_line_of_8192_bytes_is_served(client):
    c = client()
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + header_of(8192) + b"\r\n\r\n")
    assert c.response()[0] == 200


def test_header_line_of_8193_bytes_is_431(client):
    c = client()
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + header_of(8193) + b"\r\n\r\n")
    status, _, body = c.response()
    assert status == 431 and error_code(body) == "header_too_large"
    assert c.is_closed()


def many_headers(count: int) -> bytes:
    return b"".join(b"X-H%d: v\r\n" % i for i in range(count))


def test_100_header_lines_are_fine(client):
    c = client()
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + many_headers(99) + b"\r\n")
    status, _, body = c.response()
    assert status == 200 and len(json.loads(body)["headers"]) == 100


def test_101_header_lines_are_431(client):
    c = client()
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + many_headers(101) + b"\r\n")
    status, _, body = c.response()
    assert status == 431 and error_code(body) == "header_too_large"
    assert c.is_closed()


def test_body_of_64_kib_is_accepted(client):
    c = client()
    c.send(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n" + b"b" * 65536)
    status, _, body = c.response()
    assert status == 200 and len(json.loads(body)["body"]) == 65536


def test_body_over_64_kib_is_413_without_reading_it(client):
    c = client()
    c.send(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n")
    status, _, body = c.response()
    assert status == 413 and error_code(body) == "body_too_large"
    assert c.is_closed()


def test_huge_content_length_is_413(client):
    c = client()
    c.send(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
    assert c.response()[0] == 413


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH"])
def test_body_methods_without_content_length_are_411(client, method):
    c = client()
    c.send(f"{method} /x HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, _, body = c.response()
    assert status == 411 and error_code(body) == "length_required"
    assert c.is_closed()


# ---------------------------------------------------------------- smuggling shapes


def chunked(*chunks: bytes, last: bytes = b"0\r\n\r\n") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + last


# RFC 9112 7.1 and CONTRACT 6: a chunked body is decoded; extensions and trailers are ignored.
@pytest.mark.parametrize(
    "framing, body, expected",
    [
        pytest.param(b"Transfer-Encoding: chunked\r\n", chunked(b"hel", b"lo"), "hello", id="two-chunks"),
        pytest.param(b"Transfer-Encoding: Chunked\r\n", chunked(b"hello"), "hello", id="coding-name-any-case"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", "", id="empty-body"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"5;name=value;flag\r\nhello\r\n0;x=\"q\"\r\n\r\n", "hello",
                     id="extensions-ignored"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", chunked(b"hello", last=b"0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n"), "hello",
                     id="trailers-ignored"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"00005\r\nhello\r\n000\r\n\r\n", "hello", id="leading-zeros"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"A\r\n0123456789\r\n0\r\n\r\n", "0123456789", id="upper-hex"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", chunked(b"x" * 65536), "x" * 65536, id="exactly-64-kib"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", chunked(*[b"x"] * 300), "x" * 300, id="many-small-chunks"),
    ],
)
def test_a_chunked_body_is_decoded_and_the_connection_stays_open(client, app, framing, body, expected):
    c = client()
    c.send(b"POST /x HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + body + get("/after"))
    status, headers, answer = c.response()
    assert status == 200 and json.loads(answer)["body"] == expected
    assert "close" not in headers.get("connection", "")
    assert json.loads(c.response()[2])["path"] == "/after", "the bytes after the last chunk are the next request"
    assert [r.path for r in app.requests] == ["/x", "/after"]


def test_a_chunked_body_sent_byte_by_byte_is_decoded(client, app):
    c = client()
    c.send(b"PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for byte in chunked(b"hel", b"lo", last=b"0\r\nT: 1\r\n\r\n"):
        c.send(bytes([byte]))
        time.sleep(0.001)
    status, _, answer = c.response()
    assert status == 200 and json.loads(answer)["body"] == "hello"


def test_a_chunked_body_with_expect_100_continue_gets_100_first(client):
    c = client()
    c.send(b"PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
    assert c.response()[0] == 100
    c.send(chunked(b"hello"))
    status, _, answer = c.response()
    assert status == 200 and json.loads(answer)["body"] == "hello"


# The smuggling shapes and every other framing refusal (CONTRACT 6): each is refused before
# the app runs, and the connection closes, so nothing after it is read as a request.
@pytest.mark.parametrize(
    "framing, body, status, code",
    [
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", chunked(b"hello"), 400, "bad_framing",
                     id="te-and-cl"),
        pytest.param(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", chunked(b"hello"), 400, "bad_framing",
                     id="cl-and-te"),
        pytest.param(b"Content-Length: 5\r\nTransfer-Encoding: identity\r\n", b"hello", 400, "bad_framing",
                     id="cl-and-te-identity"),
        pytest.param(b"Transfer-Encoding: chunked, chunked\r\n", chunked(b"hello"), 400, "bad_framing", id="chunked-twice"),
        pytest.param(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", chunked(b"hello"), 400,
                     "bad_framing", id="chunked-on-two-lines"),
        pytest.param(b"Transfer-Encoding: chunked,\r\n", chunked(b"hello"), 400, "bad_framing", id="empty-list-element"),
        pytest.param(b"Transfer-Encoding:\r\n", b"hello", 400, "bad_framing", id="empty-te"),
        pytest.param(b"Transfer-Encoding: identity\r\n", b"hello", 501, "unsupported_transfer_encoding", id="identity"),
        pytest.param(b"Transfer-Encoding: gzip, chunked\r\n", chunked(b"hello"), 501, "unsupported_transfer_encoding",
                     id="gzip-then-chunked"),
        pytest.param(b"Transfer-Encoding: chunked, gzip\r\n", chunked(b"hello"), 501, "unsupported_transfer_encoding",
                     id="chunked-not-last"),
        pytest.param(b"Transfer-Encoding: xchunked\r\n", chunked(b"hello"), 501, "unsupported_transfer_encoding",
                     id="lookalike-coding"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", chunked(b"x" * 65537), 413, "body_too_large", id="over-64-kib"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", chunked(*[b"x" * 30000] * 3), 413, "body_too_large",
                     id="over-64-kib-in-chunks"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"fffffffffffffffff\r\n", 400, "bad_chunked_body",
                     id="size-over-16-hex-digits"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffff\r\n", 413, "body_too_large", id="huge-size"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunked_body",
                     id="negative-size"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunked_body",
                     id="0x-prefix"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b" 5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunked_body",
                     id="space-before-size"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"\r\nhello\r\n0\r\n\r\n", 400, "bad_chunked_body",
                     id="empty-size"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n", 400, "bad_chunked_body",
                     id="bare-lf-after-size"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n", 400, "bad_chunked_body",
                     id="data-longer-than-size"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\n0\r\n\r\n", 400, "bad_chunked_body",
                     id="bare-lf-after-data"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n", 400,
                     "bad_request", id="malformed-trailer"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n" + b"T: 1\r\n" * 101 + b"\r\n", 431,
                     "header_too_large", id="101-trailers"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", b"5" * 8200 + b"\r\n", 400, "bad_chunked_body",
                     id="size-line-over-8-kib"),
    ],
)
def test_bad_framing_is_refused_and_closes(client, app, framing, body, status, code):
    c = client()
    c.send(b"POST /x HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + body + get("/smuggled"))
    answer_status, _, answer = c.response()
    assert (answer_status, error_code(answer)) == (status, code)
    assert c.is_closed()
    assert app.requests == []


def test_a_chunked_body_cut_short_is_never_run(make_server, app):
    server = make_server(app, idle_timeout=0.5)
    c = Client(server)
    c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    status, _, answer = c.response()
    assert (status, error_code(answer)) == (408, "request_timeout")
    assert app.requests == []


def test_a_chunked_get_is_answered_then_closed(client, app):
    c = client()
    c.send(b"GET /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(get("/second")) + get("/third"))
    status, headers, _ = c.response()
    assert status == 200 and headers["connection"] == "close"
    assert c.is_closed()
    assert [r.path for r in app.requests] == ["/first"]


def test_an_http_1_0_chunked_body_is_decoded_then_the_connection_closes(client, app):
    c = client()
    c.send(b"POST /x HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hi"))
    status, headers, answer = c.response()
    assert status == 200 and json.loads(answer)["body"] == "hi"
    assert c.is_closed()


# ---------------------------------------------------------------- Host and absolute-form (RFC 9112 3.2)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-different-hosts"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", id="two-equal-hosts"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", id="space-in-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", id="slash-in-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", id="userinfo-in-host"),
        pytest.param(b"GET http://a/x HTTP/1.1\r\n\r\n", id="absolute-form-without-host"),
        pytest.param(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", id="http-1.0-with-two-hosts"),
        pytest.param(b"GET http://user@a/x HTTP/1.1\r\nHost: a\r\n\r\n", id="absolute-form-with-userinfo"),
        pytest.param(b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", id="absolute-form-without-authority"),
        pytest.param(b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", id="absolute-form-not-http"),
    ],
)
def test_a_request_without_exactly_one_valid_host_is_400_and_closes(client, app, head):
    c = client()
    c.send(head)
    status, _, body = c.response()
    assert status == 400 and error_code(body) == "bad_request"
    assert c.is_closed()
    assert app.requests == []


def test_an_http_1_0_request_needs_no_host(client, app):
    c = client()
    c.send(b"GET /ten HTTP/1.0\r\n\r\n")
    assert c.response()[0] == 200
    assert [r.path for r in app.requests] == ["/ten"]


@pytest.mark.parametrize(
    "target, path, query, host",
    [
        pytest.param("http://example.com/x/y?a=1", "/x/y", "a=1", "example.com", id="path-and-query"),
        pytest.param("HTTP://Example.com:8080/x", "/x", "", "Example.com:8080", id="scheme-any-case-and-port"),
        pytest.param("https://[::1]:8443/x", "/x", "", "[::1]:8443", id="ipv6-authority"),
        pytest.param("http://example.com", "/", "", "example.com", id="no-path"),
        pytest.param("http://example.com?q", "/", "q", "example.com", id="query-without-path"),
    ],
)
def test_an_absolute_form_target_is_served_by_its_path(client, app, target, path, query, host):
    c = client()
    c.send(f"GET {target} HTTP/1.1\r\nHost: other\r\n\r\n".encode() + get("/next"))
    status, headers, body = c.response()
    seen = json.loads(body)
    assert status == 200 and (seen["path"], seen["query"]) == (path, query)
    assert seen["target"] == path + (f"?{query}" if query else "")
    assert ["host", host] in seen["headers"] and ["host", "other"] not in seen["headers"], \
        "the target's authority replaces Host (RFC 9112 3.2.2)"
    assert json.loads(c.response()[2])["path"] == "/next"


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Content-Length: abc\r\n", id="letters"),
        pytest.param(b"Content-Length: -1\r\n", id="negative"),
        pytest.param(b"Content-Length: +5\r\n", id="plus-sign"),
        pytest.param(b"Content-Length: 5, 5\r\n", id="list"),
        pytest.param(b"Content-Length:\r\n", id="empty"),
        pytest.param(b"Content-Length: 5\r\nContent-Length: 5\r\n", id="twice-equal"),
        pytest.param(b"Content-Length: 5\r\nContent-Length: 6\r\n", id="twice-different"),
    ],
)
def test_bad_content_length_is_400_and_closes(client, app, framing):
    c = client()
    c.send(b"POST /x HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\nhello")
    status, _, body = c.response()
    assert status == 400 and error_code(body) == "bad_content_length"
    assert c.is_closed()
    assert app.requests == []


def test_bytes_after_a_body_are_read_as_the_next_request(client, app):
    c = client()
    c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloXGET /y HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = c.response()
    assert status == 200 and json.loads(body)["body"] == "hello"
    status, _, body = c.response()  # "XGET" is a method nobody implements
    assert status == 501 and error_code(body) == "not_implemented"
    assert [r.path for r in app.requests] == ["/x"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "OPTIONS"])
def test_body_on_a_bodyless_method_is_answered_then_closed(client, app, method):
    c = client()
    c.send(f"{method} /first HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\n".encode() + b"GET /second HTTP/1.1\r\n\r\n")
    status, headers, _ = c.response(head_request=method == "HEAD")
    assert status == 200 and headers["connection"] == "close"
    assert c.is_closed()
    assert [r.path for r in app.requests] == ["/first"]
    assert app.requests[0].body == b"GET /second HTTP/1.1\r\n"


def test_get_with_body_and_a_second_request_in_one_packet_runs_only_the_first(client, app):
    c = client()
    c.send(b"GET /first HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcdGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.response()[0] == 200
    assert c.is_closed()
    assert [r.path for r in app.requests] == ["/first"]


# ---------------------------------------------------------------- malformed heads


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /\r\n\r\n", id="http-0.9"),
        pytest.param(b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", id="double-space"),
        pytest.param(b"GET / HTTP/1.1 \r\n\r\n", id="trailing-space"),
        pytest.param(b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n", id="tab"),
        pytest.param(b"GET / HTTP/11\r\n\r\n", id="bad-version"),
        pytest.param(b"GET / http/1.1\r\n\r\n", id="lowercase-version"),
        pytest.param(b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", id="method-not-token"),
        pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", id="asterisk-form"),
        pytest.param(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", id="non-ascii-target"),
        pytest.param(b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n", id="nul-in-target"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", id="header-without-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n", id="empty-header-name"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n  folded\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n", id="nul-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n", id="bare-cr-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-\xe9: b\r\n\r\n", id="non-ascii-header-name"),
    ],
)
def test_malformed_heads_are_400_and_close(client, app, head):
    c = client()
    c.send(head)
    status, headers, body = c.response()
    assert status == 400 and error_code(body) == "bad_request"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["message"]
    assert c.is_closed()
    assert app.requests == []


def test_transport_errors_on_head_have_no_body(client):
    c = client()
    c.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n" + many_headers(101) + b"\r\n")
    status, headers, _ = c.response(head_request=True)
    assert status == 431 and int(headers["content-length"]) > 0
    assert c.is_closed()


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9"])
def test_other_http_versions_are_505(client, version):
    c = client()
    c.send(b"GET / " + version + b"\r\n\r\n")
    status, _, body = c.response()
    assert status == 505 and error_code(body) == "http_version_not_supported"
    assert c.is_closed()


@pytest.mark.parametrize("method, target", [(b"BREW", b"/"), (b"get", b"/"), (b"TRACE", b"/"), (b"CONNECT", b"/"),
                                            (b"CONNECT", b"x:443"), (b"TRACE", b"*")])
def test_unknown_methods_are_501(client, method, target):
    """The method is judged before the target: CONNECT's authority-form is 501, not 400."""
    c = client()
    c.send(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = c.response()
    assert status == 501 and error_code(body) == "not_implemented"
    assert c.is_closed()


def test_header_values_may_carry_latin1_bytes(client):
    c = client()
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Name: caf\xe9\r\n\r\n")
    assert json.loads(c.response()[2])["headers"] == [["host", "x"], ["x-name", "caf\u00e9"]]


# ---------------------------------------------------------------- idle timeout


def test_slow_head_is_cut_at_the_deadline_with_408(make_server, client):
    server = make_server(idle_timeout=0.5)
    c = client(server)
    started = time.monotonic()
    c.sock.setblocking(False)
    received = b""
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
        try:
            c.sock.send(bytes([byte]))
        except OSError:
            break
        time.sleep(0.1)
        try:
            received += c.sock.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            break
        if b"\r\n\r\n" in received:
            break
    elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b'"request_timeout"' in received
    assert elapsed < 1.0


def test_silent_connection_is_closed_without_an_answer(make_server, client):
    server = make_server(idle_timeout=0.3)
    c = client(server)
    started = time.monotonic()
    assert c.is_closed(within=2)
    assert c.buffer == b""
    assert 0.25 < time.monotonic() - started < 1.0


def test_idle_keep_alive_connection_is_closed_after_the_deadline(make_server, client):
    server = make_server(idle_timeout=0.3)
    c = client(server)
    c.send(get("/"))
    assert c.response()[0] == 200
    started = time.monotonic()
    assert c.is_closed(within=2)
    assert 0.25 < time.monotonic() - started < 1.0


def test_partial_body_then_silence_is_408(make_server, client):
    server = make_server(idle_timeout=0.3)
    c = client(server)
    c.send(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    status, _, body = c.response()
    assert status == 408 and error_code(body) == "request_timeout"


# ---------------------------------------------------------------- max_connections


def test_connection_beyond_max_connections_gets_503_at_once(make_server, client):
    server = make_server(max_connections=2)
    first, second = client(server), client(server)
    first.send(get("/"))
    assert first.response()[0] == 200  # both slots are held by idle keep-alive connections
    third = client(server)
    started = time.monotonic()
    status, headers, body = third.response()
    assert time.monotonic() - started < 0.5
    assert status == 503 and error_code(body) == "too_many_connections"
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    assert third.is_closed()
    second.send(get("/still-served"))
    assert second.response()[0] == 200


def test_refusals_are_logged_at_most_once_a_second(make_server, client, caplog):
    caplog.set_level(logging.INFO)
    server = make_server(max_connections=1)
    holder = client(server)
    holder.send(get("/"))
    holder.response()
    for _ in range(5):
        assert client(server).response()[0] == 503
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING


def test_server_close_ends_idle_connections_at_once(make_server, client):
    server = make_server(idle_timeout=10)
    c = client(server)
    c.send(get("/"))
    assert c.response()[0] == 200
    server.shutdown()
    started = time.monotonic()
    server.server_close()
    assert c.is_closed(within=2)
    assert time.monotonic() - started < 0.5


def test_a_freed_connection_slot_is_reused(make_server, client):
    server = make_server(max_connections=1)
    first = client(server)
    first.send(get("/", extra=b"Connection: close\r\n"))
    assert first.response()[0] == 200
    assert first.is_closed()
    first.close()
    deadline = time.monotonic() + 2
    while server.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    second = client(server)
    second.send(get("/"))
    assert second.response()[0] == 200


# ---------------------------------------------------------------- sendfile


@pytest.fixture
def recording(tmp_path, app):
    path = tmp_path / "recording.bin"
    content = bytes(range(256)) * 1024  # 256 KiB, every offset distinguishable
    path.write_bytes(content)
    app.file_path = path
    return content


@pytest.mark.parametrize("offset,count", [(0, 262144), (1000, 5000), (262143, 1), (17, 0)])
def test_file_bodies_deliver_exact_bytes(client, recording, offset, count):
    c = client()
    c.send(get(f"/file?offset={offset}&count={count}"))
    status, headers, body = c.response()
    assert status == 200 and int(headers["content-length"]) == count
    assert body == recording[offset : offset + count]
    c.send(get("/after"))
    assert json.loads(c.response()[2])["path"] == "/after"


@pytest.mark.parametrize("method,count", [("HEAD", 10), ("GET", 0), ("GET", 10)])
def test_the_transport_closes_response_files(client, app, recording, method, count):
    c = client()
    c.send(f"{method} /file?offset=0&count={count} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    c.response(head_request=method == "HEAD")
    deadline = time.monotonic() + 2
    while not app.opened[0].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.opened[0].closed


def test_file_bodies_fall_back_to_copying_when_sendfile_fails(client, recording, monkeypatch):
    def no_sendfile(self, file, offset=0, count=None):
        raise OSError(errno.ENOSYS, "sendfile unavailable")

    monkeypatch.setattr(socket.socket, "sendfile", no_sendfile)
    c = client()
    c.send(get("/file?offset=100&count=200000"))
    assert c.response()[2] == recording[100:200100]


def test_sendfile_failing_midway_resumes_where_it_stopped(client, recording, monkeypatch):
    real_sendfile = socket.socket.sendfile

    def half_then_fail(self, file, offset=0, count=None):
        real_sendfile(self, file, offset, count // 2)
        raise OSError(errno.EINVAL, "sendfile gave up")

    monkeypatch.setattr(socket.socket, "sendfile", half_then_fail)
    c = client()
    c.send(get("/file?offset=3&count=100001"))
    assert c.response()[2] == recording[3:100004]


def test_a_file_shorter_than_promised_closes_the_connection(client, recording):
    c = client()
    c.send(get("/file?offset=262000&count=1000"))
    c.sock.settimeout(2)
    data = b""
    while True:
        chunk = c.sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.endswith(recording[262000:])  # what exists, then the connection ends


# ---------------------------------------------------------------- errors and logging


def test_app_exception_is_500_json_with_one_error_line(client, caplog, capsys):
    caplog.set_level(logging.INFO)
    c = client()
    c.send(get("/boom?secret=1"))
    status, headers, body = c.response()
    assert status == 500 and json.loads(body) == {"error": "internal_error", "message": "Internal server error."}
    assert b"Traceback" not in body and b"RuntimeError" not in body
    assert c.is_closed()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].name == "recsvc.http.server" and errors[0].exc_info
    assert "Traceback" not in capsys.readouterr().err
    c2 = client()
    c2.send(get("/"))
    assert c2.response()[0] == 200


@pytest.mark.parametrize("path", ["/inject", "/lying-length"])
def test_responses_that_cannot_be_sent_truthfully_become_500(client, path, caplog):
    c = client()
    c.send(get(path))
    status, headers, body = c.response()
    assert status == 500 and "set-cookie" not in headers


def test_client_reset_mid_answer_costs_one_line_and_no_traceback(client, caplog, capsys):
    caplog.set_level(logging.INFO)
    c = client()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.send(get("/big"))
    c.sock.recv(1000)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()  # a reset, not a clean close
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not any("disconnected" in r.getMessage() for r in caplog.records):
        time.sleep(0.02)
    lines = [r for r in caplog.records if r.name == "recsvc.http.server"]
    assert len(lines) == 1 and "disconnected during GET /big" in lines[0].getMessage()
    assert lines[0].levelno in (logging.INFO, logging.WARNING) and not lines[0].exc_info
    assert "Traceback" not in capsys.readouterr().err


def test_client_gone_turns_true_when_the_client_leaves(client, app):
    c = client()
    c.send(get("/held"))
    time.sleep(0.1)
    assert not app.gone_seen.is_set()
    c.close()
    assert app.gone_seen.wait(2)


def test_client_gone_is_false_while_the_client_waits(client, app):
    c = client()
    c.send(get("/held?0.5"))  # the client stays while the app polls
    status, _, body = c.response()
    assert body == b"late" and not app.gone_seen.is_set()


def test_access_log_has_path_without_query_and_no_header_values(client, caplog):
    caplog.set_level(logging.INFO, logger="recsvc.access")
    c = client()
    c.send(get("/api/recordings/file/CA1?exp=1&sig=deadbeef", extra=b"Authorization: Bearer s3cret\r\n"))
    _, _, body = c.response()
    lines = wait_for_records(caplog, "recsvc.access")
    assert len(lines) == 1
    assert "GET /api/recordings/file/CA1 200 " in lines[0] and lines[0].endswith("ms")
    assert f" {len(body)} " in lines[0]
    assert "deadbeef" not in lines[0] and "s3cret" not in lines[0]


def test_access_log_can_be_turned_off(make_server, client, caplog):
    caplog.set_level(logging.INFO, logger="recsvc.access")
    c = client(make_server(access_log=False))
    c.send(get("/"))
    c.response()
    assert not [r for r in caplog.records if r.name == "recsvc.access"]


def test_an_access_logger_above_info_logs_no_line(client, caplog):
    caplog.set_level(logging.WARNING, logger="recsvc.access")
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    access = logging.getLogger("recsvc.access")
    access.addHandler(handler)
    try:
        c = client()
        c.send(get("/"))
        c.response()
        c.send(get("/"))
        c.response()
    finally:
        access.removeHandler(handler)
    assert seen == []


def test_request_repr_does_not_show_header_values():
    request = Request("GET", "/", "/", headers=(("authorization", "Bearer s3cret"),))
    assert "s3cret" not in repr(request)
    assert request.header("Authorization") == "Bearer s3cret" and request.header("x") is None


def test_json_error_shape():
    response = json_error("call_not_found", "No such call.", [("X-A", "1")], call_sid="CA1")
    assert response.status == 404 and ("Content-Type", "application/json") in response.headers
    assert ("X-A", "1") in response.headers
    assert json.loads(response.body) == {"error": "call_not_found", "message": "No such call.", "call_sid": "CA1"}


def test_a_stock_http_client_keeps_one_connection(server):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=3)
    try:
        connection.request("PUT", "/x", body=b"a" * 3000)
        response = connection.getresponse()
        assert json.loads(response.read())["body"] == "a" * 3000
        connection.request("HEAD", "/")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b""
        sock = connection.sock
        connection.request("GET", "/again")
        assert json.loads(connection.getresponse().read())["path"] == "/again"
        assert connection.sock is sock
    finally:
        connection.close()


# ---------------------------------------------------------------- rendering (no socket)


def test_render_keeps_app_date_and_server_and_drops_app_connection():
    response = Response(200, [("Server", "other"), ("Date", "x"), ("Connection", "keep-alive")], b"hi")
    head, body, keep_alive = render_response(response, "GET", "HTTP/1.1", True)
    text = head.decode()
    assert text.count("Server:") == 1 and "Server: other" in text and text.count("Date:") == 1
    assert "Connection" not in text and keep_alive and body == b"hi"
    assert text.startswith("HTTP/1.1 200 OK\r\n") and text.endswith("\r\n\r\n")


def test_render_honours_an_app_connection_close():
    response = Response(200, [("Connection", "close")], b"")
    head, _, keep_alive = render_response(response, "GET", "HTTP/1.1", True)
    assert not keep_alive and head.decode().count("Connection: close") == 1


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(Response(199), id="interim-status"),
        pytest.param(Response(200, [("Bad Name", "v")]), id="header-name-not-token"),
        pytest.param(Response(200, [("X", "\u20ac")]), id="value-not-latin1"),
        pytest.param(Response(200, [("Transfer-Encoding", "chunked")]), id="transfer-encoding"),
        pytest.param(Response(200, [("Content-Length", "1"), ("Content-Length", "1")], b"x"), id="two-lengths"),
        pytest.param(Response(200, body="text"), id="str-body"),
    ],
)
def test_render_refuses_responses_it_cannot_send_truthfully(response):
    with pytest.raises((ValueError, TypeError)):
        render_response(response, "GET", "HTTP/1.1", True)


# ---------------------------------------------------------------- socket options


def test_serves_ipv6_loopback():
    try:
        server = HTTPServer(("::1", 0), EchoApp())
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        with socket.create_connection(server.server_address[:2], timeout=3) as sock:
            sock.sendall(get("/v6"))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        server.shutdown()
        server.server_close()


def test_server_socket_options():
    server = HTTPServer(("127.0.0.1", 0), EchoApp())
    try:
        assert server.request_queue_size >= 128
        assert server.daemon_threads and server.allow_reuse_address
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        peer = socket.create_connection(server.server_address)
        accepted, _ = server.get_request()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        accepted.close()
        peer.close()
    finally:
        server.server_close()

"""Serving a cached recording (CONTRACT 5) end to end, through real sockets on 127.0.0.1.

Each test plays a recording that was really downloaded from a fake upstream
and stored, and reads the answer with ``http.client`` (or a raw socket where
the exact bytes on the wire matter).
"""

from __future__ import annotations

import hashlib
import http.client
import socket

import pytest

from conftest import running_harness
from recsvc.demo.audio import sized_wav
from recsvc.demo.fake_upstream import FakeUpstream
from recsvc.core.media import http_date

SIZE = 10_000
MIB = 1 << 20


class Cached:
    """One business with one call whose recording is cached."""

    def __init__(self, harness, token: str, call_sid: str, body: bytes):
        self.h, self.token, self.sid, self.body = harness, token, call_sid, body
        self.path = f"/api/recordings/file/{call_sid}"
        self.etag = f'"{hashlib.sha256(body).hexdigest()}"'
        self.stored_at = harness.clock()  # the fake clock when the file was stored

    def get(self, headers: dict | None = None, method: str = "GET"):
        return self.h.request(method, self.path, token=self.token, headers=headers)

    def connect(self) -> http.client.HTTPConnection:
        host, port = self.h.app.address
        return http.client.HTTPConnection(host, port, timeout=10)


def cache_recording(h, token: str, call_sid: str, body: bytes) -> None:
    url = h.upstream.set(f"/rec/{call_sid}.wav", body=body)
    assert h.put_call(token, call_sid, url).status == 201
    assert h.play(token, call_sid).status == 202
    assert h.wait_for_job(call_sid)["status"] == "completed"


@pytest.fixture(scope="module")
def harness(tmp_path_factory, store_kind):
    """One recsvc for the read-only tests of this module: each test only plays."""
    with FakeUpstream() as upstream, running_harness(tmp_path_factory.mktemp("media"), upstream) as h:
        yield h


@pytest.fixture(scope="module")
def cached(harness) -> Cached:
    token = harness.business()
    body = sized_wav(SIZE, seed="CAmedia")
    cache_recording(harness, token, "CAmedia", body)
    return Cached(harness, token, "CAmedia", body)


@pytest.fixture(scope="module")
def big(harness) -> Cached:
    token = harness.business("big")
    body = sized_wav(MIB, seed="CAbig")
    cache_recording(harness, token, "CAbig", body)
    return Cached(harness, token, "CAbig", body)


# ---------------------------------------------------------------- 200 and its headers


def test_200_carries_every_header_of_contract_5(cached):
    answer = cached.get()
    assert answer.status == 200
    assert answer.body == cached.body
    assert answer.header("content-type") == "audio/wav"
    assert answer.header("content-length") == str(SIZE)
    assert answer.header("accept-ranges") == "bytes"
    assert answer.header("cache-control") == "private, max-age=3600"
    assert answer.header("last-modified") == http_date(cached.stored_at)


def test_etag_is_strong_and_follows_the_bytes(cached):
    etag = cached.get().header("etag")
    assert not etag.startswith("W/")
    assert etag.startswith('"') and etag.endswith('"')
    assert etag == cached.etag  # derived from the sha256: same bytes, same tag


@pytest.mark.parametrize("head, content_type", [
    pytest.param(b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg", id="mp3 with ID3"),
    pytest.param(b"\xff\xfb\x90\x64", "audio/mpeg", id="mp3 frame sync"),
    pytest.param(b"OggS\x00\x02", "audio/ogg", id="ogg"),
    pytest.param(b"fLaC\x00\x00\x00\x22", "audio/flac", id="flac"),
])
def test_content_type_comes_from_the_bytes_not_the_upstream_label(harness, head, content_type):
    token = harness.business("labels")
    body = head + bytes(range(256)) * 4
    call_sid = "CA" + hashlib.sha256(head).hexdigest()[:10]
    url = harness.upstream.set(f"/rec/{call_sid}", body=body, content_type="audio/wav")
    assert harness.put_call(token, call_sid, url).status == 201
    assert harness.play(token, call_sid).status == 202
    assert harness.wait_for_job(call_sid)["status"] == "completed"
    answer = harness.play(token, call_sid)
    assert answer.status == 200
    assert answer.header("content-type") == content_type
    assert answer.body == body


# ---------------------------------------------------------------- one range


@pytest.mark.parametrize("range_value, start, end", [
    pytest.param("bytes=0-0", 0, 0, id="first byte"),
    pytest.param("bytes=-1", SIZE - 1, SIZE - 1, id="last byte"),
    pytest.param("bytes=100-199", 100, 199, id="a-b"),
    pytest.param("bytes=9000-", 9000, SIZE - 1, id="a to the end"),
    pytest.param("bytes=-500", SIZE - 500, SIZE - 1, id="suffix"),
    pytest.param(f"bytes=-{SIZE * 3}", 0, SIZE - 1, id="suffix longer than the file is all of it"),
    pytest.param(f"bytes=9990-{SIZE * 5}", 9990, SIZE - 1, id="end beyond the size is clamped"),
    pytest.param(f"bytes=0-{SIZE - 1}", 0, SIZE - 1, id="the whole file as a range"),
])
def test_one_range_is_206_with_exactly_those_bytes(cached, range_value, start, end):
    answer = cached.get({"Range": range_value})
    assert answer.status == 206
    assert answer.header("content-range") == f"bytes {start}-{end}/{SIZE}"
    assert answer.header("content-length") == str(end - start + 1)
    assert answer.body == cached.body[start:end + 1]
    assert answer.header("content-type") == "audio/wav"
    assert answer.header("etag") == cached.etag
    assert answer.header("accept-ranges") == "bytes"


@pytest.mark.parametrize("range_value", [
    pytest.param(f"bytes={SIZE}-", id="start equal to size"),
    pytest.param(f"bytes={SIZE + 100}-{SIZE + 200}", id="start beyond the end"),
    pytest.param("bytes=-0", id="empty suffix"),
])
def test_unsatisfiable_range_is_416_with_the_size(cached, range_value):
    answer = cached.get({"Range": range_value})
    assert answer.status == 416
    assert answer.header("content-range") == f"bytes */{SIZE}"
    assert answer.json["error"] == "range_not_satisfiable"


@pytest.mark.parametrize("range_value", [
    pytest.param("items=0-10", id="unknown unit"),
    pytest.param("bytes 0-10", id="no equals sign"),
    pytest.param("bytes=5-3", id="end before start"),
    pytest.param("bytes=abc", id="not numbers"),
    pytest.param("bytes=0-0,5-9", id="two ranges"),
    pytest.param("bytes=0-99, 200-299, -5", id="three ranges"),
])
def test_ignored_or_several_ranges_answer_the_whole_file(cached, range_value):
    answer = cached.get({"Range": range_value})
    assert answer.status == 200
    assert answer.header("content-range") is None
    assert answer.body == cached.body


# ---------------------------------------------------------------- conditions


def test_if_range_with_the_current_etag_honours_the_range(cached):
    answer = cached.get({"Range": "bytes=10-19", "If-Range": cached.etag})
    assert answer.status == 206
    assert answer.body == cached.body[10:20]


def test_if_range_with_the_exact_last_modified_honours_the_range(cached):
    answer = cached.get({"Range": "bytes=10-19", "If-Range": http_date(cached.stored_at)})
    assert answer.status == 206
    assert answer.body == cached.body[10:20]


@pytest.mark.parametrize("if_range", [
    pytest.param('"' + "0" * 64 + '"', id="stale etag"),
    pytest.param("W/{etag}", id="weak form of the current etag"),
    pytest.param("Sat, 01 Jan 2000 00:00:00 GMT", id="stale date"),
])
def test_if_range_with_a_stale_or_weak_validator_sends_the_whole_file(cached, if_range):
    answer = cached.get({"Range": "bytes=10-19", "If-Range": if_range.format(etag=cached.etag)})
    assert answer.status == 200
    assert answer.body == cached.body


def test_if_none_match_matching_is_304_without_body_with_validators(cached):
    for value in (cached.etag, f'"nope", {cached.etag}', f"W/{cached.etag}", "*"):
        answer = cached.get({"If-None-Match": value})
        assert answer.status == 304, value
        assert answer.body == b""
        assert answer.header("etag") == cached.etag
        assert answer.header("last-modified") == http_date(cached.stored_at)
        assert answer.header("cache-control") == "private, max-age=3600"


def test_if_none_match_not_matching_is_200(cached):
    answer = cached.get({"If-None-Match": '"' + "0" * 64 + '"'})
    assert answer.status == 200
    assert answer.body == cached.body


def test_304_wins_over_a_range(cached):
    assert cached.get({"If-None-Match": cached.etag, "Range": "bytes=0-0"}).status == 304


def test_if_modified_since_at_or_after_last_modified_is_304_before_is_200(cached):
    stored = cached.stored_at
    assert cached.get({"If-Modified-Since": http_date(stored)}).status == 304
    assert cached.get({"If-Modified-Since": http_date(stored + 3600)}).status == 304
    earlier = cached.get({"If-Modified-Since": http_date(stored - 1)})
    assert earlier.status == 200
    assert earlier.body == cached.body


def test_if_none_match_beats_if_modified_since(cached):
    answer = cached.get({"If-None-Match": '"other"', "If-Modified-Since": http_date(cached.stored_at)})
    assert answer.status == 200


# ---------------------------------------------------------------- HEAD parity


def _raw_exchange(address, method: str, path: str, headers: dict) -> bytes:
    """Send one request with Connection: close and read every byte of the answer."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {address[0]}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _split(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
    return status_line, [(n.lower(), v) for n, v in headers if n.lower() != "date"], body


def assert_head_matches_get(address, path: str, headers: dict, status: int) -> None:
    got_line, got_headers, got_body = _split(_raw_exchange(address, "GET", path, headers))
    head_line, head_headers, head_body = _split(_raw_exchange(address, "HEAD", path, headers))
    assert got_line.split(" ")[1] == str(status), got_line
    assert head_line == got_line
    assert head_headers == got_headers
    assert head_body == b""
    if status not in (304,):
        assert int(dict(got_headers)["content-length"]) == len(got_body)


@pytest.mark.parametrize("extra, status", [
    pytest.param({}, 200, id="200"),
    pytest.param({"Range": "bytes=5-9"}, 206, id="206"),
    pytest.param({"If-None-Match": "{etag}"}, 304, id="304"),
    pytest.param({"Range": f"bytes={SIZE}-"}, 416, id="416"),
])
def test_head_answers_exactly_the_headers_get_would_for_a_cached_file(cached, extra, status):
    headers = {"Authorization": f"Bearer {cached.token}"}
    headers.update({k: v.format(etag=cached.etag) for k, v in extra.items()})
    assert_head_matches_get(cached.h.app.address, cached.path, headers, status)


def test_only_a_get_answered_200_or_206_counts_as_a_play(cached):
    cache = cached.h.app.cache
    cache.flush()
    cached.h.advance(60)
    assert cached.get(method="HEAD").status == 200
    assert cached.get({"If-None-Match": cached.etag}).status == 304
    assert cached.get({"Range": f"bytes={SIZE}-"}).status == 416
    assert cache.flush() == 0  # nothing noted
    assert cached.get().status == 200
    assert cache.flush() == 1
    assert cached.get({"Range": "bytes=0-0"}).status == 206
    assert cache.flush() == 1


def test_head_answers_exactly_the_headers_get_would_for_every_play_error(make_harness, upstream):
    h = make_harness(download_timeout=30)
    token = h.business()
    address = h.app.address
    auth = {"Authorization": f"Bearer {token}"}
    # 401: no credentials, and a wrong token
    assert_head_matches_get(address, "/api/recordings/file/CA1", {}, 401)
    assert_head_matches_get(address, "/api/recordings/file/CA1", {"Authorization": "Bearer wrong"}, 401)
    # 400: invalid call_sid
    assert_head_matches_get(address, "/api/recordings/file/CA%201", auth, 400)
    # 404 call_not_found
    assert_head_matches_get(address, "/api/recordings/file/CAnone", auth, 404)
    # 404 no_recording_url
    assert h.put_call(token, "CAnourl", None).status == 201
    assert_head_matches_get(address, "/api/recordings/file/CAnourl", auth, 404)
    # 202 while a job hangs on the upstream (the first request creates it)
    hanging = upstream.set("/rec/hang.wav", body=sized_wav(100), hang=True)
    assert h.put_call(token, "CAhang", hanging).status == 201
    assert h.play(token, "CAhang").status == 202
    assert upstream.wait_for_hits("/rec/hang.wav", 1)
    assert_head_matches_get(address, "/api/recordings/file/CAhang", auth, 202)


def test_head_answers_exactly_the_headers_get_would_for_no_live_worker(make_harness, upstream):
    h = make_harness(workers=0)
    token = h.business()
    url = upstream.set("/rec/CA1.wav", body=sized_wav(100))
    assert h.put_call(token, "CA1", url).status == 201
    assert h.play(token, "CA1").status == 500  # creates the queued job
    assert_head_matches_get(h.app.address, "/api/recordings/file/CA1",
                            {"Authorization": f"Bearer {token}"}, 500)


def test_401_has_a_json_body_and_www_authenticate(make_harness):
    h = make_harness()
    answer = h.request("GET", "/api/recordings/file/CA1")
    assert answer.status == 401
    assert answer.json["error"] == "unauthorized"
    assert answer.header("www-authenticate") == "Bearer"


# ---------------------------------------------------------------- connections and transport


def test_several_range_requests_share_one_keep_alive_connection(cached):
    auth = {"Authorization": f"Bearer {cached.token}"}
    conn = cached.connect()
    try:
        conn.connect()
        first_socket = conn.sock
        steps = [
            ("GET", {"Range": "bytes=0-9"}, 206, cached.body[0:10]),
            ("GET", {"Range": "bytes=1000-1009"}, 206, cached.body[1000:1010]),
            ("HEAD", {"Range": "bytes=5-9"}, 206, b""),
            ("GET", {"If-None-Match": cached.etag}, 304, b""),
            ("GET", {"Range": f"bytes={SIZE}-"}, 416, None),
            ("GET", {"Range": "bytes=-10"}, 206, cached.body[-10:]),
            ("GET", {}, 200, cached.body),
        ]
        for method, headers, status, body in steps:
            conn.request(method, cached.path, headers={**auth, **headers})
            response = conn.getresponse()
            got = response.read()
            assert response.status == status, (method, headers)
            if body is not None:
                assert got == body, (method, headers)
            assert response.getheader("connection") is None  # not closing
            assert conn.sock is first_socket  # http.client did not reconnect
    finally:
        conn.close()


def test_a_1mib_recording_arrives_intact_through_sendfile(big, monkeypatch):
    calls = []
    original = socket.socket.sendfile

    def counting_sendfile(self, file, offset=0, count=None):
        calls.append((offset, count))
        return original(self, file, offset, count)

    monkeypatch.setattr(socket.socket, "sendfile", counting_sendfile)
    answer = big.get()
    assert answer.status == 200
    assert len(answer.body) == MIB
    assert answer.body == big.body
    assert calls == [(0, MIB)]
    part = big.get({"Range": "bytes=1000-600000"})
    assert part.status == 206
    assert part.body == big.body[1000:600001]
    assert calls[-1] == (1000, 599001)


def test_a_1mib_recording_arrives_intact_when_sendfile_fails(big, monkeypatch):
    def broken_sendfile(self, file, offset=0, count=None):
        raise OSError(95, "sendfile is not supported here")

    monkeypatch.setattr(socket.socket, "sendfile", broken_sendfile)
    answer = big.get()
    assert answer.status == 200
    assert answer.body == big.body
    part = big.get({"Range": "bytes=-300000"})
    assert part.status == 206
    assert part.body == big.body[-300000:]


def test_a_1mib_recording_arrives_intact_when_sendfile_is_missing(big, monkeypatch):
    monkeypatch.delattr(socket.socket, "sendfile")
    answer = big.get({"Range": "bytes=12345-"})
    assert answer.status == 206
    assert answer.body == big.body[12345:]


def test_accepted_connections_use_tcp_nodelay_and_the_listen_backlog_is_at_least_128(harness, monkeypatch):
    server = harness.app.http
    assert server.request_queue_size >= 128
    accepted = []
    original = server.get_request

    def recording_get_request():
        sock, address = original()
        accepted.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return sock, address

    monkeypatch.setattr(server, "get_request", recording_get_request)
    assert harness.request("GET", "/healthz").status == 200
    assert accepted, "no connection was accepted through get_request"
    assert accepted[0] != 0


# ---------------------------------------------------------------- signed links


def test_a_signed_link_serves_ranges_and_validators_too(cached):
    link = cached.h.request("POST", f"/api/recordings/{cached.sid}/link", token=cached.token)
    assert link.status == 200
    url = link.json["url"]
    whole = cached.h.request("GET", url)
    assert whole.status == 200
    assert whole.body == cached.body
    assert whole.header("etag") == cached.etag
    part = cached.h.request("GET", url, headers={"Range": "bytes=-100"})
    assert part.status == 206
    assert part.header("content-range") == f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}"
    assert part.body == cached.body[-100:]
    assert cached.h.request("GET", url, headers={"If-None-Match": cached.etag}).status == 304
    assert cached.h.request("GET", url, headers={"Range": f"bytes={SIZE}-"}).status == 416
    tampered = url.replace("sig=", "sig=0")
    assert cached.h.request("GET", tampered).status == 401

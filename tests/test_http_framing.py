"""The sans-IO body framing of recsvc.http.framing (RFC 9112 6-7), without sockets: the same bytes
give the same body, or the same refusal, however they are split."""

from __future__ import annotations

import pytest

from recsvc.http.framing import ChunkedBody, body_length
from recsvc.http.protocol import RequestError

WHOLE = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"


def decode_in_pieces(data: bytes, size: int) -> tuple[bytes, bytes]:
    """(decoded body, the bytes after it), feeding ``size`` bytes at a time as a socket would."""
    decoder, buffer = ChunkedBody(), bytearray()
    for start in range(0, len(data), size):
        buffer += data[start:start + size]
        del buffer[:decoder.feed(buffer)]
        if decoder.done:
            return bytes(decoder.body), bytes(buffer) + data[start + size:]
    raise AssertionError(f"not done after all {len(data)} bytes; {len(buffer)} left unread")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, len(WHOLE)])
def test_a_chunked_body_decodes_the_same_however_it_arrives(size):
    assert decode_in_pieces(WHOLE + b"GET /next", size) == (b"hello world", b"GET /next")


@pytest.mark.parametrize("data, status, code", [
    pytest.param(b"5\nhello\r\n0\r\n\r\n", 400, "bad_chunked_body", id="bare LF after the size"),
    pytest.param(b"5\r\nhelloX\r\n0\r\n\r\n", 400, "bad_chunked_body", id="data past its size"),
    pytest.param(b"g\r\n", 400, "bad_chunked_body", id="not hex"),
    pytest.param(b"10001\r\n", 413, "body_too_large", id="one chunk over 64 KiB"),
    pytest.param(b"8000\r\n" + b"x" * 0x8000 + b"\r\n8001\r\n", 413, "body_too_large", id="two chunks over 64 KiB"),
    pytest.param(b"0\r\nno colon\r\n\r\n", 400, "bad_request", id="a trailer without a colon"),
])
@pytest.mark.parametrize("size", [1, 5, 100_000])
def test_a_malformed_or_too_large_chunked_body_is_refused_however_it_arrives(data, status, code, size):
    with pytest.raises(RequestError) as refused:
        decode_in_pieces(data, size)
    assert (refused.value.status, refused.value.code) == (status, code)


@pytest.mark.parametrize("method, version, headers, expected", [
    pytest.param("POST", "HTTP/1.1", [("content-length", "5")], 5, id="content-length"),
    pytest.param("POST", "HTTP/1.1", [("transfer-encoding", "chunked")], None, id="chunked"),
    pytest.param("GET", "HTTP/1.1", [], 0, id="GET without a body"),
    pytest.param("POST", "HTTP/1.1", [("transfer-encoding", "chunked"), ("content-length", "5")], 400, id="te and cl"),
    pytest.param("POST", "HTTP/1.1", [("transfer-encoding", "br")], 501, id="another coding"),
    pytest.param("POST", "HTTP/1.1", [], 411, id="POST without framing"),
])
def test_body_length_reads_the_framing(method, version, headers, expected):
    if expected is None or expected < 100:
        assert body_length(method, version, headers) == expected
    else:
        with pytest.raises(RequestError) as refused:
            body_length(method, version, headers)
        assert refused.value.status == expected

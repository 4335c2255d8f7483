"""Reading a request head at once gives exactly what reading it line by line gives (CONTRACT 6).

``RequestHead.feed_head`` takes a head whose bytes all arrived together;
``feed_line`` takes one line at a time as they trickle in. The transport uses
whichever fits, so for every head both must give the same request line and
headers, or the same refusal (status, code and message).
"""

from __future__ import annotations

import random

import pytest

from recsvc.http.protocol import MAX_HEADER_LINES, MAX_LINE_BYTES, RequestError, RequestHead, head_end


def line_by_line(head: bytes):
    """What feeding ``head`` one line at a time gives, a line being cut at LF with one CR before it dropped."""
    reader = RequestHead()
    try:
        for line in head.split(b"\n"):
            if reader.feed_line(line[:-1] if line.endswith(b"\r") else line):
                return reader.request_line, reader.headers
    except RequestError as error:
        return error.status, error.code, error.message, reader.request_line
    raise AssertionError("the head has no blank line")


def at_once(head: bytes):
    reader = RequestHead()
    try:
        reader.feed_head(head)
    except RequestError as error:
        return error.status, error.code, error.message, reader.request_line
    return reader.request_line, reader.headers


def headers(count: int, eol: bytes = b"\r\n") -> bytes:
    return b"".join(b"X-H%d: v%d" % (n, n) + eol for n in range(count))


CASES = [
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-headers"),
    pytest.param(b"GET /a?b=c HTTP/1.0\r\nHost: x\r\nAccept: */*\r\n\r\n", id="plain"),
    pytest.param(b"GET / HTTP/1.1\nHost: x\nX-A: b\n\n", id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\n", id="mixed-endings"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A:  \t padded \t \r\nX-B:\r\nX-C:\t\r\n\r\n", id="blanks-around-values"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A: a\tb  c\r\n\r\n", id="blanks-inside-a-value"),
    pytest.param(b"GET / HTTP/1.1\r\nX-Name: caf\xe9\xff\r\n\r\n", id="latin-1-value"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A: b\r\nx-a: c\r\n\r\n", id="repeated-name"),
    pytest.param(b"GET / HTTP/1.1\r\nCONTENT-length: 5\r\n\r\n", id="mixed-case-name"),
    pytest.param(b"GET / HTTP/1.1\r\n" + headers(MAX_HEADER_LINES) + b"\r\n", id="100-headers"),
    pytest.param(b"GET / HTTP/1.1\r\n" + headers(MAX_HEADER_LINES + 1) + b"\r\n", id="101-headers"),
    pytest.param(b"GET / HTTP/1.1\n" + headers(MAX_HEADER_LINES + 1, b"\n") + b"\n", id="101-bare-lf-headers"),
    pytest.param(b"GET /" + b"a" * (MAX_LINE_BYTES - 14) + b" HTTP/1.1\r\n\r\n", id="8192-byte-request-line"),
    pytest.param(b"GET /" + b"a" * (MAX_LINE_BYTES - 13) + b" HTTP/1.1\r\n\r\n", id="8193-byte-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nX: " + b"v" * (MAX_LINE_BYTES - 3) + b"\r\n\r\n", id="8192-byte-header"),
    pytest.param(b"GET / HTTP/1.1\r\nX: " + b"v" * (MAX_LINE_BYTES - 2) + b"\r\n\r\n", id="8193-byte-header"),
    pytest.param(b"GET / HTTP/1.1\r\n" + b"X-A: " + b"v" * 5000 + b"\r\nX-B: " + b"v" * 5000 + b"\r\n\r\n",
                 id="head-over-8192-of-short-lines"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A: b\r\n folded\r\n\r\n", id="obs-fold-space"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A: b\r\n\tfolded\r\n\r\n", id="obs-fold-tab"),
    pytest.param(b"GET / HTTP/1.1\r\n folded: first\r\n\r\n", id="first-header-folded"),
    pytest.param(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", id="no-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A : b\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\n: b\r\n\r\n", id="empty-name"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A: b\x00c\r\n\r\n", id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A: b\rc\r\n\r\n", id="cr-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A: b\r\r\n\r\n", id="cr-cr-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nX-A: b\x7f\r\n\r\n", id="del-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nX-\xe9: b\r\n\r\n", id="non-ascii-name"),
    pytest.param(b"GET / HTTP/1.1\r\r\n\r\n", id="cr-after-version"),
    pytest.param(b"GET /\r\n\r\n", id="http-0.9"),
    pytest.param(b"GET  / HTTP/1.1\r\n\r\n", id="double-space"),
    pytest.param(b"GET\t/ HTTP/1.1\r\n\r\n", id="tab-in-request-line"),
    pytest.param(b"GET / HTTP/2.0\r\n\r\n", id="http-2"),
    pytest.param(b"GET / HTTP/11\r\n\r\n", id="bad-version"),
    pytest.param(b"BREW / HTTP/1.1\r\n\r\n", id="unknown-method"),
    pytest.param(b"get / HTTP/1.1\r\n\r\n", id="lower-case-method"),
    pytest.param(b"GET * HTTP/1.1\r\n\r\n", id="asterisk-form"),
    pytest.param(b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", id="non-ascii-target"),
    pytest.param(b"BREW / HTTP/1.1\r\nX-A: b\x00\r\n\r\n", id="bad-request-line-before-bad-header"),
]


@pytest.mark.parametrize("head", CASES)
def test_a_whole_head_reads_as_it_does_line_by_line(head):
    assert head_end(head) == len(head)
    assert at_once(head) == line_by_line(head)


def test_a_simple_head_gives_its_request_line_and_lower_cased_stripped_headers_in_order():
    reader = RequestHead()
    reader.feed_head(b"GET /p?q HTTP/1.1\r\nHost: x\r\nX-Pad:  a b \t\r\nhost: y\r\n\r\n")
    assert reader.request_line == ("GET", "/p?q", "HTTP/1.1")
    assert reader.headers == [("host", "x"), ("x-pad", "a b"), ("host", "y")]


def test_a_refused_header_leaves_the_request_line_known():
    reader = RequestHead()
    with pytest.raises(RequestError) as refused:
        reader.feed_head(b"HEAD /x?y HTTP/1.1\r\n" + headers(MAX_HEADER_LINES + 1) + b"\r\n")
    assert refused.value.status == 431
    assert reader.request_line == ("HEAD", "/x?y", "HTTP/1.1")  # a HEAD's refusal has no body


def test_a_line_too_long_is_414_in_the_request_line_and_431_after_it():
    reader = RequestHead()
    assert reader.too_long().status == 414
    reader.feed_line(b"GET / HTTP/1.1")
    assert reader.too_long().status == 431


@pytest.mark.parametrize(
    "received, end",
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", 18, id="crlf"),
        pytest.param(b"GET / HTTP/1.1\n\n", 16, id="bare-lf"),
        pytest.param(b"GET / HTTP/1.1\r\nA: b\n\r\nnext", 23, id="lf-then-crlf"),
        pytest.param(b"GET / HTTP/1.1\r\nA: b\r\n\nnext", 23, id="crlf-then-lf"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", 18, id="pipelined"),
        pytest.param(b"GET / HTTP/1.1\r\nA: b\r\n", -1, id="unfinished"),
        pytest.param(b"GET / HTTP/1.1\r\nA: b\r\n\r", -1, id="unfinished-blank-line"),
        pytest.param(b"GET / HTTP/1.1\r\nA: b\r\r\n", -1, id="cr-cr-lf-is-no-blank-line"),
        pytest.param(b"\r\nGET / HTTP/1.1\r\n\r\n", -1, id="leading-empty-line"),
        pytest.param(b"\nGET / HTTP/1.1\n\n", -1, id="leading-bare-lf"),
        pytest.param(b"", -1, id="nothing"),
    ],
)
def test_head_end_finds_the_blank_line_of_a_head_that_starts_the_bytes(received, end):
    assert head_end(bytearray(received)) == end


# Pieces of heads, good and bad, for the seeded comparison below.
REQUEST_LINES = [b"GET / HTTP/1.1", b"HEAD /api/recordings/file/CA1?x=1 HTTP/1.0", b"POST /admin/jobs HTTP/1.1",
                 b"BREW / HTTP/1.1", b"GET / HTTP/1.2", b"GET  / HTTP/1.1", b"GET /\xe9 HTTP/1.1", b"GET /",
                 b"GET / HTTP/1.1 ", b"OPTIONS * HTTP/1.1", b"G\x00T / HTTP/1.1", b"GET /" + b"a" * 8200 + b" HTTP/1.1"]
HEADER_LINES = [b"Host: 127.0.0.1", b"Authorization: Bearer abc", b"X-A:", b"X-A:\t \t", b"X-A:  v  ", b"x-a: \xe9\xff",
                b"Content-Length: 0", b"Connection: close", b" folded", b"\tfolded", b"NoColon", b"X A: b", b": b",
                b"X-A: \x01", b"X-A: b\rc", b"X-A: \x7f", b"X-\xe9: b", b"X-A: " + b"v" * 8190, b"X-A: " + b"v" * 4000]
ENDINGS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r\r\n"]


def test_seeded_random_heads_read_the_same_at_once_and_line_by_line():
    rng = random.Random(9112)
    compared = 0
    for _ in range(3000):
        lines = [rng.choice(REQUEST_LINES)]
        count = rng.choice([0, 1, 3, 8, MAX_HEADER_LINES - 1, MAX_HEADER_LINES, MAX_HEADER_LINES + 1])
        good = rng.random() < 0.7
        lines += [rng.choice(HEADER_LINES[:8] if good else HEADER_LINES) for _ in range(count)]
        head = b"".join(line + rng.choice(ENDINGS) for line in lines) + rng.choice([b"\r\n", b"\n"])
        end = head_end(head)
        if end < 0:
            continue
        head = head[:end]
        assert at_once(head) == line_by_line(head), head[:200]
        compared += 1
    assert compared > 2000

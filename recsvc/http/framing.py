"""Request body framing without sockets (RFC 9112 6 and 7): Content-Length, or chunked.

Theory of operation. ``body_length`` reads a request head's framing headers
and says how the body is delimited: a length, ``None`` for a chunked body,
or a ``RequestError`` (CONTRACT 6: Transfer-Encoding with Content-Length,
or a malformed or doubled Content-Length, is 400; a coding other than
chunked is 501; a body over ``MAX_BODY_BYTES`` is 413). ``ChunkedBody``
decodes a chunked body from whatever bytes have arrived, h11-style: bytes
in, decoded data out, no socket; the transport (``recsvc.http.server``) feeds
it and keeps what follows the body for the next request.
"""

from __future__ import annotations

import re
from typing import Iterable

from .protocol import MAX_BODY_BYTES, MAX_HEADER_LINES, MAX_LINE_BYTES, METHODS_WITH_BODY, RequestError, parse_header_line

__all__ = ["body_length", "ChunkedBody"]


def body_length(method: str, version: str, headers: Iterable[tuple[str, str]]) -> int | None:
    """The request body's length from its framing headers, or None for a chunked body (CONTRACT 6, RFC 9112 6)."""
    lengths = []
    codings = []
    for name, value in headers:
        if name == "transfer-encoding":
            codings += [coding.strip().lower() for coding in value.split(",")]
        elif name == "content-length":
            lengths.append(value)
    if codings:
        if lengths:  # RFC 9112 6.1: the smuggling shape; never guess which one the sender meant
            raise RequestError("bad_framing", "Transfer-Encoding and Content-Length must not both be sent.")
        if any(coding != "chunked" for coding in codings if coding):
            raise RequestError("unsupported_transfer_encoding")
        if codings != ["chunked"]:  # an empty list element, or chunked twice
            raise RequestError("bad_framing", "Transfer-Encoding must be chunked, once.")
        return None
    if not lengths:
        if method in METHODS_WITH_BODY:
            raise RequestError("length_required")
        return 0
    if len(lengths) > 1:  # even equal values: two framings are one too many
        raise RequestError("bad_content_length", "Content-Length was given more than once.")
    value = lengths[0]
    if not (value.isascii() and value.isdigit()):
        raise RequestError("bad_content_length")
    if len(value.lstrip("0")) > 12 or int(value) > MAX_BODY_BYTES:
        raise _body_too_large()
    return int(value)


def _body_too_large() -> RequestError:
    return RequestError("body_too_large", f"The request body is larger than {MAX_BODY_BYTES} bytes.")


def _bad_chunk(message: str) -> RequestError:
    return RequestError("bad_chunked_body", message)


# chunk-size [ chunk-ext ] (RFC 9112 7.1): hex digits, then extensions that are ignored.
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")


class ChunkedBody:
    """A chunked request body, decoded as its bytes arrive (h11-style: bytes in, data out, no socket).

    ``feed(data)`` takes what was received and returns how many bytes of it
    belong to this body; the caller keeps the rest (the next request on the
    connection). ``done`` turns True after the last chunk and its trailers,
    and ``body`` is then the decoded body. Chunk extensions and trailer
    fields are checked for shape and ignored. Every line of the framing must
    end in CRLF: a bare LF inside a body is where parsers disagree, and
    disagreement is what request smuggling lives on. Refusals: 413 once the
    decoded size would pass ``limit``, 400 for any malformed framing, 431 for
    a trailer over the header limits.
    """

    def __init__(self, limit: int = MAX_BODY_BYTES):
        self.limit = limit
        self.body = bytearray()
        self.done = False
        self._state = "size"  # size -> data -> data_end -> size ... -> trailer -> done
        self._left = 0  # bytes of the current chunk still to come
        self._trailers = 0

    def feed(self, data: bytes | bytearray) -> int:
        used = 0
        view = memoryview(data)
        while not self.done and used < len(data):
            if self._state == "data":
                take = min(self._left, len(data) - used)
                self.body += view[used:used + take]
                used += take
                self._left -= take
                if not self._left:
                    self._state = "data_end"
                continue
            if self._state == "data_end":
                if len(data) - used < 2:
                    if data[used:used + 1] not in (b"", b"\r"):
                        raise _bad_chunk("A chunk's data must be followed by CRLF.")
                    break
                if data[used:used + 2] != b"\r\n":
                    raise _bad_chunk("A chunk's data must be followed by CRLF.")
                used += 2
                self._state = "size"
                continue
            end = data.find(b"\n", used)
            if end < 0:
                if len(data) - used > MAX_LINE_BYTES + 1:
                    raise _bad_chunk(f"A chunk-size or trailer line is longer than {MAX_LINE_BYTES} bytes.")
                break
            if end == used or data[end - 1:end] != b"\r":
                raise _bad_chunk("Each line of a chunked body must end with CRLF.")
            line = bytes(data[used:end - 1])
            used = end + 1
            if len(line) > MAX_LINE_BYTES:
                raise _bad_chunk(f"A chunk-size or trailer line is longer than {MAX_LINE_BYTES} bytes.")
            if self._state == "size":
                self._chunk_size(line)
            else:
                self._trailer(line)
        return used

    def _chunk_size(self, line: bytes) -> None:
        size_line = _CHUNK_SIZE_LINE.fullmatch(line)
        if size_line is None:
            raise _bad_chunk("A chunk must start with its size in hexadecimal digits.")
        size = int(size_line[1], 16)
        if len(self.body) + size > self.limit:
            raise _body_too_large()
        self._left = size
        self._state = "data" if size else "trailer"

    def _trailer(self, line: bytes) -> None:
        if not line:
            self.done = True
            return
        self._trailers += 1
        if self._trailers > MAX_HEADER_LINES:
            raise RequestError("header_too_large", f"A chunked body may have at most {MAX_HEADER_LINES} trailer fields.")
        parse_header_line(line)  # checked for shape, then ignored (RFC 9112 7.1.2)

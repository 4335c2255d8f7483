"""What a cached recording is and how its bytes are answered: sniffing, validators, ranges.

Theory of operation. CONTRACT section 5 says how a cached file goes out to a
browser player. Everything here is pure: no sockets, no files, no clock. The
HTTP layer reads request headers into plain values, asks this module, and
renders what it gets back.

- ``sniff_content_type(head)``: the ``Content-Type`` from the file's own first
  ``SNIFF_BYTES`` bytes, or None for anything that is not audio (the worker
  then fails the job with ``invalid_audio``).
- ``strong_etag``, ``http_date``, ``parse_http_date``: the validators a file
  is sent with (RFC 9110 8.8) and the dates clients send back.
- ``parse_range(value, size)``: what a ``Range`` header asks of a file of
  ``size`` bytes, as one of ``WholeFile`` (200), ``ByteRange`` (206) or
  ``Unsatisfiable`` (416).
- ``is_not_modified`` and ``range_applies``: the request's conditions
  (``If-None-Match``, ``If-Modified-Since``, ``If-Range``) against the file's
  validators (RFC 9110 13.1).
- ``plan_response(...)``: all of the above for one GET or HEAD, as a
  ``FileAnswer``: the status, which file bytes to send, and the headers.
  The HTTP layer renders it and decides nothing.
"""

from __future__ import annotations

import email.utils
import functools
import math
import re
from dataclasses import dataclass
from datetime import timezone

# Content type -> the extension a stored file gets (CONTRACT 5).
AUDIO_TYPES: dict[str, str] = {
    "audio/wav": "wav",
    "audio/mpeg": "mp3",
    "audio/ogg": "ogg",
    "audio/flac": "flac",
}

# The longest signature below, RIFF <size> WAVE, spans 12 bytes.
SNIFF_BYTES = 12

# An MPEG audio frame header is 4 bytes: 11 sync bits, then version (2),
# layer (2), protection (1), bitrate index (4), sampling rate index (2), ...
_MPEG_VERSION_RESERVED = 0b01
_MPEG_LAYER_RESERVED = 0b00
_MPEG_BITRATE_BAD = 0b1111
_MPEG_SAMPLE_RATE_RESERVED = 0b11


def sniff_content_type(head: bytes) -> str | None:
    """The audio content type that ``head`` (a file's first bytes) starts with, else None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if _is_id3v2_header(head) or _is_mpeg_frame_header(head):
        return "audio/mpeg"
    if head[:4] == b"OggS":
        return "audio/ogg"
    if head[:4] == b"fLaC":
        return "audio/flac"
    return None


def _is_id3v2_header(head: bytes) -> bool:
    # An ID3v2 tag opens an MP3 with a 10-byte header: "ID3", two version
    # bytes below 0xFF, a flags byte, and a 4-byte size whose bytes are all
    # below 0x80 ("synchsafe"). Requiring all 10 keeps a 3-byte "ID3" out.
    if len(head) < 10 or head[:3] != b"ID3":
        return False
    return head[3] != 0xFF and head[4] != 0xFF and all(b < 0x80 for b in head[6:10])


def _is_mpeg_frame_header(head: bytes) -> bool:
    # Eleven sync bits alone are a weak signature: the UTF-16 byte order mark
    # FF FE passes them. Checking the reserved values of the whole 4-byte
    # header rejects it in front of "<" (an HTML page), and rejects ADTS AAC
    # (layer 00), which is not audio/mpeg.
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0b11
    layer = (head[1] >> 1) & 0b11
    bitrate = head[2] >> 4
    sample_rate = (head[2] >> 2) & 0b11
    return (
        version != _MPEG_VERSION_RESERVED
        and layer != _MPEG_LAYER_RESERVED
        and bitrate != _MPEG_BITRATE_BAD
        and sample_rate != _MPEG_SAMPLE_RATE_RESERVED
    )


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def strong_etag(sha256_hex: str) -> str:
    """The file's strong entity tag: its whole sha256, quoted (CONTRACT 5, RFC 9110 8.8.3).

    The same bytes always get the same tag, and different bytes never do, so
    a tag stays valid across a re-download and is never weak.
    """
    digest = sha256_hex.lower()
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {sha256_hex!r}")
    return f'"{digest}"'


@functools.lru_cache(maxsize=1024)
def http_date(timestamp: float) -> str:
    """``timestamp`` as an IMF-fixdate (RFC 9110 5.6.7), fractions of a second dropped.

    Remembered: a cached recording answers every play with the Last-Modified
    of the same mtime, so the file path formats each date once, not per request.
    """
    return email.utils.formatdate(timestamp, usegmt=True)


def parse_http_date(value: str) -> float | None:
    """The POSIX time an HTTP-date names, or None when it is not a date.

    RFC 9110 5.6.7 has recipients accept IMF-fixdate and the obsolete RFC 850
    and asctime forms; asctime carries no zone and means GMT.
    """
    try:
        moment = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()



@dataclass(frozen=True)
class WholeFile:
    """Answer 200 with every byte: no Range, or one that is ignored."""


@dataclass(frozen=True)
class ByteRange:
    """Answer 206 with bytes ``start`` to ``end``, both included (RFC 9110 14.1.2)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"not a byte range: {self.start}-{self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """The 206 ``Content-Range`` value (RFC 9110 14.4)."""
        if self.end >= size:
            raise ValueError(f"range {self.start}-{self.end} is outside a file of {size} bytes")
        return f"bytes {self.start}-{self.end}/{size}"


@dataclass(frozen=True)
class Unsatisfiable:
    """Answer 416 with ``Content-Range: bytes */<size>`` (CONTRACT 5, RFC 9110 15.5.17)."""


# RFC 9110 14.1.1: int-range = first-pos "-" [ last-pos ];
# suffix-range = "-" suffix-length; every number is 1*DIGIT (ASCII only).
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)
# Longer numbers than this are beyond any file; int() would refuse very long ones.
_MAX_DIGITS = 30


def parse_range(value: str | None, size: int) -> WholeFile | ByteRange | Unsatisfiable:
    """What a ``Range`` header asks of a file of ``size`` bytes (CONTRACT 5, RFC 9110 14.2)."""
    if size < 0:
        raise ValueError(f"a file cannot have {size} bytes")
    if value is None:
        return WholeFile()
    unit, equals, range_set = value.strip(" \t").partition("=")
    # RFC 9110 14.2: a server MUST ignore a range unit it does not understand
    # and MAY ignore an invalid ranges-specifier; ignoring means 200.
    if not equals or unit.lower() != "bytes":
        return WholeFile()
    # RFC 9110 5.6.1: list elements are separated by OWS "," OWS, and empty
    # elements are allowed and do not count.
    specs = [spec.strip(" \t") for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        # No range, or several: CONTRACT 5 answers several with the whole file.
        return WholeFile()
    match = _RANGE_SPEC.fullmatch(specs[0])
    if match is None:
        return WholeFile()
    first, last = match.groups()
    if first:
        return _int_range(_number(first), _number(last) if last else None, size)
    if last:
        return _suffix_range(_number(last), size)
    return WholeFile()  # a bare "-"


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def _int_range(first: int, last: int | None, size: int) -> WholeFile | ByteRange | Unsatisfiable:
    if last is not None and last < first:
        return WholeFile()  # RFC 9110 14.1.1: invalid, so ignored
    if first >= size:
        return Unsatisfiable()  # RFC 9110 14.1.1: first-pos must be inside the file
    # A missing or too large last-pos means "to the end" (RFC 9110 14.1.2).
    end = size - 1 if last is None else min(last, size - 1)
    return ByteRange(first, end)


def _suffix_range(length: int, size: int) -> ByteRange | Unsatisfiable:
    # RFC 9110 14.1.1: a suffix is satisfiable only if it is non-zero and the
    # file is not empty; one longer than the file means the whole file.
    if length == 0 or size == 0:
        return Unsatisfiable()
    return ByteRange(max(size - length, 0), size - 1)


@dataclass(frozen=True)
class Conditions:
    """The conditional request headers, as received; None when absent (RFC 9110 13.1)."""

    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_range: str | None = None


@dataclass(frozen=True)
class _EntityTag:
    weak: bool
    opaque: str  # the quoted part, quotes included


# RFC 9110 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, where etagc is
# any visible ASCII character but DQUOTE, or obs-text; "W/" is case-sensitive.
_ENTITY_TAG = re.compile(r'(W/)?("[\x21\x23-\x7e\x80-\xff]*")')


def _entity_tag(value: str) -> _EntityTag | None:
    match = _ENTITY_TAG.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    return _EntityTag(weak=match.group(1) is not None, opaque=match.group(2))


def _entity_tags(field: str) -> list[_EntityTag]:
    # The tags of a comma-separated list; malformed elements match nothing.
    # A tag may hold a comma, which this split breaks into malformed pieces:
    # that costs only a missed 304, and the tags made here never hold one.
    tags = (_entity_tag(element) for element in field.split(","))
    return [tag for tag in tags if tag is not None]


def _own_entity_tag(etag: str) -> _EntityTag:
    tag = _entity_tag(etag)
    if tag is None:
        raise ValueError(f"not an entity tag: {etag!r}")
    return tag


def _whole_seconds(timestamp: float) -> int:
    # Last-Modified carries whole seconds (http_date drops the fraction), so
    # every comparison with a client's date is made on whole seconds too.
    return math.floor(timestamp)


def is_not_modified(cond: Conditions, etag: str, last_modified: float) -> bool:
    """Whether a GET or HEAD is answered 304 (CONTRACT 5, RFC 9110 13.2.2 steps 3-4).

    ``etag`` is the file's entity tag, ``last_modified`` its POSIX mtime.
    """
    if cond.if_none_match is not None:
        # RFC 9110 13.1.2: "*" matches any current representation, and a
        # cached file is one; otherwise the weak comparison, which ignores W/.
        if cond.if_none_match.strip(" \t") == "*":
            return True
        own = _own_entity_tag(etag)
        return any(tag.opaque == own.opaque for tag in _entity_tags(cond.if_none_match))
    if cond.if_modified_since is not None:
        # RFC 9110 13.1.3: considered only without If-None-Match, and ignored
        # when it is not a valid date.
        since = parse_http_date(cond.if_modified_since)
        return since is not None and _whole_seconds(last_modified) <= since
    return False


def range_applies(cond: Conditions, etag: str, last_modified: float) -> bool:
    """Whether Range is honoured, or the file goes out whole (CONTRACT 5, RFC 9110 13.1.5).

    False means the client's copy is stale, so it gets the whole new file.
    """
    if cond.if_range is None:
        return True
    value = cond.if_range.strip(" \t")
    # RFC 9110 13.1.5: a DQUOTE in the first three characters makes it an
    # entity tag, compared strongly: a weak tag never matches.
    if '"' in value[:3]:
        tag = _entity_tag(value)
        own = _own_entity_tag(etag)
        return tag is not None and not tag.weak and not own.weak and tag.opaque == own.opaque
    # Otherwise an HTTP-date, which must equal Last-Modified exactly.
    since = parse_http_date(value)
    return since is not None and since == _whole_seconds(last_modified)


CACHE_CONTROL = "private, max-age=3600"  # CONTRACT 5


@dataclass(frozen=True)
class FileAnswer:
    """How to answer one GET or HEAD for a cached file.

    After the headers, send ``count`` bytes of the file from ``offset`` (0 for
    HEAD, 304 and 416). A 416 has no file bytes; its body is the HTTP layer's
    JSON error. ``Content-Length`` is in ``headers`` for 200 and 206 only.
    """

    status: int
    offset: int
    count: int
    headers: tuple[tuple[str, str], ...]


def plan_response(
    method: str,
    cond: Conditions,
    range_header: str | None,
    size: int,
    etag: str,
    last_modified: float,
    *,
    content_type: str | None = None,
) -> FileAnswer:
    """The answer to a GET or HEAD for a cached file of ``size`` bytes (CONTRACT 5).

    ``etag`` comes from ``strong_etag``, ``last_modified`` is the file's POSIX
    mtime and ``content_type``, when given, goes on the 200 and 206.
    """
    if method not in ("GET", "HEAD"):
        # The router answers any other method first (CONTRACT 6).
        raise ValueError(f"a file is only answered to GET or HEAD, not {method!r}")
    send_body = method == "GET"
    validators = (
        ("ETag", etag),
        ("Last-Modified", http_date(last_modified)),
        ("Cache-Control", CACHE_CONTROL),
        ("Accept-Ranges", "bytes"),
    )
    # RFC 9110 13.2.2: the conditionals come before Range, so 304 wins over it.
    if is_not_modified(cond, etag, last_modified):
        return FileAnswer(status=304, offset=0, count=0, headers=validators)
    # RFC 9110 13.1.5: a stale If-Range means the whole file, not a part.
    # HEAD plans the same as GET: CONTRACT 5 has it answer GET's headers.
    wanted: WholeFile | ByteRange | Unsatisfiable = WholeFile()
    if range_header is not None and range_applies(cond, etag, last_modified):
        wanted = parse_range(range_header, size)
    if isinstance(wanted, Unsatisfiable):
        unsatisfied = (("Content-Range", f"bytes */{size}"),)
        return FileAnswer(status=416, offset=0, count=0, headers=unsatisfied)
    typed = (("Content-Type", content_type),) if content_type is not None else ()
    if isinstance(wanted, ByteRange):
        headers = typed + (
            ("Content-Length", str(wanted.length)),
            ("Content-Range", wanted.content_range(size)),
        )
        count = wanted.length if send_body else 0
        return FileAnswer(status=206, offset=wanted.start, count=count, headers=headers + validators)
    headers = typed + (("Content-Length", str(size)),)
    count = size if send_body else 0
    return FileAnswer(status=200, offset=0, count=count, headers=headers + validators)

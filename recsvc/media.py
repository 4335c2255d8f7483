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
"""

from __future__ import annotations

import email.utils
import re
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


def http_date(timestamp: float) -> str:
    """``timestamp`` as an IMF-fixdate (RFC 9110 5.6.7), fractions of a second dropped."""
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


"""CONTRACT section 5: how a cached recording is recognised and answered."""

from __future__ import annotations

import io
import wave

import pytest

from recsvc.core import media


def _wav_bytes() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 80)
    return buffer.getvalue()


# MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no CRC: the commonest MP3 frame.
MP3_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 28
# ID3v2.4 header, no flags, tag size 0x21 (synchsafe), then the frame.
ID3_MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x21" + b"\x00" * 0x21 + MP3_FRAME
# First page of an Ogg stream: capture pattern, version 0, "beginning of stream".
OGG = b"OggS\x00\x02" + b"\x00" * 20
# The FLAC marker, then a STREAMINFO block header (last block, 34 bytes).
FLAC = b"fLaC\x80\x00\x00\x22" + b"\x00" * 34

SNIFF_CASES = [
    pytest.param(_wav_bytes(), "audio/wav", id="a WAV written by the wave module is audio/wav"),
    pytest.param(ID3_MP3, "audio/mpeg", id="an MP3 opening with an ID3v2 tag is audio/mpeg"),
    pytest.param(MP3_FRAME, "audio/mpeg", id="an MP3 opening with a frame sync is audio/mpeg"),
    pytest.param(b"\xff\xf3\x64\xc4" + b"\x00" * 8, "audio/mpeg", id="an MPEG-2 Layer III frame is audio/mpeg"),
    pytest.param(OGG, "audio/ogg", id="OggS is audio/ogg"),
    pytest.param(FLAC, "audio/flac", id="fLaC is audio/flac"),
    pytest.param(
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>",
        None,
        id="an HTML error page is not audio",
    ),
    pytest.param(b'{"code": 20404, "message": "not found"}', None, id="a JSON error body is not audio"),
    pytest.param(b"Service Unavailable\n", None, id="plain text is not audio"),
    pytest.param(b"", None, id="empty bytes are not audio"),
    pytest.param(b"ID3", None, id="a 3-byte ID3 with no room for a tag header is not audio"),
    pytest.param(b"RIF", None, id="a 3-byte truncated RIFF is not audio"),
    pytest.param(b"\xff\xfb\x90", None, id="a 3-byte frame sync with no room for a frame header is not audio"),
    pytest.param(b"RIFF\x24\x00\x00\x00AVI LIST", None, id="a RIFF that is not WAVE is not audio"),
    pytest.param(
        "<html><body>Error</body></html>".encode("utf-16"),
        None,
        id="an HTML page in UTF-16 is not audio although its byte order mark looks like a frame sync",
    ),
    pytest.param(b"\xff\xf1\x50\x80\x02\x1f\xfc", None, id="ADTS AAC (layer bits 00) is not audio/mpeg"),
    pytest.param(b"\xff\xeb\x90\x64", None, id="a frame sync with the reserved MPEG version is not audio"),
    pytest.param(b"\xff\xfb\xf0\x64", None, id="a frame sync with the bad bitrate index is not audio"),
    pytest.param(b"ID3\xff\x00\x00\x00\x00\x00\x21", None, id="ID3 followed by an impossible version is not audio"),
    pytest.param(b"ID3\x04\xff\x00\x00\x00\x00\x21", None, id="ID3 followed by an impossible revision is not audio"),
    pytest.param(b"ID3\x04\x00\x00\x00\x00\x21", None, id="a 9-byte ID3 with no room for the whole size is not audio"),
    pytest.param(b"ID3\x04\x00\x00\x80\x00\x00\x21", None, id="ID3 whose size is not synchsafe is not audio"),
    pytest.param(b"ID3\x04\x00\x00\x00\x00\x00\x80", None, id="ID3 whose last size byte is not synchsafe is not audio"),
    pytest.param(b"ID3\x04\x00\x80\x7f\x7f\x7f\x7f", "audio/mpeg",
                 id="a whole 10-byte ID3 header with a flag set and the largest size is audio/mpeg"),
    pytest.param(b"ID3\x04\x00\x00\x00\x00\x00\x01\xff\x00", "audio/mpeg",
                 id="an ID3 tag is judged by its 10 header bytes, not by the tag that follows"),
]


@pytest.mark.parametrize("head, expected", SNIFF_CASES)
def test_content_type_comes_from_the_files_own_bytes(head: bytes, expected: str | None) -> None:
    assert media.sniff_content_type(head) == expected


@pytest.mark.parametrize("head, expected", SNIFF_CASES)
def test_the_first_sniff_bytes_are_enough_to_decide(head: bytes, expected: str | None) -> None:
    assert media.sniff_content_type(head[: media.SNIFF_BYTES]) == expected


def test_every_sniffed_type_has_a_file_extension() -> None:
    sniffed = {p.values[1] for p in SNIFF_CASES} - {None}
    assert sniffed == set(media.AUDIO_TYPES)
    assert media.AUDIO_TYPES == {
        "audio/wav": "wav",
        "audio/mpeg": "mp3",
        "audio/ogg": "ogg",
        "audio/flac": "flac",
    }


SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_the_etag_is_the_whole_sha256_strong_and_quoted() -> None:
    assert media.strong_etag(SHA) == f'"{SHA}"'
    assert media.strong_etag(SHA.upper()) == f'"{SHA}"'


@pytest.mark.parametrize(
    "digest",
    [
        pytest.param("", id="empty"),
        pytest.param(SHA[:63], id="too short"),
        pytest.param(SHA[:63] + '"', id="a quote that would break the header"),
        pytest.param(SHA[:62] + "\r\n", id="a line break that would split the header"),
    ],
)
def test_an_etag_is_only_made_from_a_sha256_hex_digest(digest: str) -> None:
    with pytest.raises(ValueError):
        media.strong_etag(digest)


# RFC 9110 5.6.7's example instant.
EXAMPLE_TIME = 784111777.0


@pytest.mark.parametrize(
    "timestamp, expected",
    [
        pytest.param(EXAMPLE_TIME, "Sun, 06 Nov 1994 08:49:37 GMT", id="an IMF-fixdate in GMT"),
        pytest.param(EXAMPLE_TIME + 0.9, "Sun, 06 Nov 1994 08:49:37 GMT", id="fractions of a second are dropped"),
    ],
)
def test_http_date_is_an_imf_fixdate(timestamp: float, expected: str) -> None:
    assert media.http_date(timestamp) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT", EXAMPLE_TIME, id="IMF-fixdate"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", EXAMPLE_TIME, id="obsolete RFC 850 date"),
        pytest.param("Sun Nov  6 08:49:37 1994", EXAMPLE_TIME, id="obsolete asctime date, which means GMT"),
        pytest.param(" Sun, 06 Nov 1994 08:49:37 GMT ", EXAMPLE_TIME, id="surrounding whitespace is ignored"),
        pytest.param("garbage", None, id="garbage is not a date"),
        pytest.param("", None, id="empty is not a date"),
        pytest.param("Sun, 32 Nov 1994 08:49:37 GMT", None, id="an impossible day is not a date"),
        pytest.param("Sun, 06 Nov 1994 25:49:37 GMT", None, id="an impossible hour is not a date"),
        pytest.param('"' + SHA + '"', None, id="an entity tag is not a date"),
    ],
)
def test_parse_http_date(value: str, expected: float | None) -> None:
    assert media.parse_http_date(value) == expected


def test_http_date_and_parse_http_date_round_trip_whole_seconds() -> None:
    assert media.parse_http_date(media.http_date(EXAMPLE_TIME + 0.5)) == EXAMPLE_TIME


SIZE = 1000
R = media.ByteRange
WHOLE = media.WholeFile()
UNSATISFIABLE = media.Unsatisfiable()


@pytest.mark.parametrize(
    "header, size, expected",
    [
        pytest.param(None, SIZE, WHOLE, id="no Range: the whole file"),
        # The three forms of one range (CONTRACT 5).
        pytest.param("bytes=0-499", SIZE, R(0, 499), id="bytes=a-b: a to b"),
        pytest.param("bytes=500-", SIZE, R(500, 999), id="bytes=a-: a to the end"),
        pytest.param("bytes=-100", SIZE, R(900, 999), id="bytes=-n: the last n bytes"),
        pytest.param("bytes=0-", SIZE, R(0, 999), id="bytes=0-: every byte, still a 206"),
        # Edges.
        pytest.param("bytes=0-0", SIZE, R(0, 0), id="bytes=0-0: the first byte"),
        pytest.param("bytes=-1", SIZE, R(999, 999), id="bytes=-1: the last byte"),
        pytest.param("bytes=999-", SIZE, R(999, 999), id="bytes=size-1-: the last byte"),
        pytest.param("bytes=999-999", SIZE, R(999, 999), id="bytes=size-1-size-1: the last byte"),
        pytest.param("bytes=-5000", SIZE, R(0, 999), id="a suffix longer than the file is the whole file as a range"),
        pytest.param("bytes=-1000", SIZE, R(0, 999), id="a suffix as long as the file is the whole file as a range"),
        pytest.param("bytes=500-5000", SIZE, R(500, 999), id="a last byte beyond the end is clamped to the end"),
        pytest.param("bytes=0-" + "9" * 5000, SIZE, R(0, 999), id="an absurdly long last byte is clamped to the end"),
        pytest.param("bytes=007-009", SIZE, R(7, 9), id="leading zeros are plain digits"),
        # Unsatisfiable: 416.
        pytest.param("bytes=1000-", SIZE, UNSATISFIABLE, id="a first byte equal to the size is unsatisfiable"),
        pytest.param("bytes=1000-1001", SIZE, UNSATISFIABLE, id="a range starting at the size is unsatisfiable"),
        pytest.param("bytes=5000-6000", SIZE, UNSATISFIABLE, id="a first byte beyond the end is unsatisfiable"),
        pytest.param("bytes=" + "9" * 5000 + "-", SIZE, UNSATISFIABLE, id="an absurdly long first byte is unsatisfiable"),
        pytest.param("bytes=-0", SIZE, UNSATISFIABLE, id="a zero-length suffix is unsatisfiable"),
        pytest.param("bytes=0-", 0, UNSATISFIABLE, id="bytes=0- of an empty file is unsatisfiable"),
        pytest.param("bytes=0-0", 0, UNSATISFIABLE, id="bytes=0-0 of an empty file is unsatisfiable"),
        pytest.param("bytes=-10", 0, UNSATISFIABLE, id="a suffix of an empty file is unsatisfiable"),
        # Several ranges: CONTRACT 5 answers 200 with the whole file.
        pytest.param("bytes=0-1,5-6", SIZE, WHOLE, id="two ranges: the whole file"),
        pytest.param("bytes=0-1, -1", SIZE, WHOLE, id="a range and a suffix: the whole file"),
        pytest.param("bytes=0-1,0-1", SIZE, WHOLE, id="the same range twice: the whole file"),
        pytest.param("bytes=0-1,5000-6000", SIZE, WHOLE, id="a satisfiable and an unsatisfiable range: the whole file"),
        # Invalid headers are ignored (RFC 9110 14.2): the whole file.
        pytest.param("items=0-1", SIZE, WHOLE, id="another unit is ignored"),
        pytest.param("bytes=5-3", SIZE, WHOLE, id="a last byte before the first is ignored"),
        pytest.param("bytes=abc", SIZE, WHOLE, id="non-digits are ignored"),
        pytest.param("bytes=1a-2", SIZE, WHOLE, id="a number with a letter in it is ignored"),
        pytest.param("bytes=+1-2", SIZE, WHOLE, id="a signed number is ignored"),
        pytest.param("bytes=\u0661-\u0662", SIZE, WHOLE, id="non-ASCII digits are ignored"),
        pytest.param("bytes=", SIZE, WHOLE, id="an empty range set is ignored"),
        pytest.param("bytes=-", SIZE, WHOLE, id="a bare dash is ignored"),
        pytest.param("bytes=1", SIZE, WHOLE, id="a number without a dash is ignored"),
        pytest.param("bytes=1-2-3", SIZE, WHOLE, id="two dashes are ignored"),
        pytest.param("bytes", SIZE, WHOLE, id="a unit without = is ignored"),
        pytest.param("bytes 0-1", SIZE, WHOLE, id="a space instead of = is ignored"),
        pytest.param("0-1", SIZE, WHOLE, id="a range without a unit is ignored"),
        pytest.param("", SIZE, WHOLE, id="an empty header is ignored"),
        pytest.param("bytes=0 - 1", SIZE, WHOLE, id="spaces inside a range are ignored"),
        pytest.param("bytes = 0-1", SIZE, WHOLE, id="spaces around = are ignored"),
        # What RFC 9110 allows around a list element, and the unit's case.
        pytest.param("  bytes=0-1  ", SIZE, R(0, 1), id="whitespace around the value is allowed"),
        pytest.param("bytes= 0-1", SIZE, R(0, 1), id="whitespace before a range is allowed"),
        pytest.param("bytes=0-1\t", SIZE, R(0, 1), id="a tab after a range is allowed"),
        pytest.param("bytes=0-1,", SIZE, R(0, 1), id="an empty list element does not count as a range"),
        pytest.param("bytes=, ,0-1", SIZE, R(0, 1), id="empty list elements before a range do not count"),
        pytest.param("Bytes=0-1", SIZE, R(0, 1), id="the unit is case-insensitive (Bytes)"),
        pytest.param("BYTES=0-1", SIZE, R(0, 1), id="the unit is case-insensitive (BYTES)"),
    ],
)
def test_parse_range(header: str | None, size: int, expected: object) -> None:
    assert media.parse_range(header, size) == expected


def test_a_byte_range_knows_its_length_and_content_range() -> None:
    assert R(0, 0).length == 1
    assert R(500, 999).length == 500
    assert R(500, 999).content_range(1000) == "bytes 500-999/1000"


@pytest.mark.parametrize(
    "start, end",
    [
        pytest.param(-1, 5, id="a negative start"),
        pytest.param(5, 4, id="an end before the start"),
    ],
)
def test_a_byte_range_is_never_backwards_or_negative(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        media.ByteRange(start, end)


def test_a_content_range_never_reaches_past_the_file() -> None:
    with pytest.raises(ValueError):
        R(0, 1000).content_range(1000)


def test_a_negative_size_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        media.parse_range("bytes=0-1", -1)


ETAG = media.strong_etag(SHA)
OTHER_ETAG = media.strong_etag("0" * 64)
# The file was stored at EXAMPLE_TIME and a fraction; Last-Modified says 08:49:37.
MTIME = EXAMPLE_TIME + 0.25
LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
SECOND_BEFORE = "Sun, 06 Nov 1994 08:49:36 GMT"
SECOND_AFTER = "Sun, 06 Nov 1994 08:49:38 GMT"
C = media.Conditions


@pytest.mark.parametrize(
    "cond, expected",
    [
        pytest.param(C(), False, id="no conditions: modified"),
        # If-None-Match: weak comparison (RFC 9110 13.1.2).
        pytest.param(C(if_none_match=ETAG), True, id="If-None-Match with the file's tag: not modified"),
        pytest.param(C(if_none_match=OTHER_ETAG), False, id="If-None-Match with another tag: modified"),
        pytest.param(C(if_none_match="*"), True, id="If-None-Match * : not modified"),
        pytest.param(C(if_none_match=" * "), True, id="If-None-Match * with whitespace: not modified"),
        pytest.param(C(if_none_match=f"{OTHER_ETAG}, {ETAG}"), True, id="If-None-Match list holding the tag: not modified"),
        pytest.param(C(if_none_match=f"{OTHER_ETAG},{ETAG},"), True, id="If-None-Match list without spaces: not modified"),
        pytest.param(C(if_none_match=f'{OTHER_ETAG}, "x"'), False, id="If-None-Match list without the tag: modified"),
        pytest.param(C(if_none_match=f"W/{ETAG}"), True, id="If-None-Match weak form of the tag matches (weak comparison)"),
        pytest.param(C(if_none_match=f'W/"x", W/{ETAG}'), True, id="If-None-Match list of weak tags holding it matches"),
        pytest.param(C(if_none_match=f"w/{ETAG}"), False, id="If-None-Match lowercase w/ is malformed and matches nothing"),
        pytest.param(C(if_none_match=SHA), False, id="If-None-Match unquoted tag is malformed and matches nothing"),
        pytest.param(C(if_none_match=""), False, id="If-None-Match empty: modified"),
        pytest.param(C(if_none_match="*, " + ETAG), True, id="If-None-Match * inside a list still finds the tag"),
        # If-Modified-Since (RFC 9110 13.1.3), on whole seconds.
        pytest.param(C(if_modified_since=SECOND_BEFORE), False, id="If-Modified-Since before Last-Modified: modified"),
        pytest.param(C(if_modified_since=LAST_MODIFIED), True, id="If-Modified-Since equal to Last-Modified: not modified"),
        pytest.param(C(if_modified_since=SECOND_AFTER), True, id="If-Modified-Since after Last-Modified: not modified"),
        pytest.param(C(if_modified_since="Sunday, 06-Nov-94 08:49:37 GMT"), True, id="If-Modified-Since in RFC 850 form: not modified"),
        pytest.param(C(if_modified_since="garbage"), False, id="If-Modified-Since garbage is ignored"),
        pytest.param(C(if_modified_since=""), False, id="If-Modified-Since empty is ignored"),
        # If-None-Match wins (RFC 9110 13.1.3: If-Modified-Since is then ignored).
        pytest.param(
            C(if_none_match=OTHER_ETAG, if_modified_since=SECOND_AFTER),
            False,
            id="If-None-Match not matching wins over a fresh If-Modified-Since",
        ),
        pytest.param(
            C(if_none_match=ETAG, if_modified_since=SECOND_BEFORE),
            True,
            id="If-None-Match matching wins over a stale If-Modified-Since",
        ),
        pytest.param(
            C(if_none_match="", if_modified_since=SECOND_AFTER),
            False,
            id="an empty If-None-Match still hides If-Modified-Since",
        ),
        pytest.param(C(if_range=ETAG), False, id="If-Range alone decides nothing about 304"),
    ],
)
def test_is_not_modified(cond: media.Conditions, expected: bool) -> None:
    assert media.is_not_modified(cond, ETAG, MTIME) is expected


@pytest.mark.parametrize(
    "cond, expected",
    [
        pytest.param(C(), True, id="no If-Range: the range applies"),
        # An entity tag: strong comparison (RFC 9110 13.1.5).
        pytest.param(C(if_range=ETAG), True, id="If-Range with the file's tag: the range applies"),
        pytest.param(C(if_range=f" {ETAG} "), True, id="If-Range with the tag and whitespace: the range applies"),
        pytest.param(C(if_range=OTHER_ETAG), False, id="If-Range with another tag: stale, whole file"),
        pytest.param(C(if_range=f"W/{ETAG}"), False, id="If-Range with a weak tag never matches: whole file"),
        pytest.param(C(if_range=f"{ETAG}, {OTHER_ETAG}"), False, id="If-Range with a list is malformed: whole file"),
        pytest.param(C(if_range='"' + SHA), False, id="If-Range with an unterminated tag: whole file"),
        # An HTTP-date: must equal Last-Modified (whole seconds).
        pytest.param(C(if_range=LAST_MODIFIED), True, id="If-Range date equal to Last-Modified: the range applies"),
        pytest.param(C(if_range="Sun Nov  6 08:49:37 1994"), True, id="If-Range same date in asctime form: the range applies"),
        pytest.param(C(if_range=SECOND_BEFORE), False, id="If-Range date before Last-Modified: stale, whole file"),
        pytest.param(C(if_range=SECOND_AFTER), False, id="If-Range date after Last-Modified: whole file"),
        pytest.param(C(if_range="garbage"), False, id="If-Range neither tag nor date: whole file"),
        pytest.param(C(if_range=""), False, id="If-Range empty: whole file"),
        pytest.param(C(if_none_match=OTHER_ETAG, if_modified_since=SECOND_BEFORE), True, id="other conditions do not touch the range"),
    ],
)
def test_range_applies(cond: media.Conditions, expected: bool) -> None:
    assert media.range_applies(cond, ETAG, MTIME) is expected


@pytest.mark.parametrize(
    "check, cond",
    [
        pytest.param(media.is_not_modified, C(if_none_match='"x"'), id="If-None-Match"),
        pytest.param(media.range_applies, C(if_range='"x"'), id="If-Range"),
    ],
)
def test_the_files_own_etag_must_be_an_entity_tag(check, cond) -> None:
    with pytest.raises(ValueError):
        check(cond, SHA, MTIME)


def _validators(etag: str = ETAG) -> dict[str, str]:
    return {
        "ETag": etag,
        "Last-Modified": LAST_MODIFIED,
        "Cache-Control": "private, max-age=3600",
        "Accept-Ranges": "bytes",
    }


# (status, offset, count, headers) for a 1000-byte audio/ogg file.
WHOLE_ANSWER = (200, 0, SIZE, {"Content-Type": "audio/ogg", "Content-Length": "1000", **_validators()})
FIRST_100 = (
    206,
    0,
    100,
    {"Content-Type": "audio/ogg", "Content-Length": "100", "Content-Range": "bytes 0-99/1000", **_validators()},
)
NOT_MODIFIED = (304, 0, 0, _validators())
RANGE_NOT_SATISFIABLE = (416, 0, 0, {"Content-Range": "bytes */1000"})


@pytest.mark.parametrize(
    "cond, range_header, expected",
    [
        pytest.param(C(), None, WHOLE_ANSWER, id="a plain GET: 200 with every byte"),
        pytest.param(C(), "bytes=0-99", FIRST_100, id="one range: 206 with Content-Range"),
        pytest.param(
            C(),
            "bytes=-10",
            (
                206,
                990,
                10,
                {
                    "Content-Type": "audio/ogg",
                    "Content-Length": "10",
                    "Content-Range": "bytes 990-999/1000",
                    **_validators(),
                },
            ),
            id="a suffix range: 206 from the right offset",
        ),
        pytest.param(C(), "bytes=5000-", RANGE_NOT_SATISFIABLE, id="an unsatisfiable range: 416 with bytes */size"),
        pytest.param(C(), "bytes=0-1,5-6", WHOLE_ANSWER, id="several ranges: 200 with the whole file"),
        pytest.param(C(), "items=0-1", WHOLE_ANSWER, id="a malformed range: 200 with the whole file"),
        pytest.param(C(if_none_match=ETAG), None, NOT_MODIFIED, id="If-None-Match matching: 304"),
        pytest.param(C(if_none_match=ETAG), "bytes=0-99", NOT_MODIFIED, id="304 wins over a range"),
        pytest.param(C(if_none_match=ETAG), "bytes=5000-", NOT_MODIFIED, id="304 wins over an unsatisfiable range"),
        pytest.param(C(if_none_match=OTHER_ETAG), "bytes=0-99", FIRST_100, id="If-None-Match not matching: the range is served"),
        pytest.param(C(if_modified_since=LAST_MODIFIED), None, NOT_MODIFIED, id="If-Modified-Since not older: 304"),
        pytest.param(C(if_range=ETAG), "bytes=0-99", FIRST_100, id="If-Range current: 206"),
        pytest.param(C(if_range=OTHER_ETAG), "bytes=0-99", WHOLE_ANSWER, id="If-Range stale: 200 with the whole file"),
        pytest.param(C(if_range=OTHER_ETAG), "bytes=5000-", WHOLE_ANSWER, id="If-Range stale with an unsatisfiable range: 200"),
        pytest.param(C(if_range=SECOND_BEFORE), "bytes=0-99", WHOLE_ANSWER, id="If-Range stale date: 200 with the whole file"),
        pytest.param(C(if_range=OTHER_ETAG), None, WHOLE_ANSWER, id="If-Range without Range: 200"),
    ],
)
def test_plan_response_for_get(
    cond: media.Conditions, range_header: str | None, expected: tuple
) -> None:
    answer = media.plan_response(
        "GET", cond, range_header, SIZE, ETAG, MTIME, content_type="audio/ogg"
    )
    assert (answer.status, answer.offset, answer.count, dict(answer.headers)) == expected
    assert len(dict(answer.headers)) == len(answer.headers), "no header is sent twice"


@pytest.mark.parametrize(
    "cond, range_header",
    [
        pytest.param(C(), None, id="plain"),
        pytest.param(C(), "bytes=0-99", id="one range"),
        pytest.param(C(), "bytes=5000-", id="unsatisfiable range"),
        pytest.param(C(if_none_match=ETAG), None, id="not modified"),
        pytest.param(C(if_range=OTHER_ETAG), "bytes=0-99", id="stale If-Range"),
    ],
)
def test_head_answers_exactly_the_headers_get_would_with_no_body(
    cond: media.Conditions, range_header: str | None
) -> None:
    get = media.plan_response("GET", cond, range_header, SIZE, ETAG, MTIME, content_type="audio/ogg")
    head = media.plan_response(
        "HEAD", cond, range_header, SIZE, ETAG, MTIME, content_type="audio/ogg"
    )
    assert (head.status, head.headers, head.count) == (get.status, get.headers, 0)


def test_without_a_content_type_the_caller_adds_its_own() -> None:
    answer = media.plan_response("GET", C(), None, SIZE, ETAG, MTIME)
    assert "Content-Type" not in dict(answer.headers)


def test_an_empty_file_is_answered_whole_and_any_range_of_it_is_unsatisfiable() -> None:
    whole = media.plan_response("GET", C(), None, 0, ETAG, MTIME)
    ranged = media.plan_response("GET", C(), "bytes=0-", 0, ETAG, MTIME)
    assert (whole.status, whole.count, dict(whole.headers)["Content-Length"]) == (200, 0, "0")
    assert (ranged.status, dict(ranged.headers)) == (416, {"Content-Range": "bytes */0"})


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get"])
def test_only_get_and_head_are_planned(method: str) -> None:
    with pytest.raises(ValueError):
        media.plan_response(method, C(), None, SIZE, ETAG, MTIME)

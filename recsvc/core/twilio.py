"""Twilio's side of a recording: webhook signatures, the status callback, media URLs.

Theory of operation. Twilio tells recsvc about a call's recording with a form
POST (the recording status callback) and signs every such request with the
``X-Twilio-Signature`` header. Everything here is a pure function over plain
strings: no sockets, no clock, no settings. The HTTP handler hands in the URL
Twilio requested, the decoded form fields and the header; it gets back a yes
or no, a ``RecordingStatus``, or a ``ValueError`` in plain English.

The signature, as Twilio documents it and as its helper libraries check it:

1. Start from the full URL Twilio requested, query string included, exactly
   as Twilio wrote it (no re-encoding, no normalisation).
2. For a form POST, append every field as ``name + value`` with no delimiter,
   ordered by name (code point order: Twilio's "Unix-style case-sensitive"
   sort). A name sent several times contributes each of its values, the
   values sorted too: twilio-python and twilio-node both sort them, so the
   order the fields arrived in does not matter. The same value sent twice
   counts twice, as in twilio-python (twilio-node drops the repeat).
3. HMAC-SHA1 over the UTF-8 bytes of that string, keyed with the account's
   auth token; base64 of the digest is the signature.
4. Compare with the header in constant time.

Proxies and Twilio's own back end disagree on whether a URL carries its
default port (``:443`` for https, ``:80`` for http), so a request is accepted
when the URL as given, with that port added, or with it removed matches
(``url_variants``). Only the scheme's default port is ever added or removed:
a URL on ``:8443`` was signed with ``:8443``. (Twilio's helper libraries
strip any port; that is more than the disagreement they work around needs.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

DEFAULT_PORTS = {"https": "443", "http": "80"}
MEDIA_SUFFIXES = ("wav", "mp3")

FormFields = Mapping[str, str] | Sequence[tuple[str, str]]


def _field_pairs(params: FormFields | None) -> list[tuple[str, str]]:
    """The form fields as (name, value) pairs, in the order Twilio signs them."""
    if params is None:
        return []
    items = params.items() if isinstance(params, Mapping) else params
    pairs = []
    for pair in items:
        if not (
            isinstance(pair, (tuple, list))
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            raise TypeError(
                f"form fields must be (name, value) pairs of strings, got {pair!r}; "
                "pass repeated names as separate pairs, e.g. from urllib.parse.parse_qsl"
            )
        pairs.append((pair[0], pair[1]))
    # Sorting the pairs orders by name, then a repeated name's values by value.
    return sorted(pairs)


def _index_of_first(text: str, stops: str) -> int:
    """Where the first of the characters ``stops`` is in ``text``; its length when none is."""
    return min((i for i in map(text.find, stops) if i != -1), default=len(text))


def _require_auth_token(auth_token: str) -> bytes:
    # An empty key is a configuration fault, and anyone can sign with it.
    if not auth_token:
        raise ValueError("the Twilio auth token is empty; cannot sign or check a webhook")
    return auth_token.encode("utf-8")


def compute_signature(url: str, params: FormFields | None, auth_token: str) -> str:
    """The X-Twilio-Signature Twilio would send for this URL and these form fields."""
    key = _require_auth_token(auth_token)
    signed = url + "".join(name + value for name, value in _field_pairs(params))
    digest = hmac.new(key, signed.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


class _Authority(NamedTuple):
    """An http(s) URL cut around its host and port; joining the parts gives it back."""

    head: str  # scheme, "://" and any "userinfo@"
    host: str
    port: str  # digits, or "" when the URL names none
    tail: str  # path, query and fragment, untouched
    default_port: str


def _split_authority(url: str) -> _Authority | None:
    """The URL cut around its host and port, or None when it is not http(s).

    Done by hand rather than with ``urllib.parse`` so that every other
    character of the URL comes back exactly as Twilio signed it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in DEFAULT_PORTS:
        return None
    end = _index_of_first(rest, "/?#")
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    if hostport.startswith("["):  # an IPv6 literal: the port follows the "]"
        host, bracket, after = hostport.partition("]")
        host += bracket
        if after and not after.startswith(":"):
            return None
        port = after[1:]
    else:
        host, _, port = hostport.partition(":")
    if not host:
        return None
    head = scheme + sep + userinfo + at
    return _Authority(head, host, port, tail, DEFAULT_PORTS[scheme.lower()])


def url_variants(url: str) -> tuple[str, ...]:
    """The URL as given, with its scheme's default port added, and with it removed.

    Duplicates are dropped and the given URL comes first. A URL on another
    port, or not http(s), has only itself.
    """
    parts = _split_authority(url)
    if parts is None or parts.port not in ("", parts.default_port):
        return (url,)
    with_port = parts.head + parts.host + ":" + parts.default_port + parts.tail
    without_port = parts.head + parts.host + parts.tail
    return tuple(dict.fromkeys((url, with_port, without_port)))


def validate_signature(
    url: str, params: FormFields | None, signature: str | None, auth_token: str
) -> bool:
    """True when ``signature`` is Twilio's for this request, under any of ``url_variants``."""
    _require_auth_token(auth_token)  # a missing token is loud even when the header is missing
    if not signature or not signature.isascii():
        # A base64 signature is ASCII; compare_digest refuses other str.
        return False
    given = signature.encode("ascii")
    matched = False
    for variant in url_variants(url):
        expected = compute_signature(variant, params, auth_token).encode("ascii")
        matched |= hmac.compare_digest(expected, given)
    return matched


@dataclass(frozen=True)
class RecordingStatus:
    """One recording status callback: which call, which recording, where, how far along.

    ``status`` is Twilio's word as sent (``in-progress``, ``completed``,
    ``absent``, ``failed``). The optional fields are None when Twilio sent
    them empty or not at all: an ``absent`` or ``failed`` recording has no
    file to fetch, so Twilio may leave out its URL.
    """

    account_sid: str
    call_sid: str
    recording_sid: str | None
    recording_url: str | None
    status: str | None
    duration: int | None  # whole seconds


_WHOLE_SECONDS = re.compile(r"-?[0-9]+")


def _optional_field(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    return value if value else None


def _duration(params: Mapping[str, str]) -> int | None:
    raw = _optional_field(params, "RecordingDuration")
    if raw is None:
        return None
    if not _WHOLE_SECONDS.fullmatch(raw):
        raise ValueError(
            f"RecordingDuration must be a whole number of seconds, got {raw!r}"
        )
    seconds = int(raw)
    # A negative count of seconds is no length at all (a placeholder such as -1): unknown.
    return seconds if seconds >= 0 else None


def parse_recording_status(params: Mapping[str, str]) -> RecordingStatus:
    """The recording status callback's form fields as a ``RecordingStatus``.

    Raises ValueError, naming the fields, when AccountSid or CallSid is
    missing or empty: without them the callback cannot be tied to a call.
    """
    missing = [name for name in ("AccountSid", "CallSid") if not params.get(name)]
    if missing:
        raise ValueError(
            "the recording status callback has no "
            + " and no ".join(missing)
            + "; cannot tell which call it is about"
        )
    return RecordingStatus(
        account_sid=params["AccountSid"],
        call_sid=params["CallSid"],
        recording_sid=_optional_field(params, "RecordingSid"),
        recording_url=_optional_field(params, "RecordingUrl"),
        status=_optional_field(params, "RecordingStatus"),
        duration=_duration(params),
    )


def media_url(recording_url: str, suffix: str) -> str:
    """Where Twilio serves a recording's audio as ``suffix`` (``wav`` or ``mp3``).

    Twilio's RecordingUrl names the recording resource, with no extension;
    the audio is at that URL plus ``.wav`` or ``.mp3``. A URL that already
    ends in one of them keeps it, or has it swapped for the one asked for.
    The extension goes on the path, before any query string.
    """
    if suffix not in MEDIA_SUFFIXES:
        raise ValueError(f"a recording's media suffix is 'wav' or 'mp3', got {suffix!r}")
    if not recording_url:
        raise ValueError("the recording URL is empty; there is no media to fetch")
    url_path = urllib.parse.urlsplit(recording_url).path
    if not url_path.strip("/") or url_path.endswith("/"):
        raise ValueError(f"the recording URL {recording_url!r} names no recording in its path")
    end = _index_of_first(recording_url, "?#")
    path, rest = recording_url[:end], recording_url[end:]
    stem, dot, existing = path.rpartition(".")
    if dot and "/" not in existing and existing.lower() in MEDIA_SUFFIXES:
        path = stem
    return path + "." + suffix + rest

"""Which upstream URLs and addresses may be fetched: the allowlist rules of CONTRACT 6.

Theory of operation. A ``recording_url`` comes from a tenant, so a download
is a request the service makes on someone else's behalf (SSRF). Two of the
three gates of a download are pure rules and live here; the third, the
connection, is in ``upstream``.

1. ``check_recording_url`` (CONTRACT 6, 422 ``recording_url_not_allowed``):
   https only, http only for hosts the word ``loopback`` allows (127.0.0.0/8,
   ::1, ``localhost``); the host must equal an ``--allow-upstream`` entry,
   compared without case. URLs that parsers read differently are refused
   outright: credentials, backslashes, percent signs, spaces or control
   characters, IPv6 zone ids, and numeric hosts that are not a plain IP
   address (``2130706433``, ``0x7f.1``, ``017700000001``). Then the host and
   port urllib would hand to http.client must be the ones ``urlsplit`` read,
   so that what is judged is what is connected to.
2. ``resolve_allowed`` / ``judge_address``: every address a name resolves
   to must be public. Private, loopback, link-local, multicast, reserved,
   unspecified and CGNAT (100.64/10) addresses, and IPv6 forms wrapping them
   (IPv4-mapped, 6to4, Teredo, NAT64), are refused unless allowed
   explicitly: loopback ones by the word ``loopback``, one address by an
   allowlist entry that is that IP literal. One refused answer refuses the
   host. ``check_recording_url(..., resolver=...)`` applies this gate too.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import urllib.parse
import urllib.request
from typing import Callable, Iterable

LOOPBACK_WORD = "loopback"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Resolves (host, port) to IP address strings; socket.getaddrinfo by default.
Resolver = Callable[[str, int], Iterable[str]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlNotAllowed(ValueError):
    """A recording_url the allowlist refuses (CONTRACT 6: 422 recording_url_not_allowed)."""


# ---------------------------------------------------------------- gate 1: the URL and its host


def is_loopback_host(host: str) -> bool:
    """True for the hosts the word ``loopback`` allows: localhost, 127.0.0.0/8, ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_recording_url(url: str, allow_upstream: tuple[str, ...], *, resolver: Resolver | None = None) -> None:
    """Raise UrlNotAllowed unless the URL may be downloaded (CONTRACT 6).

    Without ``resolver`` only the URL is judged (what a PUT can know);
    with one, every address its host resolves to is judged as well.
    """
    scheme, host, port = _checked_target(url, allow_upstream)
    if resolver is not None:
        resolve_allowed(host, port, allow_upstream, resolver)


def _checked_target(url: str, allow_upstream: tuple[str, ...]) -> tuple[str, str, int]:
    """(scheme, host, port) of an allowed URL, as urllib will connect to it; else UrlNotAllowed."""
    if not isinstance(url, str) or not url:
        raise UrlNotAllowed("recording_url is not a valid URL")
    # Characters that parsers disagree on (browsers read "\" as "/", urllib
    # strips whitespace and unquotes the host) or that have no place in a URL.
    if any(not ("!" <= c <= "~") for c in url):
        raise UrlNotAllowed("recording_url must be printable ASCII without spaces")
    if "\\" in url or "<" in url or ">" in url:
        raise UrlNotAllowed("recording_url must not contain backslashes or angle brackets")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlNotAllowed("recording_url is not a valid URL") from None
    scheme = parts.scheme
    if scheme not in DEFAULT_PORTS:
        raise UrlNotAllowed(f"recording_url must use https, not {scheme or 'no'} scheme")
    if "@" in parts.netloc:
        raise UrlNotAllowed("recording_url must not carry credentials")
    if "%" in parts.netloc:
        raise UrlNotAllowed("recording_url host must not be percent-encoded or carry an IPv6 zone id")
    host = (parts.hostname or "").lower()
    if not host:
        raise UrlNotAllowed("recording_url has no host")
    port = port if port is not None else DEFAULT_PORTS[scheme]
    # What urllib itself would hand to http.client, split as http.client splits it.
    try:
        request = urllib.request.Request(url)
        connection = http.client.HTTPConnection(request.host)  # splits host and port; connects nowhere
    except (ValueError, http.client.InvalidURL):
        raise UrlNotAllowed("recording_url is not a valid URL") from None
    # Both fall back to the scheme's port when the URL names none (http.client's
    # stand-in default here is 80).
    split_port = parts.port if parts.port is not None else http.client.HTTP_PORT
    if request.type != scheme or connection.host.lower() != host or connection.port != split_port:
        raise UrlNotAllowed("recording_url is read differently by different URL parsers")
    judge_host(scheme, host, allow_upstream)
    return scheme, host, port


def judge_host(scheme: str, host: str, allow_upstream: tuple[str, ...]) -> None:
    """Raise UrlNotAllowed unless ``scheme://host`` may be fetched (CONTRACT 6, exact host match)."""
    host = host.lower()
    literal = ip_literal(host)
    if literal is None and _looks_numeric(host):
        # 2130706433, 0x7f.1, 017700000001, 127.1: the C resolver reads these
        # as IPv4 addresses; only the plain dotted form is accepted.
        raise UrlNotAllowed(f"recording_url host {host!r} is not a plain IP address")
    loopback_allowed = LOOPBACK_WORD in allow_upstream and is_loopback_host(host)
    if scheme == "http" and not loopback_allowed:
        raise UrlNotAllowed("recording_url must use https")
    if scheme not in DEFAULT_PORTS:
        raise UrlNotAllowed("recording_url must use https")
    if loopback_allowed:
        return
    names, addresses = _allowlist(tuple(allow_upstream))
    if host in names or (literal is not None and literal in addresses):
        return
    raise UrlNotAllowed(f"recording_url host {host!r} is not in the allowed upstream hosts")


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally ("[::1]" or "::1" or "127.0.0.1"), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _looks_numeric(host: str) -> bool:
    # A name whose last label is a number is an IPv4 address to the resolver.
    last = host.rstrip(".").rpartition(".")[2]
    return last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:]))


@functools.lru_cache(maxsize=32)
def _allowlist(allow_upstream: tuple[str, ...]) -> tuple[frozenset[str], frozenset]:
    """The allowlist split into host names and IP literals (compared as addresses)."""
    names, addresses = set(), set()
    for entry in allow_upstream:
        entry = entry.strip().lower()
        literal = ip_literal(entry)
        if literal is not None:
            addresses.add(literal)
        elif entry and entry != LOOPBACK_WORD:
            names.add(entry)
    return frozenset(names), frozenset(addresses)


# ---------------------------------------------------------------- gate 2: the addresses


def resolve_allowed(host: str, port: int, allow_upstream: tuple[str, ...],
                    resolver: Resolver | None = None) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` resolves to, each judged; UrlNotAllowed if any is refused.

    One refused address refuses the host: a name that answers both public
    and private addresses is not trusted with either.
    """
    literal = ip_literal(host)
    if literal is not None:
        answers = [literal]
    else:
        answers = list((resolver or system_resolver)(host, port))
        if not answers:
            raise OSError(f"{host} has no address")
    addresses = []
    for answer in answers:
        address = answer if isinstance(answer, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else _parse_address(answer, host)
        judge_address(address, allow_upstream, host=host)
        addresses.append(address)
    return addresses


def _parse_address(text: str, host: str):
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise UrlNotAllowed(f"recording_url host {host!r} resolves to {text!r}, which is not an IP address") from None


def judge_address(address, allow_upstream: tuple[str, ...], *, host: str = "") -> None:
    """Raise UrlNotAllowed unless a connection to ``address`` is allowed."""
    if getattr(address, "scope_id", None):
        raise UrlNotAllowed(f"recording_url host {host!r} resolves to {address}, a scoped IPv6 address")
    plain = address.ipv4_mapped if address.version == 6 and address.ipv4_mapped else address
    if LOOPBACK_WORD in allow_upstream and plain.is_loopback:
        return
    listed_addresses = _allowlist(tuple(allow_upstream))[1]
    if address in listed_addresses or plain in listed_addresses:
        return
    if not is_public_address(address):
        raise UrlNotAllowed(f"recording_url host {host!r} resolves to {address}, which is not a public address")


def is_public_address(address) -> bool:
    """True for an address on the public internet; False for anything local or special."""
    if address.version == 6:
        embedded = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(inner is not None and not is_public_address(inner) for inner in embedded):
            return False
        if address.ipv4_mapped is not None:
            return True  # judged by the IPv4 address it wraps
    if address.version == 4 and address in _CGNAT:
        return False
    return address.is_global and not (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified)


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the operating system resolves ``host`` to, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for *_, sockaddr in infos:
        seen.setdefault(sockaddr[0], None)
    return list(seen)

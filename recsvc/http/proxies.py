"""Which reverse proxies to believe about the client: ``--trusted-proxies`` and RFC 7239 (CONTRACT 6).

Theory of operation. A peer that is not in ``--trusted-proxies`` is the
client, whatever headers it sends: ``Forwarded`` and ``X-Forwarded-*`` from
it are ignored, so nobody can choose the address in the log or the URL a
Twilio signature is checked against. From a trusted peer:

- the client is the rightmost address of the chain (``Forwarded: for=``,
  else ``X-Forwarded-For``; every line of the header, in order) that is not
  itself a trusted proxy, or the leftmost if all of them are;
- the scheme and host the client asked for are the ``proto=`` and ``host=``
  of that client's ``Forwarded`` element, else the last value of
  ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (the one the proxy nearest
  to recsvc set or passed on).

``Forwarded`` wins over ``X-Forwarded-*`` when both are sent. Pure: headers
in, a ``Forwarded`` view out; the transport asks only once per connection
whether its peer is trusted, so a direct client costs nothing per request.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

__all__ = ["ForwardedView", "TrustedProxies"]

_HOST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:%\[\]]+")  # RFC 9110 host[:port], as in a Host header


@dataclass(frozen=True)
class ForwardedView:
    """What a trusted proxy said about the client's request."""

    client: str  # the client's address (or the proxy's token for it, such as "unknown")
    scheme: str | None  # "http" or "https", when the proxy said
    host: str | None  # the Host the client sent to the proxy, when the proxy said


def _address(node: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of a node as proxies write it: 1.2.3.4, 1.2.3.4:80, [::1], [::1]:80, ::1; else None."""
    node = node.strip().strip('"')
    if node.startswith("["):
        node = node[1:].partition("]")[0]
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    try:
        address = ipaddress.ip_address(node)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_elements(values: list[str]) -> list[dict[str, str]]:
    """RFC 7239 4: comma-separated elements of ``;``-separated ``name=value`` pairs (values may be quoted)."""
    elements = []
    for value in values:
        for element in _split_outside_quotes(value, ","):
            pairs = {}
            for pair in _split_outside_quotes(element, ";"):
                name, equals, item = pair.partition("=")
                if equals:
                    item = item.strip()
                    if len(item) >= 2 and item[0] == item[-1] == '"':
                        item = item[1:-1].replace('\\"', '"')
                    pairs[name.strip().lower()] = item
            elements.append(pairs)
    return elements


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


class TrustedProxies:
    """The ``--trusted-proxies`` networks, and what their requests say about the client."""

    def __init__(self, networks: Iterable[str] = ()):
        self.networks = tuple(ipaddress.ip_network(network, strict=False) for network in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, peer: str) -> bool:
        address = _address(peer)
        return address is not None and any(address in network for network in self.networks)

    def view(self, headers: Iterable[tuple[str, str]]) -> ForwardedView | None:
        """What the headers of a request from a trusted peer say; None when they say nothing."""
        forwarded, chain, protos, hosts = [], [], [], []
        for name, value in headers:
            if name == "forwarded":
                forwarded.append(value)
            elif name == "x-forwarded-for":
                chain += [item.strip() for item in value.split(",") if item.strip()]
            elif name == "x-forwarded-proto":
                protos += [item.strip().lower() for item in value.split(",") if item.strip()]
            elif name == "x-forwarded-host":
                hosts += [item.strip() for item in value.split(",") if item.strip()]
        if forwarded:
            elements = _forwarded_elements(forwarded)
            if not elements:
                return None
            index = self._client_index([element.get("for", "unknown") for element in elements])
            element = elements[index]
            return ForwardedView(_client(element.get("for", "unknown")), _scheme(element.get("proto")),
                                 _host(element.get("host")))
        if not (chain or protos or hosts):
            return None
        client = _client(chain[self._client_index(chain)]) if chain else ""
        return ForwardedView(client, _scheme(protos[-1] if protos else None), _host(hosts[-1] if hosts else None))

    def _client_index(self, nodes: list[str]) -> int:
        """The rightmost node that is not a trusted proxy; the leftmost when all of them are."""
        for index in range(len(nodes) - 1, 0, -1):
            if not self.trusts(nodes[index]):
                return index
        return 0


_OBFUSCATED_NODE = re.compile(r"unknown|_[A-Za-z0-9._-]+")  # RFC 7239 6.2 and 6.3


def _client(node: str) -> str:
    """The client's address without port or brackets; "unknown" or an obfuscated name as it is,
    anything else as "unknown" (it goes into the access log as one field)."""
    address = _address(node)
    if address is not None:
        return str(address)
    node = node.strip().strip('"')
    return node if _OBFUSCATED_NODE.fullmatch(node) else "unknown"


def _scheme(value: str | None) -> str | None:
    value = (value or "").lower()
    return value if value in ("http", "https") else None


def _host(value: str | None) -> str | None:
    return value if value and _HOST.fullmatch(value) else None

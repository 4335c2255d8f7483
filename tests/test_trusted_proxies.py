"""CONTRACT 6, behind a reverse proxy: `Forwarded` (RFC 7239) and X-Forwarded-For/-Proto/-Host are
believed only from a --trusted-proxies peer, for the client address in the access log and for the
URL a Twilio signature is checked against; from anyone else they are ignored."""

from __future__ import annotations

import logging
import urllib.parse

import pytest
from conftest import wait_until

from recsvc.http.proxies import ForwardedView, TrustedProxies
from recsvc.contract.settings import parse_networks
from recsvc.contract.settings import SettingsError, load_settings
from recsvc.core.twilio import compute_signature

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-auth-token-1"
WEBHOOK = "/webhooks/twilio/recording-status"
PUBLIC_URL = "https://recordings.example.com" + WEBHOOK  # what Twilio was told, and signs


# ---------------------------------------------------------------- what the headers say


PROXIES = TrustedProxies(parse_networks("127.0.0.1, 10.0.0.0/8, ::1"))


@pytest.mark.parametrize("headers, expected", [
    pytest.param([("forwarded", "for=192.0.2.60;proto=https;host=example.com")],
                 ForwardedView("192.0.2.60", "https", "example.com"), id="forwarded"),
    pytest.param([("forwarded", 'for="[2001:db8:cafe::17]:4711";proto=http')],
                 ForwardedView("2001:db8:cafe::17", "http", None), id="forwarded ipv6 with port, quoted"),
    pytest.param([("forwarded", "For=192.0.2.60:8080;Proto=HTTPS;Host=\"example.com:8443\"")],
                 ForwardedView("192.0.2.60", "https", "example.com:8443"), id="forwarded names in any case"),
    pytest.param([("forwarded", "for=192.0.2.1;host=a.example, for=10.1.1.1;host=b.example")],
                 ForwardedView("192.0.2.1", None, "a.example"), id="forwarded chain: trusted hops skipped"),
    pytest.param([("forwarded", "for=192.0.2.1"), ("forwarded", "for=198.51.100.7;proto=https")],
                 ForwardedView("198.51.100.7", "https", None), id="forwarded: the rightmost untrusted hop"),
    pytest.param([("forwarded", "for=unknown;proto=https")], ForwardedView("unknown", "https", None),
                 id="forwarded for=unknown"),
    pytest.param([("forwarded", "for=_hidden-1")], ForwardedView("_hidden-1", None, None),
                 id="forwarded for an obfuscated name"),
    pytest.param([("forwarded", 'for="a b GET /admin 200"')], ForwardedView("unknown", None, None),
                 id="forwarded for something that is no node: unknown, never a log field of its own"),
    pytest.param([("x-forwarded-for", "evil\tname")], ForwardedView("unknown", None, None),
                 id="x-forwarded-for that is no address: unknown"),
    pytest.param([("forwarded", "for=192.0.2.60"), ("x-forwarded-for", "198.51.100.1")],
                 ForwardedView("192.0.2.60", None, None), id="forwarded wins over x-forwarded-for"),
    pytest.param([("x-forwarded-for", "203.0.113.9, 10.0.0.2"), ("x-forwarded-proto", "https"),
                  ("x-forwarded-host", "example.com")],
                 ForwardedView("203.0.113.9", "https", "example.com"), id="x-forwarded: trusted hop skipped"),
    pytest.param([("x-forwarded-for", "1.1.1.1, 203.0.113.9")], ForwardedView("203.0.113.9", None, None),
                 id="x-forwarded-for: a spoofed left entry is not the client"),
    pytest.param([("x-forwarded-for", "10.0.0.1, 10.0.0.2")], ForwardedView("10.0.0.1", None, None),
                 id="x-forwarded-for: all trusted, the leftmost"),
    pytest.param([("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "203.0.113.9")],
                 ForwardedView("203.0.113.9", None, None), id="x-forwarded-for on two lines"),
    pytest.param([("x-forwarded-proto", "gopher"), ("x-forwarded-host", "a b")], ForwardedView("", None, None),
                 id="a scheme or host that is no scheme or host is not believed"),
    pytest.param([("x-forwarded-proto", "http, https")], ForwardedView("", "https", None),
                 id="x-forwarded-proto: the last value"),
    pytest.param([("host", "x")], None, id="no forwarding headers"),
])
def test_a_trusted_proxys_headers_name_the_client(headers, expected):
    assert PROXIES.view(headers) == expected


@pytest.mark.parametrize("peer, trusted", [
    ("127.0.0.1", True), ("10.200.3.4", True), ("::1", True), ("::ffff:10.0.0.1", True),
    ("127.0.0.2", False), ("192.0.2.1", False), ("2001:db8::1", False), ("not-an-address", False),
])
def test_only_the_listed_addresses_and_networks_are_trusted(peer, trusted):
    assert PROXIES.trusts(peer) is trusted


def test_trusted_proxies_is_a_setting_with_a_flag_and_a_variable():
    assert load_settings({}, {}).trusted_proxies == ()
    assert load_settings({}, {"RECSVC_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"}).trusted_proxies == (
        "127.0.0.1/32", "10.0.0.0/8")
    assert load_settings({"trusted_proxies": "::1"}, {"RECSVC_TRUSTED_PROXIES": "10.0.0.1"}).trusted_proxies == (
        "::1/128",)
    with pytest.raises(SettingsError, match="--trusted-proxies names 'nginx'"):
        load_settings({"trusted_proxies": "127.0.0.1,nginx"}, {})


# ---------------------------------------------------------------- over HTTP


def register_twilio(svc) -> None:
    svc.business("acme")
    answer = svc.admin("PUT", "/admin/businesses/1/twilio", {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN})
    assert answer.status == 200, answer.body


def proxied_callback(svc, call_sid: str, forwarding: dict[str, str]):
    """A callback Twilio signed for PUBLIC_URL, as a proxy on 127.0.0.1 passes it on: Host is the backend's."""
    fields = {"AccountSid": ACCOUNT_SID, "CallSid": call_sid, "RecordingStatus": "absent"}
    return svc.request("POST", WEBHOOK, body=urllib.parse.urlencode(fields).encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": compute_signature(PUBLIC_URL, fields, AUTH_TOKEN), **forwarding})


FORWARDINGS = [
    pytest.param({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "recordings.example.com",
                  "X-Forwarded-For": "203.0.113.9"}, id="x-forwarded"),
    pytest.param({"Forwarded": "for=203.0.113.9;proto=https;host=recordings.example.com"}, id="forwarded"),
]


@pytest.mark.parametrize("forwarding", FORWARDINGS)
def test_behind_a_trusted_proxy_a_signed_callback_is_checked_against_the_public_url(make_harness, forwarding):
    svc = make_harness(trusted_proxies=("127.0.0.1/32",))
    register_twilio(svc)

    answer = proxied_callback(svc, "CAPROXY", forwarding)

    assert answer.status == 201, answer.body


@pytest.mark.parametrize("trusted", [pytest.param((), id="no trusted proxies"),
                                     pytest.param(("10.0.0.0/8",), id="another proxy trusted")])
@pytest.mark.parametrize("forwarding", FORWARDINGS)
def test_forwarding_headers_from_a_peer_that_is_not_trusted_are_ignored(make_harness, trusted, forwarding):
    svc = make_harness(trusted_proxies=trusted)
    register_twilio(svc)

    answer = proxied_callback(svc, "CAPROXY", forwarding)

    assert (answer.status, answer.json["error"]) == (403, "invalid_signature")


def access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "recsvc.access"]


@pytest.mark.parametrize("forwarding", FORWARDINGS)
def test_the_access_log_names_the_client_a_trusted_proxy_names(make_harness, caplog, forwarding):
    caplog.set_level(logging.INFO, logger="recsvc.access")
    svc = make_harness(trusted_proxies=("127.0.0.1",))

    assert svc.request("GET", "/healthz", headers=forwarding).status == 200

    assert wait_until(lambda: any(line.endswith("ms") and "/healthz" in line for line in access_lines(caplog)), 2)
    assert [line.split(" ")[0] for line in access_lines(caplog) if "/healthz" in line] == ["203.0.113.9"]


@pytest.mark.parametrize("forwarding", FORWARDINGS)
def test_the_access_log_names_the_peer_when_it_is_not_trusted(make_harness, caplog, forwarding):
    caplog.set_level(logging.INFO, logger="recsvc.access")
    svc = make_harness()

    assert svc.request("GET", "/healthz", headers=forwarding).status == 200

    assert wait_until(lambda: any("/healthz" in line for line in access_lines(caplog)), 2)
    assert [line.split(" ")[0] for line in access_lines(caplog) if "/healthz" in line] == ["127.0.0.1"]

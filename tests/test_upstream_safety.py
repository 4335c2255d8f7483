"""Upstream downloads are safe: only allowed URLs, hosts and addresses, one deadline, a size limit.

Every socket these tests open goes to loopback (an autouse guard fails any
other connect). Names that stand for remote hosts (api.twilio.com, evil.test)
are given addresses by an injected resolver, and each such test is refused
before it connects.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import socket
import ssl
import threading
import time

import pytest

from recsvc.core import upstream as upstream_module
from recsvc.demo.fake_upstream import FakeUpstream
from recsvc.contract.model import DOWNLOAD_FAILED, TOO_LARGE, UPSTREAM_AUTH_FAILED, UPSTREAM_NOT_FOUND
from recsvc.contract.settings import load_settings
from recsvc.core.upstream import MAX_REDIRECTS, Downloader, DownloadFailed, UrlNotAllowed, check_recording_url

TWILIO = ("api.twilio.com",)
LOOPBACK = ("loopback",)
WAV = b"RIFF" + (36).to_bytes(4, "little") + b"WAVEfmt " + bytes(200)
PUBLIC = "93.184.215.14"   # a global address; never connected to
SLACK = 0.5                # how far past its deadline a download may end


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any connect to an address that is not loopback."""
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        assert ipaddress.ip_address(host.partition("%")[0]).is_loopback, f"test tried to connect to {address}"
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def resolver(table: dict[str, str | list[str]]):
    """A resolver answering from ``table``; any other name does not exist."""
    def resolve(host: str, port: int) -> list[str]:
        answer = table.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the test's table")
        return [answer] if isinstance(answer, str) else list(answer)
    return resolve


LOCAL_NAMES = resolver({"localhost": "127.0.0.1"})


def downloader(allow=LOOPBACK, *, timeout: float = 2.0, max_bytes: int = 10_000, requests: int = 1,
               resolve=LOCAL_NAMES, **kwargs) -> Downloader:
    settings = load_settings({}, {}, allow_upstream=allow, download_timeout=timeout,
                             max_recording_bytes=max_bytes)
    return Downloader(settings, sleep=lambda s: None, backoff=0, resolver=resolve,
                      requests_per_download=requests, **kwargs)


def fails(dl: Downloader, url: str, headers=None) -> DownloadFailed:
    with pytest.raises(DownloadFailed) as raised:
        dl.download(url, io.BytesIO(), headers)
    return raised.value


@pytest.fixture
def second_host():
    """A second fake upstream on another loopback address: another host for redirects."""
    with FakeUpstream(host="127.0.0.2") as server:
        yield server


# ---------------------------------------------------------------- the URL (no resolution)

REFUSED_URLS = [
    pytest.param("http://api.twilio.com/x", TWILIO, id="http to a listed host (https only)"),
    pytest.param("ftp://api.twilio.com/x", TWILIO, id="ftp scheme"),
    pytest.param("file:///etc/passwd", LOOPBACK, id="file scheme"),
    pytest.param("data:audio/wav;base64,UklGRiQAAABXQVZF", LOOPBACK, id="data scheme"),
    pytest.param("//api.twilio.com/x", TWILIO, id="no scheme"),
    pytest.param("https://evil.test/x", TWILIO, id="unlisted host"),
    pytest.param("https://api.twilio.com.evil.test/x", TWILIO, id="listed host as a prefix of another"),
    pytest.param("https://evilapi.twilio.com/x", TWILIO, id="listed host as a suffix"),
    pytest.param("https://twilio.com/x", TWILIO, id="parent domain of a listed host"),
    pytest.param("https://api.twilio.com./x", TWILIO, id="trailing dot is another host"),
    pytest.param("https://evil.test#@api.twilio.com/", TWILIO, id="fragment hiding the real host"),
    pytest.param("https://evil.test?@api.twilio.com/", TWILIO, id="query hiding the real host"),
    pytest.param("https://api.twilio.com@evil.test/x", TWILIO, id="userinfo naming the listed host"),
    pytest.param("https://user:pw@api.twilio.com/x", TWILIO, id="credentials in the URL"),
    pytest.param("https://api.twilio.com\\@evil.test/x", TWILIO, id="backslash before userinfo"),
    pytest.param("https://evil.test\\.api.twilio.com/x", TWILIO, id="backslash in the host"),
    pytest.param("https://api%2etwilio.com/x", TWILIO, id="percent-encoded host"),
    pytest.param("https://evil.test%2f@api.twilio.com/x", TWILIO, id="percent-encoded slash before userinfo"),
    pytest.param("https://api.twilio.com\t/x", TWILIO, id="tab in the host"),
    pytest.param(" https://api.twilio.com/x", TWILIO, id="leading space"),
    pytest.param("https://api.twilio.com/x y", TWILIO, id="space in the path"),
    pytest.param("https://api.twilio.com/\u00e9", TWILIO, id="non-ASCII character"),
    pytest.param("https://xn--api-twilio.com/x", TWILIO, id="punycode look-alike"),
    pytest.param("<https://api.twilio.com/x>", TWILIO, id="URL in angle brackets"),
    pytest.param("https://api.twilio.com:99999/x", TWILIO, id="port out of range"),
    pytest.param("https://api.twilio.com:+443/x", TWILIO, id="signed port"),
    pytest.param("https://api.twilio.com:44 3/x", TWILIO, id="port with a space"),
    pytest.param("https:///x", TWILIO, id="no host"),
    pytest.param("", TWILIO, id="empty"),
    pytest.param("http://10.0.0.1/x", LOOPBACK, id="private IP literal over http"),
    pytest.param("https://169.254.169.254/latest/meta-data/", TWILIO, id="cloud metadata address"),
    pytest.param("http://[fe80::1%25lo]/x", LOOPBACK, id="IPv6 zone id"),
    pytest.param("http://[::ffff:127.0.0.1]/x", LOOPBACK, id="IPv4-mapped loopback over http"),
    pytest.param("http://2130706433/x", LOOPBACK, id="decimal IPv4 (127.0.0.1)"),
    pytest.param("http://0x7f.1/x", LOOPBACK, id="hex and short IPv4"),
    pytest.param("http://0x7f000001/x", LOOPBACK, id="hex IPv4"),
    pytest.param("http://017700000001/x", LOOPBACK, id="octal IPv4"),
    pytest.param("http://0177.0.0.1/x", LOOPBACK, id="octal dotted IPv4"),
    pytest.param("http://127.1/x", LOOPBACK, id="short IPv4"),
    pytest.param("http://0/x", LOOPBACK, id="zero as a host"),
    pytest.param("http://0.0.0.0/x", LOOPBACK, id="unspecified address"),
    pytest.param("https://2130706433/x", ("2130706433",), id="numeric name even when listed"),
    pytest.param("http://localhost.evil.test/x", LOOPBACK, id="localhost as a prefix"),
    pytest.param("http://api.twilio.com/x", TWILIO + LOOPBACK, id="loopback word does not allow http elsewhere"),
]


@pytest.mark.parametrize("url, allow", REFUSED_URLS)
def test_hostile_url_is_refused(url, allow):
    with pytest.raises(UrlNotAllowed):
        check_recording_url(url, allow)


ALLOWED_URLS = [
    pytest.param("https://api.twilio.com/2010-04-01/Recordings/RE1.wav", TWILIO, id="listed host over https"),
    pytest.param("HTTPS://API.Twilio.COM/x", TWILIO, id="scheme and host in any case"),
    pytest.param("https://api.twilio.com:8443/x", TWILIO, id="listed host on another port"),
    pytest.param("https://api.twilio.com/x?a=1#frag", TWILIO, id="query and fragment"),
    pytest.param("http://127.0.0.1:8080/x", LOOPBACK, id="loopback IPv4 over http"),
    pytest.param("http://127.9.9.9/x", LOOPBACK, id="anywhere in 127/8"),
    pytest.param("http://[::1]:8080/x", LOOPBACK, id="loopback IPv6 over http"),
    pytest.param("http://localhost:8080/x", LOOPBACK, id="localhost over http"),
    pytest.param("https://localhost/x", LOOPBACK, id="localhost over https"),
    pytest.param("https://10.0.0.5/x", ("10.0.0.5",), id="a listed IP literal"),
]


@pytest.mark.parametrize("url, allow", ALLOWED_URLS)
def test_allowed_url_passes(url, allow):
    check_recording_url(url, allow)


def test_a_refusal_says_which_host_was_refused():
    with pytest.raises(UrlNotAllowed, match="'evil.test' is not in the allowed upstream hosts"):
        check_recording_url("https://evil.test#@api.twilio.com/", TWILIO)


# ---------------------------------------------------------------- the addresses a name resolves to

REFUSED_ADDRESSES = [
    pytest.param("10.0.0.1", id="private 10/8"),
    pytest.param("172.16.5.4", id="private 172.16/12"),
    pytest.param("192.168.1.1", id="private 192.168/16"),
    pytest.param("127.0.0.1", id="loopback without the word loopback"),
    pytest.param("169.254.169.254", id="link-local (cloud metadata)"),
    pytest.param("100.64.0.1", id="CGNAT 100.64/10"),
    pytest.param("0.0.0.0", id="unspecified IPv4"),
    pytest.param("224.0.0.1", id="multicast IPv4"),
    pytest.param("240.0.0.1", id="reserved IPv4"),
    pytest.param("255.255.255.255", id="broadcast"),
    pytest.param("::1", id="loopback IPv6"),
    pytest.param("::", id="unspecified IPv6"),
    pytest.param("fe80::1", id="link-local IPv6"),
    pytest.param("fc00::1", id="unique local IPv6"),
    pytest.param("ff02::1", id="multicast IPv6"),
    pytest.param("::ffff:127.0.0.1", id="IPv4-mapped loopback"),
    pytest.param("::ffff:10.0.0.1", id="IPv4-mapped private"),
    pytest.param("::ffff:169.254.169.254", id="IPv4-mapped link-local"),
    pytest.param("2002:7f00:1::", id="6to4 wrapping loopback"),
    pytest.param("64:ff9b::a00:1", id="NAT64 wrapping a private address"),
    pytest.param([PUBLIC, "10.0.0.1"], id="one private answer among public ones"),
    pytest.param("not-an-address", id="an answer that is not an address"),
]


@pytest.mark.parametrize("answer", REFUSED_ADDRESSES)
def test_name_resolving_to_a_non_public_address_is_refused(answer):
    with pytest.raises(UrlNotAllowed):
        check_recording_url("https://api.twilio.com/x", TWILIO, resolver=resolver({"api.twilio.com": answer}))


@pytest.mark.parametrize("answer", [PUBLIC, "2606:4700::6810:84e5", f"::ffff:{PUBLIC}"])
def test_name_resolving_to_public_addresses_passes(answer):
    check_recording_url("https://api.twilio.com/x", TWILIO, resolver=resolver({"api.twilio.com": answer}))


def test_the_word_loopback_allows_loopback_addresses_only():
    names = resolver({"localhost": ["::1", "127.0.0.1"]})
    check_recording_url("http://localhost/x", LOOPBACK, resolver=names)
    with pytest.raises(UrlNotAllowed, match="10.0.0.1"):
        check_recording_url("http://localhost/x", LOOPBACK, resolver=resolver({"localhost": "10.0.0.1"}))


def test_an_ip_literal_in_the_allowlist_allows_exactly_that_address():
    allow = ("api.twilio.com", "10.0.0.5")
    check_recording_url("https://10.0.0.5/x", allow, resolver=LOCAL_NAMES)
    check_recording_url("https://api.twilio.com/x", allow, resolver=resolver({"api.twilio.com": "10.0.0.5"}))
    with pytest.raises(UrlNotAllowed):
        check_recording_url("https://api.twilio.com/x", allow, resolver=resolver({"api.twilio.com": "10.0.0.6"}))


@pytest.mark.parametrize("answer", ["10.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "127.0.0.1"])
def test_download_is_refused_before_connecting(answer):
    # The loopback_only guard would fail the test on a connect to 10.0.0.1.
    failure = fails(downloader(TWILIO, resolve=resolver({"api.twilio.com": answer})), "https://api.twilio.com/x")
    assert failure.code == DOWNLOAD_FAILED
    assert "not a public address" in failure.message


def test_dns_rebinding_between_check_and_connect_is_refused(upstream):
    answers = iter([PUBLIC, "127.0.0.1"])
    rebinding = lambda host, port: [next(answers)]  # noqa: E731 - public first, loopback next
    port = int(upstream.base_url.rsplit(":", 1)[1])
    url = f"https://api.twilio.com:{port}/rec.wav"
    upstream.set("/rec.wav", body=WAV)
    check_recording_url(url, TWILIO, resolver=rebinding)
    failure = fails(downloader(TWILIO, resolve=rebinding), url)
    assert (failure.code, upstream.hits("/rec.wav")) == (DOWNLOAD_FAILED, 0)
    assert "127.0.0.1" in failure.message


def test_the_peer_reached_must_be_the_checked_address(upstream, monkeypatch):
    url = upstream.set("/rec.wav", body=WAV)
    monkeypatch.setattr(socket.socket, "getpeername", lambda sock: ("127.0.0.9", 1))
    failure = fails(downloader(), url)
    assert failure.code == DOWNLOAD_FAILED and "instead of the checked address" in failure.message


def test_tls_verifies_the_certificate_against_the_host_name(upstream):
    """Connected to 127.0.0.1 by address, the handshake still names (and verifies) "localhost"."""
    server_hostnames = []

    class RecordingContext(ssl.SSLContext):
        def wrap_socket(self, sock, *args, **kwargs):
            server_hostnames.append(kwargs.get("server_hostname"))
            return super().wrap_socket(sock, *args, **kwargs)

    context = RecordingContext(ssl.PROTOCOL_TLS_CLIENT)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    port = int(upstream.base_url.rsplit(":", 1)[1])
    failure = fails(downloader(ssl_context=context), f"https://localhost:{port}/rec.wav")
    assert server_hostnames == ["localhost"]
    assert failure.code == DOWNLOAD_FAILED  # the fake upstream speaks no TLS


def test_plain_http_never_loads_a_trust_store(upstream, monkeypatch):
    built = []
    monkeypatch.setattr(upstream_module, "_default_context", None)
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: built.append(1))
    url = upstream.set("/plain.wav", body=WAV)
    got = downloader().download(url, io.BytesIO())
    assert got.size == len(WAV) and built == []


def test_threads_meeting_their_first_https_url_together_share_one_context(monkeypatch):
    built = []

    def slow_build():  # wide enough for every thread to arrive while the first builds
        time.sleep(0.05)
        built.append(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        return built[-1]

    monkeypatch.setattr(upstream_module, "_default_context", None)
    monkeypatch.setattr(ssl, "create_default_context", slow_build)
    dl = downloader()
    got, gate = [], threading.Barrier(16)

    def first_https():
        gate.wait()
        got.append(dl.tls_context())

    threads = [threading.Thread(target=first_https) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and len(got) == 16 and all(context is built[0] for context in got)


# ---------------------------------------------------------------- redirects


def test_a_redirect_to_an_allowed_url_is_followed(upstream):
    final = upstream.set("/final.wav", body=WAV)
    url = upstream.set("/moved", status=302, headers={"Location": final})
    got = downloader().download(url, io.BytesIO())
    assert (got.size, upstream.hits("/moved"), upstream.hits("/final.wav")) == (len(WAV), 1, 1)


@pytest.mark.parametrize("hops, allowed", [(MAX_REDIRECTS, True), (MAX_REDIRECTS + 1, False)],
                         ids=["5 redirects are followed", "6 redirects are refused"])
def test_redirects_are_limited(upstream, hops, allowed):
    url = upstream.set("/final.wav", body=WAV)
    for hop in range(hops, 0, -1):
        url = upstream.set(f"/hop{hop}", status=302, headers={"Location": url})
    dl = downloader()
    if allowed:
        assert dl.download(url, io.BytesIO()).size == len(WAV)
    else:
        failure = fails(dl, url)
        assert failure.code == DOWNLOAD_FAILED and "more than 5 redirects" in failure.message
        assert upstream.hits("/final.wav") == 0


@pytest.mark.parametrize("location", [
    pytest.param("https://evil.test/rec.wav", id="unlisted host"),
    pytest.param("//evil.test/rec.wav", id="scheme-relative unlisted host"),
    pytest.param("http://api.twilio.com/rec.wav", id="listed host over http"),
    pytest.param("http://10.0.0.1/rec.wav", id="private address"),
    pytest.param("http://169.254.169.254/latest/meta-data/", id="cloud metadata"),
    pytest.param("http://2130706433/rec.wav", id="decimal IPv4"),
    pytest.param("file:///etc/passwd", id="file scheme"),
    pytest.param("data:audio/wav;base64,UklGRiQAAABXQVZF", id="data scheme"),
    pytest.param("ftp://127.0.0.1/rec.wav", id="ftp scheme"),
    pytest.param("http://user:pw@127.0.0.1/rec.wav", id="credentials in the Location"),
])
def test_a_redirect_to_a_refused_url_fails_the_download(upstream, location):
    url = upstream.set("/moved", status=302, headers={"Location": location})
    failure = fails(downloader(TWILIO + LOOPBACK), url)
    assert failure.code == DOWNLOAD_FAILED
    assert failure.message.startswith("redirect refused")


def test_each_hop_address_is_checked_at_connect(upstream):
    port = int(upstream.base_url.rsplit(":", 1)[1])
    url = upstream.set("/moved", status=302, headers={"Location": f"http://localhost:{port}/rec.wav"})
    upstream.set("/rec.wav", body=WAV)
    failure = fails(downloader(resolve=resolver({"localhost": "10.0.0.1"})), url)
    assert failure.code == DOWNLOAD_FAILED and "10.0.0.1" in failure.message
    assert upstream.hits("/rec.wav") == 0


BASIC = "Basic " + base64.b64encode(b"ACxxx:secret").decode()


def test_authorization_is_kept_on_the_same_host(upstream):
    final = upstream.set("/final.wav", body=WAV)
    url = upstream.set("/moved", status=302, headers={"Location": final})
    downloader().download(url, io.BytesIO(), {"Authorization": BASIC})
    assert upstream.requests("/final.wav")[0]["headers"].get("Authorization") == BASIC


def _header_names(request: dict) -> set[str]:
    return {name.lower() for name in request["headers"]}


def test_authorization_is_not_sent_to_another_host(upstream, second_host):
    final = second_host.set("/final.wav", body=WAV)
    url = upstream.set("/moved", status=302, headers={"Location": final})
    downloader().download(url, io.BytesIO(), {"Authorization": BASIC})
    assert upstream.requests("/moved")[0]["headers"].get("Authorization") == BASIC
    assert "authorization" not in _header_names(second_host.requests("/final.wav")[0])


def test_authorization_is_not_sent_to_another_name_of_the_same_server(upstream):
    port = int(upstream.base_url.rsplit(":", 1)[1])
    upstream.set("/final.wav", body=WAV)
    url = upstream.set("/moved", status=302, headers={"Location": f"http://localhost:{port}/final.wav"})
    downloader().download(url, io.BytesIO(), {"Authorization": BASIC})
    assert "authorization" not in _header_names(upstream.requests("/final.wav")[0])


def test_authorization_stays_dropped_when_a_redirect_comes_back(upstream, second_host):
    final = upstream.set("/final.wav", body=WAV)
    away = second_host.set("/away", status=302, headers={"Location": final})
    url = upstream.set("/moved", status=302, headers={"Location": away})
    downloader().download(url, io.BytesIO(), {"Authorization": BASIC})
    assert "authorization" not in _header_names(upstream.requests("/final.wav")[0])


# ---------------------------------------------------------------- one deadline per request


def _trickling_head_server():
    """A loopback server that sends a response head one byte every 50 ms, for about 4 s in all."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                head = b"HTTP/1.0 200 OK\r\n" + b"X-Slow: " + b"a" * 60 + b"\r\n\r\n"
                for byte in head:
                    if stop.wait(0.05):
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, stop, thread


@pytest.fixture
def trickling_head():
    listener, stop, thread = _trickling_head_server()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/rec.wav"
    stop.set()
    thread.join(2)
    listener.close()


def _timed_failure(dl: Downloader, url: str) -> tuple[DownloadFailed, float]:
    started = time.monotonic()
    failure = fails(dl, url)
    return failure, time.monotonic() - started


def test_a_head_trickled_a_byte_at_a_time_ends_at_the_deadline(trickling_head):
    failure, elapsed = _timed_failure(downloader(timeout=1.0), trickling_head)
    assert failure.code == DOWNLOAD_FAILED and "longer than 1s" in failure.message
    assert elapsed < 1.0 + SLACK


def test_an_upstream_silent_after_accepting_ends_at_the_deadline(upstream):
    url = upstream.set("/rec.wav", body=WAV, hang=True)
    failure, elapsed = _timed_failure(downloader(timeout=1.0), url)
    assert failure.code == DOWNLOAD_FAILED and "longer than 1s" in failure.message
    assert 1.0 - 0.05 <= elapsed < 1.0 + SLACK


def test_a_slow_body_ends_at_the_deadline(upstream):
    url = upstream.set("/rec.wav", body=WAV * 20, chunk_size=64, chunk_delay=0.1)
    failure, elapsed = _timed_failure(downloader(timeout=1.0, max_bytes=1_000_000), url)
    assert failure.code == DOWNLOAD_FAILED and "longer than 1s" in failure.message
    assert elapsed < 1.0 + SLACK


def test_redirect_hops_share_one_deadline(upstream):
    final = upstream.set("/final.wav", body=WAV, delay=0.7)
    url = upstream.set("/moved", status=302, headers={"Location": final}, delay=0.7)
    failure, elapsed = _timed_failure(downloader(timeout=1.0), url)
    assert "longer than 1s" in failure.message and elapsed < 1.0 + SLACK


def test_slow_name_resolution_counts_against_the_deadline(upstream):
    def slow(host, port):
        time.sleep(3)
        return ["127.0.0.1"]

    failure, elapsed = _timed_failure(downloader(timeout=1.0, resolve=slow), "http://localhost:1/rec.wav")
    assert "longer than 1s" in failure.message and elapsed < 1.0 + SLACK


def test_a_timed_out_download_is_tried_three_times(upstream):
    url = upstream.set("/rec.wav", body=WAV, hang=True)
    failure, elapsed = _timed_failure(downloader(timeout=0.5, requests=3), url)
    assert failure.code == DOWNLOAD_FAILED and "after 3 requests" in failure.message
    assert upstream.hits("/rec.wav") == 3
    assert elapsed < 3 * 0.5 + SLACK


# ---------------------------------------------------------------- size, counted while reading


def _chunked(body: bytes, size: int = 100) -> bytes:
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_an_announced_length_over_the_limit_is_too_large(upstream):
    url = upstream.set("/rec.wav", body=WAV, headers={"Content-Length": "20000"})
    assert fails(downloader(max_bytes=10_000), url).code == TOO_LARGE


@pytest.mark.parametrize("length", ["junk", "-1", "10, 10"], ids=["not a number", "negative", "doubled"])
def test_a_bad_content_length_does_not_lift_the_limit(upstream, length):
    url = upstream.set("/rec.wav", body=WAV * 100, headers={"Content-Length": length})
    assert fails(downloader(max_bytes=10_000), url).code == TOO_LARGE


def test_a_chunked_body_over_the_limit_is_too_large(upstream):
    url = upstream.set("/rec.wav", body=_chunked(WAV * 100), headers={"Transfer-Encoding": "chunked"})
    assert fails(downloader(max_bytes=10_000), url).code == TOO_LARGE


def test_a_chunked_body_with_a_small_content_length_is_still_counted(upstream):
    url = upstream.set("/rec.wav", body=_chunked(WAV * 100),
                       headers={"Transfer-Encoding": "chunked", "Content-Length": "10"})
    assert fails(downloader(max_bytes=10_000), url).code == TOO_LARGE


def test_a_chunked_body_within_the_limit_is_downloaded(upstream):
    url = upstream.set("/rec.wav", body=_chunked(WAV * 10), headers={"Transfer-Encoding": "chunked"})
    dest = io.BytesIO()
    assert downloader(max_bytes=10_000).download(url, dest).size == len(WAV) * 10
    assert dest.getvalue() == WAV * 10


def test_a_body_shorter_than_its_content_length_is_not_a_recording(upstream):
    url = upstream.set("/rec.wav", body=WAV, headers={"Content-Length": str(len(WAV) + 100)})
    failure = fails(downloader(requests=2), url)
    assert failure.code == DOWNLOAD_FAILED and "ended 100 bytes early" in failure.message
    assert upstream.hits("/rec.wav") == 2


def test_a_chunked_body_cut_short_is_not_a_recording(upstream):
    url = upstream.set("/rec.wav", body=_chunked(WAV * 10)[:-200], headers={"Transfer-Encoding": "chunked"})
    assert fails(downloader(), url).code == DOWNLOAD_FAILED


def test_a_body_exactly_at_the_limit_is_downloaded(upstream):
    url = upstream.set("/rec.wav", body=WAV)
    assert downloader(max_bytes=len(WAV)).download(url, io.BytesIO()).size == len(WAV)


# ---------------------------------------------------------------- upstream answers -> job codes (CONTRACT 4)


@pytest.mark.parametrize("status, code", [
    (404, UPSTREAM_NOT_FOUND), (410, UPSTREAM_NOT_FOUND),
    (401, UPSTREAM_AUTH_FAILED), (403, UPSTREAM_AUTH_FAILED),
    (400, DOWNLOAD_FAILED),
], ids=["404 not found", "410 gone", "401 unauthorized", "403 forbidden", "400 other error"])
def test_upstream_status_maps_to_its_job_code(upstream, status, code):
    url = upstream.set("/rec.wav", status=status, body=b"no", content_type="text/plain")
    assert fails(downloader(requests=3), url).code == code
    assert upstream.hits("/rec.wav") == 1


def test_a_refused_connection_is_tried_three_times():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    failure = fails(downloader(requests=3), f"http://127.0.0.1:{port}/rec.wav")
    assert failure.code == DOWNLOAD_FAILED and "after 3 requests" in failure.message


def test_a_refused_url_is_not_retried(upstream):
    url = upstream.set("/moved", status=302, headers={"Location": "file:///etc/passwd"})
    fails(downloader(requests=3), url)
    assert upstream.hits("/moved") == 1


# ---------------------------------------------------------------- through the service (CONTRACT 4 and 6)


@pytest.mark.parametrize("url", ["http://2130706433/rec.wav", "http://127.0.0.1\\@evil.test/rec.wav",
                                 "http://[::ffff:127.0.0.1]/rec.wav", "file:///etc/passwd"],
                         ids=["decimal IPv4", "backslash", "IPv4-mapped loopback", "file scheme"])
def test_put_call_with_a_hostile_url_is_422(svc, url):
    answer = svc.put_call(svc.business(), "CA1", url)
    assert (answer.status, answer.json["error"]) == (422, "recording_url_not_allowed")


def test_a_job_redirected_to_a_refused_url_fails_download_failed(svc, upstream):
    token = svc.business()
    url = upstream.set("/moved", status=302, headers={"Location": "file:///etc/passwd"})
    assert svc.put_call(token, "CA1", url).status == 201
    assert svc.play(token, "CA1").status == 202
    job = svc.wait_for_job("CA1")
    assert (job["status"], job["error_code"]) == ("failed", DOWNLOAD_FAILED)
    assert job["error_message"].startswith("redirect refused")

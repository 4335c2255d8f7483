"""recsvc behind the real nginx and HAProxy, configured exactly as docs/deploy.md says.

Each configuration block is read from docs/deploy.md (the block after
``<!-- tested: nginx -->`` or ``<!-- tested: haproxy -->``); only its listening
port and recsvc's address are replaced by free loopback ports, and a
replacement that does not match exactly once fails the test, so the document
and the tests cannot drift apart. Through each proxy: a recording played whole
and by range over kept-alive backend connections, a held ``Prefer: wait``
request, a player giving up on a held request (how long until recsvc lets
go, measured), a Twilio callback signed for the public URL (believed through
``--trusted-proxies``), and for HAProxy its health check of /readyz.

The proxies are Debian's nginx-light and haproxy; without them the tests
skip, saying so, and CI (RECSVC_REQUIRE_EXTERNAL=1) turns that skip into a
failure.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse

import pytest
from conftest import wait_until
from conftest import request as http_request
from rawhttp import connect, parse_answer, read_until_closed, request_bytes

from recsvc.demo.audio import sized_wav
from recsvc.contract.settings import Settings
from recsvc.core.twilio import compute_signature
from tools.cluster import doc_block, nginx_config, replace_once
from tools.redis_server import free_port

PROGRAMS = {"nginx": "/usr/sbin/nginx", "haproxy": "/usr/sbin/haproxy"}
PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy"}
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-auth-token-1"
WEBHOOK = "/webhooks/twilio/recording-status"


def program(name: str) -> str | None:
    """The proxy's binary: /usr/sbin may not be on PATH, so look there first."""
    path = PROGRAMS[name]
    return path if os.access(path, os.X_OK) else shutil.which(name)


class Proxy:
    """nginx or HAProxy in the foreground, on a free loopback port, in front of ``backend_port``."""

    def __init__(self, name: str, workdir, backend_port: int):
        self.name = name
        self.port = free_port()
        self.workdir = workdir
        binary = program(name)
        block = doc_block(name, name)
        if name == "nginx":
            block = replace_once(block, "listen 80;", f"listen 127.0.0.1:{self.port};")
            block = replace_once(block, "server 127.0.0.1:8080 ", f"server 127.0.0.1:{backend_port} ")
            config = nginx_config(block, workdir)  # only the frame: where nginx keeps its files
            path = workdir / "nginx.conf"
            path.write_text(config)
            command = [binary, "-p", str(workdir), "-c", str(path)]
        else:
            block = replace_once(block, "bind :80", f"bind 127.0.0.1:{self.port}")
            block = replace_once(block, "127.0.0.1:8080 ", f"127.0.0.1:{backend_port} ")
            path = workdir / "haproxy.cfg"
            path.write_text(f"global\n    maxconn 512\n\n{block}\n")
            checked = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            command = [binary, "-db", "-f", str(path)]
        self.log = open(workdir / f"{name}.out", "wb")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_until(self._listening, 10):
            self.stop()
            raise AssertionError(f"{name} did not start: {(workdir / f'{name}.out').read_text()[-2000:]}")

    def _listening(self) -> bool:
        assert self.proc.poll() is None, f"{self.name} exited: {(self.workdir / f'{self.name}.out').read_text()}"
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture
def make_proxied(hanging, tmp_path):
    """``make_proxied(name)``: (recsvc harness, the proxy in front of it), recsvc trusting 127.0.0.1."""
    proxies = []

    def start(name: str):
        if program(name) is None:
            pytest.skip(f"{name} is not installed: apt-get install {PACKAGES[name]}")
        svc = hanging(trusted_proxies=("127.0.0.1",), max_wait=30, heartbeat_interval=0.5)
        workdir = tmp_path / name
        workdir.mkdir()
        proxy = Proxy(name, workdir, svc.app.address[1])
        proxies.append(proxy)
        return svc, proxy

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture(params=["nginx", "haproxy"])
def proxied(request, make_proxied):
    return make_proxied(request.param)


def through(proxy: Proxy, method: str, path: str, *, token: str | None = None, body=None, headers=None):
    return http_request(proxy.base_url, method, path, token=token, body=body, headers=headers, timeout=40)


def recording_call(svc, token: str, call_sid: str, size: int = 200_000) -> bytes:
    audio = sized_wav(size, seed=call_sid)
    url = svc.upstream.set(f"/{call_sid}.wav", body=audio)
    assert svc.put_call(token, call_sid, url).status == 201
    return audio


def test_a_recording_plays_whole_and_by_range_over_kept_alive_backend_connections(proxied):
    svc, proxy = proxied
    token = svc.business()
    audio = recording_call(svc, token, "CAPROXY")
    assert through(proxy, "GET", "/healthz").status == 200  # a backend connection is open now
    accepted = count_backend_connections(svc)

    first = through(proxy, "GET", "/api/recordings/file/CAPROXY", token=token, headers={"Prefer": "wait=10"})
    ranged = through(proxy, "GET", "/api/recordings/file/CAPROXY", token=token, headers={"Range": "bytes=1000-1999"})
    tail = through(proxy, "GET", "/api/recordings/file/CAPROXY", token=token, headers={"Range": "bytes=-100"})
    unchanged = through(proxy, "GET", "/api/recordings/file/CAPROXY", token=token,
                        headers={"If-None-Match": first.header("etag")})

    assert (first.status, first.body) == (200, audio)
    assert (ranged.status, ranged.body) == (206, audio[1000:2000])
    assert ranged.header("content-range") == f"bytes 1000-1999/{len(audio)}"
    assert (tail.status, tail.body) == (206, audio[-100:])
    assert unchanged.status == 304
    # Four client connections, one after another; the proxy reused its connection to recsvc
    # (one more may be HAProxy's health check).
    assert len(accepted) <= 1, f"recsvc accepted {len(accepted)} connections for 4 proxied requests"


def count_backend_connections(svc) -> list:
    """The peers recsvc accepts from now on (the real server's accept, counted on the way)."""
    accepted = []
    server = svc.app.http
    accept = server.get_request

    def counted():
        sock, address = accept()
        accepted.append(address)
        return sock, address

    server.get_request = counted
    return accepted


def test_a_held_request_is_held_through_the_proxy_and_answered(proxied):
    svc, proxy = proxied
    token = svc.business()
    url = svc.upstream.set("/held.wav", body=sized_wav(2000, seed="held"), hang=True)
    assert svc.put_call(token, "CAHELD", url).status == 201

    started = time.monotonic()
    answer = through(proxy, "GET", "/api/recordings/file/CAHELD", token=token, headers={"Prefer": "wait=2"})
    held = time.monotonic() - started

    assert answer.status == 202 and answer.header("preference-applied") == "wait=2", answer.body
    assert 1.8 <= held < 6, held


def test_the_documented_timeouts_outlast_the_longest_default_hold():
    longest_hold = Settings().max_wait
    nginx = int(re.search(r"proxy_read_timeout (\d+)s;", doc_block("nginx", "nginx"))[1])
    haproxy = int(re.search(r"timeout server (\d+)s", doc_block("haproxy", "haproxy"))[1])
    assert min(nginx, haproxy) >= longest_hold + 10


def test_a_player_giving_up_on_a_held_request_frees_it_in_recsvc(proxied):
    svc, proxy = proxied
    token = svc.business()
    url = svc.upstream.set("/gone.wav", body=sized_wav(2000, seed="gone"), hang=True)
    assert svc.put_call(token, "CAGONE", url).status == 201
    player = connect(("127.0.0.1", proxy.port))
    player.sendall(request_bytes("GET", "/api/recordings/file/CAGONE", token=token, headers=(("Prefer", "wait=30"),)))
    assert wait_until(lambda: svc.app.waiters.held_count() == 1, 5), "the request was not held"

    player.close()
    left = time.monotonic()
    freed = wait_until(lambda: svc.app.waiters.held_count() == 0, 10)
    seconds = time.monotonic() - left

    print(f"\n{proxy.name}: a player that gave up on a held request was let go by recsvc after {seconds:.2f}s")
    assert freed and seconds < 3, f"recsvc still held the request {seconds:.1f}s after the player left"


def test_a_twilio_callback_signed_for_the_public_url_is_accepted(proxied):
    svc, proxy = proxied
    svc.business("acme")
    assert svc.admin("PUT", "/admin/businesses/1/twilio",
                     {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN}).status == 200
    public_url = proxy.base_url + WEBHOOK  # what Twilio was given: the proxy's address, not recsvc's
    fields = {"AccountSid": ACCOUNT_SID, "CallSid": "CATWPROXY", "RecordingStatus": "absent"}
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Twilio-Signature": compute_signature(public_url, fields, AUTH_TOKEN)}

    answer = through(proxy, "POST", WEBHOOK, body=urllib.parse.urlencode(fields).encode(), headers=headers)
    direct = svc.request("POST", WEBHOOK, body=urllib.parse.urlencode(fields).encode(), headers=headers)

    assert answer.status == 201, answer.body
    assert (direct.status, direct.json["error"]) == (403, "invalid_signature"), \
        "the same callback sent to recsvc's own address is not signed for it"


def test_haproxy_checks_readyz(make_proxied, caplog):  # nginx (open source) has no active health checks
    caplog.set_level(logging.INFO, logger="recsvc.access")
    svc, proxy = make_proxied("haproxy")

    def checked() -> bool:
        return any(" GET /readyz 200 " in r.getMessage() for r in caplog.records if r.name == "recsvc.access")

    assert wait_until(checked, 6), "HAProxy never asked /readyz"
    assert through(proxy, "GET", "/healthz").status == 200


def test_a_chunked_put_passes_through(proxied):
    svc, proxy = proxied
    token = svc.business()
    body = b'{"recording_url": null}'
    data = (f"PUT /api/calls/CACHUNKED HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    data += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with connect(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(data)
        answer = parse_answer(read_until_closed(sock, 10))
    assert answer.status == 201, answer.raw[:300]
    assert svc.request("GET", "/api/calls/CACHUNKED", token=token).status == 200

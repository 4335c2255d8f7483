"""A bounded, seeded fuzz of a whole recsvc on 127.0.0.1: random and mutated requests.

CONTRACT 6: whatever arrives, the answer is an HTTP/1.1 response (JSON when
it is an error), never a 500 internal_error and never a traceback; the
server keeps answering /healthz, its threads go back to where they were, and
its log holds no traceback. RECSVC_FUZZ_SEED and RECSVC_FUZZ_INPUTS pick the
inputs; the run stops at FUZZ_SECONDS whatever the count.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

from rawhttp import exchange, request_bytes
from recsvc.demo.audio import sized_wav

SEED = int(os.environ.get("RECSVC_FUZZ_SEED", "6006"))
INPUTS = int(os.environ.get("RECSVC_FUZZ_INPUTS", "5000"))
FUZZ_SECONDS = 20.0

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "get", "G\x00T", "BREW",
           "M" * 300, "", "GET GET"]
PATHS = ["/", "/healthz", "/readyz", "/metrics", "/player", "/player.js", "/static/index.html", "/static/x.js",
         "/api/calls/{sid}", "/api/recordings/file/{sid}", "/api/recordings/{sid}/link", "/admin/businesses",
         "/admin/workers/pause", "/admin/workers/resume", "/admin/cleanup", "/admin/jobs?call_sid={sid}",
         "/admin/retry-counters/1/{sid}", "/admin/retry-counters/x/{sid}", "/nowhere", "*", "http://x/healthz",
         "/api/recordings/file/{sid}?exp=1&sig=00", "/api/recordings/file/{sid}?exp=99999999999&sig=zz&sig=yy"]
SIDS = ["CA1", "CAF0", "%00", "%2e%2e%2f", "..%2f..%2fetc%2fpasswd", "CA%20x", "a" * 64, "a" * 65, "", "%ff%fe",
        "\xe9", "CA1/../CA2", "CA1;x", "%", "%%", "CA1%0d%0aX:1"]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.10", "http/1.1", "HTTP/1", "", "HTTP/1.1 x"]
HEADERS = [
    ("Content-Length", ["0", "5", "-1", "abc", "99999999999999999999", "65537", " 3", "3 ", "0x5", "1,1"]),
    ("Transfer-Encoding", ["chunked", "identity", "gzip, chunked"]),
    ("Connection", ["close", "keep-alive", "upgrade", ""]),
    ("Expect", ["100-continue", "nonsense"]),
    ("Range", ["bytes=0-10", "bytes=-5", "bytes=5-1", "bytes=0-0,2-3", "bytes=99999999-", "bytes=x", "items=0-1"]),
    ("If-None-Match", ['"abc"', "*", "W/\"x\"", '"' * 40]),
    ("If-Modified-Since", ["Sun, 06 Nov 1994 08:49:37 GMT", "yesterday", ""]),
    ("If-Range", ['"abc"', "Sun, 06 Nov 1994 08:49:37 GMT"]),
    ("Prefer", ["wait=1", "wait=0", "wait=-1", "wait=99999999999", "wait", "respond-async, wait=1"]),
    ("Authorization", ["Bearer", "Bearer ", "Basic abc", "bearer {token}", "Bearer {token}", "Bearer {admin}",
                       "Bearer {token} extra", "Bearer \xff"]),
    ("Host", ["", "x" * 9000, "a b"]),
    ("X-Junk", ["\x01", "ok", "\t", "v" * 100]),
    (" Leading", ["space"]),
    ("Bad Name", ["x"]),
    ("Name", ["folded\r\n continuation"]),
]
JSON_BODIES = ['{"recording_url": null}', '{"recording_url": "{url}"}', '{"recording_url": ""}', '{"name": "n"}',
               '{"name": ""}', "[]", "null", "{", '{"recording_url": 5}', '{"recording_url": "ftp://x/y"}',
               '{"recording_url": "http://10.0.0.1/x"}', "\xff\xfe", '{"name": "' + "n" * 300 + '"}']
MUTATIONS = ("flip", "insert", "delete", "duplicate", "truncate", "crlf", "nul", "space", "percent")


class Fuzzer:
    def __init__(self, rng: random.Random, token: str, admin: str, upstream_url: str):
        self.rng = rng
        self.fill = {"token": token, "admin": admin}
        self.upstream_url = upstream_url

    def pick(self, options):
        return self.rng.choice(options)

    def text(self, template: str) -> str:
        return template.replace("{sid}", self.pick(SIDS)).replace("{token}", self.fill["token"]) \
            .replace("{admin}", self.fill["admin"]).replace("{url}", self.upstream_url + f"/f{self.rng.randrange(9)}.wav")

    def valid(self) -> bytes:
        """A request recsvc could well receive, with a valid sid and credentials most of the time."""
        path = self.pick(PATHS).replace("{sid}", self.pick(["CA1", "CAF0", "CAF1"]))
        method = self.pick(["GET", "GET", "HEAD", "PUT", "POST"])
        token = self.pick([self.fill["token"], self.fill["admin"], None])
        body = self.text(self.pick(JSON_BODIES)).encode("utf-8", "surrogateescape") if method in ("PUT", "POST") else None
        return request_bytes(method, path, token=token, body=body)

    def composed(self) -> bytes:
        line = f"{self.pick(METHODS)} {self.text(self.pick(PATHS))} {self.pick(VERSIONS)}"
        headers = ["Host: 127.0.0.1"] if self.rng.random() < 0.8 else []
        for _ in range(self.rng.randrange(6)):
            name, values = self.pick(HEADERS)
            headers.append(f"{name}: {self.text(self.pick(values))}")
        body = ""
        if self.rng.random() < 0.4:
            body = self.text(self.pick(JSON_BODIES))
            framing = self.rng.random()
            if framing < 0.6:
                headers.append(f"Content-Length: {len(body.encode('utf-8', 'surrogateescape'))}")
            elif framing < 0.85:  # CONTRACT 6: a chunked body, in one to three chunks, maybe with a trailer
                headers.append("Transfer-Encoding: chunked")
                cuts = sorted(self.rng.randrange(len(body) + 1) for _ in range(2))
                parts = [part for part in (body[:cuts[0]], body[cuts[0]:cuts[1]], body[cuts[1]:]) if part]
                body = "".join(f"{len(part.encode('utf-8', 'surrogateescape')):x}\r\n{part}\r\n" for part in parts)
                body += self.pick(["0\r\n\r\n", "0;ext=1\r\nX-Trailer: t\r\n\r\n", "0\r\n"])
        eol = self.pick(["\r\n", "\r\n", "\n", "\r"])
        data = (eol.join([line, *headers]) + eol + eol + body).encode("utf-8", "surrogateescape")
        if self.rng.random() < 0.2:
            data += self.valid()  # pipelined, or smuggled
        return data

    def mutate(self, data: bytes) -> bytes:
        data = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            kind = self.pick(MUTATIONS)
            at = self.rng.randrange(len(data) + 1)
            if kind == "flip":
                if data:
                    data[min(at, len(data) - 1)] ^= 1 << self.rng.randrange(8)
            elif kind == "insert":
                data[at:at] = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 8)))
            elif kind == "delete":
                del data[at:at + self.rng.randint(1, 16)]
            elif kind == "duplicate":
                data[at:at] = data[at:at + self.rng.randint(1, 64)]
            elif kind == "truncate":
                del data[at:]
            else:
                data[at:at] = {"crlf": b"\r\n", "nul": b"\x00", "space": b" ", "percent": b"%2e%2e%2f"}[kind]
        return bytes(data)

    def next_input(self) -> tuple[str, bytes]:
        roll = self.rng.random()
        if roll < 0.1:
            return "random", bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(300)))
        if roll < 0.4:
            return "composed", self.composed()
        if roll < 0.5:
            return "valid", self.valid()
        return "mutated", self.mutate(self.pick([self.valid, self.composed])())


def judge(raw: bytes) -> str | None:
    """What is wrong with the bytes recsvc sent back, or None."""
    if not raw:
        return None  # closed with nothing to say: fine for input that never became a request
    if not raw.startswith(b"HTTP/1.1 "):
        return "not an HTTP/1.1 response"
    if b"Traceback" in raw:
        return "a traceback in the answer"
    for answer in raw.split(b"HTTP/1.1 ")[1:]:
        status = answer[:3]
        if not status.isdigit():
            continue  # "HTTP/1.1 " inside a body
        head, _, body = answer.partition(b"\r\n\r\n")
        if status == b"500" and b"internal_error" in body:
            return "500 internal_error"
        if status[:1] in (b"4", b"5") and body[:1] not in (b"", b"{"):
            return f"{status.decode()} whose body is not JSON"
    return None


def test_fuzzed_requests_never_break_recsvc(make_harness, upstream, caplog):
    caplog.set_level(logging.WARNING)
    svc = make_harness(idle_timeout=1.0, max_connections=64, max_wait=2.0)
    token = svc.business()
    for index in range(2):
        upstream.set(f"/f{index}.wav", body=sized_wav(2000, seed=str(index)))
    svc.put_call(token, "CAF0", upstream.url("/f0.wav"))
    address = svc.app.address
    rng = random.Random(SEED)
    fuzzer = Fuzzer(rng, token, "test-admin-token-0123456789", upstream.base_url)
    baseline_threads = threading.active_count()
    kinds: dict[str, int] = {}
    statuses: dict[int, int] = {}
    failures: list[str] = []
    tried = 0
    started = time.monotonic()
    while tried < INPUTS and time.monotonic() - started < FUZZ_SECONDS:
        kind, data = fuzzer.next_input()
        tried += 1
        kinds[kind] = kinds.get(kind, 0) + 1
        try:
            raw = exchange(address, data, timeout=5)
        except ConnectionResetError:
            raw = b""  # we half-closed with bytes unread by the server: its close may reset
        except TimeoutError as exc:
            failures.append(f"input {tried} ({kind}) {data[:120]!r}: {exc}")
            continue
        status = int(raw[9:12]) if raw[9:12].isdigit() else 0
        statuses[status] = statuses.get(status, 0) + 1
        problem = judge(raw) or ("no answer to a well-formed request" if kind == "valid" and not raw else None)
        if problem:
            failures.append(f"input {tried} ({kind}) {data[:160]!r}: {problem}: {raw[:200]!r}")
    seconds = time.monotonic() - started
    healthy = svc.request("GET", "/healthz").status
    deadline = time.monotonic() + 5
    while threading.active_count() > baseline_threads + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    threads_after = threading.active_count()
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    print(f"\nfuzz (seed {SEED}): {tried} inputs in {seconds:.1f}s {kinds}; answers by status "
          f"{dict(sorted(statuses.items()))}; threads {baseline_threads} -> {threads_after}; "
          f"tracebacks logged {len(tracebacks)}")
    assert tried >= min(INPUTS, 1000), f"only {tried} inputs in {FUZZ_SECONDS}s"
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:15])
    assert healthy == 200
    assert threads_after <= baseline_threads + 3, f"threads {baseline_threads} -> {threads_after}"
    assert not tracebacks, [f"{r.name}: {r.getMessage()}" for r in tracebacks[:10]]
    deadline = time.monotonic() + 3
    while svc.app.http.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert svc.app.http.connections == 0, "a connection outlived the fuzz"

"""CONTRACT 6: /healthz, /readyz and /metrics are answered when every --max-connections slot is
taken, here by players holding `Prefer: wait` requests on a download that hangs; any other
request past the slots is still 503 too_many_connections."""

from __future__ import annotations

import socket
import threading
import time

from conftest import wait_until
from rawhttp import connect, exchange, parse_answer, read_until_closed, request_bytes

from recsvc.demo.audio import sized_wav
from recsvc.http.routes import PROBE_RESERVE

SLOTS = 4


def hold_every_slot(svc, upstream, token: str) -> list[socket.socket]:
    url = upstream.set("/held.wav", body=sized_wav(2000, seed="held"), hang=True)
    assert svc.put_call(token, "CAHELD", url).status == 201
    held = []
    for _ in range(SLOTS):
        sock = connect(svc.app.address, timeout=15)
        sock.sendall(request_bytes("GET", "/api/recordings/file/CAHELD", token=token, headers=(("Prefer", "wait=30"),)))
        held.append(sock)
    assert wait_until(lambda: svc.app.waiters.held_count() == SLOTS, 5), "the players' requests were not held"
    assert svc.app.http.connections == SLOTS
    return held


def test_probes_are_answered_while_held_players_take_every_slot(hanging, upstream):
    svc = hanging(max_connections=SLOTS, max_wait=30, idle_timeout=5)
    token = svc.business()
    held = hold_every_slot(svc, upstream, token)
    try:
        answers = {path: parse_answer(exchange(svc.app.address, request_bytes("GET", path), timeout=3))
                   for path in ("/healthz", "/readyz", "/metrics")}
        other = parse_answer(exchange(svc.app.address, request_bytes("GET", "/api/calls/CAHELD", token=token), timeout=3))
        assert svc.app.waiters.held_count() == SLOTS, "the held players are still held"
    finally:
        for sock in held:
            sock.close()
    assert {path: answer.status for path, answer in answers.items()} == {"/healthz": 200, "/readyz": 200, "/metrics": 200}
    assert answers["/healthz"].json == {"status": "ok"}
    assert answers["/healthz"].headers["connection"] == "close", "a reserve connection serves one request"
    assert b"recsvc_held_requests" in answers["/metrics"].body
    assert (other.status, other.json["error"]) == (503, "too_many_connections")
    assert wait_until(lambda: svc.app.http.connections == 0, 5)


def test_probes_past_the_reserve_get_503_and_every_slot_comes_back(hanging, upstream):
    svc = hanging(max_connections=SLOTS, max_wait=30, idle_timeout=5)
    token = svc.business()
    held = hold_every_slot(svc, upstream, token)
    silent = [connect(svc.app.address) for _ in range(PROBE_RESERVE)]  # take the reserve, send nothing
    try:
        assert wait_until(lambda: svc.app.http.connections == SLOTS + PROBE_RESERVE, 2)
        started = time.monotonic()
        with connect(svc.app.address) as extra:  # refused at accept: answered before it sends a byte
            refused = parse_answer(read_until_closed(extra, 3))
        assert time.monotonic() - started < 1
        assert (refused.status, refused.json["error"]) == (503, "too_many_connections")
        # A reserve connection that sends nothing is let go within RESERVE_HEAD_SECONDS.
        assert wait_until(lambda: svc.app.http.connections == SLOTS, 4), svc.app.http.connections
        assert parse_answer(exchange(svc.app.address, request_bytes("GET", "/healthz"), timeout=3)).status == 200
    finally:
        for sock in held + silent:
            sock.close()
    assert wait_until(lambda: svc.app.http.connections == 0, 5)
    assert svc.request("GET", "/healthz").status == 200


def test_a_thousand_probes_during_a_full_house_all_get_200_or_a_clean_503(hanging, upstream):
    svc = hanging(max_connections=SLOTS, max_wait=30, idle_timeout=5)
    token = svc.business()
    held = hold_every_slot(svc, upstream, token)
    statuses: list[int | None] = []
    lock = threading.Lock()

    def probe(count: int) -> None:
        for _ in range(count):
            status = parse_answer(exchange(svc.app.address, request_bytes("GET", "/healthz"), timeout=3)).status
            with lock:
                statuses.append(status)

    try:
        # Two probers at once: each reserve slot is released once its prober has closed, so
        # at most 2 answered and 2 new probes are counted against the reserve of 8.
        threads = [threading.Thread(target=probe, args=(500,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for sock in held:
            sock.close()
    ok = statuses.count(200)
    print(f"\n1000 probes with every slot held: {ok} x 200, {statuses.count(503)} x 503")
    assert len(statuses) == 1000 and set(statuses) <= {200, 503}
    # A reserve slot comes back when its connection's thread has ended, which a loaded machine may delay past
    # the next probes; without the reserve every probe here is a 503.
    assert ok >= 990, f"{1000 - ok} probes were not answered 200 with 2 probers and a reserve of {PROBE_RESERVE}"

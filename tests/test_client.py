"""The player of CONTRACT 7: every answer's outcome, its waits, and invariant 3, in fake time."""

from __future__ import annotations

import itertools
import pathlib
import socket
import threading
import time

import pytest

from contract_fake import (
    TOKEN,
    WAV,
    Answer,
    FakeClock,
    ScriptedServer,
    audio,
    closed_port,
    dropped,
    failure,
    processing,
)
from recsvc.player.client import (
    CallNotFound,
    ClientError,
    DownloadFailed,
    Heard,
    Progress,
    RecordingClient,
    RecordingError,
    RecordingNotFound,
    RecordingTimeout,
    ServerError,
    ServerUnavailable,
    WorkerOffline,
    backoff_seconds,
    default_opener,
    message,
    player_action,
    prefer_wait_seconds,
    retry_after_seconds,
)
from recsvc.player.outcomes import OUTCOMES, outcome_message

CONTRACT = pathlib.Path(__file__).resolve().parent.parent / "CONTRACT.md"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def serve(clock):
    """Start a ScriptedServer on the fake clock; every one is closed after the test."""
    servers: list[ScriptedServer] = []

    def start(answers, **options) -> ScriptedServer:
        options.setdefault("clock", clock)
        server = ScriptedServer(answers, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def player(server_or_url, clock: FakeClock, **options) -> RecordingClient:
    base_url = getattr(server_or_url, "base_url", server_or_url)
    options.setdefault("token", TOKEN)
    return RecordingClient(base_url, clock=clock, sleep=clock.sleep, **options)


# --- CONTRACT 7's messages -------------------------------------------------


CONTRACT_CASES = ("call_not_found", "not_found", "worker_offline", "download_failed", "server_error",
                  "unavailable", "timeout")


def contract_messages() -> dict[str, dict[str, str]]:
    """The messages table of CONTRACT section 7, read from the contract itself."""
    text = CONTRACT.read_text(encoding="utf-8")
    section = text[text.index("## 7.") : text.index("## 8.")]
    table: dict[str, dict[str, str]] = {"he": {}, "en": {}}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in CONTRACT_CASES:
            table["he"][cells[0]], table["en"][cells[0]] = cells[1], cells[2]
    return table


def test_messages_are_the_contract_table_word_for_word():
    expected = contract_messages()
    assert set(OUTCOMES) == {*CONTRACT_CASES, "error"}
    for lang in ("he", "en"):
        assert set(expected[lang]) == set(CONTRACT_CASES)
        for case, text in expected[lang].items():
            assert message(case, lang, waited=37) == text.replace("X", "37")


@pytest.mark.parametrize(
    "case, lang, waited, text",
    [
        pytest.param("not_found", "en", 0, "Recording not found: this call has no recording.", id="en-not_found"),
        pytest.param(
            "worker_offline",
            "en",
            0,
            "The recording server is not responding. Try again later or contact support.",
            id="en-worker_offline",
        ),
        pytest.param(
            "timeout",
            "en",
            180.9,
            "The recording is still being prepared (waited 180 seconds). This can take up to 3 minutes.",
            id="en-timeout-whole-seconds",
        ),
        pytest.param("not_found", "he", 0, "ההקלטה לא נמצאה. אין כתובת הקלטה לשיחה זו", id="he-not_found"),
        pytest.param(
            "worker_offline", "he", 0, "שרת ההקלטות לא מגיב. אנא נסה שוב מאוחר יותר או פנה לתמיכה", id="he-worker_offline"
        ),
        pytest.param(
            "timeout",
            "he",
            42,
            "ההקלטה עדיין בתהליך הכנה (חיכינו 42 שניות). זה יכול לקחת עד 3 דקות",
            id="he-timeout",
        ),
    ],
)
def test_message_texts_exact(case, lang, waited, text):
    assert message(case, lang, waited) == text


def test_english_is_the_default_language():
    assert message("not_found") == OUTCOMES["not_found"].en


# --- the decision table and its numbers ------------------------------------


@pytest.mark.parametrize(
    "status, action",
    [
        pytest.param(200, "play", id="200-play"),
        pytest.param(206, "play", id="206-play"),
        pytest.param(202, "wait", id="202-wait-retry-after"),
        pytest.param(404, "not_found", id="404-stop-not_found"),
        pytest.param(500, "server_error", id="500-without-code-stop-server_error"),
        pytest.param(400, "error", id="400-stop-error"),
        pytest.param(401, "error", id="401-stop-error"),
        pytest.param(403, "error", id="403-stop-error"),
        pytest.param(409, "error", id="other-4xx-stop-error"),
        pytest.param(416, "error", id="416-stop-error"),
        pytest.param(502, "backoff", id="502-backoff"),
        pytest.param(503, "backoff", id="503-backoff"),
        pytest.param(504, "backoff", id="504-backoff"),
        pytest.param(None, "backoff", id="network-error-backoff"),
        pytest.param(501, "error", id="other-5xx-stop-error"),
        pytest.param(302, "error", id="redirect-stop-error"),
    ],
)
def test_player_action_follows_contract_7(status, action):
    assert player_action(status) == action


@pytest.mark.parametrize(
    "status, code, action",
    [
        pytest.param(404, "call_not_found", "call_not_found", id="404-call_not_found"),
        pytest.param(404, "no_recording_url", "not_found", id="404-no_recording_url-not_found"),
        pytest.param(404, "recording_not_found_upstream", "not_found", id="404-upstream-not_found"),
        pytest.param(404, "not_found", "not_found", id="other-404-not_found"),
        pytest.param(500, "worker_not_processing_queue", "worker_offline", id="500-worker_offline"),
        pytest.param(500, "recording_download_failed", "download_failed", id="500-download_failed"),
        pytest.param(500, "internal_error", "server_error", id="other-500-server_error"),
        pytest.param(503, "storage_unavailable", "backoff", id="503-storage-backoff"),
        pytest.param(401, "call_not_found", "error", id="code-of-a-401-changes-nothing"),
    ],
)
def test_player_action_reads_the_error_code_of_404_and_500(status, code, action):
    assert player_action(status, code) == action


@pytest.mark.parametrize(
    "header, seconds",
    [
        pytest.param("0", 1, id="0-clamped-to-1"),
        pytest.param("30", 10, id="30-clamped-to-10"),
        pytest.param(None, 2, id="missing-is-2"),
        pytest.param("soon", 2, id="garbage-is-2"),
        pytest.param("2.5", 2, id="fraction-is-garbage"),
        pytest.param("-3", 2, id="negative-is-garbage"),
        pytest.param("Wed, 21 Oct 2026 07:28:00 GMT", 2, id="http-date-is-garbage"),
        pytest.param(" 5 ", 5, id="5-as-is"),
        pytest.param("10", 10, id="10-as-is"),
    ],
)
def test_retry_after_is_clamped_to_1_10(header, seconds):
    assert retry_after_seconds(header) == seconds


def test_backoff_is_1_2_4_8_capped_at_8():
    assert [backoff_seconds(n) for n in range(1, 8)] == [1, 2, 4, 8, 8, 8, 8]


@pytest.mark.parametrize(
    "left, wait",
    [(180, 180), (179.9, 179), (1.0, 1), (0.99, None), (0, None), (-3, None)],
)
def test_prefer_wait_is_whole_seconds_left_never_more(left, wait):
    assert prefer_wait_seconds(left) == wait


# --- outcomes against a scripted server ------------------------------------


def test_200_after_202s_plays_after_waiting_retry_after(serve, clock):
    server = serve([processing(2), processing(3, job_status="running"), audio()])
    recording = player(server, clock).wait_for_recording("CA1")
    assert recording.body == WAV
    assert recording.content_type == "audio/wav"
    assert recording.status == 200
    assert recording.requests == 3
    assert recording.seconds == 5
    assert clock.sleeps == [2, 3]


def test_206_plays(serve, clock):
    server = serve([audio(b"ID3partial", status=206, content_type="audio/mpeg")])
    recording = player(server, clock).wait_for_recording("CA1")
    assert (recording.status, recording.body, recording.content_type) == (206, b"ID3partial", "audio/mpeg")


def test_request_names_the_call_and_carries_the_bearer_token(serve, clock):
    server = serve([audio()])
    player(server, clock).wait_for_recording("CA_1-x")
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("GET", "/api/recordings/file/CA_1-x")
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"


def test_call_sid_is_sent_as_one_quoted_path_segment(serve, clock):
    server = serve([failure(400, "invalid_call_sid")])
    with pytest.raises(ClientError):
        player(server, clock).wait_for_recording("../a/b?c")
    assert server.seen[0].path == "/api/recordings/file/..%2Fa%2Fb%3Fc"


def test_without_a_token_no_authorization_is_sent(serve, clock):
    server = serve([failure(401, "unauthorized")])
    with pytest.raises(ClientError):
        player(server, clock, token=None).wait_for_recording("CA1")
    assert "authorization" not in server.seen[0].headers


@pytest.mark.parametrize(
    "code, kind",
    [
        ("call_not_found", CallNotFound),
        ("no_recording_url", RecordingNotFound),
        ("recording_not_found_upstream", RecordingNotFound),
        ("not_found", RecordingNotFound),
    ],
)
def test_404_stops_call_not_found_or_not_found(serve, clock, code, kind):
    server = serve([processing(), failure(404, code)])
    with pytest.raises(kind) as caught:
        player(server, clock).wait_for_recording("CA1")
    err = caught.value
    assert type(err) is kind
    assert (err.status, err.error_code, err.requests) == (404, code, 2)
    assert err.message == OUTCOMES[kind.outcome].en
    assert err.seconds == 2


@pytest.mark.parametrize(
    "answer, kind",
    [
        pytest.param(
            failure(500, "worker_not_processing_queue", reason="no live worker", retry_after=15),
            WorkerOffline,
            id="no-live-worker",
        ),
        pytest.param(
            failure(500, "recording_download_failed", reason="retry limit reached", retry_after=598),
            DownloadFailed,
            id="retry-limit-reached-download-failed",
        ),
        pytest.param(failure(500, "internal_error", retry_after=2), ServerError, id="any-other-500"),
        pytest.param(Answer(500, (), b"<html>oops</html>"), ServerError, id="500-without-json"),
    ],
)
def test_500_stops_at_once_naming_the_reason(serve, clock, answer, kind):
    server = serve([answer])
    with pytest.raises(kind) as caught:
        player(server, clock).wait_for_recording("CA1")
    err = caught.value
    assert type(err) is kind
    assert (err.status, err.requests) == (500, 1)
    assert err.message == OUTCOMES[kind.outcome].en
    assert clock.sleeps == []  # a 500's Retry-After is for people, not for the player


@pytest.mark.parametrize(
    "status, code",
    [(400, "invalid_call_sid"), (401, "unauthorized"), (403, "forbidden"), (409, "conflict"), (416, "range")],
)
def test_4xx_stops_error_with_the_servers_words(serve, clock, status, code):
    server = serve([failure(status, code, "What the server said.")])
    with pytest.raises(ClientError) as caught:
        player(server, clock).wait_for_recording("CA1")
    err = caught.value
    assert (err.outcome, err.status, err.error_code, err.requests) == ("error", status, code, 1)
    assert err.message == f"The recording could not be loaded (HTTP {status} {code}): What the server said."
    assert clock.sleeps == []


def test_a_redirect_is_not_followed_and_stops_error(serve, clock):
    elsewhere = serve([audio()])
    redirecting = serve([Answer(302, (("Location", f"{elsewhere.base_url}/x"),))])
    with pytest.raises(ClientError) as caught:
        player(redirecting, clock).wait_for_recording("CA1")
    assert caught.value.status == 302
    assert elsewhere.seen == []  # the bearer token went nowhere else


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_back_off_then_play(serve, clock, status):
    server = serve([failure(status, "unavailable"), failure(status, "unavailable"), failure(status, "x"), audio()])
    recording = player(server, clock).wait_for_recording("CA1")
    assert recording.requests == 4
    assert clock.sleeps == [1, 2, 4]


def test_503_retry_after_is_not_obeyed_backoff_is(serve, clock):
    server = serve([failure(503, "busy", retry_after=30), audio()])
    player(server, clock).wait_for_recording("CA1")
    assert clock.sleeps == [1]


def test_connection_refused_backs_off_then_plays():
    port = closed_port()
    servers: list[ScriptedServer] = []

    def server_comes_up_after_two_waits(_seconds: float) -> None:
        if len(clock.sleeps) == 2:
            servers.append(ScriptedServer([audio()], clock=clock, port=port))

    clock = FakeClock(on_sleep=server_comes_up_after_two_waits)
    try:
        recording = player(f"http://127.0.0.1:{port}", clock).wait_for_recording("CA1")
    finally:
        for server in servers:
            server.close()
    assert recording.body == WAV
    assert recording.requests == 3
    assert clock.sleeps == [1, 2]


def test_dropped_connection_backs_off_then_plays(serve, clock):
    server = serve([dropped(), dropped(), audio()])
    assert player(server, clock).wait_for_recording("CA1").requests == 3
    assert clock.sleeps == [1, 2]


def test_backoff_starts_over_after_a_202(serve, clock):
    answers = [failure(503, "x"), failure(503, "x"), processing(2), failure(503, "x"), dropped(), audio()]
    server = serve(answers)
    player(server, clock).wait_for_recording("CA1")
    assert clock.sleeps == [1, 2, 2, 1, 2]


@pytest.mark.parametrize(
    "header, waited",
    [
        pytest.param(0, 1, id="0-waits-1"),
        pytest.param(30, 10, id="30-waits-10"),
        pytest.param(None, 2, id="missing-waits-2"),
        pytest.param("soon", 2, id="garbage-waits-2"),
        pytest.param(7, 7, id="7-waits-7"),
    ],
)
def test_202_waits_clamped_retry_after(serve, clock, header, waited):
    server = serve([processing(header), audio()])
    player(server, clock).wait_for_recording("CA1")
    assert clock.sleeps == [waited]


def test_progress_is_told_before_each_wait(serve, clock):
    server = serve(
        [processing(3, job_status="running", attempt=1), failure(503, "overloaded"), dropped(), audio()]
    )
    events: list[Progress] = []
    player(server, clock, on_progress=events.append).wait_for_recording("CA1")
    assert [(e.attempt, e.elapsed, e.asking, e.seconds) for e in events] == [
        (1, 0, False, 3),
        (2, 3, False, 1),
        (3, 4, False, 2),
    ]
    assert {e.base_url for e in events} == {server.base_url}
    assert events[0].heard == Heard(202, job_status="running", attempt=1, max_attempts=3)
    assert events[0].heard.describe() == "202 attempt 1/3, job running"
    assert events[1].heard.describe() == "503 overloaded"
    assert events[2].heard.describe() == "connection closed without an answer"


def test_a_long_wait_is_reported_at_least_every_five_seconds(serve, clock):
    server = serve([processing(10, job_status="queued"), failure(503, "x"), failure(503, "x"), failure(503, "x"),
                    failure(503, "x"), audio()])
    events: list[Progress] = []
    player(server, clock, on_progress=events.append).wait_for_recording("CA1")
    assert clock.sleeps == [5, 5, 1, 2, 4, 5, 3]
    assert [(e.elapsed, e.seconds) for e in events] == [(0, 10), (5, 5), (10, 1), (11, 2), (13, 4), (17, 8), (22, 3)]
    assert events[-1].text("CA1") == f"CA1: 22s, attempt 5 to {server.base_url}: 503 x; next try in 3s"


def test_a_held_request_is_reported_while_the_server_holds_it():
    """Real time: a server that answers after 1.3 s; reports every 0.5 s while the request is in flight."""
    with socket.socket() as slow:
        slow.bind(("127.0.0.1", 0))
        slow.listen(1)
        events: list[Progress] = []
        client = RecordingClient(f"http://127.0.0.1:{slow.getsockname()[1]}", TOKEN, max_wait=30,
                                 on_progress=events.append, progress_every=0.5, request_timeout=5)

        def answer_late() -> None:
            conn, _ = slow.accept()
            with conn:
                time.sleep(1.3)
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 27\r\n"
                             b"Connection: close\r\n\r\n{\"error\": \"call_not_found\"}")

        helper = threading.Thread(target=answer_late, daemon=True)
        helper.start()
        with pytest.raises(CallNotFound):
            client.wait_for_recording("CA1")
        helper.join(5)
    assert [e.asking for e in events] == [True, True]
    assert all(e.attempt == 1 and e.heard is None and e.seconds == 30 for e in events)
    assert events[0].text("CA1") == (
        f"CA1: 0s, attempt 1 to {client.base_url}: waiting for the answer (the server may hold it 30s); "
        "last heard: nothing yet"
    )


# --- Prefer: wait ----------------------------------------------------------


def test_a_quick_download_needs_one_request(serve, clock):
    server = serve([audio()])
    recording = player(server, clock, max_wait=180).wait_for_recording("CA1")
    assert recording.requests == 1
    assert server.seen[0].prefer_wait == 180


def test_prefer_wait_shrinks_with_the_time_left(serve, clock):
    server = serve([processing(3)])
    with pytest.raises(RecordingTimeout):
        player(server, clock, max_wait=10).wait_for_recording("CA1")
    assert [seen.at for seen in server.seen] == [0, 3, 6, 9, 10]
    assert [seen.prefer_wait for seen in server.seen] == [10, 7, 4, 1, None]
    assert "prefer" not in server.seen[-1].headers


def test_prefer_wait_shrinks_while_the_server_holds(serve, clock):
    server = serve([processing(2, hold=True)])
    with pytest.raises(RecordingTimeout) as caught:
        player(server, clock, max_wait=180).wait_for_recording("CA1")
    assert [seen.prefer_wait for seen in server.seen] == [180, 158, 136, 114, 92, 70, 48, 26, 4]
    assert caught.value.seconds == 180


def test_prefer_wait_is_left_out_under_one_second(serve, clock):
    server = serve([processing(2)])
    with pytest.raises(RecordingTimeout):
        player(server, clock, max_wait=2.5).wait_for_recording("CA1")
    assert [seen.prefer_wait for seen in server.seen] == [2, None, None]
    assert clock.sleeps == [2, 0.5]


class TimeoutRecordingOpener:
    """urllib's opener, noting the socket timeout each request was given."""

    def __init__(self) -> None:
        self.opener = default_opener()
        self.timeouts: list[float] = []

    def open(self, request, timeout):
        self.timeouts.append(timeout)
        return self.opener.open(request, timeout=timeout)


def test_socket_timeout_covers_the_hold_plus_a_margin(serve, clock):
    server = serve([processing(2, hold=True), processing(2), audio()])
    opener = TimeoutRecordingOpener()
    player(server, clock, max_wait=60, opener=opener, request_timeout=5).wait_for_recording("CA1")
    assert [seen.prefer_wait for seen in server.seen] == [60, 38, 36]
    assert opener.timeouts == [65, 43, 41]


# --- invariant 3: the player stops within max_wait plus one request ---------


@pytest.mark.parametrize(
    "answers, requests, last_status",
    [
        pytest.param(lambda: [processing(2)], 91, 202, id="202-forever"),
        pytest.param(lambda: [processing(10)], 19, 202, id="202-forever-retry-after-10"),
        pytest.param(lambda: [processing(2, hold=True)], 9, 202, id="202-forever-holding-prefer-wait"),
        pytest.param(lambda: [failure(503, "unavailable")], 26, 503, id="503-forever"),
        pytest.param(lambda: [dropped()], 26, None, id="dropped-forever"),
        pytest.param(lambda: [failure(502, "x")], 26, 502, id="502-forever"),
        pytest.param(lambda: [failure(504, "x")], 26, 504, id="504-forever"),
        pytest.param(
            lambda: itertools.cycle([processing(2), failure(503, "unavailable")]), 121, 202, id="flapping-202-503"
        ),
        pytest.param(
            lambda: itertools.cycle([processing(7, hold=True), dropped(), failure(504, "x")]),
            None,
            None,
            id="flapping-holding-202-drop-504",
        ),
    ],
)
def test_invariant_3_stops_within_max_wait_plus_one_request(serve, clock, answers, requests, last_status):
    server = serve(answers())
    with pytest.raises((RecordingTimeout, ServerUnavailable)) as caught:
        player(server, clock, max_wait=180).wait_for_recording("CA1")
    err = caught.value
    # Requests take no fake time here, so "plus one request" is exactly zero.
    assert err.seconds == err.waited == 180
    assert sum(clock.sleeps) <= 180
    assert all(seen.at <= 180 for seen in server.seen)
    assert all(seen.prefer_wait is None or seen.at + seen.prefer_wait <= 180 for seen in server.seen)
    assert err.requests == len(server.seen)
    if requests is not None:
        assert err.requests == requests
        assert err.status == last_status
    # CONTRACT 7: unavailable when the last answer was a network error, 502, 503 or 504.
    outcome = "unavailable" if err.status in (None, 502, 503, 504) else "timeout"
    assert err.outcome == outcome
    assert err.message == message(outcome, "en", 180)


def test_invariant_3_connection_refused_forever(clock):
    port = closed_port()
    with pytest.raises(ServerUnavailable) as caught:
        player(f"http://127.0.0.1:{port}", clock, max_wait=180).wait_for_recording("CA1")
    err = caught.value
    assert err.seconds == 180
    # at 0, 1, 3, 7, then every 8 s from 15 to 175, and a last one at 180
    assert err.requests == 26
    assert clock.sleeps[:5] == [1, 2, 4, 8, 8] and clock.sleeps[-1] == 5
    assert err.status is None


def test_invariant_3_in_real_time_against_a_server_that_never_answers():
    """A request's socket timeout is the one request the player may run past max_wait."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel; nothing ever answers
        client = RecordingClient(
            f"http://127.0.0.1:{silent.getsockname()[1]}", TOKEN, max_wait=0.5, request_timeout=0.2
        )
        started = time.monotonic()
        with pytest.raises(ServerUnavailable) as caught:
            client.wait_for_recording("CA1")
        took = time.monotonic() - started
    assert caught.value.requests == 2
    assert 0.5 <= took < 0.5 + 0.2 + 0.8  # scheduling slack on a busy machine
    assert caught.value.message == message("unavailable", "en", 0)


def test_a_recording_on_the_last_request_still_plays(serve, clock):
    server = serve([processing(3), processing(3), audio()])
    recording = player(server, clock, max_wait=5).wait_for_recording("CA1")
    assert recording.requests == 3
    assert clock.sleeps == [3, 2]


@pytest.mark.parametrize(
    "answer, kind",
    [(processing(2), RecordingTimeout), (failure(503, "storage_unavailable"), ServerUnavailable),
     (dropped(), ServerUnavailable)],
    ids=["202-timeout", "503-unavailable", "dropped-unavailable"],
)
def test_max_wait_zero_asks_once(serve, clock, answer, kind):
    server = serve([answer])
    with pytest.raises(kind) as caught:
        player(server, clock, max_wait=0, on_progress=lambda event: None).wait_for_recording("CA1")
    assert caught.value.requests == len(server.seen) == 1
    assert clock.sleeps == []


# --- languages -------------------------------------------------------------


def test_hebrew_player_speaks_hebrew(serve, clock):
    server = serve([failure(404, "call_not_found")])
    with pytest.raises(CallNotFound) as caught:
        player(server, clock, lang="he").wait_for_recording("CA1")
    assert caught.value.message == "השיחה לא נמצאה. בדקו את מזהה השיחה"


def test_hebrew_error_keeps_the_servers_words_in_their_own_left_to_right_run(serve, clock):
    server = serve([failure(401, "unauthorized", "Missing or wrong credentials.")])
    with pytest.raises(ClientError) as caught:
        player(server, clock, lang="he").wait_for_recording("CA1")
    assert caught.value.message == (
        "לא ניתן לטעון את ההקלטה (\u2066HTTP 401 unauthorized\u2069): \u2066Missing or wrong credentials.\u2069"
    )


def test_hebrew_timeout_counts_whole_seconds(serve, clock):
    server = serve([processing(10)])
    with pytest.raises(RecordingTimeout) as caught:
        player(server, clock, lang="he", max_wait=25.5).wait_for_recording("CA1")
    assert caught.value.message == "ההקלטה עדיין בתהליך הכנה (חיכינו 25 שניות). זה יכול לקחת עד 3 דקות"
    assert str(caught.value) == caught.value.message


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"base_url": "ftp://127.0.0.1"}, id="not-http"),
        pytest.param({"base_url": "127.0.0.1:8080"}, id="no-scheme"),
        pytest.param({"lang": "fr"}, id="unknown-lang"),
        pytest.param({"max_wait": -1}, id="negative-max-wait"),
        pytest.param({"max_wait": float("nan")}, id="nan-max-wait"),
        pytest.param({"request_timeout": 0}, id="zero-request-timeout"),
    ],
)
def test_bad_settings_are_refused_at_construction(options):
    options = {"base_url": "http://127.0.0.1:8080", **options}
    with pytest.raises(ValueError):
        RecordingClient(**options)


def test_every_stop_is_a_recording_error_with_an_outcome_of_the_table():
    kinds = (CallNotFound, RecordingNotFound, WorkerOffline, DownloadFailed, ServerError, ClientError,
             RecordingTimeout, ServerUnavailable)
    assert {kind.outcome for kind in kinds} == set(OUTCOMES)
    for kind in kinds:
        assert issubclass(kind, RecordingError)


def test_progress_lines_in_hebrew_isolate_what_the_server_sent():
    event = Progress(2, 7.4, "http://127.0.0.1:8080", Heard(202, job_status="running", attempt=1, max_attempts=3),
                     False, 2)
    assert event.text("CA1", "he") == (
        "\u2066CA1\u2069: 7 שניות, ניסיון 2 אל \u2066http://127.0.0.1:8080\u2069: 202 ניסיון 1/3, העבודה בהורדה; "
        "ניסיון הבא בעוד 2 שניות"
    )
    assert outcome_message("error", "he", answer="HTTP 400 invalid_call_sid") == (
        "לא ניתן לטעון את ההקלטה (\u2066HTTP 400 invalid_call_sid\u2069)."
    )

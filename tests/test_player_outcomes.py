"""Every stop of CONTRACT 7 v3 in all three players, against a real recsvc, a closed port and stand-in servers.

The players are the Python ``RecordingClient``, the real ``python -m recsvc
fetch`` process (its exit status and its last line), and the web player in
headless Chromium; each outcome is tried in Hebrew and in English. How each
outcome is brought about for real:

    call_not_found   a call sid the business never created (real recsvc)
    not_found        a call without a recording URL (real recsvc)
    worker_offline   a real ``recsvc serve --workers 0`` process
    download_failed  an upstream that answers 500 every time, until the retry limit (real recsvc)
    server_error     a loopback stand-in answering 500 internal_error (recsvc has no such 500 to cause)
    error            a wrong token (real recsvc, 401)
    unavailable      a closed port, and a loopback stand-in answering 503 storage_unavailable
    timeout          a hung upstream: its job stays running (real recsvc)

The stand-ins serve the player's own page and script, so the web player asks
them from their own origin. The web player's table of messages is a copy of
recsvc/player/outcomes.py; the first test parses the script and holds them equal.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from chromium import Browser, require_chromium
from conftest import ROOT, running_harness
from contract_fake import closed_port
from processes import SERVE_ARGS, Client, Processes

from recsvc.player.client import RecordingClient, RecordingError, player_action
from recsvc.demo.audio import tune_for
from recsvc.demo.fake_upstream import FakeUpstream
from recsvc.player.outcomes import ERROR_WITH_DETAIL, LRI, OUTCOMES, PDI, outcome_message

STATIC = Path(ROOT) / "recsvc" / "player" / "web"
LANGS = ("he", "en")
SERVER_HOLD = 6  # the live recsvc's --max-wait: long enough to hold a request past one progress report
_numbers = itertools.count()


# ---------------------------------------------------------------- the web player's copy of the table


def js_outcome_messages() -> dict:
    """OUTCOME_MESSAGES as player.js writes it: the JSON between its BEGIN and END lines."""
    source = (STATIC / "player.js").read_text(encoding="utf-8")
    block = source[source.index("// BEGIN OUTCOME_MESSAGES"): source.index("// END OUTCOME_MESSAGES")]
    literal = block[block.index("= {") + 2: block.rindex("}") + 1]
    return json.loads(literal)


def test_the_web_players_messages_are_the_python_table():
    python_table = {lang: {**{name: getattr(outcome, lang) for name, outcome in OUTCOMES.items()},
                           "error_detail": ERROR_WITH_DETAIL[lang]} for lang in LANGS}
    assert js_outcome_messages() == python_table


# ---------------------------------------------------------------- the servers


class StandIn:
    """A loopback server answering every API request with one status and JSON body; it serves the player too."""

    def __init__(self, status: int, body: dict):
        payload = json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                if path in ("/player", "/player.js"):
                    name = "player.html" if path == "/player" else "player.js"
                    kind = "text/html" if path == "/player" else "text/javascript"
                    return self._send(200, kind, (STATIC / name).read_bytes())
                self._send(status, "application/json", payload)

            do_POST = do_GET

            def _send(self, code: int, kind: str, data: bytes):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, store_kind):
    """A live recsvc (in-process, real sockets), a `serve --workers 0` process, and the 500 and 503 stand-ins."""
    upstream = FakeUpstream().start()
    owner = Processes()
    stand_ins = [StandIn(500, {"error": "internal_error", "message": "Something broke."}),
                 StandIn(503, {"error": "storage_unavailable", "message": "The disk is full."})]
    try:
        with running_harness(tmp_path_factory.mktemp("live"), upstream, download_timeout=10, retry_after=1,
                             recovery_retry_after=1, max_wait=SERVER_HOLD) as live:
            token = live.business("players")
            live.put_call(token, "CAnourl", None)
            live.put_call(token, "CAready", upstream.set("/ready.wav", body=tune_for("ready")))
            assert live.play(token, "CAready", headers={"Prefer": "wait=5"}).status == 200
            live.put_call(token, "CAfails", upstream.set("/fails.wav", status=500, body=b"upstream broke"))
            drive_to_the_retry_limit(live, token, "CAfails")

            offline = owner.start("serve", tmp_path_factory.mktemp("offline"), *SERVE_ARGS, "--workers", "0")
            offline_client = Client(offline.base_url())
            offline_token = offline_client.business("offline")
            offline_client.put_call(offline_token, "CAoff", upstream.set("/off.wav", body=tune_for("off")))
            yield types.SimpleNamespace(
                live=live, token=token, upstream=upstream, offline_url=offline_client.base_url,
                offline_token=offline_token, error_500=stand_ins[0], gone_503=stand_ins[1],
            )
            upstream.hang_all = False
            upstream.release()  # the hung downloads end, so recsvc stops at once
    finally:
        for stand_in in stand_ins:
            stand_in.close()
        owner.close()
        upstream.stop()


def drive_to_the_retry_limit(live, token: str, call_sid: str) -> None:
    """Ask until the call's downloads have failed max-retry-attempts + 1 times (CONTRACT 3, row 10c)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = live.play(token, call_sid)
        if answer.status == 500:
            assert answer.json["error"] == "recording_download_failed", answer.json
            return
        time.sleep(0.1)
    raise AssertionError(f"{call_sid} never reached the retry limit: {live.jobs(call_sid)}")


def hung_call(servers) -> str:
    """A new call whose upstream never answers: its job stays running (or queued behind others)."""
    call_sid = f"CAhung{next(_numbers)}"
    servers.live.put_call(servers.token, call_sid, servers.upstream.set(f"/{call_sid}.wav", hang=True))
    return call_sid


# Each case: outcome, and (base URL, token, call sid, max_wait) from the servers.
CASES = {
    "call_not_found": ("call_not_found", lambda s: (s.live.base_url, s.token, "CAnosuch", 5)),
    "not_found": ("not_found", lambda s: (s.live.base_url, s.token, "CAnourl", 5)),
    "worker_offline": ("worker_offline", lambda s: (s.offline_url, s.offline_token, "CAoff", 5)),
    "download_failed": ("download_failed", lambda s: (s.live.base_url, s.token, "CAfails", 5)),
    "server_error": ("server_error", lambda s: (s.error_500.base_url, "any-token", "CA500", 5)),
    "error": ("error", lambda s: (s.live.base_url, "not-a-token", "CAnourl", 5)),
    "unavailable-closed-port": ("unavailable", lambda s: (f"http://127.0.0.1:{closed_port()}", "t", "CA1", 1)),
    "unavailable-503": ("unavailable", lambda s: (s.gone_503.base_url, "any-token", "CA503", 1)),
    "timeout": ("timeout", lambda s: (s.live.base_url, s.token, hung_call(s), 1)),
}
MATRIX = [pytest.param(case, lang, id=f"{case}-{lang}") for case in CASES for lang in LANGS]


def expected_message(outcome: str, lang: str, text: str, max_wait: float, *, isolates: bool = True) -> None:
    """``text`` is the table's message of ``outcome``; X (whole seconds waited) is max_wait or one more.

    The web player sets server text in <bdi dir="ltr"> (``isolates=False``), the others in U+2066..U+2069.
    """
    if outcome == "error":
        expected = outcome_message("error", lang, answer="HTTP 401 unauthorized", detail="Missing or invalid credentials.")
        assert text == (expected if isolates else expected.replace(LRI, "").replace(PDI, ""))
        return
    template = getattr(OUTCOMES[outcome], lang)
    pattern = re.escape(template).replace(re.escape("{X}"), r"(\d+)")
    match = re.fullmatch(pattern, text)
    assert match, (text, template)
    if "{X}" in template:
        assert max_wait <= int(match.group(1)) <= max_wait + 2, text


# ---------------------------------------------------------------- the Python client


@pytest.mark.parametrize("case, lang", MATRIX)
def test_python_client_stops_with_the_outcome_and_its_message(servers, case, lang):
    outcome, target = CASES[case]
    base_url, token, call_sid, max_wait = target(servers)
    client = RecordingClient(base_url, token, max_wait=max_wait, lang=lang, request_timeout=5)
    started = time.monotonic()
    with pytest.raises(RecordingError) as caught:
        client.wait_for_recording(call_sid)
    assert caught.value.outcome == outcome, caught.value
    expected_message(outcome, lang, caught.value.message, max_wait)
    assert time.monotonic() - started < max_wait + 5  # CONTRACT 8, invariant 3


# ---------------------------------------------------------------- recsvc fetch, as a process


def fetch_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("RECSVC_")}
    env["PYTHONPATH"] = ROOT
    return env


def run_fetch(base_url: str, token: str, call_sid: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsvc", "fetch", call_sid, "--base-url", base_url, "--token", token, *args],
        cwd=cwd, env=fetch_env(), capture_output=True, timeout=60,
    )


@pytest.mark.parametrize("case, lang", MATRIX)
def test_recsvc_fetch_exits_with_the_outcomes_status_and_says_its_message(servers, tmp_path, case, lang):
    outcome, target = CASES[case]
    base_url, token, call_sid, max_wait = target(servers)
    done = run_fetch(base_url, token, call_sid, "--lang", lang, "--max-wait", str(max_wait), cwd=tmp_path)
    stderr = done.stderr.decode("utf-8")
    assert done.returncode == OUTCOMES[outcome].exit_code, stderr
    expected_message(outcome, lang, stderr.splitlines()[-1], max_wait)
    assert "Traceback" not in stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("lang", LANGS)
def test_recsvc_fetch_saves_a_ready_recording(servers, tmp_path, lang):
    done = run_fetch(servers.live.base_url, servers.token, "CAready", "--lang", lang, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "CAready.wav").read_bytes() == tune_for("ready")


@pytest.mark.parametrize("case", ["timeout", "unavailable-closed-port"])
def test_max_wait_zero_is_one_request_in_fetch(servers, tmp_path, case):
    outcome, target = CASES[case]
    base_url, token, call_sid, _ = target(servers)
    started = time.monotonic()
    done = run_fetch(base_url, token, call_sid, "--max-wait", "0", cwd=tmp_path)
    assert done.returncode == OUTCOMES[outcome].exit_code
    assert done.stderr.decode().splitlines() == [outcome_message(outcome, "en", waited=0)]  # no wait, no progress
    assert time.monotonic() - started < 3


def test_max_wait_zero_is_one_request_at_a_real_server(servers):
    call_sid = hung_call(servers)
    with pytest.raises(RecordingError) as caught:
        RecordingClient(servers.live.base_url, servers.token, max_wait=0).wait_for_recording(call_sid)
    assert (caught.value.outcome, caught.value.requests) == ("timeout", 1)
    assert [job["status"] for job in servers.live.jobs(call_sid)] in (["queued"], ["running"])


def test_progress_while_a_request_is_held_in_plain_lines_and_on_a_terminal(servers, tmp_path):
    """Real time: the server holds the first request 6 s; progress comes at 5 s in both runs."""
    base_url = servers.live.base_url
    args = ["--base-url", base_url, "--token", servers.token, "--max-wait", "7"]
    plain = subprocess.Popen([sys.executable, "-m", "recsvc", "fetch", hung_call(servers), "--lang", "he", *args],
                             cwd=tmp_path, env=fetch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    columns = 60
    terminal_sid = hung_call(servers)
    terminal = run_in_a_terminal([sys.executable, "-m", "recsvc", "fetch", terminal_sid, *args], columns, tmp_path)
    _, err = plain.communicate(timeout=30)
    assert plain.returncode == 5
    lines = err.decode("utf-8").splitlines()
    url = f"{LRI}{base_url}{PDI}"
    # Whole seconds: the report due at 5 s, the held answer due at 6 s (a busy machine may add one).
    assert re.fullmatch(rf"{LRI}CAhung\d+{PDI}: [56] שניות, ניסיון 1 אל {re.escape(url)}: ממתינים לתשובה "
                        r"\(השרת רשאי להמתין עד 7 שניות\); נשמע לאחרונה: עדיין כלום", lines[0]), lines
    assert re.fullmatch(rf"{LRI}CAhung\d+{PDI}: [67] שניות, ניסיון 1 אל {re.escape(url)}: 202 ניסיון 0/3, "
                        r"העבודה (בהורדה|בתור); ניסיון הבא בעוד 1 שניות", lines[1]), lines
    expected_message("timeout", "he", lines[-1], 7)

    code, screen = terminal
    assert code == 5
    shown = screen.decode("utf-8")
    updates = re.findall(r"\r([^\r\n]*)\x1b\[K", shown)
    assert len(updates) >= 2, shown
    assert all(len(update) <= columns - 1 for update in updates), updates
    assert re.match(rf"{terminal_sid}: [56]s, attempt 1 to http://127\.0\.0\.1:", updates[0]), updates
    assert updates[0].endswith("…")  # cut to the terminal, not wrapped
    assert shown.rstrip("\r\n").splitlines()[-1] == outcome_message("timeout", "en", waited=int(
        re.search(r"waited (\d+)", shown).group(1)))


def run_in_a_terminal(command: list[str], columns: int, cwd) -> tuple[int, bytes]:
    """Run ``command`` with stdin, stdout and stderr on a pseudo-terminal ``columns`` wide; (status, output)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(command, cwd=cwd, env=fetch_env(), stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(10), output
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()


def test_dash_to_a_terminal_is_refused_with_exit_2(servers, tmp_path):
    code, output = run_in_a_terminal(
        [sys.executable, "-m", "recsvc", "fetch", "CAready", "-o", "-", "--base-url", servers.live.base_url,
         "--token", servers.token, "--lang", "he"], 80, tmp_path)
    assert code == 2
    assert "לא נכתוב שמע למסוף" in output.decode("utf-8")
    assert b"RIFF" not in output


# ---------------------------------------------------------------- the web player in Chromium


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    with Browser() as chromium:
        yield chromium


# Mount a player on a fresh element of a page of `origin`; its states, texts and markup when it stops.
MOUNT_JS = """import("/player.js").then(async ({mountPlayer}) => {
    const element = document.createElement("section");
    const message = document.createElement("p");
    message.className = "recsvc-player__message";
    element.append(message);
    document.body.append(element);
    const announced = [];
    new MutationObserver(() => announced.push(message.textContent))
        .observe(message, {childList: true, subtree: true, characterData: true});
    const states = [];
    const progress = new Set();
    const player = mountPlayer(element, {...OPTIONS, onState: (s) => states.push(s.state)});
    const ticking = setInterval(() => {
        const line = element.querySelector(".recsvc-player__progress");
        if (line && !line.hidden) progress.add(line.textContent);
    }, 200);
    let finished = await player.finished;
    if (RETRY) {
        element.querySelector(".recsvc-player__retry").click();
        finished = await player.finished;
    }
    clearInterval(ticking);
    await new Promise((resolve) => setTimeout(resolve, 50));  // the observer's last records
    const audio = element.querySelector("audio");
    const retry = element.querySelector("button.recsvc-player__retry");
    return {
        finished, state: element.dataset.state, states, announced, progress: [...progress],
        message: message.textContent, role: message.getAttribute("role"), live: message.getAttribute("aria-live"),
        bdi: [...message.querySelectorAll("bdi")].map((b) => [b.dir, b.textContent]),
        dir: element.dir, lang: element.lang,
        retry: retry && retry.textContent,
        audio: audio && {label: audio.getAttribute("aria-label"), src: audio.getAttribute("src")},
    };
})"""


def web_player(browser, origin: str, *, retry: bool = False, timeout: float = 30, **options) -> dict:
    with browser.open(f"{origin}/player?call_sid=none") as page:
        page.wait_for("document.readyState === 'complete'", timeout=10)
        script = MOUNT_JS.replace("OPTIONS", json.dumps(options)).replace("RETRY", json.dumps(retry))
        return page.evaluate(script, timeout=timeout)


def page_origin(servers, base_url: str) -> tuple[str, str]:
    """(page origin, baseUrl): every server serves the player from its own origin; a closed port cannot."""
    serving = (servers.live.base_url, servers.offline_url, servers.error_500.base_url, servers.gone_503.base_url)
    return (base_url, "") if base_url in serving else (servers.live.base_url, base_url)


@pytest.mark.parametrize("case, lang", MATRIX)
def test_web_player_stops_with_the_outcome_and_announces_each_state_once(browser, servers, case, lang):
    outcome, target = CASES[case]
    base_url, token, call_sid, max_wait = target(servers)
    origin, base = page_origin(servers, base_url)
    result = web_player(browser, origin, baseUrl=base, callSid=call_sid, token=token, lang=lang, maxWait=max_wait)
    assert result["finished"] == result["state"] == outcome, result
    expected_message(outcome, lang, result["message"], max_wait, isolates=False)
    # The live region: polite, and one text per state (waiting, then the stop), not one per second.
    assert (result["role"], result["live"]) == ("status", "polite")
    assert result["announced"] == [result["announced"][0], result["message"]], result["announced"]
    assert (result["lang"], result["dir"]) == (lang, "rtl" if lang == "he" else "ltr")
    assert result["retry"] == ("נסו שוב" if lang == "he" else "Try again")
    if outcome == "error" and lang == "he":
        assert result["bdi"] == [["ltr", "HTTP 401 unauthorized"], ["ltr", "Missing or invalid credentials."]]


def test_web_player_progress_ticks_apart_from_the_live_region_and_names_the_server(browser, servers):
    result = web_player(browser, servers.live.base_url, callSid=hung_call(servers), token=servers.token,
                        lang="en", maxWait=3)
    assert result["state"] == "timeout"
    assert len(result["announced"]) == 2  # "Preparing the recording…", then the timeout
    # The first request is held 3 s; the line ticks meanwhile, naming the server and what it heard so far.
    held = [f"Attempt 1, waited {n} s. Asking {servers.live.base_url}; last heard: nothing yet" for n in (0, 1, 2)]
    assert set(held) <= set(result["progress"]), result["progress"]


@pytest.mark.parametrize("lang", LANGS)
def test_web_player_try_again_starts_a_new_round(browser, servers, lang):
    result = web_player(browser, servers.live.base_url, retry=True, callSid="CAnosuch", token=servers.token,
                        lang=lang, maxWait=5)
    assert result["finished"] == "call_not_found"
    assert result["states"].count("waiting") >= 2 and result["states"][-1] == "call_not_found", result["states"]
    assert len(result["announced"]) == 4  # waiting, stop, waiting, stop


@pytest.mark.parametrize("lang, label", [("he", "הקלטת השיחה CAready"), ("en", "Recording of call CAready")])
def test_web_player_audio_has_an_accessible_name(browser, servers, lang, label):
    result = web_player(browser, servers.live.base_url, callSid="CAready", token=servers.token, lang=lang, maxWait=5)
    assert result["state"] == "playing"
    assert result["audio"]["label"] == label
    assert result["retry"] is None


@pytest.mark.parametrize("case", ["timeout", "unavailable-closed-port"])
def test_max_wait_zero_is_one_request_in_the_web_player(browser, servers, case):
    outcome, target = CASES[case]
    base_url, token, call_sid, _ = target(servers)
    origin, base = page_origin(servers, base_url)
    counting = """(url, init) => { window.requestsMade = (window.requestsMade || 0) + 1; return fetch(url, init); }"""
    script = MOUNT_JS.replace("OPTIONS", json.dumps(
        {"baseUrl": base, "callSid": call_sid, "token": token, "maxWait": 0})[:-1] + f", fetchImpl: {counting}}}"
    ).replace("RETRY", "false")
    with browser.open(f"{origin}/player?call_sid=none") as page:
        page.wait_for("document.readyState === 'complete'", timeout=10)
        result = page.evaluate(script, timeout=20)
        requests = page.evaluate("window.requestsMade")
    assert result["state"] == outcome
    assert requests == 1
    expected_message(outcome, "en", result["message"], 0)


def test_the_player_page_takes_max_wait_0_as_one_request(browser, servers):
    call_sid = hung_call(servers)
    with browser.open(f"{servers.live.base_url}/player?call_sid={call_sid}&max_wait=0#token={servers.token}") as page:
        state = page.wait_for("""(() => { const s = document.getElementById("player").dataset.state;
                                          return s !== "waiting" && s; })()""", timeout=10)
    assert state == "timeout"
    assert len(servers.live.jobs(call_sid)) == 1


def test_web_and_python_players_read_every_answer_alike(browser, servers):
    answers = [(status, code) for status in (200, 202, 400, 401, 403, 404, 409, 500, 501, 502, 503, 504)
               for code in ("", "call_not_found", "no_recording_url", "worker_not_processing_queue",
                            "recording_download_failed", "internal_error")]
    with browser.open(f"{servers.live.base_url}/player?call_sid=none") as page:
        web = page.evaluate(f"""import("/player.js").then((m) =>
            {json.dumps(answers)}.map(([status, code]) => m.outcomeForStatus(status, code)))""")
    same_words = {"play": "ready", "wait": "processing", "backoff": "unavailable"}
    python = [player_action(status, code or None) for status, code in answers]
    assert web == [same_words.get(action, action) for action in python]

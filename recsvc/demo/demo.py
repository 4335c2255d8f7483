"""The teaching demo: ``python -m recsvc demo``, one process showing every way a recording can end.

Theory of operation. ``run_demo`` starts an ordinary recsvc (the same App as
``serve``) with short timings, plus an embedded ``FakeUpstream`` on loopback
that serves real WAV tunes (``recsvc.demo.audio.tune_for``). It creates (or, on a
re-run, reuses) one demo business and PUTs one call per ``SCENARIOS`` row (each run with fresh URLs),
each pointing at an upstream path scripted to behave as that row says: fast,
slow, missing, 404, 500, an HTML page instead of audio, or a hang. The
service decides every answer exactly as in production; only the upstream is
fake.

The demo page (``/``: static/index.html + demo.js) reads everything it shows
from the routes mounted here, under ``/demo/``, admin-token protected:

- ``GET  /demo/scenarios``             the business, the timings, the scenarios and drills
- ``POST /demo/upstream/hang``          every upstream request hangs (the "upstream hangs" drill)
- ``POST /demo/upstream/recover``       hung requests are released, new ones answer at once
- ``POST /demo/calls/{call_sid}/reset`` the call gets a fresh URL: a new history, counter deleted

The tokens live in ``demo.json`` in the data dir, so a re-run on the same
dir reuses the business; ``--fresh`` empties the dir first, and nothing else
is ever removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import json
import logging
import math
import os
import secrets
import shutil
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from ..contract.settings import SETTINGS, Settings, SettingsError, load_settings
from ..http.api import UNAUTHORIZED, ApiError, bearer_token, json_response
from ..http.protocol import Request, Response
from ..http.routes import make_route
from ..run.app import DATABASE_FILE, App
from ..run.logs import configure_logging
from .audio import tune_for
from .fake_upstream import FakeUpstream, Script

log = logging.getLogger(__name__)

STATE_FILE = "demo.json"
BUSINESS_NAME = "recsvc demo"

# Demo timings (CONTRACT 2 names), used unless a flag or RECSVC_* variable says
# otherwise. download-timeout stays above job-timeout so that a hung upstream
# makes a *stuck* job (CONTRACT 4) rather than a plain download failure; more
# threads than scenarios, because each hung download holds a thread until
# its own deadline even after its job was marked stuck.
DEMO_DEFAULTS = {
    "port": "0",
    "data_dir": "./demo-data",
    "job_timeout": "10",
    "retry_window": "60",
    "heartbeat_interval": "1",
    "recovery_retry_after": "2",
    "download_timeout": "15",
    "workers": "8",
    "shutdown_grace": "2",
    # Shorter than the slow scenario, so a player holding its request with
    # Prefer: wait (CONTRACT 5b) still sees 202 before 200.
    "max_wait": "2",
}
SHOWN_SETTINGS = ("job_timeout", "retry_window", "heartbeat_interval", "retry_after", "recovery_retry_after",
                  "max_retry_attempts", "download_timeout", "max_wait", "workers")


@dataclass(frozen=True)
class Scenario:
    """One demo call: how its upstream behaves and which contract row the player will meet."""

    key: str
    call_sid: str
    title: str
    expect: str                                   # what the player ends with
    contract: str                                 # the rows it shows
    explain: str                                  # two sentences; {placeholders} from the settings
    script: Callable[[Settings, bytes], Script] | None   # None: the call has no recording_url


def _slow_seconds(settings: Settings) -> float:
    """Slow, but inside job-timeout: the point is that a slow job is not a stuck one."""
    return min(5.0, 0.4 * settings.job_timeout, 0.4 * settings.download_timeout)


def _slow_script(settings: Settings, audio: bytes) -> Script:
    chunk = 4096
    pauses = max(1, (len(audio) - 1) // chunk)
    return Script(body=audio, chunk_size=chunk, chunk_delay=_slow_seconds(settings) / pauses)


def _not_found_delay(settings: Settings) -> float:
    """Longer than a held request (max-wait), so the first answer is a real 202, and well inside
    job-timeout and download-timeout, so the job ends as upstream_not_found, never as stuck."""
    return round(min(settings.max_wait + 1.0, 0.5 * settings.job_timeout, 0.5 * settings.download_timeout), 2)


def _not_found_script(settings: Settings, audio: bytes) -> Script:
    return Script(status=404, body=b"Not Found\n", content_type="text/plain", delay=_not_found_delay(settings))


_HTML_PAGE = (b"<!doctype html><html><head><title>Sign in</title></head>"
              b"<body><h1>Please sign in</h1><p>Your session has expired.</p></body></html>\n")

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "ready", "demo-ready", "Ready quickly", "200 (held by Prefer: wait) or 202 then 200; the tune plays",
        "CONTRACT 3, rows 10a, 9 and 4",
        "The first request finds no job for this URL and creates one (row 10a): it answers 202 with Retry-After, "
        "or, as the player sends Prefer: wait (section 5b), it is held until the file is ready. The worker stores "
        "and verifies the file within a moment, so the answer is 200 with the audio (row 4).",
        lambda settings, audio: Script(body=audio)),
    Scenario(
        "slow", "demo-slow", "Slow upstream", "several 202s, then 200",
        "CONTRACT 3, row 9 (and section 4)",
        "The upstream sends the file in slow chunks for about {slow_seconds:g} s, longer than a request is held "
        "(max-wait {max_wait:g} s), so the job stays running and every answer is a plain 202 that spends no "
        "retry (row 9). It finishes well inside job-timeout ({job_timeout:g} s): slow but never stuck, then it "
        "plays.",
        _slow_script),
    Scenario(
        "no_url", "demo-no-url", "No recording URL", "404 no_recording_url at once",
        "CONTRACT 3, row 5",
        "The call exists but has no recording_url, so there is nothing to wait for. The first answer is 404 "
        "no_recording_url and the player stops with not_found instead of polling.",
        None),
    Scenario(
        "upstream_404", "demo-upstream-404", "Upstream 404", "202, then 404 recording_not_found_upstream",
        "CONTRACT 3, row 6",
        "The upstream takes {not_found_delay:g} s to say that the recording does not exist, longer than a request "
        "is held (max-wait {max_wait:g} s), so the first answer is 202. The job then fails with "
        "upstream_not_found, which no retry can change: the next answer is 404 recording_not_found_upstream "
        "and the player stops.",
        _not_found_script),
    Scenario(
        "upstream_500", "demo-upstream-500", "Upstream 500", "202s, then 500 recording_download_failed",
        "CONTRACT 3, rows 10b and 10c",
        "Each job fails with download_failed after 3 requests, and each failure costs one retry from the "
        "counter (row 10b, Retry-After {recovery_retry_after:g} s). After {max_retry_attempts} retries the "
        "answer is 500 recording_download_failed (row 10c), with the counter's TTL as Retry-After.",
        lambda settings, audio: Script(status=500, body=b"Internal Server Error\n", content_type="text/plain")),
    Scenario(
        "html", "demo-html", "Upstream answers an HTML page", "202s (invalid_audio), then 500 "
        "recording_download_failed",
        "CONTRACT 5 (content type from the bytes) and rows 10b, 10c",
        "The upstream answers 200 with a sign-in page, and a web page is not a recording, so the job fails with "
        "invalid_audio instead of caching it. It is retried like any failure and ends in 500 "
        "recording_download_failed.",
        lambda settings, audio: Script(body=_HTML_PAGE, content_type="text/html; charset=utf-8")),
    Scenario(
        "hang", "demo-hang", "Upstream hangs", "202s, stuck, retry, ... then 500 worker_not_processing_queue",
        "CONTRACT 4 (stuck) and rows 8, 10b, 10c",
        "The upstream accepts the request and never answers, so each job stays running until it is older than "
        "job-timeout ({job_timeout:g} s), is marked stuck and costs a retry (rows 8 and 10b). After "
        "{max_retry_attempts} retries the answer is 500 worker_not_processing_queue (row 10c): after "
        "{fail_fast_min:g} to {fail_fast_max:g} s instead of never ({max_retry_attempts} + 1 jobs of "
        "{job_timeout:g} s, each noticed by the player's next request, at most max-wait + Retry-After = "
        "{poll_seconds:g} s later).",
        lambda settings, audio: Script(body=audio, hang=True)),
)

# The page in Hebrew (right to left): each scenario's (title, expect, explain), with the same placeholders.
HEBREW: dict[str, tuple[str, str, str]] = {
    "ready": (
        "מוכן מהר", "200 (הבקשה מוחזקת בזכות Prefer: wait), או 202 ואז 200; המנגינה מתנגנת",
        "הבקשה הראשונה לא מוצאת משימה לכתובת הזו ויוצרת אחת (שורה 10a): התשובה 202 עם Retry-After, או, "
        "כיוון שהנגן שולח Prefer: wait (סעיף 5b), הבקשה מוחזקת עד שהקובץ מוכן. העובד שומר ומאמת את הקובץ "
        "תוך רגע, ולכן התשובה 200 עם השמע (שורה 4)."),
    "slow": (
        "מקור איטי", "כמה תשובות 202, ואז 200",
        "המקור שולח את הקובץ בחלקים איטיים במשך כ-{slow_seconds:g} שניות, יותר ממה שבקשה מוחזקת "
        "(max-wait {max_wait:g} שניות), ולכן המשימה נשארת רצה וכל תשובה היא 202 רגילה שאינה מנצלת ניסיון חוזר "
        "(שורה 9). היא מסתיימת הרבה לפני job-timeout ({job_timeout:g} שניות): איטית אך לא תקועה, ואז מתנגנת."),
    "no_url": (
        "אין כתובת הקלטה", "404 no_recording_url מיד",
        "השיחה קיימת אך אין לה recording_url, כך שאין למה לחכות. התשובה הראשונה היא 404 no_recording_url "
        "והנגן עוצר במצב not_found במקום לשאול שוב ושוב."),
    "upstream_404": (
        "המקור עונה 404", "202, ואז 404 recording_not_found_upstream",
        "למקור לוקח {not_found_delay:g} שניות לומר שההקלטה אינה קיימת, יותר ממה שבקשה מוחזקת "
        "(max-wait {max_wait:g} שניות), ולכן התשובה הראשונה היא 202. אז המשימה נכשלת עם upstream_not_found, "
        "שאף ניסיון חוזר לא ישנה: התשובה הבאה היא 404 recording_not_found_upstream והנגן עוצר."),
    "upstream_500": (
        "המקור עונה 500", "כמה 202, ואז 500 recording_download_failed",
        "כל משימה נכשלת עם download_failed אחרי 3 בקשות, וכל כישלון עולה ניסיון חוזר אחד מהמונה (שורה 10b, "
        "Retry-After {recovery_retry_after:g} שניות). אחרי {max_retry_attempts} ניסיונות חוזרים התשובה היא 500 "
        "recording_download_failed (שורה 10c), עם ה-TTL של המונה כ-Retry-After."),
    "html": (
        "המקור עונה בדף HTML", "כמה 202 (invalid_audio), ואז 500 recording_download_failed",
        "המקור עונה 200 עם דף כניסה, ודף אינטרנט אינו הקלטה, ולכן המשימה נכשלת עם invalid_audio במקום "
        "להישמר. היא מנוסה שוב כמו כל כישלון ומסתיימת ב-500 recording_download_failed."),
    "hang": (
        "המקור נתקע", "כמה 202, תקוע, ניסיון חוזר, ... ואז 500 worker_not_processing_queue",
        "המקור מקבל את הבקשה ולעולם אינו עונה, ולכן כל משימה נשארת רצה עד שהיא ותיקה מ-job-timeout "
        "({job_timeout:g} שניות), מסומנת תקועה ועולה ניסיון חוזר (שורות 8 ו-10b). אחרי {max_retry_attempts} "
        "ניסיונות חוזרים התשובה היא 500 worker_not_processing_queue (שורה 10c): אחרי {fail_fast_min:g} עד "
        "{fail_fast_max:g} שניות במקום לעולם לא ({max_retry_attempts} + 1 משימות של {job_timeout:g} שניות, "
        "שכל אחת מהן מתגלה בבקשה הבאה של הנגן, לכל היותר max-wait + Retry-After = {poll_seconds:g} שניות "
        "אחר כך)."),
}

DRILLS = (
    {"key": "pause", "label": "Pause workers", "method": "POST", "path": "/admin/workers/pause",
     "contract": "CONTRACT 3, row 7",
     "explain": "Paused workers are not live, so a call without a cached file answers 500 "
                "worker_not_processing_queue (reason: no live worker) on its very first request. "
                "Pause, then reset a call: no job is stuck and no retry is spent, the pool's heartbeat says it."},
    {"key": "resume", "label": "Resume workers", "method": "POST", "path": "/admin/workers/resume",
     "contract": "CONTRACT 8, invariant 6",
     "explain": "The job created while paused is still queued and runs as soon as a worker is back. "
                "Play the call again and it answers 200 without any operator action."},
    {"key": "hang", "label": "Upstream hangs", "method": "POST", "path": "/demo/upstream/hang",
     "contract": "CONTRACT 4 and rows 8, 10",
     "explain": "From now on every upstream request hangs, as a stalled recording provider would. "
                "Reset any call and watch its jobs go stuck, get retried and fail fast."},
    {"key": "recover", "label": "Upstream recovers", "method": "POST", "path": "/demo/upstream/recover",
     "contract": "CONTRACT 8, invariant 6",
     "explain": "Hung requests are released and new ones answer at once. A call that already failed fast "
                "gets a fresh cycle after a quiet retry window, or at once when reset."},
    {"key": "cleanup", "label": "Run cleanup now", "method": "POST", "path": "/admin/cleanup",
     "contract": "CONTRACT 4, the sweeper",
     "explain": "The sweeper marks every stuck active job failed without waiting for its next pass. "
                "It never creates jobs: the next request of the call decides the retry."},
)


# Each drill's (label, explain) in Hebrew.
DRILLS_HEBREW: dict[str, tuple[str, str]] = {
    "pause": ("השהיית העובדים",
              "עובדים מושהים אינם חיים, ולכן שיחה בלי קובץ שמור עונה 500 worker_not_processing_queue "
              "(reason: no live worker) כבר בבקשה הראשונה. השהו, ואז אפסו שיחה: אף משימה אינה תקועה ואף ניסיון "
              "חוזר אינו מנוצל, פעימות הלב של העובדים אומרות זאת."),
    "resume": ("חידוש העובדים",
               "המשימה שנוצרה בזמן ההשהיה עדיין בתור ורצה ברגע שעובד חוזר. נגנו את השיחה שוב והיא עונה 200 "
               "בלי שום פעולה של מפעיל."),
    "hang": ("המקור נתקע",
             "מעכשיו כל בקשה למקור נתקעת, כמו אצל ספק הקלטות תקוע. אפסו שיחה כלשהי וצפו במשימות שלה "
             "נתקעות, מנוסות שוב ונכשלות מהר."),
    "recover": ("המקור מתאושש",
                "הבקשות התקועות משתחררות וחדשות נענות מיד. שיחה שכבר נכשלה מהר מקבלת סבב חדש אחרי חלון "
                "ניסיונות שקט, או מיד כשמאפסים אותה."),
    "cleanup": ("ניקוי עכשיו",
                "המנקה מסמן כל משימה פעילה תקועה ככושלת בלי לחכות לסבב הבא שלו. הוא לעולם אינו יוצר משימות: "
                "הבקשה הבאה של השיחה מחליטה על הניסיון החוזר."),
}


def _settings_values(settings: Settings) -> dict:
    s = settings
    return {
        "job_timeout": s.job_timeout, "retry_window": s.retry_window, "heartbeat_interval": s.heartbeat_interval,
        "retry_after": s.retry_after, "recovery_retry_after": s.recovery_retry_after,
        "max_retry_attempts": s.max_retry_attempts, "download_timeout": s.download_timeout,
        "max_wait": s.max_wait, "workers": s.workers, "slow_seconds": round(_slow_seconds(s), 1),
        "not_found_delay": _not_found_delay(s), **fail_fast_window(s),
    }


def fail_fast_window(settings: Settings) -> dict:
    """When the hang scenario's final 500 comes, counted from the player's first request.

    Each of the max-retry-attempts + 1 jobs runs job-timeout before it is
    stuck (CONTRACT 4). The stuck job is marked, and the next one created,
    by the player's next request (rows 8, 10b): a held request looks without
    side effects (5b), so that request comes at most max-wait + Retry-After
    later. The last stuck job is answered 500 the same way (10c).
    """
    s = settings
    jobs = s.max_retry_attempts + 1
    # The player clamps Retry-After to 1..10 s (CONTRACT 7).
    poll = s.max_wait + min(10.0, max(1.0, math.ceil(max(s.retry_after, s.recovery_retry_after))))
    return {"fail_fast_min": round(jobs * s.job_timeout, 1), "fail_fast_max": round(jobs * (s.job_timeout + poll), 1),
            "poll_seconds": round(poll, 1)}


# ------------------------------------------------------------------ settings and the data dir

def demo_settings(args: argparse.Namespace, environ: dict | None = None) -> Settings:
    """The normal settings, with the demo's defaults where neither a flag nor a variable is given."""
    environ = os.environ if environ is None else environ
    flags = dict(vars(args))
    env_of = {row.name: row.env for row in SETTINGS}
    for name, value in DEMO_DEFAULTS.items():
        if flags.get(name) is None and env_of[name] not in environ:
            flags[name] = value
    settings = load_settings(flags, environ)
    # The fake upstream is on loopback: allow it, whatever else is allowed.
    if flags.get("allow_upstream") is None and env_of["allow_upstream"] not in environ:
        return dataclasses.replace(settings, allow_upstream=("loopback",))
    if not settings.allows_loopback:
        return dataclasses.replace(settings, allow_upstream=settings.allow_upstream + ("loopback",))
    return settings


def _looks_like_data_dir(path: str) -> bool:
    names = set(os.listdir(path))
    return not names or DATABASE_FILE in names or STATE_FILE in names


def empty_data_dir(path: str) -> None:
    """``--fresh``: remove a recsvc data dir; refuse anything that does not look like one."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path) or not _looks_like_data_dir(path):
        raise SettingsError(f"--fresh will not remove {path!r}: it does not look like a recsvc data dir")
    shutil.rmtree(path)


def _read_state(data_dir: str) -> dict:
    try:
        with open(os.path.join(data_dir, STATE_FILE), encoding="utf-8") as file:
            state = json.load(file)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_state(data_dir: str, state: dict) -> None:
    path = os.path.join(data_dir, STATE_FILE)
    temp = path + ".tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds tokens
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(state, file, indent=2)
    os.replace(temp, path)


# ------------------------------------------------------------------ the running demo

class Demo:
    """The App, its fake upstream, the demo business and its calls, and the /demo/ routes."""

    def __init__(self, settings: Settings, state: dict):
        self.settings = settings
        self.state = state
        self.upstream = _start_upstream(state.get("upstream_port"))
        self.app = App(settings)
        self._takes_lock = threading.Lock()  # guards _takes
        self._takes = 0
        self.business_id, self.token = self._business()
        self.state.update(business_id=self.business_id, business_token=self.token,
                          upstream_port=int(self.upstream.base_url.rsplit(":", 1)[1]))
        self._script_upstream()
        # Every run starts each call as Reset does, with a fresh URL (its earlier jobs stop counting,
        # its counter is deleted): a re-run behaves like the first run, whatever the last one left.
        for scenario in SCENARIOS:
            self.app.service.put_call(self.business_id, scenario.call_sid, self.fresh_url_of(scenario))
        for route in self.routes():
            self.app.api.mount(route)

    def _business(self) -> tuple[int, str]:
        token = self.state.get("business_token")
        business_id = self.app.service.authenticate(token) if isinstance(token, str) else None
        if business_id is not None:
            return business_id, token
        return self.app.service.create_business(BUSINESS_NAME)

    def _script_upstream(self) -> None:
        for scenario in SCENARIOS:
            if scenario.script is not None:
                audio = tune_for(scenario.call_sid)
                self.upstream.set(self._upstream_path(scenario), scenario.script(self.settings, audio))

    @staticmethod
    def _upstream_path(scenario: Scenario) -> str:
        return f"/recordings/{scenario.call_sid}.wav"

    def base_url_of(self, scenario: Scenario) -> str | None:
        return None if scenario.script is None else self.upstream.url(self._upstream_path(scenario))

    def fresh_url_of(self, scenario: Scenario) -> str | None:
        """The scenario's upstream URL with a query no earlier run or reset used."""
        url = self.base_url_of(scenario)
        if url is None:
            return None
        with self._takes_lock:
            self._takes += 1
            return f"{url}?take={int(self.app.clock() * 1000)}-{self._takes}"

    def start(self) -> "Demo":
        self.app.start(http=True)
        return self

    def stop(self) -> bool:
        # The upstream first: hung downloads then fail at once instead of holding the exit.
        self.upstream.stop()
        return self.app.stop()

    # ---- the /demo/ routes

    def routes(self):
        return (
            make_route("demo_scenarios", "/demo/scenarios", get=self.get_scenarios),
            make_route("demo_upstream_hang", "/demo/upstream/hang", post=self.upstream_hang),
            make_route("demo_upstream_recover", "/demo/upstream/recover", post=self.upstream_recover),
            make_route("demo_reset_call", "/demo/calls/{call_sid}/reset", post=self.reset_call),
        )

    def _require_admin(self, request: Request) -> None:
        given = (bearer_token(request) or "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, self.settings.admin_token.encode()):
            raise UNAUTHORIZED

    def get_scenarios(self, request: Request) -> Response:
        self._require_admin(request)
        values = _settings_values(self.settings)
        scenarios = [{
            "key": s.key, "call_sid": s.call_sid, "title": s.title, "expect": s.expect, "contract": s.contract,
            "explain": s.explain.format(**values),
            "he": dict(zip(("title", "expect", "explain"), HEBREW[s.key][:2] + (HEBREW[s.key][2].format(**values),))),
        } for s in SCENARIOS]
        drills = [{**drill, "he": dict(zip(("label", "explain"), DRILLS_HEBREW[drill["key"]]))} for drill in DRILLS]
        return json_response(200, {"business_id": self.business_id, "settings": values,
                                   "upstream_hangs": self.upstream.hang_all,
                                   "scenarios": scenarios, "drills": drills})

    def upstream_hang(self, request: Request) -> Response:
        self._require_admin(request)
        self.upstream.hang_all = True
        log.warning("demo: the upstream now hangs on every request")
        return json_response(200, {"upstream_hangs": True})

    def upstream_recover(self, request: Request) -> Response:
        self._require_admin(request)
        self.upstream.hang_all = False
        log.warning("demo: the upstream answers again")
        return json_response(200, {"upstream_hangs": False})

    def reset_call(self, request: Request, call_sid: str) -> Response:
        """A fresh URL for the call: its earlier jobs stop counting and its counter is deleted (CONTRACT 6)."""
        self._require_admin(request)
        scenario = next((s for s in SCENARIOS if s.call_sid == call_sid), None)
        if scenario is None:
            raise ApiError("not_found", "No such demo call.")
        _, view = self.app.service.put_call(self.business_id, call_sid, self.fresh_url_of(scenario))
        return json_response(200, view)


def _start_upstream(port) -> FakeUpstream:
    """The fake upstream, on the port of the last run when it is free, as a matter of tidiness."""
    if isinstance(port, int) and 0 < port < 65536:
        try:
            return FakeUpstream("127.0.0.1", port).start()
        except OSError:
            pass
    return FakeUpstream("127.0.0.1", 0).start()


def banner(demo: Demo, base_url: str) -> str:
    s = demo.settings
    values = _settings_values(s)
    shown = ", ".join(f"{name.replace('_', '-')} {values[name]:g}" + ("s" if isinstance(values[name], float) else "")
                      for name in SHOWN_SETTINGS)
    admin, token = s.admin_token, demo.token
    ready = SCENARIOS[0].call_sid
    return "\n".join([
        "",
        "recsvc demo",
        f"  settings:      {shown}",
        f"  data dir:      {os.path.abspath(s.data_dir)} (kept on exit; --fresh starts empty)",
        f"  fake upstream: {demo.upstream.base_url} (loopback)",
        f"  business:      id {demo.business_id}, calls " + ", ".join(sc.call_sid for sc in SCENARIOS),
        "",
        "Open the demo page:",
        f"  {base_url}/#token={token}&admin={admin}",
        "",
        "Or with curl:",
        f"  curl -i -H 'Authorization: Bearer {token}' {base_url}/api/recordings/file/{ready}",
        f"  curl -i -X POST -d '' -H 'Authorization: Bearer {admin}' {base_url}/admin/workers/pause",
        f"  curl -i -X POST -d '' -H 'Authorization: Bearer {admin}' {base_url}/demo/calls/{ready}/reset",
        f"  curl -s -H 'Authorization: Bearer {admin}' '{base_url}/admin/jobs?call_sid={ready}"
        f"&business_id={demo.business_id}'",
        f"  curl -s -H 'Authorization: Bearer {admin}' {base_url}/admin/retry-counters/{demo.business_id}/{ready}",
        "",
        "Ctrl-C stops the demo.",
        "",
    ])


def run_demo(args: argparse.Namespace, wait_for_signal: Callable[[], None]) -> int:
    """The ``demo`` command: start, print the page URL, serve until SIGINT/SIGTERM, exit 0."""
    try:
        settings = demo_settings(args)
        if args.fresh:
            empty_data_dir(settings.data_dir)
    except SettingsError as exc:
        print(f"recsvc: error: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    logging.getLogger("recsvc.access").setLevel(logging.WARNING)  # the page polls every second
    os.makedirs(settings.data_dir, exist_ok=True)
    state = _read_state(settings.data_dir)
    if settings.admin_token is None:
        stored = state.get("admin_token")
        admin = stored if isinstance(stored, str) and len(stored) >= 16 else secrets.token_urlsafe(24)
        state["admin_token"] = admin
        settings = dataclasses.replace(settings, admin_token=admin)
    try:
        demo = Demo(settings, state).start()
    except OSError as exc:
        print(f"recsvc: error: cannot start: {exc}", file=sys.stderr)
        return 1
    _write_state(settings.data_dir, demo.state)
    base_url = demo.app.base_url
    print(f"recsvc listening on {base_url}", file=sys.stderr, flush=True)
    print(banner(demo, base_url), flush=True)
    wait_for_signal()
    log.info("stopping the demo; the data dir %s is kept", settings.data_dir)
    demo.stop()
    return 0


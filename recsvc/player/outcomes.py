"""What a player says (CONTRACT 7): each stop with its words in Hebrew and English and its exit status, and its progress.

One table, three readers: ``RecordingClient`` (recsvc.player.client) raises an
outcome with its message, ``recsvc fetch`` prints it and exits with its
status, and the web player (recsvc/player/web/player.js) keeps a copy of the
same texts, which tests/test_player_outcomes.py holds equal to this one by
parsing the script.

Messages are templates: ``{X}`` is the whole seconds waited (the contract's
X); ``{answer}`` and ``{detail}`` of ``error`` are the status and code the
server answered and its own English sentence. The contract gives no text for
``error``; ours names what the server said. In Hebrew every piece of text
that came from the server (a code, a URL, a sentence) is wrapped in a
left-to-right isolate, U+2066 ... U+2069, so it reads in its own order inside
the right-to-left sentence (CONTRACT 7, last paragraph).

This module also holds the other lines a player shows, in both languages,
so that ``--lang he`` translates every line: ``Progress`` (what a player
reports while it waits: the server it asks and what it last ``Heard``) and
what ``recsvc fetch`` prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LANGS = ("he", "en")

# Left-to-right isolate (U+2066) and pop directional isolate (U+2069).
LRI = "\u2066"
PDI = "\u2069"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Outcome:
    """One way a player stops (CONTRACT 7) and what ``recsvc fetch`` exits with."""

    name: str
    exit_code: int
    he: str
    en: str


# CONTRACT 7, the messages table, word for word (X is {X}); `error` is ours.
OUTCOMES: dict[str, Outcome] = {
    outcome.name: outcome
    for outcome in (
        Outcome(
            "call_not_found", 3,
            "השיחה לא נמצאה. בדקו את מזהה השיחה",
            "Call not found: check the call ID.",
        ),
        Outcome(
            "not_found", 3,
            "ההקלטה לא נמצאה. אין כתובת הקלטה לשיחה זו",
            "Recording not found: this call has no recording.",
        ),
        Outcome(
            "worker_offline", 4,
            "שרת ההקלטות לא מגיב. אנא נסה שוב מאוחר יותר או פנה לתמיכה",
            "The recording server is not responding. Try again later or contact support.",
        ),
        Outcome(
            "timeout", 5,
            "ההקלטה עדיין בתהליך הכנה (חיכינו {X} שניות). זה יכול לקחת עד 3 דקות",
            "The recording is still being prepared (waited {X} seconds). This can take up to 3 minutes.",
        ),
        Outcome(
            "download_failed", 6,
            "לא הצלחנו להוריד את ההקלטה מהספק. נסו שוב מאוחר יותר",
            "The recording could not be downloaded from the provider. Try again later.",
        ),
        Outcome(
            "unavailable", 7,
            "שרת ההקלטות אינו זמין (ניסינו {X} שניות)",
            "The recording server is unavailable (tried for {X} seconds).",
        ),
        Outcome(
            "server_error", EXIT_ERROR,
            "שגיאה בשרת ההקלטות. נסו שוב מאוחר יותר או פנו לתמיכה",
            "The recording server failed. Try again later or contact support.",
        ),
        Outcome(
            "error", EXIT_ERROR,
            "לא ניתן לטעון את ההקלטה ({answer}).",
            "The recording could not be loaded ({answer}).",
        ),
    )
}

# `error` when the server's answer carried a sentence of its own.
ERROR_WITH_DETAIL = {
    "he": "לא ניתן לטעון את ההקלטה ({answer}): {detail}",
    "en": "The recording could not be loaded ({answer}): {detail}",
}


def ltr(text: str, lang: str) -> str:
    """Server text inside a sentence of ``lang``: its own left-to-right run in Hebrew, as is in English."""
    return f"{LRI}{text}{PDI}" if lang == "he" and text else text


def outcome_message(name: str, lang: str = "en", *, waited: float = 0, answer: str = "", detail: str = "") -> str:
    """The text a player shows when it stops with outcome ``name`` (CONTRACT 7)."""
    template = OUTCOMES[name].he if lang == "he" else OUTCOMES[name].en
    if name == "error" and detail:
        template = ERROR_WITH_DETAIL[lang]
    return template.format(X=int(waited), answer=ltr(answer, lang), detail=ltr(detail, lang))


# The other lines a player shows; server text ({url}, {heard} pieces, {path}) is isolated in Hebrew.
WORDS: dict[str, dict[str, str]] = {
    "en": {
        "asking": "{call_sid}: {elapsed}s, attempt {attempt} to {url}: waiting for the answer{held}; last heard: {heard}",
        "held": " (the server may hold it {seconds}s)",
        "waiting": "{call_sid}: {elapsed}s, attempt {attempt} to {url}: {heard}; next try in {seconds}s",
        "nothing_yet": "nothing yet",
        "processing": "202 attempt {attempt}/{max_attempts}, job {job_status}",
        "saved": "saved {path} ({size} bytes, {content_type}) after {requests} request(s), {seconds}s",
        "cannot_write": "recsvc fetch: cannot write {path}: {reason}",
        "stdout_is_terminal": "recsvc fetch: will not write audio to a terminal; redirect stdout or use -o FILE",
        "interrupted": "recsvc fetch: interrupted",
        "net_refused": "connection refused",
        "net_reset": "connection reset",
        "net_timeout": "no answer in time",
        "net_closed": "connection closed without an answer",
        "net_name": "host name not found",
        "net_other": "network error",
    },
    "he": {
        "asking": "{call_sid}: {elapsed} שניות, ניסיון {attempt} אל {url}: ממתינים לתשובה{held}; נשמע לאחרונה: {heard}",
        "held": " (השרת רשאי להמתין עד {seconds} שניות)",
        "waiting": "{call_sid}: {elapsed} שניות, ניסיון {attempt} אל {url}: {heard}; ניסיון הבא בעוד {seconds} שניות",
        "nothing_yet": "עדיין כלום",
        "processing": "202 ניסיון {attempt}/{max_attempts}, העבודה {job_status}",
        "saved": "נשמר {path} ({size} בתים, {content_type}) אחרי {requests} בקשות, {seconds} שניות",
        "cannot_write": "recsvc fetch: לא ניתן לכתוב את {path}: {reason}",
        "stdout_is_terminal": "recsvc fetch: לא נכתוב שמע למסוף; הפנו את הפלט לקובץ או השתמשו ב-{option}",
        "interrupted": "recsvc fetch: הופסק",
        "net_refused": "החיבור נדחה",
        "net_reset": "החיבור נותק",
        "net_timeout": "אין תשובה בזמן",
        "net_closed": "החיבור נסגר בלי תשובה",
        "net_name": "שם השרת לא נמצא",
        "net_other": "שגיאת רשת",
    },
}

# Job statuses of a 202 (CONTRACT 1) in Hebrew; another word is shown as the server sent it.
JOB_STATUS_HE = {"queued": "בתור", "running": "בהורדה"}


def words(key: str, lang: str, **fields: object) -> str:
    """A line of ``WORDS`` in ``lang``; text fields the server or the user gave are isolated in Hebrew."""
    isolated = {name: ltr(value, lang) if name in _SERVER_TEXT and isinstance(value, str) else value
                for name, value in fields.items()}
    return WORDS[lang][key].format(option=ltr("-o FILE", lang), **isolated)


_SERVER_TEXT = frozenset({"url", "path", "call_sid", "content_type", "reason"})


@dataclass(frozen=True)
class Heard:
    """The last answer as a player tells it: a status with its code and job, or a network error's kind."""

    status: int | None  # None: a network error
    error_code: str | None = None
    job_status: str | None = None
    attempt: object = None
    max_attempts: object = None
    network: str = "other"  # refused, reset, timeout, closed, name, other (recsvc.player.outcomes WORDS net_*)

    def describe(self, lang: str = "en") -> str:
        """"connection refused", "202 attempt 1/3, job running", "503 storage_unavailable", in ``lang``."""
        if self.status is None:
            return words(f"net_{self.network}", lang)
        if self.status == 202 and self.job_status is not None:
            job_status = self.job_status
            if lang == "he":
                job_status = JOB_STATUS_HE.get(job_status) or ltr(job_status, lang)
            return words("processing", lang, attempt=self.attempt, max_attempts=self.max_attempts, job_status=job_status)
        return f"{self.status} {ltr(self.error_code, lang)}" if self.error_code else str(self.status)


@dataclass(frozen=True)
class Progress:
    """What a player tells its user while it waits (CONTRACT 7: whom it asks, what it last heard)."""

    attempt: int  # requests sent so far, the one in flight included
    elapsed: float  # seconds since the player began
    base_url: str
    heard: Heard | None  # the last answer; None before the first
    asking: bool  # True: a request is in flight; False: waiting to send the next one
    seconds: float  # asking: how long the server may hold it; waiting: seconds until the next request

    def text(self, call_sid: str, lang: str = "en") -> str:
        """One line in ``lang``: "CA1: 12s, attempt 3 to http://host: connection refused; next try in 4s"."""
        heard = self.heard.describe(lang) if self.heard is not None else words("nothing_yet", lang)
        # Whole seconds: the next try "in 4s", not in 3.99s.
        common = dict(call_sid=call_sid, elapsed=int(self.elapsed), attempt=self.attempt, url=self.base_url,
                      heard=heard, seconds=math.ceil(self.seconds))
        if self.asking:
            held = words("held", lang, seconds=int(self.seconds)) if self.seconds >= 1 else ""
            return words("asking", lang, held=held, **common)
        return words("waiting", lang, **common)



def exit_codes_help() -> str:
    """The exit statuses of ``recsvc fetch``, one per line, for ``--help`` and the README."""
    lines = [f"  {EXIT_OK}  saved"]
    by_code: dict[int, list[str]] = {}
    for outcome in OUTCOMES.values():
        by_code.setdefault(outcome.exit_code, []).append(outcome.name)
    by_code[EXIT_USAGE] = ["usage (bad flags; -o - with stdout on a terminal)"]
    for code in sorted(by_code):
        names = by_code[code]
        if code == EXIT_ERROR:
            names = [*names, "any other error (an unwritable file included)"]
        lines.append(f"  {code}  {' or '.join(names)}")
    return "\n".join(lines)

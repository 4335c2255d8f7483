"""Headless Chromium for tests, driven over the DevTools pipe with the standard library.

Theory of operation. Chromium started with ``--remote-debugging-pipe`` reads
DevTools protocol commands from its fd 3 and writes answers and events to its
fd 4, each message one JSON document ended by a NUL byte. No port is opened,
so nothing else on the machine can talk to it and no port can collide.

Each ``Browser.open(url)`` gets a fresh browser context (its own cache,
cookies and storage) and one page in it. ``Page.wait_for(expression)``
evaluates JavaScript in the page until it is truthy, then the test reads what
it needs with ``Page.evaluate`` or ``Page.dom``. Waiting on a condition in
real time, instead of dumping the DOM after a fixed virtual time budget, lets
a test end as soon as the page is done and report the page's console when it
is not. Everything has a deadline; a Chromium that dies or stops answering
fails the test with the tail of its stderr instead of hanging it.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest

INSTALL_HINT = "Chromium is not installed: apt-get install chromium"

CANDIDATES = (
    "/usr/bin/chromium",
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
)

# The flags the tests rely on: headless, no sandbox (containers run as root),
# and nothing that reaches out to the network on its own.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",          # an http_proxy in the environment must not see loopback tests
    "--disable-dev-shm-usage",    # small /dev/shm in containers crashes renderers
    "--mute-audio",
)

# Chromium's ends of the pipes are moved at or above this number, so that
# placing one on fd 3 cannot clobber the other.
_HIGH_FD = 10

_TRAMPOLINE = (
    "import os, sys\n"
    "child_in, child_out = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.dup2(child_in, 3)\n"
    "os.dup2(child_out, 4)\n"
    "os.close(child_in)\n"
    "os.close(child_out)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


class ChromiumError(RuntimeError):
    """Chromium died, refused a command, or did not answer in time."""


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome binary, or None."""
    for candidate in CANDIDATES:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


def require_chromium() -> str:
    """The Chromium binary, or skip the calling test with the install hint."""
    path = find_chromium()
    if path is None:
        pytest.skip(INSTALL_HINT)
    return path


def _high_cloexec_dup(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
    return high


class Browser:
    """One headless Chromium process; use as a context manager."""

    def __init__(self, binary: str | None = None, *, command_timeout: float = 15.0):
        self.binary = binary or require_chromium()
        self.command_timeout = command_timeout
        self._next_id = 0
        self._buffer = b""
        self._events: dict[str, list[dict]] = {}
        self._profile = tempfile.TemporaryDirectory(prefix="recsvc-chromium-", ignore_cleanup_errors=True)
        self._stderr = tempfile.TemporaryFile()
        self._start()

    def _start(self) -> None:
        child_in, self._to_chrome = os.pipe()
        self._from_chrome, child_out = os.pipe()
        child_in, child_out = _high_cloexec_dup(child_in), _high_cloexec_dup(child_out)
        argv = [self.binary, *FLAGS, f"--user-data-dir={self._profile.name}",
                "--remote-debugging-pipe", "about:blank"]
        # A tiny Python trampoline puts the pipes on fd 3 and 4 and becomes
        # Chromium. Unlike preexec_fn it is safe while test threads (fake
        # servers) run; unlike /bin/sh (dash) it accepts fd numbers above 9.
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(child_in), str(child_out), *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            pass_fds=(child_in, child_out), start_new_session=True,
        )
        os.close(child_in)
        os.close(child_out)
        self.send("Target.setDiscoverTargets", {"discover": False})

    # -- the protocol -------------------------------------------------------

    def send(self, method: str, params: dict | None = None, *, session_id: str | None = None,
             timeout: float | None = None) -> dict:
        """Send one command and return its result; events met meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._to_chrome, data):]
        except OSError as exc:
            raise ChromiumError(f"cannot send {method}: {exc}{self._stderr_tail()}") from exc
        deadline = time.monotonic() + (timeout or self.command_timeout)
        while True:
            reply = self._read_message(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.setdefault(reply.get("sessionId", ""), []).append(reply)

    def _read_message(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError(f"no answer to {waiting_for} in time{self._stderr_tail()}")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise ChromiumError(f"Chromium exited while waiting for {waiting_for}{self._stderr_tail()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def events(self, session_id: str) -> list[dict]:
        return self._events.get(session_id, [])

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-15:]
        except (OSError, ValueError):
            return ""
        return ("\nChromium stderr (tail):\n" + "\n".join(tail)) if tail else ""

    # -- pages --------------------------------------------------------------

    def open(self, url: str) -> "Page":
        """Navigate a fresh page, in a fresh browser context, to url."""
        context_id = self.send("Target.createBrowserContext")["browserContextId"]
        target_id = self.send("Target.createTarget",
                              {"url": "about:blank", "browserContextId": context_id})["targetId"]
        session_id = self.send("Target.attachToTarget",
                               {"targetId": target_id, "flatten": True})["sessionId"]
        page = Page(self, context_id, target_id, session_id)
        page.send("Runtime.enable")
        page.send("Log.enable")
        navigation = page.send("Page.navigate", {"url": url})
        if navigation.get("errorText"):
            page.close()
            raise ChromiumError(f"cannot load {url}: {navigation['errorText']}")
        return page

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except ChromiumError:
                pass
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()
        self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Page:
    """One page of a Browser, attached in flat session mode."""

    def __init__(self, browser: Browser, context_id: str, target_id: str, session_id: str):
        self.browser = browser
        self.context_id = context_id
        self.target_id = target_id
        self.session_id = session_id

    def send(self, method: str, params: dict | None = None, **kwargs) -> dict:
        return self.browser.send(method, params, session_id=self.session_id, **kwargs)

    def evaluate(self, expression: str, *, timeout: float | None = None) -> Any:
        """The JSON value of a JavaScript expression; promises are awaited."""
        result = self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        }, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise ChromiumError(f"JavaScript error in {expression!r}: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float = 20.0, interval: float = 0.05) -> Any:
        """Evaluate expression until it is truthy; its value, or an AssertionError with the page's console."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except ChromiumError:
                value = None          # the document may be between navigations
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"page never satisfied {expression!r} within {timeout} s\n"
                    f"console:\n{self.console_text()}\nDOM:\n{self.dom()}")
            time.sleep(interval)

    def dom(self) -> str:
        """The serialized DOM as it is now."""
        try:
            return self.evaluate("document.documentElement.outerHTML") or ""
        except ChromiumError as exc:
            return f"<unavailable: {exc}>"

    def console_text(self) -> str:
        """Console calls, uncaught exceptions and browser log entries, one a line."""
        lines = []
        for event in self.browser.events(self.session_id):
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                lines.append(f"console.{params.get('type')}: {args}")
            elif event["method"] == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                lines.append("exception: " + str(details.get("exception", {}).get("description")
                                                 or details.get("text")))
            elif event["method"] == "Log.entryAdded":
                entry = params.get("entry", {})
                lines.append(f"log.{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}".rstrip())
        return "\n".join(lines) or "(empty)"

    def close(self) -> None:
        self.browser._events.pop(self.session_id, None)
        try:
            self.browser.send("Target.closeTarget", {"targetId": self.target_id})
            self.browser.send("Target.disposeBrowserContext", {"browserContextId": self.context_id})
        except ChromiumError:
            pass

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def dom_when(browser: Browser, url: str, until: str, *, timeout: float = 20.0) -> str:
    """Load url in a fresh page and return its DOM once the expression until is truthy."""
    with browser.open(url) as page:
        page.wait_for(until, timeout=timeout)
        return page.dom()

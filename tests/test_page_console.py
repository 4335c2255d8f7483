"""The pages a user opens load in real headless Chromium without an error in the console.

The only errors allowed are the answers the demo asks for on purpose: a play
request answered 4xx or 5xx (the no-url card's 404, the hang card's 500) is
logged by Chromium as a failed resource, and the page shows it as the lesson.
Anything else (a missing asset, the browser's own /favicon.ico, an uncaught
exception, console.error) fails the test with the console.
"""

from __future__ import annotations

import time

import pytest

from chromium import Browser, require_chromium
from demo_process import ADMIN, start_demo

LOADED_JS = 'document.readyState === "complete"'
SETTLE = 1.5  # seconds after load: the browser's own requests (the icon) are logged by then


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    require_chromium()
    process = start_demo(tmp_path_factory.mktemp("console") / "data")
    yield process
    process.interrupt()
    process.kill()


def errors_on(url: str) -> tuple[list[str], str]:
    """The console's error lines on ``url`` once loaded and settled, and the whole console."""
    with Browser() as chromium, chromium.open(url) as page:
        page.wait_for(LOADED_JS, timeout=20)
        time.sleep(SETTLE)
        console = page.console_text()
    wanted = [line for line in console.splitlines()
              if line.startswith(("log.error", "exception", "console.error", "console.assert"))
              and "/api/recordings/file/" not in line]
    return wanted, console


@pytest.mark.parametrize("path", ["/#token={token}&admin={admin}", "/player"])
def test_the_page_loads_without_console_errors(demo, path):
    errors, console = errors_on(demo.base_url + path.format(token=demo.token, admin=ADMIN))
    assert errors == [], console

"""The demo page in headless Chromium: it lists every scenario with its player and live panels.

Chromium runs the page for a few seconds of virtual time and dumps the DOM.
When recsvc/player/web/player.js is not there yet, the demo runs from a copy of
the package with a minimal stand-in player (below), so the page's use of
``mountPlayer`` (``fetchImpl``, ``onState``, ``data-state``) is exercised either way.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from demo_process import ADMIN, start_process
from recsvc.demo.demo import DRILLS, SCENARIOS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# CONTRACT 7 in a dozen lines: enough to drive the page until the real player lands.
STAND_IN_PLAYER = """
export function mountPlayer(element, {baseUrl = "", callSid, token, fetchImpl = fetch, onState}) {
  let stopped = false;
  const controller = {stop() { stopped = true; }, state: "waiting"};
  const set = (state) => { controller.state = state; element.dataset.state = state; onState?.({state}); };
  const finals = {404: "not_found", 500: "worker_offline"};
  (async () => {
    set("waiting");
    while (!stopped) {
      const r = await fetchImpl(`${baseUrl}/api/recordings/file/${callSid}`, {headers: {Authorization: `Bearer ${token}`}});
      if (r.status === 200) return set("playing");
      if (r.status !== 202) return set(finals[r.status] || "error");
      await new Promise((done) => setTimeout(done, 1000 * Number(r.headers.get("Retry-After") || 1)));
    }
  })();
  return controller;
}
"""


def chromium_or_skip() -> str:
    if CHROMIUM is None:
        reason = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("RECSVC_REQUIRE_EXTERNAL"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


def dump_dom(url: str, profile) -> str:
    done = subprocess.run(
        [chromium_or_skip(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def package_with_player(tmp_path) -> str:
    """ROOT when the real player is there; else a copy of recsvc with the stand-in player."""
    if os.path.exists(os.path.join(ROOT, "recsvc", "player", "web", "player.js")):
        return ROOT
    copy = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "recsvc"), copy / "recsvc", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "recsvc" / "player" / "web" / "player.js").write_text(STAND_IN_PLAYER, encoding="utf-8")
    return str(copy)


def section(dom: str, key: str) -> str:
    found = re.search(rf'<section[^>]*id="scenario-{key}".*?</section>', dom, re.S)
    assert found, f"no card for scenario {key}"
    return found.group(0)


def text_of(fragment: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", fragment)))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    chromium_or_skip()
    tmp = tmp_path_factory.mktemp("page")
    source = package_with_player(tmp)
    data = tmp / "data"
    # --max-wait 1: Chromium's virtual time stands still while a request is held.
    demo = start_process([sys.executable, "-m", "recsvc", "demo", "--port", "0", "--data-dir", str(data),
                          "--admin-token", ADMIN, "--max-wait", "1"], data, cwd=source, env={"PYTHONPATH": source})
    try:
        url = f"{demo.base_url}/#token={demo.token}&admin={ADMIN}"
        yield dump_dom(url, tmp / "profile"), demo
    finally:
        demo.interrupt()
        demo.kill()


def test_the_page_lists_every_scenario_with_its_contract_rows(page):
    dom, _ = page
    for scenario in SCENARIOS:
        card = text_of(section(dom, scenario.key))
        assert scenario.title in card and scenario.call_sid in card and scenario.contract in card
        assert "Answers over time" in card and "Retry counter" in card and "Jobs" in card


def test_the_page_offers_every_drill(page):
    dom, _ = page
    for drill in DRILLS:
        assert f'id="drill-{drill["key"]}"' in dom and drill["label"] in text_of(dom)


def test_the_no_url_player_stops_on_404_and_the_panel_shows_the_answer(page):
    dom, _ = page
    card = section(dom, "no_url")
    assert 'data-state="not_found"' in card
    assert re.search(r'<li data-status="404">', card)
    assert "no_recording_url" in text_of(card)


def test_the_ready_call_shows_its_answers_and_its_completed_job(page):
    dom, _ = page
    card = section(dom, "ready")
    # 202 then 200, or 200 at once when the request was held (Prefer: wait, CONTRACT 5b).
    assert re.search(r'<li data-status="20[02]">', card)
    assert re.search(r'<tr data-status="completed">', card)


def test_without_tokens_the_page_says_how_to_start_the_demo(page, tmp_path):
    _, demo = page
    dom = dump_dom(f"{demo.base_url}/", tmp_path / "profile")
    assert "No tokens in the address" in text_of(dom)

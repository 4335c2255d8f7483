"""The demo page as a lesson, in real headless Chromium: every card reaches the end its card promises,
the fail-fast answer is on screen when it comes, and the page speaks English and Hebrew.

One demo process with short timings (job-timeout 2 s, max-wait 0.5 s: a held
request still ends before the slow and the 404 upstreams answer, so both
show a real 202 first) serves the module; the page is loaded once, in a
1280x800 viewport, and every card is read when the hang card's player has
heard its final 500.
"""

from __future__ import annotations

import base64
import json
import struct
import sys

import pytest

from chromium import Browser, require_chromium
from conftest import ROOT
from demo_process import ADMIN, FAST, start_process
from recsvc.demo.demo import DRILLS_HEBREW, HEBREW, SCENARIOS

LESSON = (*FAST, "--job-timeout", "2", "--download-timeout", "4", "--max-wait", "0.5")
VIEWPORT = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
FINAL_JS = """(() => {
  const cards = [...document.querySelectorAll("section.scenario")];
  return cards.length === %d && cards.every((card) => {
    const state = card.querySelector(".player")?.dataset.state;
    return state && state !== "waiting";
  }) && !document.getElementById("failfast").hidden;
})()""" % len(SCENARIOS)
CARDS_JS = """JSON.stringify(Object.fromEntries([...document.querySelectorAll("section.scenario")].map((card) => [
  card.id.replace("scenario-", ""), {
    player: card.querySelector(".player").dataset.state,
    answers: [...card.querySelectorAll(".answers li")].map((li) => ({
      status: Number(li.dataset.status), text: li.textContent})),
    jobs: [...card.querySelectorAll("tbody tr[data-status]")].map((tr) => tr.dataset.status),
  }])))"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    require_chromium()
    data = tmp_path_factory.mktemp("lesson") / "data"
    process = start_process([sys.executable, "-m", "recsvc", "demo", "--port", "0", "--data-dir", str(data),
                             "--admin-token", ADMIN, *LESSON], data, env={"PYTHONPATH": ROOT})
    yield process
    process.interrupt()
    process.kill()


@pytest.fixture(scope="module")
def lesson(demo, tmp_path_factory):
    """The page after the hang card's final answer: its cards, the banner and a screenshot."""
    with Browser() as chromium:
        page = chromium.open("about:blank")
        try:
            page.send("Emulation.setDeviceMetricsOverride", VIEWPORT)
            page.send("Page.navigate", {"url": f"{demo.base_url}/#token={demo.token}&admin={ADMIN}&lang=en"})
            page.wait_for(FINAL_JS, timeout=60)
            page.evaluate("new Promise((done) => setTimeout(done, 300))")  # let the scroll settle
            shot = base64.b64decode(page.send("Page.captureScreenshot", {"format": "png"})["data"])
            path = tmp_path_factory.mktemp("shots") / "fail-fast.png"
            path.write_bytes(shot)
            # The job tables refresh once a second: read them once they caught up with the players.
            page.wait_for('![...document.querySelectorAll("tbody tr[data-status]")]'
                          '.some((tr) => ["queued", "running"].includes(tr.dataset.status))', timeout=15)
            yield {
                "cards": json.loads(page.evaluate(CARDS_JS)),
                "banner": page.evaluate("""(() => { const b = document.getElementById("failfast");
                    const r = b.getBoundingClientRect();
                    return {text: b.textContent, seconds: Number(b.dataset.seconds), callSid: b.dataset.callSid,
                            top: r.top, bottom: r.bottom}; })()"""),
                "answer": page.evaluate("""(() => { const li = document.querySelector("#scenario-hang li.fail-fast");
                    const r = li.getBoundingClientRect();
                    return {top: r.top, bottom: r.bottom, text: li.textContent,
                            height: window.innerHeight, width: window.innerWidth}; })()"""),
                "shot": shot, "shot_path": path, "page": page, "settings": demo.admin("GET", "/demo/scenarios").json,
            }
        finally:
            page.close()


def test_ready_plays(lesson):
    card = lesson["cards"]["ready"]
    assert card["player"] == "playing" and card["answers"][-1]["status"] == 200 and card["jobs"] == ["completed"]


def test_slow_answers_202_then_plays_without_a_retry(lesson):
    card = lesson["cards"]["slow"]
    assert [a["status"] for a in card["answers"]][0] == 202 and card["answers"][-1]["status"] == 200
    assert card["player"] == "playing" and card["jobs"] == ["completed"]
    assert all("attempt 0/" in a["text"] for a in card["answers"] if a["status"] == 202)


def test_no_url_stops_on_the_first_404(lesson):
    card = lesson["cards"]["no_url"]
    assert [a["status"] for a in card["answers"]] == [404] and "no_recording_url" in card["answers"][0]["text"]
    assert card["player"] == "not_found"


def test_upstream_404_answers_202_first_then_404(lesson):
    card = lesson["cards"]["upstream_404"]
    statuses = [a["status"] for a in card["answers"]]
    assert statuses[0] == 202 and statuses[-1] == 404 and set(statuses) == {202, 404}, card["answers"]
    assert "recording_not_found_upstream" in card["answers"][-1]["text"] and card["player"] == "not_found"
    assert card["jobs"] == ["failed"]


@pytest.mark.parametrize("key", ["upstream_500", "html"])
def test_failing_downloads_end_in_500_recording_download_failed(lesson, key):
    card = lesson["cards"][key]
    assert card["answers"][-1]["status"] == 500 and "recording_download_failed" in card["answers"][-1]["text"]
    assert card["jobs"] == ["failed"] * 4


def test_hang_ends_in_500_worker_not_processing_queue_after_the_retries(lesson):
    card = lesson["cards"]["hang"]
    last = card["answers"][-1]
    assert last["status"] == 500 and "worker_not_processing_queue" in last["text"]
    assert "retry limit reached" in last["text"] and card["jobs"] == ["failed"] * 4


def test_the_fail_fast_answer_is_inside_the_viewport_with_the_banner(lesson):
    answer, banner = lesson["answer"], lesson["banner"]
    assert answer["height"] == 800 and answer["width"] == 1280
    assert banner["bottom"] <= answer["top"] and answer["bottom"] <= answer["height"], (banner, answer)
    assert banner["top"] == 0 and banner["callSid"] == "demo-hang"
    assert "worker_not_processing_queue" in banner["text"] and "worker_not_processing_queue" in answer["text"]
    width, height = struct.unpack(">II", lesson["shot"][16:24])  # the PNG's IHDR
    assert (width, height) == (1280, 800), lesson["shot_path"]


def test_the_measured_fail_fast_time_lies_in_the_window_the_settings_predict(lesson):
    settings = lesson["settings"]["settings"]
    seconds = lesson["banner"]["seconds"]
    assert settings["fail_fast_min"] == 4 * 2 and settings["fail_fast_max"] == 4 * (2 + 0.5 + 1)
    assert settings["fail_fast_min"] <= seconds <= settings["fail_fast_max"] + 1, seconds
    assert f"{settings['fail_fast_min']:g} to {settings['fail_fast_max']:g} s" in lesson["banner"]["text"]


def test_the_answers_list_numbers_every_item_in_full(lesson):
    """Item 10 shows "10.", not "0.": the list leaves room for its numbers and scrolls in no box."""
    page = lesson["page"]
    style = page.evaluate("""(() => { const ol = document.querySelector("#scenario-hang .answers");
        const s = getComputedStyle(ol); return {pad: parseFloat(s.paddingInlineStart), overflow: s.overflowY,
        maxHeight: s.maxHeight, items: ol.children.length}; })()""")
    assert style["overflow"] == "visible" and style["maxHeight"] == "none", style
    assert style["pad"] >= 2.5 * 12.8, style  # two digits and a dot at 0.8rem
    assert style["items"] >= 4


def test_the_page_switches_to_hebrew_right_to_left_and_back(lesson):
    page = lesson["page"]
    page.evaluate('document.getElementById("lang-he").click()')
    hebrew = page.evaluate("""(() => ({dir: document.documentElement.dir, lang: document.documentElement.lang,
        titles: [...document.querySelectorAll("section.scenario h2 > span")].map((s) => s.textContent),
        drills: [...document.querySelectorAll(".drill button")].map((b) => b.textContent),
        lead: document.getElementById("lead").textContent, hash: location.hash,
        badge: document.querySelector("#scenario-ready .state").textContent,
        pressed: document.getElementById("lang-he").getAttribute("aria-pressed")}))()""")
    assert hebrew["dir"] == "rtl" and hebrew["lang"] == "he" and hebrew["pressed"] == "true"
    assert hebrew["titles"] == [HEBREW[s.key][0] for s in SCENARIOS]
    assert hebrew["drills"] == [label for label, _ in DRILLS_HEBREW.values()]
    assert "רק המקור מזויף" in hebrew["lead"] and "lang=he" in hebrew["hash"]
    assert hebrew["badge"] == "מנגן", "the player's state is named in Hebrew too"
    page.evaluate('document.getElementById("lang-en").click()')
    english = page.evaluate("""(() => ({dir: document.documentElement.dir,
        titles: [...document.querySelectorAll("section.scenario h2 > span")].map((s) => s.textContent),
        badge: document.querySelector("#scenario-ready .state").textContent}))()""")
    assert english == {"dir": "ltr", "titles": [s.title for s in SCENARIOS], "badge": "playing"}


def test_the_address_can_open_the_page_in_hebrew(demo):
    with Browser() as chromium, chromium.open(f"{demo.base_url}/#token={demo.token}&admin={ADMIN}&lang=he") as page:
        page.wait_for('document.querySelectorAll("section.scenario").length > 0', timeout=20)
        assert page.evaluate("document.documentElement.dir") == "rtl"
        assert page.evaluate('document.querySelector("#scenario-hang h2 > span").textContent') == HEBREW["hang"][0]
        # The settings line reads right to left: its label at the right edge, the flags as one LTR run.
        page.wait_for('document.querySelector("#settings bdi") !== null', timeout=20)
        label, flags = page.evaluate("""(() => { const p = document.getElementById("settings");
            const range = document.createRange(); range.selectNodeContents(p.firstChild);
            const r = range.getBoundingClientRect(), b = p.querySelector("bdi");
            return [[r.left, r.right, p.getBoundingClientRect().right], [b.dir, b.textContent]]; })()""")
        assert label[1] >= label[2] - 2, ("the label sits at the right edge", label)
        assert flags[0] == "ltr" and flags[1].startswith("job-timeout "), flags

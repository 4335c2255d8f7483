"""The web player against a real recsvc, in real headless Chromium: one test per final state.

The page (``/player``) and its module (``/player.js``) are served by recsvc
itself; the states are read from ``#player``'s ``data-state`` and the message
from ``#player-message``, as a host application embedding the player would.
"""

from __future__ import annotations

import types

import pytest
from chromium import Browser, require_chromium
from test_player_page import MESSAGES, assert_language, player_url, settle

from recsvc.demo.audio import tune_for


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    with Browser() as chromium:
        yield chromium


@pytest.fixture
def real(make_harness):
    svc = make_harness(retry_after=1, max_wait=5)
    token = svc.business("player")
    return svc, types.SimpleNamespace(base_url=svc.base_url, token=token)


def test_a_recording_that_lands_plays_from_a_signed_link(browser, real, upstream):
    svc, backend = real
    svc.put_call(backend.token, "CAplay", upstream.set("/play.wav", body=tune_for("play"), delay=1.0))
    snapshot = settle(browser, player_url(backend, "CAplay", max_wait=30))
    assert snapshot["state"] == "playing", snapshot
    assert snapshot["audio"]["src"].startswith("/api/recordings/file/CAplay?exp=")
    assert snapshot["audio"]["error"] is None
    assert snapshot["audio"]["duration"] == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("lang", ["he", "en"])
def test_a_call_without_recording_stops_at_not_found(browser, real, lang):
    svc, backend = real
    svc.put_call(backend.token, "CAnone", None)
    snapshot = settle(browser, player_url(backend, "CAnone", lang=lang))
    assert snapshot["state"] == "not_found"
    assert snapshot["message"] == MESSAGES[("not_found", lang)]
    assert_language(snapshot, lang)


@pytest.mark.parametrize("lang", ["he", "en"])
def test_paused_workers_stop_the_player_at_worker_offline(browser, real, upstream, lang):
    svc, backend = real
    svc.put_call(backend.token, "CAoff", upstream.set("/off.wav", body=tune_for("off")))
    assert svc.admin("POST", "/admin/workers/pause").json == {"paused": True}
    snapshot = settle(browser, player_url(backend, "CAoff", lang=lang))
    assert snapshot["state"] == "worker_offline"
    assert snapshot["message"] == MESSAGES[("worker_offline", lang)]
    assert_language(snapshot, lang)


def test_a_recording_that_never_lands_stops_at_timeout(browser, real, upstream):
    svc, backend = real
    svc.put_call(backend.token, "CAhang", upstream.set("/hang.wav", hang=True))
    snapshot = settle(browser, player_url(backend, "CAhang", max_wait=3), timeout=30)
    assert snapshot["state"] == "timeout"
    assert snapshot["message"].startswith("The recording is still being prepared (waited ")


def test_a_wrong_token_stops_at_error(browser, real):
    svc, backend = real
    wrong = types.SimpleNamespace(base_url=backend.base_url, token="not-a-token")
    snapshot = settle(browser, player_url(wrong, "CAany"))
    assert snapshot["state"] == "error"


def test_an_audio_element_seeks_in_a_served_recording_with_range_requests(browser, real, upstream):
    svc, backend = real
    long_tune = tune_for("seek", seconds=30.0)
    svc.put_call(backend.token, "CAseek", upstream.set("/seek.wav", body=long_tune))
    assert svc.play(backend.token, "CAseek", headers={"Prefer": "wait=5"}).status == 200
    link = svc.request("POST", "/api/recordings/CAseek/link", token=backend.token, body=b"").json["url"]
    with browser.open(f"{svc.base_url}/player?call_sid=none") as page:
        result = page.evaluate(f"""new Promise((resolve) => {{
            const audio = new Audio({link!r});
            audio.preload = "auto";
            audio.addEventListener("error", () => resolve({{error: audio.error && audio.error.code}}));
            audio.addEventListener("loadedmetadata", () => {{
                audio.addEventListener("seeked", () => resolve({{
                    duration: audio.duration, currentTime: audio.currentTime, error: audio.error}}), {{once: true}});
                audio.currentTime = 21.5;
            }}, {{once: true}});
        }})""", timeout=20)
    assert result["error"] is None, result
    assert result["duration"] == pytest.approx(30.0, abs=0.05)
    assert result["currentTime"] == pytest.approx(21.5, abs=0.05)
    metrics = svc.request("GET", "/metrics").body.decode()
    assert 'route="recording_file",method="GET",status="206"' in metrics, "the browser fetched by ranges"

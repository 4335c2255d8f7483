"""``python -m recsvc demo``: each scenario call reaches the outcome the demo page promises, over real HTTP.

One demo process (timings shortened by flags) serves the module; the long
scenarios are played at the same time, each by a player loop that follows
CONTRACT 7, so the whole file takes seconds rather than minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from conftest import ROOT, request
from demo_process import ADMIN, DemoProcess, play, start_demo
from recsvc.demo.demo import SCENARIOS
from recsvc.demo.audio import tune_for

CALLS = {s.key: s.call_sid for s in SCENARIOS}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    process = start_demo(tmp_path_factory.mktemp("demo") / "data")
    yield process
    if process.proc.poll() is None:
        process.proc.send_signal(signal.SIGINT)
        try:
            process.proc.wait(10)
        except Exception:
            process.kill()


@pytest.fixture(scope="module")
def heard(demo):
    """Every scenario played at once, from the demo's start; key -> Future of the answers heard."""
    with ThreadPoolExecutor(len(CALLS)) as pool:
        futures: dict[str, Future] = {key: pool.submit(play, demo.base_url, demo.token, sid, 30)
                                      for key, sid in CALLS.items()}
        yield futures


def final(heard, key: str):
    answers = heard[key].result(timeout=35)
    return answers, answers[-1]


def jobs(demo: DemoProcess, key: str) -> list[dict]:
    answer = demo.admin("GET", f"/admin/jobs?call_sid={CALLS[key]}&business_id={demo.business_id}")
    assert answer.status == 200, answer.body
    return answer.json["jobs"]


def test_the_demo_prints_the_page_url_with_both_tokens_and_its_timings(demo):
    text = demo.stdout_text(wait_for="Ctrl-C")
    assert f"{demo.base_url}/#token={demo.token}&admin={ADMIN}" in text
    assert "job-timeout 1s" in text and "retry-window 30s" in text and "heartbeat-interval 0.2s" in text
    assert f"curl -i -H 'Authorization: Bearer {demo.token}' {demo.base_url}/api/recordings/file/demo-ready" in text


def test_the_scenario_list_comes_from_an_admin_protected_route(demo):
    assert demo.admin("GET", "/demo/scenarios").status == 200
    assert request(demo.base_url, "GET", "/demo/scenarios").status == 401
    assert request(demo.base_url, "GET", "/demo/scenarios", token=demo.token).status == 401
    listed = demo.admin("GET", "/demo/scenarios").json
    assert [s["call_sid"] for s in listed["scenarios"]] == list(CALLS.values())
    assert listed["business_id"] == demo.business_id
    for scenario in listed["scenarios"]:
        assert scenario["contract"].startswith("CONTRACT") and scenario["explain"].count(". ") >= 1
    assert {d["path"] for d in listed["drills"]} >= {"/admin/workers/pause", "/admin/workers/resume",
                                                     "/demo/upstream/hang", "/demo/upstream/recover",
                                                     "/admin/cleanup"}


def test_ready_answers_202_then_200_with_the_exact_wav(heard):
    answers, last = final(heard, "ready")
    assert answers[0].status == 202
    assert last.status == 200 and last.body == tune_for("demo-ready")


def test_slow_upstream_is_202_while_running_then_200_without_a_retry(demo, heard):
    answers, last = final(heard, "slow")
    assert {a.status for a in answers[:-1]} == {202}
    assert last.status == 200 and last.body == tune_for("demo-slow")
    assert [j["status"] for j in jobs(demo, "slow")] == ["completed"]


def test_no_recording_url_is_404_at_once(heard):
    answers, last = final(heard, "no_url")
    assert len(answers) == 1 and last.status == 404 and last.json["error"] == "no_recording_url"


def test_upstream_404_is_404_recording_not_found_upstream(demo, heard):
    answers, last = final(heard, "upstream_404")
    assert last.status == 404 and last.json["error"] == "recording_not_found_upstream"
    assert [j["error_code"] for j in jobs(demo, "upstream_404")] == ["upstream_not_found"]


def test_upstream_500_is_500_recording_download_failed_after_the_retries(demo, heard):
    answers, last = final(heard, "upstream_500")
    assert last.status == 500 and last.json["error"] == "recording_download_failed"
    assert last.json["reason"] == "retry limit reached" and last.json["attempts"] == 3
    assert [a.json["attempt"] for a in answers if a.status == 202][-1] == 3
    assert {j["error_code"] for j in jobs(demo, "upstream_500")} == {"download_failed"}
    assert len(jobs(demo, "upstream_500")) == 4


def test_an_html_page_fails_as_invalid_audio_then_500_recording_download_failed(demo, heard):
    answers, last = final(heard, "html")
    assert last.status == 500 and last.json["error"] == "recording_download_failed"
    assert {j["error_code"] for j in jobs(demo, "html")} == {"invalid_audio"}


def test_a_hanging_upstream_goes_stuck_retry_then_500_worker_not_processing_queue(demo, heard):
    answers, last = final(heard, "hang")
    assert last.status == 500 and last.json["error"] == "worker_not_processing_queue"
    assert last.json["reason"] == "retry limit reached"
    hang_jobs = jobs(demo, "hang")
    assert [j["attempt"] for j in hang_jobs] == [3, 2, 1, 0]
    assert {j["error_code"] for j in hang_jobs} == {"stuck"}
    counter = demo.admin("GET", f"/admin/retry-counters/{demo.business_id}/demo-hang").json
    assert counter["attempts"] == 3 and 0 < counter["ttl"] <= 30


def test_pausing_the_workers_answers_500_no_live_worker_at_once_and_resuming_plays(demo, heard):
    for future in heard.values():  # the drill must not disturb the scenarios above
        future.result(timeout=35)
    assert demo.admin("POST", "/admin/workers/pause").json == {"paused": True}
    try:
        reset = demo.admin("POST", "/demo/calls/demo-ready/reset")
        assert reset.status == 200 and reset.json["cached"] is False
        answers = play(demo.base_url, demo.token, "demo-ready", max_wait=5)
        assert len(answers) == 1
        assert answers[0].status == 500 and answers[0].json["reason"] == "no live worker"
        assert answers[0].json["error"] == "worker_not_processing_queue"
    finally:
        assert demo.admin("POST", "/admin/workers/resume").json == {"paused": False}
    answers = play(demo.base_url, demo.token, "demo-ready", max_wait=10)
    assert answers[-1].status == 200 and answers[-1].body == tune_for("demo-ready")


def test_the_upstream_hang_drill_and_recovery(demo, heard):
    for future in heard.values():
        future.result(timeout=35)
    assert demo.admin("POST", "/demo/upstream/hang").json == {"upstream_hangs": True}
    try:
        demo.admin("POST", "/demo/calls/demo-slow/reset")
        first = play(demo.base_url, demo.token, "demo-slow", max_wait=1.5)
    except AssertionError:
        first = None  # still waiting, as it should be
    finally:
        assert demo.admin("POST", "/demo/upstream/recover").json == {"upstream_hangs": False}
    assert first is None
    answers = play(demo.base_url, demo.token, "demo-slow", max_wait=15)
    assert answers[-1].status == 200 and answers[-1].body == tune_for("demo-slow")


def test_ctrl_c_exits_0_and_keeps_the_data_dir_and_a_rerun_reuses_it(tmp_path):
    data = tmp_path / "data"
    first = start_demo(data)
    try:
        token = first.token
        assert play(first.base_url, token, "demo-ready", max_wait=10)[-1].status == 200
        assert first.interrupt() == 0
    finally:
        first.kill()
    assert (data / "recsvc.sqlite3").exists() and (data / "demo.json").exists()

    again = start_demo(data)
    try:
        assert again.token == token  # the business is reused; the calls were re-PUT
        assert play(again.base_url, token, "demo-ready", max_wait=10)[-1].body == tune_for("demo-ready")
        assert again.interrupt() == 0
    finally:
        again.kill()

    fresh = start_demo(data, "--fresh")
    try:
        assert fresh.token != token
        assert fresh.interrupt() == 0
    finally:
        fresh.kill()


def test_fresh_refuses_a_folder_that_is_not_a_data_dir(tmp_path):
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "recsvc", "demo", "--fresh", "--data-dir", str(keep)],
                          capture_output=True, text=True, timeout=20, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 2
    assert "does not look like a recsvc data dir" in done.stderr
    assert (keep / "notes.txt").read_text() == "mine"


def test_a_rerun_after_a_reset_behaves_like_the_first_run(tmp_path):
    """Each run starts every call with a fresh URL: nothing an earlier run or a reset left counts."""
    data = tmp_path / "data"
    first = start_demo(data)
    try:
        assert play(first.base_url, first.token, "demo-slow", max_wait=10)[-1].status == 200
        assert first.admin("POST", "/demo/calls/demo-slow/reset").status == 200
        assert play(first.base_url, first.token, "demo-slow", max_wait=10)[-1].status == 200
        assert first.interrupt() == 0
    finally:
        first.kill()
    again = start_demo(data)
    try:
        answers = play(again.base_url, again.token, "demo-slow", max_wait=10)
        assert answers[0].status == 202 and answers[0].json["attempt"] == 0
        assert answers[-1].status == 200 and answers[-1].body == tune_for("demo-slow")
        slow_jobs = jobs(again, "slow")
        current = [j for j in slow_jobs if j["recording_url"] == slow_jobs[0]["recording_url"]]
        assert [(j["status"], j["attempt"]) for j in current] == [("completed", 0)]
        counter = again.admin("GET", f"/admin/retry-counters/{again.business_id}/demo-slow").json
        assert counter["attempts"] == 0 and counter["ttl"] == -2
        assert again.interrupt() == 0
    finally:
        again.kill()


def test_make_demo_passes_args_to_the_demo(tmp_path):
    """``make demo ARGS="--fresh --port N"``: the flags reach ``recsvc demo``."""
    import shutil
    import socket

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path / "data"
    data.mkdir()
    (data / "demo.json").write_text("{}")  # --fresh empties it: a data dir that looks like one
    proc = subprocess.Popen(["make", "-s", "demo", f"PYTHON={sys.executable}",
                             f"ARGS=--fresh --port {port} --data-dir {data} --admin-token {ADMIN}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": ROOT}, start_new_session=True)
    try:
        from conftest import wait_listening
        assert wait_listening(proc, timeout=20) == f"http://127.0.0.1:{port}"
        assert request(f"http://127.0.0.1:{port}", "GET", "/demo/scenarios", token=ADMIN).status == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(15)

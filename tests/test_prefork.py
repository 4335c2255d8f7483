"""``serve --processes N``: several real processes on one port, one contract (recsvc.run.prefork).

Real processes and real sockets on 127.0.0.1: connections reach every
process; /metrics from any of them shows all of them; the retry limit holds
across them through the shared counter; SIGTERM stops them all, SIGKILL of
the first stops the others, and a serving process that dies is replaced.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT, wait_until
from processes import SERVE_ARGS, Client
from test_metrics import parse_metrics

from recsvc.demo.audio import sized_wav
from recsvc.core.metrics import Metrics
from recsvc.run.metrics_exchange import MetricsExchange
from recsvc.run.prefork import job_queued_notifier, read_wakeups, watch_parent

COUNTER = ("--counter", "sqlite://")
STARTED = re.compile(r"serving process (\d+) started \(pid (\d+)\)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of a dead parent is reaped by init soon; count it as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def serving_pids(process) -> dict[int, int]:
    """Index -> pid of the newest start of each serving process, from the first process's log."""
    found = {}
    for line in process.lines:
        match = STARTED.search(line)
        if match:
            found[int(match.group(1))] = int(match.group(2))
    return found


@pytest.fixture
def start_group(processes, tmp_path):
    """``serve --processes 3``: (the first process, its Client, the data dir)."""

    def start(job_timeout: str = "0.6"):
        data_dir = tmp_path / "data"
        first = processes.start("serve", data_dir, *SERVE_ARGS, *COUNTER, "--processes", "3",
                                "--shutdown-grace", "1", "--job-timeout", job_timeout, "--heartbeat-interval", "0.2")
        client = Client(first.base_url())
        assert wait_until(lambda: len(serving_pids(first)) == 2, timeout=10)
        return first, client, data_dir

    return start


@pytest.fixture
def group(start_group):
    return start_group()


def scrape_all(client: Client) -> dict:
    answer = client.request("GET", "/metrics")
    assert answer.status == 200
    families = parse_metrics(answer.body.decode())
    for family in families.values():
        keys = [(name, labels) for name, labels, _ in family["samples"]]
        assert len(keys) == len(set(keys)), "a sample is repeated"
    return families


def requests_by_process(families: dict) -> dict[str, float]:
    totals: dict[str, float] = {}
    for _, labels, value in families["recsvc_http_requests_total"]["samples"]:
        process = dict(labels)["process"]
        totals[process] = totals.get(process, 0) + value
    return totals


def test_memory_counter_is_refused_with_several_processes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "recsvc", "serve", "--data-dir", str(tmp_path), "--port", "0",
                           "--processes", "2"], capture_output=True, text=True, cwd=ROOT, timeout=30,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("recsvc: error: --processes 2 needs a retry counter the processes share: "
                                   "--counter sqlite:// or redis://host:port/db, got memory://")


def test_the_worker_command_refuses_processes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "recsvc", "worker", "--data-dir", str(tmp_path),
                           "--processes", "2", *COUNTER], capture_output=True, text=True, cwd=ROOT, timeout=30,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2
    assert "--processes is for the serve command" in proc.stderr


def test_connections_reach_every_process_and_metrics_show_them_all(group):
    first, client, _ = group
    for _ in range(60):  # a fresh connection each; the kernel hands them to whichever process accepts
        assert client.request("GET", "/healthz").status == 200

    def all_three_counted():
        totals = requests_by_process(scrape_all(client))
        return set(totals) == {"0", "1", "2"} and sum(totals.values()) >= 60

    assert wait_until(all_three_counted, timeout=10)
    families = scrape_all(client)
    # The database's gauges appear once, without a process label.
    queued = families["recsvc_jobs"]["samples"]
    assert queued and all("process" not in dict(labels) for _, labels, _ in queued)
    assert {dict(labels)["process"] for _, labels, _ in families["process_resident_memory_bytes"]["samples"]} == {"0", "1", "2"}


def test_the_retry_limit_holds_across_processes(group, upstream):
    """Stuck jobs replaced through whichever process answers: max-retry-attempts (3) retries, then 500."""
    first, client, _ = group
    token = client.business()
    upstream.set("/hang", hang=True)
    client.put_call(token, "CAshared", upstream.url("/hang"))
    attempts = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = client.play(token, "CAshared")  # a new connection each time: any of the three processes
        if answer.status == 500:
            break
        assert answer.status == 202, answer.body
        attempt = answer.json.get("attempt")
        if attempt not in attempts:
            attempts.append(attempt)
        time.sleep(0.1)
    assert answer.status == 500 and answer.json["error"] == "worker_not_processing_queue"
    assert attempts == [0, 1, 2, 3]
    assert len(client.jobs("CAshared")) == 4


def test_requests_held_in_every_process_get_the_file_when_the_job_ends(start_group, upstream):
    """Prefer: wait on fresh connections, so the held requests sit in all three processes."""
    first, client, _ = start_group(job_timeout="60")
    token = client.business()
    upstream.set("/slow", body=sized_wav(4096, "held"), hang=True)
    client.put_call(token, "CAheld", upstream.url("/slow"))
    assert client.play(token, "CAheld").status == 202
    assert upstream.wait_for_hits("/slow", 1, timeout=10)

    def held(_):
        return client.request("GET", "/api/recordings/file/CAheld", token=token, headers={"Prefer": "wait=15"})

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(held, n) for n in range(12)]
        time.sleep(0.5)  # all twelve are held by now
        upstream.release()
        answers = [future.result(20) for future in futures]
    assert [answer.status for answer in answers] == [200] * 12


def test_sigterm_stops_every_process(group):
    first, client, data_dir = group
    pids = list(serving_pids(first).values())
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0
    assert wait_until(lambda: not any(alive(pid) for pid in pids), timeout=10)
    assert os.listdir(data_dir / "metrics") == []


def test_sigkill_of_the_first_process_stops_the_others(group):
    first, client, _ = group
    pids = list(serving_pids(first).values())
    first.kill9()
    assert wait_until(lambda: not any(alive(pid) for pid in pids), timeout=10)


def test_a_serving_process_that_dies_is_started_again(group):
    first, client, _ = group
    old = serving_pids(first)
    os.kill(old[2], signal.SIGKILL)
    assert wait_until(lambda: serving_pids(first)[2] != old[2], timeout=10)
    assert any("serving process 2 (pid %d) exited with status -9" % old[2] in line for line in first.lines)
    new_pid = serving_pids(first)[2]

    def all_three_answer():
        for _ in range(30):
            client.request("GET", "/healthz")
        return set(requests_by_process(scrape_all(client))) == {"0", "1", "2"}

    assert wait_until(all_three_answer, timeout=15)
    assert alive(new_pid) and serving_pids(first)[1] == old[1]


# ---------------------------------------------------------------- the metrics exchange, in-process


def test_merged_metrics_of_several_processes_parse_with_each_family_once(tmp_path):
    ones = []
    for index in range(3):
        metrics = Metrics(process=str(index))
        metrics.observe_request("recording_file", "GET", 202, 0.01 * (index + 1))
        ones.append(MetricsExchange(str(tmp_path), index, 3, metrics.families))
    for exchange in ones[1:]:
        exchange.publish()
    first = Metrics(process="0")
    first.observe_request("recording_file", "GET", 202, 0.002)
    page = first.render({"recsvc_queue_depth": ("Jobs queued.", [((), 4)])}, ones[0].peers())
    families = parse_metrics(page)
    assert page.count("# TYPE recsvc_http_requests_total ") == 1
    assert requests_by_process(families) == {"0": 1, "1": 1, "2": 1}
    assert families["recsvc_queue_depth"]["samples"] == [("recsvc_queue_depth", (), 4.0)]


def test_a_process_whose_file_is_stale_is_left_out(tmp_path):
    now = [1000.0]
    metrics = Metrics(process="1")
    metrics.observe_request("healthz", "GET", 200, 0.001)
    MetricsExchange(str(tmp_path), 1, 2, metrics.families).publish()
    reader = MetricsExchange(str(tmp_path), 0, 2, Metrics(process="0").families, clock=lambda: now[0])
    path = tmp_path / "metrics" / "process-1.json"
    os.utime(path, (999.0, 999.0))
    assert len(reader.peers()) == 1
    now[0] = 999.0 + MetricsExchange.STALE_AFTER + 0.5
    assert reader.peers() == []


# ---------------------------------------------------------------- the pipe from the first process


def test_the_pipe_names_ended_jobs_and_its_end_of_file_means_the_first_process_is_gone():
    read_end, write_end = os.pipe()
    ended, gone = [], []
    watch_parent(read_end, lambda: gone.append(True), ended.append)
    os.write(write_end, b"7\n12")  # a line may arrive in pieces
    os.write(write_end, b"\nnot-a-job\n3\n")
    assert wait_until(lambda: ended == [7, 12, 3], timeout=5)
    assert gone == []
    os.close(write_end)
    assert wait_until(lambda: gone == [True], timeout=5)
    os.close(read_end)


def test_a_job_queued_in_a_serving_process_wakes_the_first_process_workers():
    read_end, write_end = os.pipe()
    wakes = []
    thread = threading.Thread(target=read_wakeups, args=(read_end, lambda: wakes.append(True)), daemon=True)
    thread.start()
    notify = job_queued_notifier(write_end)
    notify()
    assert wait_until(lambda: len(wakes) >= 1, timeout=5)
    os.close(write_end)  # the serving process exited: the reader ends and closes its end
    thread.join(5)
    assert not thread.is_alive()
    notify()  # a write to a closed pipe is ignored, never raised into the request


def test_metrics_that_cannot_be_written_cost_one_line_per_outage_not_a_traceback_a_second(tmp_path, caplog,
                                                                                          monkeypatch):
    """A full disk (here: the metrics folder replaced by a file, a real OSError) is logged when it
    starts and when it ends; no traceback, no temp file left behind."""
    monkeypatch.setattr(MetricsExchange, "INTERVAL", 0.02)
    exchange = MetricsExchange(str(tmp_path), 1, 2, Metrics(process="1").families)
    folder = tmp_path / "metrics"
    folder.rmdir()
    folder.write_text("not a folder")
    caplog.set_level(logging.WARNING, logger="recsvc.run.metrics_exchange")
    exchange._thread = threading.Thread(target=exchange._loop, daemon=True)
    exchange._thread.start()
    def lines_logged(n: int) -> list:
        """The exchange's lines once there are n of them (5 s at most: a busy machine may be slow to start
        the loop), plus a few more turns of the loop, in which no further line may come."""
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if r.name == "recsvc.run.metrics_exchange"]) < n:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        time.sleep(0.2)  # ten more turns of the loop
        return [r for r in caplog.records if r.name == "recsvc.run.metrics_exchange"]

    try:
        failing = lines_logged(1)
        folder.unlink()
        folder.mkdir()
        lines_logged(2)
    finally:
        exchange.stop()
    assert len(failing) == 1, [r.getMessage() for r in failing]
    assert not any(r.exc_info for r in caplog.records), "a traceback in the log"
    lines = [r.getMessage() for r in caplog.records if r.name == "recsvc.run.metrics_exchange"]
    assert len(lines) == 2 and "works again" in lines[1], lines
    assert not list(tmp_path.glob("metrics/*.tmp"))

"""The operator's view of jobs: ``GET /admin/jobs`` filters and ``recsvc jobs``.

One service in-process with a fake clock holds three calls whose jobs end
completed, failed and running (a hung download), created a minute apart.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from conftest import ADMIN_TOKEN, ROOT, running_harness
from recsvc.contract.clock import iso_utc
from recsvc.demo.audio import tune_for
from recsvc.demo.fake_upstream import FakeUpstream
from recsvc.run.jobs import main as jobs_main


@pytest.fixture(scope="module")
def svc(tmp_path_factory, store_kind):
    with FakeUpstream() as upstream, running_harness(tmp_path_factory.mktemp("jobs"), upstream,
                                                     download_timeout=30.0) as harness:
        token = harness.business()
        created = {}
        for call_sid, script in (("CA-done", {"body": tune_for("jobs", 0.2)}), ("CA-gone", {"status": 404}),
                                 ("CA-hung", {"hang": True})):
            harness.put_call(token, call_sid, upstream.set(f"/{call_sid}.wav", **script))
            created[call_sid] = harness.clock()
            assert harness.play(token, call_sid).status in (200, 202, 404)
            harness.advance(60)
        harness.wait_for_job("CA-done", ("completed",))
        harness.wait_for_job("CA-gone", ("failed",))
        harness.wait_for_job("CA-hung", ("running",))
        harness.created = created
        yield harness
        upstream.release()


def jobs(svc, query: str) -> list[dict]:
    answer = svc.admin("GET", f"/admin/jobs?{query}")
    assert answer.status == 200, answer.body
    return answer.json["jobs"]


@pytest.mark.parametrize("status, call_sid", [("completed", "CA-done"), ("failed", "CA-gone"), ("running", "CA-hung")])
def test_the_status_filter_returns_only_jobs_of_that_status(svc, status, call_sid):
    found = jobs(svc, f"status={status}")
    assert [(job["call_sid"], job["status"]) for job in found] == [(call_sid, status)]


def test_no_queued_job_is_listed_when_none_is_queued(svc):
    assert jobs(svc, "status=queued") == []


def test_limit_keeps_the_newest_jobs(svc):
    assert [job["call_sid"] for job in jobs(svc, "limit=2")] == ["CA-hung", "CA-gone"]
    assert len(jobs(svc, "")) == 3


def test_since_keeps_jobs_created_at_or_after_it(svc):
    since = iso_utc(svc.created["CA-gone"])
    assert [job["call_sid"] for job in jobs(svc, f"since={since}")] == ["CA-hung", "CA-gone"]
    assert jobs(svc, f"since={iso_utc(svc.created['CA-hung'] + 0.5)}") == []


def test_filters_combine_with_call_and_business(svc):
    assert [job["call_sid"] for job in jobs(svc, "status=failed&business_id=1&call_sid=CA-gone")] == ["CA-gone"]
    assert jobs(svc, "status=failed&call_sid=CA-done") == []


@pytest.mark.parametrize("query", ["status=done", "status=FAILED", "limit=0", "limit=201", "limit=x", "limit=-1",
                                   "since=yesterday", "since=2026-11-28T23:16:31", "since=2026-13-28T23:16:31Z",
                                   "since=1700000000"])
def test_a_bad_filter_value_is_400_invalid_request(svc, query):
    answer = svc.admin("GET", f"/admin/jobs?{query}")
    assert answer.status == 400, (query, answer.body)
    assert answer.json["error"] == "invalid_request" and answer.json["message"].endswith(".")
    assert query.split("=")[0] in answer.json["message"]


def test_the_filters_are_documented_in_openapi(svc):
    document = svc.request("GET", "/openapi.json").json
    operation = document["paths"]["/admin/jobs"]["get"]
    names = {param["$ref"].rsplit("/", 1)[1] for param in operation["parameters"]}
    params = {document["components"]["parameters"][name]["name"]: document["components"]["parameters"][name]
              for name in names}
    assert {"status", "limit", "since", "call_sid", "business_id"} == set(params)
    assert params["status"]["schema"]["enum"] == ["queued", "running", "completed", "failed"]
    assert params["limit"]["schema"]["maximum"] == 200
    assert "invalid_request" in operation["responses"]["400"]["x-error-codes"]


# ---- recsvc jobs

def run_jobs(*argv: str, environ: dict | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        code = jobs_main(list(argv), stdout=out, stderr=err, environ=environ or {})
    except SystemExit as stopped:
        code = stopped.code
    return code, out.getvalue(), err.getvalue()


def table_calls(table: str) -> list[str]:
    lines = table.strip().splitlines()
    assert lines[0].split() == ["ID", "BUSINESS", "CALL", "STATUS", "ATTEMPT", "CREATED", "FINISHED", "WORKER", "ERROR"]
    return [line.split()[2] for line in lines[1:] if line != "(no jobs)"]


def test_recsvc_jobs_shows_a_table_from_the_admin_api(svc):
    code, out, err = run_jobs("--base-url", svc.base_url, "--admin-token", ADMIN_TOKEN)
    assert code == 0, err
    assert table_calls(out) == ["CA-hung", "CA-gone", "CA-done"]
    failed_row = next(line for line in out.splitlines() if "CA-gone" in line)
    assert " failed " in failed_row and failed_row.rstrip().endswith("upstream_not_found")


def test_recsvc_jobs_reads_the_token_and_url_from_the_environment(svc):
    code, out, _ = run_jobs("--status", "running",
                            environ={"RECSVC_BASE_URL": svc.base_url, "RECSVC_ADMIN_TOKEN": ADMIN_TOKEN})
    assert code == 0 and table_calls(out) == ["CA-hung"]


@pytest.mark.parametrize("argv, calls", [
    (("--status", "failed"), ["CA-gone"]),
    (("--call", "CA-done"), ["CA-done"]),
    (("--business", "2"), []),
    (("--limit", "1"), ["CA-hung"]),
], ids=["status", "call", "business", "limit"])
@pytest.mark.sqlite_store_only("recsvc jobs reads the data dir's SQLite database")
def test_recsvc_jobs_filters_the_same_from_the_api_and_from_the_data_dir(svc, argv, calls):
    _, from_api, _ = run_jobs(*argv, "--base-url", svc.base_url, "--admin-token", ADMIN_TOKEN)
    code, from_data_dir, err = run_jobs(*argv, "--data-dir", svc.settings.data_dir)
    assert code == 0, err
    assert table_calls(from_api) == table_calls(from_data_dir) == calls
    if not calls:
        assert "(no jobs)" in from_data_dir


@pytest.mark.sqlite_store_only("recsvc jobs reads the data dir's SQLite database")
def test_recsvc_jobs_watch_draws_the_table_again_until_interrupted(svc):
    pauses = []

    def sleep(seconds):
        pauses.append(seconds)
        if len(pauses) == 2:
            raise KeyboardInterrupt

    out, err = io.StringIO(), io.StringIO()
    code = jobs_main(["--watch", "0.5", "--data-dir", svc.settings.data_dir, "--status", "completed"],
                     stdout=out, stderr=err, environ={}, sleep=sleep)
    assert code == 0 and pauses == [0.5, 0.5]
    assert out.getvalue().count("every 0.5s, Ctrl-C to stop") == 2
    assert out.getvalue().count("CA-done") == 2


def test_recsvc_jobs_with_a_wrong_token_is_one_line_and_exit_1(svc):
    code, out, err = run_jobs("--base-url", svc.base_url, "--admin-token", "wrong-token-0123456789")
    assert code == 1 and out == ""
    assert err.startswith(f"recsvc jobs: {svc.base_url} answered 401") and err.count("\n") == 1


def test_recsvc_jobs_without_a_source_is_a_usage_error():
    code, _, _ = run_jobs()
    assert code == 2


def test_recsvc_jobs_on_a_data_dir_without_a_database_is_one_line_and_exit_1(tmp_path):
    code, _, err = run_jobs("--data-dir", str(tmp_path))
    assert code == 1 and err == f"recsvc jobs: no database at {tmp_path / 'recsvc.sqlite3'}\n"
    assert not (tmp_path / "recsvc.sqlite3").exists()


@pytest.mark.sqlite_store_only("recsvc jobs reads the data dir's SQLite database")
def test_python_m_recsvc_jobs_runs_the_command(svc):
    done = subprocess.run([sys.executable, "-m", "recsvc", "jobs", "--data-dir", svc.settings.data_dir,
                           "--status", "completed"], capture_output=True, text=True, cwd=ROOT, timeout=30,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    assert table_calls(done.stdout) == ["CA-done"]

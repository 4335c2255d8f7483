"""CONTRACT 2: every setting from its flag and its variable, the defaults of the table, and bad values refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, request, spawn_recsvc, wait_listening
from recsvc.contract.settings import SETTINGS, Settings, SettingsError, load_settings

# One valid text per setting and the value it must give. Durations use fractions
# on purpose: the contract promises them for every duration.
GOOD = {
    "host": ("0.0.0.0", "0.0.0.0"),
    "port": ("9090", 9090),
    "data_dir": ("/srv/recsvc", "/srv/recsvc"),
    "workers": ("2", 2),
    "job_timeout": ("0.5", 0.5),
    "max_retry_attempts": ("5", 5),
    "retry_window": ("60.25", 60.25),
    "retry_after": ("1.5", 1.5),
    "recovery_retry_after": ("7.5", 7.5),
    "download_timeout": ("9.75", 9.75),
    "max_recording_bytes": ("1000", 1000),
    "heartbeat_interval": ("0.2", 0.2),
    "max_wait": ("15.5", 15.5),
    "cache_max_bytes": ("5000", 5000),
    "allow_upstream": ("api.twilio.com,loopback", ("api.twilio.com", "loopback")),
    "admin_token": ("an-admin-token-of-some-length", "an-admin-token-of-some-length"),
    "counter": ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
    "store": ("redis://127.0.0.1:6379/3", "redis://127.0.0.1:6379/3"),
    "idle_timeout": ("4.5", 4.5),
    "max_connections": ("10", 10),
    "trusted_proxies": ("127.0.0.1, 10.0.0.0/8", ("127.0.0.1/32", "10.0.0.0/8")),
    "shutdown_grace": ("2.5", 2.5),
}
ROWS = {row.name: row for row in SETTINGS}


def contract_table() -> list[tuple[str, str, str]]:
    """(flag, env, default) of each row of the settings table in CONTRACT.md section 2."""
    text = open(os.path.join(ROOT, "CONTRACT.md"), encoding="utf-8").read()
    section = text.split("## 2. Settings", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`--"):
            rows.append((cells[0].strip("`"), cells[1].strip("`"), cells[2]))
    return rows


def test_every_row_of_the_contract_table_is_a_setting_with_its_flag_and_variable():
    table = contract_table()
    assert len(table) == 20
    known = {(row.flag, row.env) for row in SETTINGS}
    for flag, env, _default in table:
        assert (flag, env) in known, f"{flag} / {env} of CONTRACT 2 is not a setting"


@pytest.mark.parametrize("flag,env,default", contract_table(), ids=lambda v: v if str(v).startswith("--") else None)
def test_default_equals_the_contract_table(flag, env, default):
    row = next(r for r in SETTINGS if r.flag == flag)
    built = load_settings({}, {})
    if default == "none":  # no value, or an empty list (--trusted-proxies)
        assert getattr(built, row.name) in (None, ()) and getattr(Settings(), row.name) == getattr(built, row.name)
        return
    expected = row.parse(default.strip("`"))
    assert getattr(built, row.name) == expected
    assert getattr(Settings(), row.name) == expected


@pytest.mark.parametrize("name", sorted(GOOD))
def test_setting_is_read_from_its_flag(name):
    text, value = GOOD[name]
    assert getattr(load_settings({name: text}, {}), name) == value


@pytest.mark.parametrize("name", sorted(GOOD))
def test_setting_is_read_from_its_variable(name):
    text, value = GOOD[name]
    assert getattr(load_settings({}, {ROWS[name].env: text}), name) == value


@pytest.mark.parametrize("name", sorted(GOOD))
def test_a_flag_beats_its_variable(name):
    text, value = GOOD[name]
    env_text = {"admin_token": "a-different-admin-token", "allow_upstream": "example.com",
                "counter": "memory://", "host": "127.0.0.1", "data_dir": "/elsewhere",
                "trusted_proxies": "::1", "store": "redis://127.0.0.1:6379/4"}.get(name, "3")
    built = load_settings({name: text}, {ROWS[name].env: env_text})
    assert getattr(built, name) == value
    assert getattr(load_settings({}, {ROWS[name].env: env_text}), name) != value  # the variable alone differs


def test_durations_accept_fractions():
    built = load_settings({"job_timeout": "0.5", "heartbeat_interval": "0.05", "retry_window": "1.25",
                           "download_timeout": "0.75", "shutdown_grace": "0.1"}, {})
    assert (built.job_timeout, built.heartbeat_interval, built.retry_window) == (0.5, 0.05, 1.25)
    assert (built.download_timeout, built.shutdown_grace) == (0.75, 0.1)
    assert built.liveness_window == pytest.approx(0.15)


def test_a_bad_value_names_the_flag_even_when_it_came_from_the_variable():
    with pytest.raises(SettingsError) as caught:
        load_settings({}, {"RECSVC_JOB_TIMEOUT": "-1"})
    assert str(caught.value) == "--job-timeout must be a positive number, got '-1'"


# ---- bad values through a real process: exit 2, one line on stderr naming the flag

# Every kind of bad value, checked through the settings parser...
BAD = [
    pytest.param(["--job-timeout", "-1"], {}, "--job-timeout", id="negative duration"),
    pytest.param(["--job-timeout", "0"], {}, "--job-timeout", id="zero duration"),
    pytest.param(["--retry-window", "ten"], {}, "--retry-window", id="non-numeric duration"),
    pytest.param(["--heartbeat-interval", "nan"], {}, "--heartbeat-interval", id="nan duration"),
    pytest.param(["--download-timeout", "inf"], {}, "--download-timeout", id="infinite duration"),
    pytest.param(["--port", "70000"], {}, "--port", id="port 70000"),
    pytest.param(["--port", "-1"], {}, "--port", id="negative port"),
    pytest.param(["--workers", "-1"], {}, "--workers", id="negative workers"),
    pytest.param(["--workers", "2.5"], {}, "--workers", id="fractional workers"),
    pytest.param(["--max-retry-attempts", "many"], {}, "--max-retry-attempts", id="non-numeric attempts"),
    pytest.param(["--max-recording-bytes", "0"], {}, "--max-recording-bytes", id="zero max bytes"),
    pytest.param(["--cache-max-bytes", "-5"], {}, "--cache-max-bytes", id="negative cache limit"),
    pytest.param(["--max-connections", "0"], {}, "--max-connections", id="zero connections"),
    pytest.param(["--allow-upstream", ""], {}, "--allow-upstream", id="empty allow-upstream"),
    pytest.param(["--allow-upstream", " , "], {}, "--allow-upstream", id="allow-upstream of commas"),
    pytest.param(["--allow-upstream", "bad host!"], {}, "--allow-upstream", id="allow-upstream naming no host"),
    pytest.param(["--counter", "mysql://127.0.0.1/0"], {}, "--counter", id="counter of another scheme"),
    pytest.param(["--counter", "redis://127.0.0.1:99999/0"], {}, "--counter", id="counter with a bad port"),
    pytest.param(["--counter", "redis://127.0.0.1:6379/db"], {}, "--counter", id="counter with a bad db"),
    pytest.param(["--counter", "sqlite://x"], {}, "--counter", id="sqlite counter naming something"),
    pytest.param(["--counter", "sqlite:///srv/counter.db"], {}, "--counter", id="sqlite counter naming a file"),
    pytest.param(["--data-dir", ""], {}, "--data-dir", id="empty data dir"),
    pytest.param(["--host", ""], {}, "--host", id="empty host"),
    pytest.param([], {"RECSVC_JOB_TIMEOUT": "-1"}, "--job-timeout", id="negative duration from the variable"),
    pytest.param([], {"RECSVC_PORT": "70000"}, "--port", id="port 70000 from the variable"),
    pytest.param([], {"RECSVC_ALLOW_UPSTREAM": ""}, "--allow-upstream", id="empty allow-upstream from the variable"),
]
# ... and each kind the contract names once more through a real ``serve``.
BAD_PROCESS_IDS = {"negative duration", "zero duration", "non-numeric duration", "port 70000",
                   "empty allow-upstream", "counter with a bad port", "sqlite counter naming something",
                   "port 70000 from the variable"}
BAD_PROCESS = [p for p in BAD if p.id in BAD_PROCESS_IDS]


def _flags_of(args: list[str]) -> dict[str, str]:
    by_flag = {row.flag: row.name for row in SETTINGS}
    return {by_flag[args[i]]: args[i + 1] for i in range(0, len(args), 2)}


@pytest.mark.parametrize("args,env,flag", BAD)
def test_a_bad_value_is_refused_naming_the_flag(args, env, flag):
    with pytest.raises(SettingsError) as caught:
        load_settings(_flags_of(args), env)
    assert str(caught.value).startswith(f"{flag} ")
    assert "\n" not in str(caught.value)


SECRET = "hunter2-Sekr1t"
SECRET_CASES = [
    pytest.param(["--counter", f"redis://:{SECRET}@127.0.0.1:99999/0"], {}, id="password and a bad port"),
    pytest.param(["--counter", f"redis://user:{SECRET}@127.0.0.1:6379/db"], {}, id="user, password and a bad db"),
    pytest.param(["--counter", f"redis://:{SECRET}@127.0.0.1:6379/0?x=1"], {}, id="password and a query"),
    pytest.param([], {"RECSVC_COUNTER": f"redis://:{SECRET}@:6379/0"}, id="password and no host, from the variable"),
    pytest.param(["--counter", f"redis://:{SECRET}@127.0.0.1:/0"], {}, id="password and an empty port"),
]
SECRET_PROCESS = [SECRET_CASES[0], SECRET_CASES[3]]


@pytest.mark.parametrize("args,env", SECRET_CASES)
def test_a_malformed_redis_counter_url_is_refused_in_words_without_its_password(args, env):
    with pytest.raises(SettingsError) as caught:
        load_settings(_flags_of(args), env)
    assert str(caught.value).startswith("--counter must ")
    assert "hunter2" not in str(caught.value) and "Sekr1t" not in str(caught.value)


def _case_id(args: list[str], env: dict) -> str:
    return json.dumps([args, env], sort_keys=True)


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """Every bad start of this module, run at once (each is a whole interpreter start)."""
    cases = [(["--job-timeout", "-1"], {}), ([], {"RECSVC_JOB_TIMEOUT": "-1"}),
             (["--admin-token", "short-secret"], {})]
    cases += [tuple(p.values[:2]) for p in BAD_PROCESS + SECRET_PROCESS]
    cases += [(["--store", bad], {}) for bad in BAD_STORES] + [(STORE_AND_COUNTER, {})]
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}
    running = {}
    for args, env in cases:
        data_dir = tmp_path_factory.mktemp("refused") / "data"
        proc = subprocess.Popen([sys.executable, "-m", "recsvc", "serve", "--data-dir", str(data_dir),
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                env={**clean_env, "PYTHONPATH": ROOT, "RECSVC_PORT": "0", **env})
        running[_case_id(args, env)] = (proc, data_dir)
    results = {}
    for key, (proc, data_dir) in running.items():
        try:
            _out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
        results[key] = (proc.returncode, err.decode(), data_dir)
    return lambda args, env: results[_case_id(args, env)]


def test_negative_job_timeout_is_refused_with_the_contract_line(refused):
    status, stderr, _ = refused(["--job-timeout", "-1"], {})
    assert status == 2
    assert stderr == "recsvc: error: --job-timeout must be a positive number, got '-1'\n"


def test_negative_job_timeout_from_the_variable_is_refused_naming_the_flag(refused):
    status, stderr, _ = refused([], {"RECSVC_JOB_TIMEOUT": "-1"})
    assert status == 2
    assert stderr == "recsvc: error: --job-timeout must be a positive number, got '-1'\n"


@pytest.mark.parametrize("args,env,flag", BAD_PROCESS)
def test_a_bad_value_stops_the_start_with_one_line_naming_the_flag(refused, args, env, flag):
    status, stderr, data_dir = refused(args, env)
    assert status == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"recsvc: error: {flag} "), lines[0]
    assert not (data_dir / "recsvc.sqlite3").exists(), "a refused start must not touch the data dir"


@pytest.mark.parametrize("args,env", SECRET_PROCESS)
def test_a_malformed_redis_counter_url_is_refused_without_echoing_its_password(refused, args, env):
    status, stderr, _ = refused(args, env)
    assert status == 2
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("recsvc: error: --counter ")
    assert SECRET not in stderr
    assert "Sekr1t" not in stderr and "hunter2" not in stderr


def test_the_sqlite_counter_is_sqlite_colon_slash_slash_with_nothing_after_it():
    assert load_settings({"counter": "sqlite://"}, {}).counter == "sqlite://"
    assert load_settings({}, {"RECSVC_COUNTER": "sqlite://"}).counter == "sqlite://"


def test_a_sqlite_counter_naming_something_is_refused_saying_where_the_counter_lives(refused):
    status, stderr, _ = refused(["--counter", "sqlite://x"], {})
    assert status == 2
    assert stderr == ("recsvc: error: --counter must be just sqlite:// (the counter lives in the data dir's "
                      "database), got 'sqlite://x'\n")


BAD_STORES = ("sqlite://x", "mysql://127.0.0.1/0", "redis://127.0.0.1:6379/db")
STORE_AND_COUNTER = ["--store", "redis://127.0.0.1:6379/0", "--counter", "redis://:pw@127.0.0.1:6379/1"]


def test_the_store_is_sqlite_or_a_redis_url(refused):
    assert load_settings({}, {}).store == "sqlite://"
    for bad in BAD_STORES:
        status, stderr, _ = refused(["--store", bad], {})
        assert status == 2
        assert stderr.startswith("recsvc: error: --store must be ") and len(stderr.splitlines()) == 1, stderr


def test_a_counter_beside_a_redis_store_is_refused_since_the_store_keeps_the_count(refused):
    status, stderr, _ = refused(STORE_AND_COUNTER, {})
    assert status == 2
    assert stderr == ("recsvc: error: --counter cannot be given with --store redis://: the retry counter lives in "
                      "the store's Redis, got (hidden)\n")
    assert load_settings({"store": "redis://127.0.0.1:6379/0", "processes": "2"}, {}).processes == 2


def test_a_short_admin_token_is_refused_without_echoing_it(refused):
    status, stderr, _ = refused(["--admin-token", "short-secret"], {})
    assert status == 2
    assert stderr.startswith("recsvc: error: --admin-token ") and len(stderr.splitlines()) == 1
    assert "short-secret" not in stderr


# ---- good values through a real process

def test_port_zero_picks_a_free_port_prints_the_listening_line_and_answers_healthz(tmp_path):
    proc = spawn_recsvc("serve", tmp_path / "data", "--port", "0", "--workers", "0")
    try:
        base_url = wait_listening(proc)
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", base_url)
        assert match and int(match.group(1)) != 0, base_url
        answer = request(base_url, "GET", "/healthz")
        assert answer.status == 200
        assert json.loads(answer.body) == {"status": "ok"}
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_serve_accepts_every_flag_of_the_table_at_once(tmp_path):
    args = []
    for name, (text, _value) in GOOD.items():
        if name in ("host", "port", "data_dir", "store"):  # a Redis store: tests/test_redis_store.py starts one
            continue
        args += [ROWS[name].flag, text]
    proc = spawn_recsvc("serve", tmp_path / "data", "--host", "127.0.0.1", "--port", "0", *args)
    try:
        base_url = wait_listening(proc)
        assert request(base_url, "GET", "/healthz").status == 200
    finally:
        proc.terminate()
        assert proc.wait(10) == 0

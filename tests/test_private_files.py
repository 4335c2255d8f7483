"""CONTRACT 6, files and secrets: the data dir is 0700; the database, its WAL and SHM, and the link
secret are 0600 whatever the umask; business tokens start with "rs_" and tokens issued before keep
working; without --admin-token, "/" is a plain index and not the demo page."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import FakeClock, make_settings, request

from recsvc import __version__
from recsvc.run.app import DATABASE_FILE, App
from recsvc.core.links import SECRET_FILE
from recsvc.core.service import hash_token


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Run the test's server under a chosen umask; the old one comes back afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def start(data_dir, **overrides) -> App:
    return App(make_settings(data_dir, workers=0, **overrides), clock=FakeClock(), environ={}).start()


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask 022", "umask 000"])
def test_the_data_dir_is_0700_and_the_database_wal_shm_and_secret_0600(tmp_path, umask, mask):
    umask(mask)
    data_dir = tmp_path / "data"
    app = start(data_dir)
    try:
        made = request(app.base_url, "POST", "/admin/businesses", token=app.settings.admin_token, body={"name": "x"})
        assert made.status == 201
        database = data_dir / DATABASE_FILE
        files = [database, data_dir / (DATABASE_FILE + "-wal"), data_dir / (DATABASE_FILE + "-shm"),
                 data_dir / SECRET_FILE]
        assert all(path.exists() for path in files), [path.name for path in files if not path.exists()]
        assert mode(data_dir) == 0o700
        assert {path.name: oct(mode(path)) for path in files} == {path.name: "0o600" for path in files}
    finally:
        app.stop(grace=0.1)


def test_files_an_older_recsvc_left_open_are_narrowed_at_start(tmp_path, umask):
    umask(0o000)
    data_dir = tmp_path / "data"
    start(data_dir).stop(grace=0.1)
    old = [data_dir, data_dir / DATABASE_FILE, data_dir / SECRET_FILE]
    for path in old:
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    app = start(data_dir)
    try:
        assert [oct(mode(path)) for path in old] == ["0o700", "0o600", "0o600"]
    finally:
        app.stop(grace=0.1)


def test_a_nested_data_dir_is_created_0700(tmp_path, umask):
    umask(0o000)
    app = start(tmp_path / "a" / "b" / "data")
    app.stop(grace=0.1)
    assert mode(tmp_path / "a" / "b" / "data") == 0o700


def test_business_tokens_start_with_rs_and_never_with_a_dash(svc):
    tokens = [svc.business(f"b{index}") for index in range(40)]
    assert all(token.startswith("rs_") and len(token) > 40 for token in tokens)
    assert len(set(tokens)) == 40
    assert svc.request("GET", "/api/calls/CA1", token=tokens[0]).status == 404  # known, no such call


def test_a_token_issued_before_the_rs_prefix_keeps_working(svc):
    old_token = "-oldStyleTokenThatStartsWithADash0123456789abc"
    with svc.app.store.writing() as tx:
        business_id = tx.insert_business("old", hash_token(old_token), svc.clock())
    assert svc.put_call(old_token, "CAOLD", None).status == 201
    assert svc.app.service.authenticate(old_token) == business_id


def test_without_an_admin_token_the_index_is_plain(make_harness):
    svc = make_harness(admin_token=None)
    page = svc.request("GET", "/")
    assert page.status == 200 and page.header("content-type").startswith("text/html")
    assert b"recsvc" in page.body and __version__.encode() in page.body
    assert b'href="/player"' in page.body and b'href="/openapi.json"' in page.body
    assert b"demo" not in page.body.lower()
    again = svc.request("GET", "/", headers={"If-None-Match": page.header("etag")})
    assert again.status == 304
    assert svc.request("HEAD", "/").status == 200


def test_with_an_admin_token_the_index_is_the_demo_page(svc):
    page = svc.request("GET", "/")
    assert page.status == 200 and b"/static/demo.js" in page.body


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask 022", "umask 000"])
def test_recordings_and_their_folders_are_private_whatever_the_umask(tmp_path, umask, mask):
    """A recording is a customer's call audio: its folders 0700, the file (temporary and published) 0600."""
    from recsvc.storage.files import RecordingFiles

    umask(mask)
    files = RecordingFiles(str(tmp_path))
    temp, temp_path = files.create_temp(7)
    assert oct(mode(temp_path)) == "0o600"
    temp.write(b"RIFF")
    files.publish(temp, temp_path, files.relative_path(7, "CA1", "wav"))
    assert {name: oct(mode(path)) for name, path in [("recordings", files.root), ("business", tmp_path / "recordings" / "7"),
                                                       ("file", files.absolute("7/CA1.wav"))]} == \
        {"recordings": "0o700", "business": "0o700", "file": "0o600"}


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask 022", "umask 000"])
def test_metrics_files_of_serve_processes_are_private_whatever_the_umask(tmp_path, umask, mask):
    from recsvc.run.metrics_exchange import MetricsExchange

    umask(mask)
    exchange = MetricsExchange(str(tmp_path), 0, 2, lambda: {"recsvc_up": 1})
    exchange.publish()
    assert oct(mode(tmp_path / "metrics")) == "0o700"
    assert oct(mode(tmp_path / "metrics" / "process-0.json")) == "0o600"

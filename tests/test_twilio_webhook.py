"""Twilio's recording-status webhook, signed the way Twilio signs, and its media fetched with Basic auth."""

from __future__ import annotations

import base64
import sqlite3
import urllib.parse

import pytest

from conftest import READS_SQLITE
from recsvc.demo.audio import tune_for
from recsvc.core.twilio import compute_signature

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-auth-token-1"
WEBHOOK = "/webhooks/twilio/recording-status"


@pytest.fixture
def twilio(svc):
    token = svc.business("acme")  # the first business: id 1
    answer = svc.admin("PUT", "/admin/businesses/1/twilio",
                       {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "media_format": "wav"})
    assert answer.status == 200, answer.body
    assert AUTH_TOKEN not in answer.body.decode()
    return svc, token


def post_webhook(svc, fields: dict, *, auth_token: str = AUTH_TOKEN, url: str | None = None, tamper=None):
    url = url or f"{svc.base_url}{WEBHOOK}"
    signature = compute_signature(url, fields, auth_token)
    sent = dict(fields, **(tamper or {}))
    body = urllib.parse.urlencode(sent).encode()
    return svc.request("POST", WEBHOOK, body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})


def completed(svc, call_sid: str, media_path: str) -> dict:
    recording_url = svc.upstream.url(media_path)
    return {"AccountSid": ACCOUNT_SID, "CallSid": call_sid, "RecordingSid": "RE1", "RecordingUrl": recording_url,
            "RecordingStatus": "completed", "RecordingDuration": "2"}


def test_a_signed_completed_callback_stores_the_call_and_queues_its_download_at_once(twilio):
    svc, token = twilio
    wav = tune_for("twilio")
    svc.upstream.set("/Recordings/RE1.wav", body=wav)
    answer = post_webhook(svc, completed(svc, "CAtw1", "/Recordings/RE1"))
    assert answer.status == 201, answer.body
    assert answer.json["recording_url"].endswith("/Recordings/RE1.wav")
    job = svc.wait_for_job("CAtw1")  # queued by the webhook, before any play
    assert job["status"] == "completed"
    assert job["attempt"] == 0  # the call's first job, not a retry
    played = svc.play(token, "CAtw1")
    assert played.status == 200 and played.body == wav


def test_media_is_fetched_with_basic_auth_of_the_account(twilio):
    svc, _ = twilio
    svc.upstream.set("/Recordings/RE2.wav", body=tune_for("basic"))
    post_webhook(svc, completed(svc, "CAtw2", "/Recordings/RE2"))
    svc.wait_for_job("CAtw2")
    sent = svc.upstream.requests("/Recordings/RE2.wav")[0]["headers"]
    expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert {k.lower(): v for k, v in sent.items()}["authorization"] == expected


def test_a_call_stored_through_put_gets_no_twilio_credentials(twilio):
    svc, token = twilio
    svc.upstream.set("/plain.wav", body=tune_for("plain"))
    svc.put_call(token, "CAput", svc.upstream.url("/plain.wav"))
    svc.play(token, "CAput")
    svc.wait_for_job("CAput")
    sent = {k.lower() for k in svc.upstream.requests("/plain.wav")[0]["headers"]}
    assert "authorization" not in sent


@pytest.mark.parametrize("tamper, auth_token", [
    pytest.param({"RecordingUrl": "https://evil.test/x"}, AUTH_TOKEN, id="a field changed after signing"),
    pytest.param({"Extra": "1"}, AUTH_TOKEN, id="a field added after signing"),
    pytest.param(None, "another-token", id="signed with another auth token"),
])
def test_a_badly_signed_callback_is_403_and_stores_nothing(twilio, tamper, auth_token):
    svc, token = twilio
    answer = post_webhook(svc, completed(svc, "CAbad", "/Recordings/RE3"), auth_token=auth_token, tamper=tamper)
    assert answer.status == 403 and answer.json["error"] == "invalid_signature"
    assert svc.request("GET", "/api/calls/CAbad", token=token).status == 404
    assert svc.jobs("CAbad") == []


def test_an_unknown_account_or_a_missing_signature_is_403(twilio):
    svc, _ = twilio
    fields = dict(completed(svc, "CAx", "/Recordings/RE4"), AccountSid="AC" + "f" * 32)
    assert post_webhook(svc, fields).status == 403
    body = urllib.parse.urlencode(completed(svc, "CAx", "/Recordings/RE4")).encode()
    assert svc.request("POST", WEBHOOK, body=body).status == 403


def test_the_url_is_accepted_with_and_without_the_default_port(twilio):
    svc, _ = twilio
    svc.upstream.set("/Recordings/RE5.wav", body=tune_for("port"))
    host = svc.base_url.removeprefix("http://").split(":")[0]
    # Signed as https://host:443/...; the server sees Host without the port and accepts the variant.
    url = f"https://{host}:443{WEBHOOK}"
    fields = completed(svc, "CAport", "/Recordings/RE5")
    signature = compute_signature(url, fields, AUTH_TOKEN)
    answer = svc.request("POST", WEBHOOK, body=urllib.parse.urlencode(fields).encode(), headers={
        "Host": host, "X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status == 201, answer.body


@pytest.mark.parametrize("status", ["absent", "failed"])
def test_an_absent_or_failed_recording_stores_the_call_without_url(twilio, status):
    svc, token = twilio
    fields = dict(completed(svc, f"CA{status}", "/Recordings/RE6"), RecordingStatus=status)
    assert post_webhook(svc, fields).status == 201
    answer = svc.play(token, f"CA{status}")
    assert answer.status == 404 and answer.json["error"] == "no_recording_url"


@pytest.mark.sqlite_store_only(READS_SQLITE)
def test_the_auth_token_is_never_returned_and_register_needs_the_admin_token(twilio):
    svc, token = twilio
    body = {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN}
    assert svc.request("PUT", "/admin/businesses/1/twilio", token=token, body=body).status == 401
    assert svc.admin("PUT", "/admin/businesses/99/twilio", body).status == 404
    assert svc.admin("PUT", "/admin/businesses/1/twilio", {"account_sid": "nope", "auth_token": AUTH_TOKEN}).status == 400
    with sqlite3.connect(f"{svc.settings.data_dir}/recsvc.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM twilio_accounts").fetchone()[0] == 1

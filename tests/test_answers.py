"""One table says what every answer means in HTTP; the handler, /openapi.json and the conformance kit read it."""

from __future__ import annotations

import json
import typing

import pytest

from recsvc.contract import decision
from recsvc.http.answers import ERRORS, FILE, PLAY, PROCESSING, RETRY_LIMIT, RETRY_LIMIT_CODES, play_codes
from recsvc.http.api import ApiError
from recsvc.kit.target import Answer, Fail, expect_error
from recsvc.http.protocol import RequestError, json_error

# What decide_play and decide_retry can return, less RetryNeeded: decide_retry settles it.
OUTCOMES = {*typing.get_args(decision.PlayOutcome), decision.RetryAllowed, decision.RetryRefused,
            decision.StorageRetry} - {decision.RetryNeeded}


def test_every_play_outcome_has_one_answer():
    assert set(PLAY) == OUTCOMES
    for outcome, answer in PLAY.items():
        assert answer.answer in (FILE, PROCESSING, RETRY_LIMIT) or answer.answer in ERRORS, outcome


def test_the_play_rows_are_answered_as_contract_3_says():
    assert [ERRORS[PLAY[o].answer].status for o in (decision.Unauthorized, decision.InvalidCallSid,
                                                    decision.CallNotFound, decision.NoRecordingUrl,
                                                    decision.RecordingNotFoundUpstream, decision.NoLiveWorker)] \
        == [401, 400, 404, 404, 404, 500]
    assert PLAY[decision.Processing].retry_after == PLAY[decision.FirstJob].retry_after == "retry_after"
    assert PLAY[decision.RetryAllowed].retry_after == "recovery_retry_after"
    assert set(play_codes(500)) == {"worker_not_processing_queue", *RETRY_LIMIT_CODES}
    assert play_codes(404) == ["call_not_found", "no_recording_url", "recording_not_found_upstream"]


@pytest.mark.parametrize("make", [ApiError, RequestError, json_error], ids=["ApiError", "RequestError", "json_error"])
def test_an_error_the_table_lacks_cannot_be_answered(make):
    with pytest.raises(KeyError, match="no_such_code"):
        make("no_such_code")


def test_an_error_answer_takes_its_status_message_and_headers_from_the_table():
    response = json_error("unauthorized")
    assert response.status == 401
    assert response.headers == [("Content-Type", "application/json"), ("WWW-Authenticate", "Bearer")]
    assert json.loads(response.body) == {"error": "unauthorized", "message": ERRORS["unauthorized"].message}
    said = ApiError("invalid_body", "name must be a string.").response()
    assert said.status == 400 and json.loads(said.body)["message"] == "name must be a string."
    assert RequestError("uri_too_long").status == 414


def _answer(status: int, code: str, headers=()) -> Answer:
    body = json.dumps({"error": code, "message": "m"}).encode()
    return Answer(status, [("Content-Type", "application/json"), *headers], body, 0.0)


def test_the_kit_expects_the_status_and_headers_the_table_gives_a_code():
    expect_error(_answer(401, "unauthorized", [("WWW-Authenticate", "Bearer")]), None, "unauthorized")
    with pytest.raises(Fail, match="WWW-Authenticate"):
        expect_error(_answer(401, "unauthorized"), None, "unauthorized")
    with pytest.raises(Fail, match="Retry-After"):
        expect_error(_answer(503, "storage_busy"), None, "storage_busy")
    with pytest.raises(Fail, match="answered 403"):
        expect_error(_answer(403, "unauthorized", [("WWW-Authenticate", "Bearer")]), None, "unauthorized")
    with pytest.raises(ValueError, match="table of answers"):
        expect_error(_answer(401, "unauthorized"), 403, "unauthorized")

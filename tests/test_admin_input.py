"""CONTRACT 6, "Bad input never gets a 5xx": ids, query fields and Twilio accounts an admin (or
anyone) may send, over real HTTP. Ids outside 1..2^63-1 are 404 not_found; an id that is not
plain ASCII digits is 400; more than 20 query fields is 400 invalid_request; a Twilio account
that another business has is 409 twilio_account_taken."""

from __future__ import annotations

import pytest
from conftest import ADMIN_TOKEN
from contract_steps import new_business, shared_harness

LARGEST_ID = 2**63 - 1
ACCOUNT = "AC" + "0123456789abcdef" * 2
OTHER_ACCOUNT = "AC" + "fedcba9876543210" * 2


@pytest.fixture(scope="module")
def svc_shared(tmp_path_factory, store_kind):
    yield from shared_harness(tmp_path_factory, workers=0)


def twilio_body(account_sid: str = ACCOUNT, auth_token: str = "twilio-auth-token-1") -> dict:
    return {"account_sid": account_sid, "auth_token": auth_token}


@pytest.mark.parametrize("method, path, status, code", [
    pytest.param("GET", f"/admin/jobs?business_id={LARGEST_ID + 1}", 404, "not_found", id="jobs: 2^63"),
    pytest.param("GET", "/admin/jobs?business_id=" + "9" * 5000, 404, "not_found", id="jobs: 5000 digits"),
    pytest.param("GET", "/admin/jobs?business_id=0", 404, "not_found", id="jobs: 0"),
    pytest.param("GET", "/admin/jobs?business_id=000", 404, "not_found", id="jobs: 000"),
    pytest.param("GET", "/admin/jobs?business_id=%D9%A1", 400, "invalid_request", id="jobs: arabic-indic one"),
    pytest.param("GET", "/admin/jobs?business_id=%EF%BC%91", 400, "invalid_request", id="jobs: fullwidth one"),
    pytest.param("GET", "/admin/jobs?business_id=-1", 400, "invalid_request", id="jobs: -1"),
    pytest.param("GET", "/admin/jobs?business_id=1.0", 400, "invalid_request", id="jobs: 1.0"),
    pytest.param("GET", "/admin/jobs?business_id=%201", 400, "invalid_request", id="jobs: leading blank"),
    pytest.param("GET", "/admin/jobs?business_id=%FF", 400, "invalid_request", id="jobs: not utf-8"),
    pytest.param("GET", "/admin/jobs?" + "&".join(f"f{i}=1" for i in range(21)), 400, "invalid_request",
                 id="jobs: 21 query fields"),
    pytest.param("PUT", "/admin/businesses/99999999999999999999/twilio", 404, "not_found", id="twilio: 20 digits"),
    pytest.param("PUT", f"/admin/businesses/{LARGEST_ID + 1}/twilio", 404, "not_found", id="twilio: 2^63"),
    pytest.param("PUT", "/admin/businesses/0/twilio", 404, "not_found", id="twilio: 0"),
    pytest.param("PUT", f"/admin/businesses/{LARGEST_ID}/twilio", 404, "business_not_found", id="twilio: 2^63-1"),
    pytest.param("PUT", "/admin/businesses/%D9%A1/twilio", 400, "invalid_business_id", id="twilio: arabic-indic"),
    pytest.param("PUT", "/admin/businesses/-1/twilio", 400, "invalid_business_id", id="twilio: -1"),
    pytest.param("GET", f"/admin/retry-counters/{LARGEST_ID + 1}/CA1", 404, "not_found", id="counter: 2^63"),
    pytest.param("GET", "/admin/retry-counters/0/CA1", 404, "not_found", id="counter: 0"),
    pytest.param("GET", "/admin/retry-counters/%D9%A1/CA1", 400, "invalid_business_id", id="counter: arabic-indic"),
    pytest.param("GET", "/api/recordings/file/CA1?" + "&".join(f"f{i}=1" for i in range(21)), 400, "invalid_request",
                 id="link: 21 query fields"),
])
def test_a_bad_id_or_query_is_a_4xx_with_its_code(svc_shared, method, path, status, code):
    body = twilio_body() if method == "PUT" else None
    answer = svc_shared.request(method, path, token=None if path.startswith("/api/") else ADMIN_TOKEN, body=body)

    assert (answer.status, answer.json["error"]) == (status, code), answer.body


@pytest.mark.parametrize("path", [
    pytest.param(f"/admin/jobs?business_id={LARGEST_ID}", id="jobs: 2^63-1"),
    pytest.param("/admin/jobs?business_id=0001", id="jobs: leading zeros"),
    pytest.param("/admin/jobs?" + "&".join(f"f{i}=1" for i in range(20)), id="jobs: 20 query fields"),
    pytest.param(f"/admin/retry-counters/{LARGEST_ID}/CA1", id="counter: 2^63-1"),
])
def test_an_id_inside_the_range_and_20_query_fields_are_answered(svc_shared, path):
    answer = svc_shared.request("GET", path, token=ADMIN_TOKEN)

    assert answer.status == 200, answer.body


def test_an_arabic_indic_digit_never_names_business_1(svc_shared):
    first = new_business(svc_shared)
    svc_shared.put_call(first.token, "CAARABIC", None)

    answer = svc_shared.request("GET", "/admin/jobs?business_id=%D9%A1", token=ADMIN_TOKEN)

    assert answer.status == 400 and "jobs" not in answer.json


def test_a_signed_link_with_up_to_20_junk_fields_is_just_not_valid(svc_shared):
    query = "&".join(f"f{i}=1" for i in range(20))

    answer = svc_shared.request("GET", f"/api/recordings/file/CA1?{query}")

    assert (answer.status, answer.json["error"]) == (401, "unauthorized")


def test_a_twilio_account_of_another_business_is_409_and_stays_where_it_was(svc_shared):
    h = svc_shared
    first, second = new_business(h, "first"), new_business(h, "second")
    account = "AC" + "1" * 32

    registered = h.admin("PUT", f"/admin/businesses/{first.id}/twilio", twilio_body(account))
    taken = h.admin("PUT", f"/admin/businesses/{second.id}/twilio", twilio_body(account, "another-token-22"))
    again = h.admin("PUT", f"/admin/businesses/{first.id}/twilio", twilio_body(account, "rotated-token-33"))
    own = h.admin("PUT", f"/admin/businesses/{second.id}/twilio", twilio_body("AC" + "2" * 32))

    assert registered.status == 200, registered.body
    assert (taken.status, taken.json["error"]) == (409, "twilio_account_taken")
    assert "another-token-22" not in taken.body.decode()
    assert again.status == 200, "the business that has the account may change its token"
    assert own.status == 200
    holder = h.app.service.twilio_account(account)
    assert (holder.business_id, holder.auth_token) == (first.id, "rotated-token-33")


@pytest.mark.parametrize("method, path", [
    pytest.param("POST", "/admin/businesses", id="create a business"),
    pytest.param("PUT", "/admin/businesses/1/twilio", id="register Twilio"),
])
def test_json_nested_past_the_stack_is_400_invalid_json(svc_shared, method, path):
    answer = svc_shared.request(method, path, token=ADMIN_TOKEN, body=b"[" * 60000)

    assert (answer.status, answer.json["error"]) == (400, "invalid_json")


def test_a_call_body_nested_past_the_stack_is_400_invalid_json(svc_shared):
    business = new_business(svc_shared)

    answer = svc_shared.request("PUT", "/api/calls/CADEEP", token=business.token, body=b'{"a":' * 12000)

    assert (answer.status, answer.json["error"]) == (400, "invalid_json")

"""The OpenAPI document describes exactly the surface recsvc serves, and every error code it can answer."""

from __future__ import annotations

import json
import re

import pytest

from recsvc.http import openapi
from recsvc.http.answers import ERRORS
from recsvc.http.api import ROUTES
from recsvc.http.openapi import ERROR_CODES, openapi_document, route_template

# Which error each answer carries, and that the document lists it there: test_openapi_errors.py.


def all_refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for value in node.values() for r in all_refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in all_refs(value)]
    return []


@pytest.fixture(scope="module")
def document() -> dict:
    return openapi_document()


def test_the_document_is_json_of_openapi_3_1(document):
    again = json.loads(json.dumps(document))
    assert again == document
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert {"title", "version"} <= set(document["info"])


def test_the_document_lists_exactly_the_routes_and_methods_the_server_answers(document):
    served = {(route_template(route), method.lower()) for route in ROUTES for method in route.handlers}
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert described == served


def test_every_error_code_of_the_table_is_in_the_document(document):
    enumerated = set(document["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    assert enumerated == set(ERRORS) == set(ERROR_CODES)
    assert {code: row["status"] for code, row in document["x-error-codes"].items()} == {
        code: row.status for code, row in ERRORS.items()}


def test_every_error_code_of_the_document_is_answered_somewhere(document):
    listed = {code for item in document["paths"].values() for op in item.values()
              for response in op["responses"].values() for code in response.get("x-error-codes", [])}
    listed |= set(document["components"]["responses"]["TransportError"]["x-error-codes"])
    assert listed == set(ERROR_CODES)


def test_every_reference_resolves_and_every_component_is_referenced(document):
    refs = set(all_refs(document))
    for ref in refs:
        node = document
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"dangling {ref}"
            node = node[part]
    components = {f"#/components/{kind}/{name}" for kind, named in document["components"].items()
                  if kind != "securitySchemes" for name in named}  # security schemes are named, not referenced
    assert refs == components
    assert "#/components/schemas/Error" in refs  # every error answer is described by reference


def test_every_security_requirement_names_a_scheme(document):
    schemes = set(document["components"]["securitySchemes"])
    named = {name for item in document["paths"].values() for op in item.values()
             for requirement in op.get("security", []) for name in requirement}
    assert named == schemes


def test_the_contract_headers_are_described(document):
    headers = set(document["components"]["headers"])
    parameters = {p["name"] for p in document["components"]["parameters"].values() if p["in"] == "header"}
    assert {"Retry-After", "Preference-Applied", "WWW-Authenticate", "Allow", "Content-Range", "ETag"} <= headers
    assert {"Prefer", "Range", "If-None-Match", "If-Range"} <= parameters


def test_play_is_described_with_each_status_of_contract_3_and_5(document):
    play = document["paths"]["/api/recordings/file/{call_sid}"]["get"]
    assert {"200", "202", "206", "304", "400", "401", "404", "416", "500"} <= set(play["responses"])
    assert play["responses"]["202"]["headers"].keys() >= {"Retry-After", "Preference-Applied"}
    assert "Content-Range" in play["responses"]["206"]["headers"]
    assert "WWW-Authenticate" in play["responses"]["401"]["headers"]
    assert set(play["responses"]["404"]["x-error-codes"]) == {
        "call_not_found", "no_recording_url", "recording_not_found_upstream"}
    processing = document["components"]["schemas"]["Processing"]["required"]
    assert set(processing) == {"status", "job_id", "job_status", "attempt", "max_attempts", "retry_after", "message"}


def test_security_schemes_are_bearer_for_business_and_admin_and_the_signed_link(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["businessBearer"] == {**schemes["businessBearer"], "type": "http", "scheme": "bearer"}
    assert schemes["adminBearer"]["scheme"] == "bearer"
    assert {schemes["signedLinkExp"]["name"], schemes["signedLinkSig"]["name"]} == {"exp", "sig"}
    play = document["paths"]["/api/recordings/file/{call_sid}"]["get"]
    assert {"signedLinkExp": [], "signedLinkSig": []} in play["security"]
    for path, item in document["paths"].items():
        if path.startswith("/admin/"):
            assert all(op["security"] == [{"adminBearer": []}] for op in item.values()), path


def test_an_unknown_error_code_cannot_be_described():
    with pytest.raises(KeyError):
        openapi._error("made up", "no_such_code")


def test_openapi_json_is_served(svc):
    answer = svc.request("GET", "/openapi.json")
    assert answer.status == 200
    assert answer.header("content-type") == "application/json"
    assert answer.json == openapi_document()
    assert svc.request("HEAD", "/openapi.json").status == 200


def test_every_job_filter_says_an_empty_value_is_no_filter_and_the_server_agrees(document, svc):
    """Blank query fields are dropped, so ``?status=`` is no filter: the document allows the empty value."""
    parameters = document["components"]["parameters"]
    names = [ref["$ref"].rsplit("/", 1)[1] for ref in document["paths"]["/admin/jobs"]["get"]["parameters"]]
    assert {name: parameters[name].get("allowEmptyValue") for name in names} == {name: True for name in names}
    for name in names:
        answer = svc.admin("GET", f"/admin/jobs?{parameters[name]['name']}=")
        assert answer.status == 200, (name, answer.body)


def test_since_is_described_as_the_utc_form_the_server_takes(document, svc):
    """A date-time with an offset is refused with 400, so the document's schema must refuse it too."""
    schema = document["components"]["parameters"]["JobSinceQuery"]["schema"]
    for text, taken in [("2026-11-28T23:16:31Z", True), ("2026-11-28T23:16:31.25Z", True),
                        ("2026-11-28T23:16:31+10:03", False), ("0394-10-21T17:57:44-18:27", False)]:
        assert bool(re.fullmatch(schema["pattern"].strip("^$"), text)) is taken, text
        status = svc.admin("GET", "/admin/jobs?since=" + text.replace("+", "%2B")).status
        assert status == (200 if taken else 400), (text, status)


def test_recording_url_carries_the_scheme_and_characters_the_server_enforces(document):
    """A URL that is not http(s), or has a character the server refuses, is outside the document's schema;
    what the schema admits fails the server only for its host (allow-upstream, which no schema can know)."""
    from recsvc.core.upstream_rules import UrlNotAllowed, check_recording_url

    schema = document["components"]["schemas"]["CallInput"]["properties"]["recording_url"]
    for url in ["https://x.test/a.wav", "HTTPS://x.test/a", "http://127.0.0.1:8/a?b=c", "", "x.test/a.wav", "vEtj0-S",
                "ftp://x.test/a", "file:///etc/passwd", "https://x.test/a\\b", "https://x.test/<a>", "https ://x",
                "javascript:alert(1)", "https:x.test"]:
        admitted = re.fullmatch(schema["pattern"], url) is not None
        try:
            check_recording_url(url, ("x.test", "loopback")) if url else None
            served = True
        except UrlNotAllowed:
            served = False
        assert admitted == served, (url, admitted, served)

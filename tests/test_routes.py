"""The route table's matcher (CONTRACT 6): a path that several patterns match is answered by the
route that has the method, and 405 only when none of them has it."""

from __future__ import annotations

import pytest

from recsvc.http.api import ROUTES
from recsvc.http.routes import Matched, MethodNotAllowed, NotFound, match


@pytest.mark.parametrize("method, path, route, params", [
    pytest.param("POST", "/api/recordings/file/link", "recording_link", {"call_sid": "file"},
                 id="POST the link of the call named file"),
    pytest.param("GET", "/api/recordings/file/link", "recording_file", {"call_sid": "link"},
                 id="GET the file of the call named link"),
    pytest.param("HEAD", "/api/recordings/file/link", "recording_file", {"call_sid": "link"},
                 id="HEAD the file of the call named link"),
    pytest.param("POST", "/api/recordings/CA1/link", "recording_link", {"call_sid": "CA1"}, id="POST a link"),
    pytest.param("PUT", "/api/calls/file", "call", {"call_sid": "file"}, id="PUT the call named file"),
])
def test_the_route_that_has_the_method_answers(method, path, route, params):
    found = match(method, path, ROUTES)

    assert isinstance(found, Matched)
    assert (found.route.name, found.params) == (route, params)


@pytest.mark.parametrize("method, path, allow", [
    pytest.param("PUT", "/api/recordings/file/link", "GET, HEAD, POST", id="both routes' methods"),
    pytest.param("DELETE", "/api/recordings/file/CA1", "GET, HEAD", id="one route"),
    pytest.param("GET", "/api/recordings/CA1/link", "POST", id="the link route alone"),
])
def test_405_lists_the_methods_of_every_route_matching_the_path(method, path, allow):
    found = match(method, path, ROUTES)

    assert isinstance(found, MethodNotAllowed)
    assert found.allow == allow


def test_a_path_no_route_matches_is_not_found():
    assert match("GET", "/api/recordings/file", ROUTES) == NotFound()


def test_the_first_route_in_table_order_answers_when_several_have_the_method():
    first, second = ROUTES[0], ROUTES[1]
    assert first.name == "recording_file" and second.name == "recording_link"
    found = match("GET", "/api/recordings/file/link", (second, first))
    assert found.route.name == "recording_file"  # the link route has no GET: it is skipped, not a 405


def test_every_route_names_the_function_that_answers_it():
    from recsvc.http.api import Api
    for route in ROUTES:
        for method, handler in route.handlers.items():
            assert getattr(Api, handler.__name__) is handler, (route.name, method)

"""The route table and its pure matcher: a path and method to a handler name, or 404/405.

Patterns are matched against the *raw* path, before any percent-decoding,
so a parameter is exactly the bytes the client sent (CONTRACT 3 row 2 checks
``call_sid`` on that raw form). HEAD is allowed wherever GET is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    name: str                       # a stable label for metrics and logs
    pattern: re.Pattern
    handlers: dict[str, str]        # method -> handler name

    @property
    def allow(self) -> str:
        return ", ".join(sorted(self.handlers))


def _route(name: str, template: str, **handlers: str) -> Route:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]*)", template)
    methods = {method.upper(): handler for method, handler in handlers.items()}
    if "GET" in methods:
        methods.setdefault("HEAD", methods["GET"])
    return Route(name, re.compile(f"^{regex}$"), methods)


ROUTES: tuple[Route, ...] = (
    _route("recording_file", "/api/recordings/file/{call_sid}", get="play"),
    _route("recording_link", "/api/recordings/{call_sid}/link", post="create_link"),
    _route("call", "/api/calls/{call_sid}", get="get_call", put="put_call"),
    _route("admin_businesses", "/admin/businesses", post="create_business"),
    _route("admin_pause", "/admin/workers/pause", post="pause_workers"),
    _route("admin_resume", "/admin/workers/resume", post="resume_workers"),
    _route("admin_cleanup", "/admin/cleanup", post="cleanup"),
    _route("admin_jobs", "/admin/jobs", get="list_jobs"),
    _route("admin_retry_counter", "/admin/retry-counters/{business_id}/{call_sid}", get="retry_counter"),
    _route("healthz", "/healthz", get="healthz"),
    _route("readyz", "/readyz", get="readyz"),
    _route("metrics", "/metrics", get="metrics_page"),
)


@dataclass(frozen=True)
class Matched:
    route: Route
    handler: str
    params: dict[str, str]


@dataclass(frozen=True)
class NotFound:
    pass


@dataclass(frozen=True)
class MethodNotAllowed:
    route: Route


def match(method: str, raw_path: str, routes: tuple[Route, ...] = ROUTES) -> Matched | NotFound | MethodNotAllowed:
    for route in routes:
        found = route.pattern.match(raw_path)
        if found is None:
            continue
        handler = route.handlers.get(method)
        if handler is None:
            return MethodNotAllowed(route)
        return Matched(route, handler, found.groupdict())
    return NotFound()

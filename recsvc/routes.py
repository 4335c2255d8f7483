"""The route table and its pure matcher: a path and method to a handler name, or 404/405.

Several patterns may match one path (``/api/recordings/file/link`` is both
the file of call ``link`` and the link of call ``file``): the first route in
table order that has the method answers, and 405 lists the methods of all
of them.

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
    handlers: dict[str, object]     # method -> handler: a method name of Api, or a callable(request, **params)

    @property
    def allow(self) -> str:
        return ", ".join(sorted(self.handlers))


def make_route(name: str, template: str, **handlers) -> Route:
    """A route from a template like ``/api/calls/{call_sid}`` and handlers by method (get=..., put=...)."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]*)", template)
    methods = {method.upper(): handler for method, handler in handlers.items()}
    if "GET" in methods:
        methods.setdefault("HEAD", methods["GET"])
    return Route(name, re.compile(f"^{regex}$"), methods)


ROUTES: tuple[Route, ...] = (
    make_route("recording_file", "/api/recordings/file/{call_sid}", get="play"),
    make_route("recording_link", "/api/recordings/{call_sid}/link", post="create_link"),
    make_route("call", "/api/calls/{call_sid}", get="get_call", put="put_call"),
    make_route("admin_businesses", "/admin/businesses", post="create_business"),
    make_route("admin_business_twilio", "/admin/businesses/{business_id}/twilio", put="register_twilio"),
    make_route("twilio_recording_status", "/webhooks/twilio/recording-status", post="twilio_recording_status"),
    make_route("admin_pause", "/admin/workers/pause", post="pause_workers"),
    make_route("admin_resume", "/admin/workers/resume", post="resume_workers"),
    make_route("admin_cleanup", "/admin/cleanup", post="cleanup"),
    make_route("admin_jobs", "/admin/jobs", get="list_jobs"),
    make_route("admin_retry_counter", "/admin/retry-counters/{business_id}/{call_sid}", get="retry_counter"),
    make_route("healthz", "/healthz", get="healthz"),
    make_route("readyz", "/readyz", get="readyz"),
    make_route("metrics", "/metrics", get="metrics_page"),
    make_route("openapi", "/openapi.json", get="openapi_document"),
    make_route("index", "/", get="static_page"),
    make_route("player_page", "/player", get="static_page"),
    make_route("player_script", "/player.js", get="static_page"),
    make_route("static", "/static/{name}", get="static_page"),
)


# CONTRACT 6: answered even when every --max-connections slot is taken, from a reserve of their own.
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")
PROBE_RESERVE = 8  # connections past --max-connections that may carry one probe each


@dataclass(frozen=True)
class Matched:
    route: Route
    handler: object
    params: dict[str, str]


@dataclass(frozen=True)
class NotFound:
    pass


@dataclass(frozen=True)
class MethodNotAllowed:
    route: Route  # the first route whose pattern matched, for metrics and logs
    allow: str  # every method of every route that matched (the Allow header)


def match(method: str, raw_path: str, routes: tuple[Route, ...] = ROUTES) -> Matched | NotFound | MethodNotAllowed:
    """The first route that matches the path and has the method; 405 only when none of the
    routes matching the path has it (CONTRACT 6: ``POST /api/recordings/file/link`` links the
    call named ``file``, ``GET`` of the same path plays the call named ``link``)."""
    without_method: list[Route] = []
    for route in routes:
        found = route.pattern.match(raw_path)
        if found is None:
            continue
        handler = route.handlers.get(method)
        if handler is None:
            without_method.append(route)
            continue
        return Matched(route, handler, found.groupdict())
    if without_method:
        allowed = {name for route in without_method for name in route.handlers}
        return MethodNotAllowed(without_method[0], ", ".join(sorted(allowed)))
    return NotFound()

"""Routes and their pure matcher: a path and method to a handler, or 404/405.

The table itself is ``recsvc.http.api.ROUTES``, each method next to the handler
that answers it. Several patterns may match one path (``/api/recordings/file/link`` is both
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
from typing import Callable


@dataclass(frozen=True)
class Route:
    name: str                       # a stable label for metrics and logs
    pattern: re.Pattern
    handlers: dict[str, Callable]   # method -> handler(request, **params), or a function of a class to bind

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


def bind(routes: tuple[Route, ...], owner: object) -> tuple[Route, ...]:
    """The routes with each handler, a function of ``owner``'s class, bound to ``owner``."""
    return tuple(Route(route.name, route.pattern,
                       {method: handler.__get__(owner) for method, handler in route.handlers.items()})
                 for route in routes)


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


def match(method: str, raw_path: str, routes: tuple[Route, ...]) -> Matched | NotFound | MethodNotAllowed:
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

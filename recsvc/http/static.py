"""The web assets recsvc serves (player, demo page), read once with importlib.resources.

Assets are read from the installed package, not the source tree, so the
single-file zipapp serves them too; each is read on first request and kept
in memory with its ETag, so serving one costs no disk access.
"""

from __future__ import annotations

import hashlib
import html
import importlib.resources
import re
import threading

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".wav": "audio/wav",
}
# Friendly paths of the pages; any other asset is under /static/{name}.
PAGES = {"/": "index.html", "/player": "player.html", "/player.js": "player.js"}
ASSET_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9]+)+$")


# Where the assets live: the web player's and the demo page's own folders.
ASSET_PACKAGES = ("recsvc.player.web", "recsvc.demo.web")


class StaticFiles:
    def __init__(self, packages: tuple[str, ...] = ASSET_PACKAGES):
        self._packages = packages
        self._cache_lock = threading.Lock()  # guards _cache
        self._cache: dict[str, tuple[bytes, str, str] | None] = {}

    def get(self, name: str) -> tuple[bytes, str, str] | None:
        """(body, content type, etag) of an asset, or None when there is no such asset."""
        if not ASSET_NAME.match(name):
            return None
        with self._cache_lock:
            if name in self._cache:
                return self._cache[name]
        found = self._load(name)
        with self._cache_lock:
            self._cache[name] = found
        return found

    def _load(self, name: str) -> tuple[bytes, str, str] | None:
        extension = name[name.rfind("."):]
        if extension not in CONTENT_TYPES:
            return None
        for package in self._packages:
            try:
                body = importlib.resources.files(package).joinpath(name).read_bytes()
                break
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ModuleNotFoundError):
                continue
        else:
            return None
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return body, CONTENT_TYPES[extension], etag


def plain_index(version: str) -> tuple[bytes, str, str]:
    """(body, content type, etag) of ``/`` on a server without an admin token (CONTRACT 6):
    the service's name and version, and links to the player and the API description. The
    demo page is the demo's alone."""
    body = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>recsvc</title></head>\n"
            f"<body><h1>recsvc</h1><p>Version {html.escape(version)}.</p>\n<ul>\n"
            f"<li><a href=\"/player\">/player</a>: the browser player</li>\n"
            f"<li><a href=\"/openapi.json\">/openapi.json</a>: the HTTP API</li>\n"
            f"</ul></body></html>\n").encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return body, CONTENT_TYPES[".html"], etag

"""A real redis-server for tests: tools/redis_server.py, and the skip when it is not installed."""

from __future__ import annotations

import shutil

import pytest

from tools.redis_server import RedisServer, free_port  # noqa: F401 - re-exported for the tests

REDIS_MISSING = shutil.which("redis-server") is None or shutil.which("redis-cli") is None
requires_redis = pytest.mark.skipif(REDIS_MISSING, reason="redis-server is not installed: apt-get install redis-server")

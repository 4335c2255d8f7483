"""Time as the service sees it: an injected clock and the contract's time formats.

Every component takes ``clock=`` (a callable returning Unix seconds as a
float) instead of calling ``time.time()`` itself, so tests drive the stuck
rules and the retry window with a fake clock and never sleep minutes.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable

Clock = Callable[[], float]

system_clock: Clock = time.time


def iso_utc(timestamp: float | None) -> str | None:
    """ISO 8601 in UTC with a Z, milliseconds kept (CONTRACT 1)."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


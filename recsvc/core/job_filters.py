"""The filters of ``GET /admin/jobs`` and ``recsvc jobs``: which jobs, parsed and validated once.

``parse_job_filters(query)`` takes the query string's values (``status``,
``limit``, ``since``) and returns a frozen ``JobFilters`` or raises
``ValueError`` with the English sentence the 400 ``invalid_request`` answer
carries. ``call_sid`` and ``business_id`` keep their own checks (CONTRACT 6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

STATUSES = ("queued", "running", "completed", "failed")
MAX_LIMIT = 200  # README: "at most 200 jobs, newest first"

ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z", re.ASCII)


@dataclass(frozen=True)
class JobFilters:
    status: str | None = None   # one of STATUSES
    limit: int = MAX_LIMIT
    since: float | None = None  # jobs created at or after this instant (seconds since the epoch)


def parse_since(text: str) -> float:
    """An ISO 8601 UTC time as JSON times are written (``2026-11-28T23:16:31Z``, fractions allowed)."""
    if not ISO_UTC.fullmatch(text):
        raise ValueError("since must be a UTC time like 2026-11-28T23:16:31Z.")
    try:
        moment = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError("since must be a UTC time like 2026-11-28T23:16:31Z.") from None
    fraction = float("0" + text[19:-1]) if len(text) > 20 else 0.0
    return moment.timestamp() + fraction


def parse_job_filters(query: Mapping[str, list[str]]) -> JobFilters:
    """From ``urllib.parse.parse_qs`` output; the first value of each name counts."""
    status = query.get("status", [None])[0]
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}.")
    limit_text = query.get("limit", [None])[0]
    limit = MAX_LIMIT
    if limit_text is not None:
        if not re.fullmatch(r"[0-9]{1,4}", limit_text) or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}.")
        limit = int(limit_text)
    since_text = query.get("since", [None])[0]
    since = parse_since(since_text) if since_text is not None else None
    return JobFilters(status, limit, since)

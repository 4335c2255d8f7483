"""``recsvc jobs``: the operator's view of the job table, as a table in the terminal.

Usage: recsvc jobs [--status S] [--call SID] [--business ID] [--limit N] [--since TIME]
                   [--watch [SECONDS]] [--base-url URL --admin-token T | --data-dir DIR]

The jobs come from ``GET /admin/jobs`` of a running service (``--base-url``,
default ``$RECSVC_BASE_URL`` or ``http://127.0.0.1:8080``; ``--admin-token``,
default ``$RECSVC_ADMIN_TOKEN``), or, with ``--data-dir``, straight from the
data dir's database, which works while the service is down. Both apply the
same filters (recsvc.core.job_filters). ``--watch`` draws the table again every
few seconds until Ctrl-C.

Exit status: 0 shown, 1 the service or the database could not be read, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Mapping, TextIO

from ..core.job_filters import MAX_LIMIT, STATUSES, JobFilters, parse_job_filters

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
COLUMNS = (("ID", "id"), ("BUSINESS", "business_id"), ("CALL", "call_sid"), ("STATUS", "status"),
           ("ATTEMPT", "attempt"), ("CREATED", "created_at"), ("FINISHED", "finished_at"),
           ("WORKER", "worker_id"), ("ERROR", "error_code"))
_CLEAR_SCREEN = "\x1b[H\x1b[2J"


class JobsUnavailable(Exception):
    """The jobs could not be read; the text says why, in one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsvc jobs", description="The jobs, newest first, as a table.")
    parser.add_argument("--status", choices=STATUSES, help="only jobs of this status")
    parser.add_argument("--call", metavar="SID", help="only jobs of this call_sid")
    parser.add_argument("--business", metavar="ID", type=int, help="only jobs of this business")
    parser.add_argument("--limit", metavar="N", type=int, default=50,
                        help=f"at most N jobs, 1 to {MAX_LIMIT} (default 50)")
    parser.add_argument("--since", metavar="TIME", help="only jobs created at or after this UTC time (2026-11-28T23:16:31Z)")
    parser.add_argument("--watch", metavar="SECONDS", nargs="?", const=2.0, type=float,
                        help="draw the table again every SECONDS (default 2) until Ctrl-C")
    parser.add_argument("--base-url", metavar="URL", help=f"the service (default $RECSVC_BASE_URL or {DEFAULT_BASE_URL})")
    parser.add_argument("--admin-token", metavar="T", help="the admin token (default $RECSVC_ADMIN_TOKEN)")
    parser.add_argument("--data-dir", metavar="DIR", help="read the data dir's database instead of asking the service")
    parser.add_argument("--store", metavar="URL", help="read the nodes' Redis store (redis://host:port/db) instead of "
                                                       "asking the service")
    return parser


def _query(args: argparse.Namespace) -> dict[str, list[str]]:
    query = {"limit": [str(args.limit)]}
    if args.status:
        query["status"] = [args.status]
    if args.since:
        query["since"] = [args.since]
    if args.call:
        query["call_sid"] = [args.call]
    if args.business is not None:
        query["business_id"] = [str(args.business)]
    return query


def jobs_from_api(base_url: str, admin_token: str, query: Mapping[str, list[str]], timeout: float = 10) -> list[dict]:
    url = f"{base_url.rstrip('/')}/admin/jobs?{urllib.parse.urlencode(query, doseq=True)}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {admin_token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return json.loads(answer.read())["jobs"]
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", "")
        except ValueError:
            message = ""
        if exc.code == 404:
            message = "the admin API is off there (start serve with --admin-token), or this is not recsvc"
        raise JobsUnavailable(f"{base_url} answered {exc.code}: {message}".rstrip(": ")) from None
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JobsUnavailable(f"cannot read jobs from {base_url}: {reason}") from None


def jobs_from_data_dir(data_dir: str, call_sid: str | None, business_id: int | None, filters: JobFilters) -> list[dict]:
    from .app import DATABASE_FILE
    from ..storage.store import Store

    path = os.path.join(data_dir, DATABASE_FILE)
    if not os.path.isfile(path):
        raise JobsUnavailable(f"no database at {path}")
    try:
        store = Store(path)
        try:
            with store.reading() as tx:
                jobs = tx.jobs_filtered(call_sid, business_id, filters.status, filters.since, filters.limit)
        finally:
            store.close()
    except Exception as exc:  # the store's own errors (locked, unreadable, a newer schema): one line
        raise JobsUnavailable(f"cannot read {path}: {exc}") from None
    return [job.to_json() for job in jobs]


def jobs_from_store(url: str, call_sid: str | None, business_id: int | None, filters: JobFilters) -> list[dict]:
    """The jobs of a Redis store (--store redis://), as the admin API lists them."""
    from ..contract.settings import parse_redis_url
    from ..storage.redis_store import RedisStore

    try:
        shown = str(parse_redis_url(url))
    except ValueError as exc:
        raise JobsUnavailable(f"--store {exc}") from None
    try:
        store = RedisStore(url)
        try:
            with store.reading() as tx:
                jobs = tx.jobs_filtered(call_sid, business_id, filters.status, filters.since, filters.limit)
        finally:
            store.close()
    except Exception as exc:  # unreachable, refused, a newer layout: one line
        raise JobsUnavailable(f"cannot read {shown}: {exc}") from None
    return [job.to_json() for job in jobs]


def render_table(jobs: list[dict]) -> str:
    """The jobs as aligned columns under a header line; "-" for an empty field."""
    rows = [[title for title, _ in COLUMNS]]
    for job in jobs:
        rows.append(["-" if job.get(key) in (None, "") else str(job[key]) for _, key in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if not jobs:
        lines.append("(no jobs)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
         environ: Mapping[str, str] | None = None, sleep: Callable[[float], None] = time.sleep) -> int:
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    query = _query(args)
    try:
        filters = parse_job_filters(query)
    except ValueError as exc:
        parser.error(str(exc))
    if args.watch is not None and not args.watch > 0:
        parser.error("--watch takes a positive number of seconds")
    if args.store is not None:
        def read() -> list[dict]:
            return jobs_from_store(args.store, args.call, args.business, filters)
    elif args.data_dir is not None:
        def read() -> list[dict]:
            return jobs_from_data_dir(args.data_dir, args.call, args.business, filters)
    else:
        token = args.admin_token or environ.get("RECSVC_ADMIN_TOKEN")
        if not token:
            parser.error("give --admin-token (or RECSVC_ADMIN_TOKEN) to ask the service, or --data-dir to read its data dir")
        base_url = args.base_url or environ.get("RECSVC_BASE_URL") or DEFAULT_BASE_URL

        def read() -> list[dict]:
            return jobs_from_api(base_url, token, query)
    clear = _CLEAR_SCREEN if stdout.isatty() else "\n"
    try:
        while True:
            try:
                table = render_table(read())
            except JobsUnavailable as exc:
                stderr.write(f"recsvc jobs: {exc}\n")
                if args.watch is None:
                    return 1
                table = None
            if table is not None:
                if args.watch is not None:
                    table = f"{clear}{time.strftime('%H:%M:%S')}  every {args.watch:g}s, Ctrl-C to stop\n{table}"
                stdout.write(table)
                stdout.flush()
            if args.watch is None:
                return 0
            sleep(args.watch)
    except KeyboardInterrupt:
        return 0

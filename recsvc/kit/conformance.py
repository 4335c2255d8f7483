"""`recsvc conformance`: run the contract's black-box checks against any implementation and report each.

Usage: recsvc conformance --base-url URL --token T [--admin-token A]
                          [--ready SID] [--no-url SID] [--missing SID] [--pending SID]
                          [--upstream-url URL] [--timeout S] [--list]

Each check (``recsvc.kit.checks.CHECKS``) prints one line, ``PASS``,
``FAIL`` or ``SKIP``, its id and the contract reference, and on FAIL or SKIP
a short reason; then ``N passed, M failed, K skipped``. A check runs only
when the call states it needs were given (``--ready`` and so on), or, with
``--admin-token``, provisioned by the kit in a business of its own. Without
``--missing`` a random call_sid, which no business has, stands for it.

With ``--admin-token`` the kit writes: it creates a business and calls, and
pauses and resumes the whole worker pool for a moment (the "worker offline"
drill). Point it at a test deployment, never at one that serves players.
Calls that need audio use ``--upstream-url``; when the target listens on
loopback the kit also starts its own loopback upstream
(``recsvc.demo.fake_upstream``), which serves audio, hangs (a pending call) and
answers 404 (row 6). The target must allow that upstream (recsvc:
``--allow-upstream loopback``).

Exit status: 0 nothing failed, 1 something failed, 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import secrets
import sys
import urllib.parse
from dataclasses import dataclass

from ..demo.audio import tune_for
from .checks import CHECKS, Check
from .target import Fail, Skip, Target

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# What to say when a check needs something it was not given.
NEED_HINTS = {
    "ready": "needs --ready SID (or --admin-token to provision one)",
    "pending": "needs --pending SID (or --admin-token with a loopback target)",
    "no_url": "needs --no-url SID (or --admin-token)",
    "missing": "needs --missing SID",
    "admin": "needs --admin-token",
    "upstream": "needs --upstream-url (or a loopback target)",
    "own_upstream": "needs a loopback target, so the kit can run its own upstream",
}


@dataclass(frozen=True)
class Result:
    check: Check
    verdict: str
    reason: str = ""

    def line(self) -> str:
        text = f"{self.verdict}  {self.check.id}  [{self.check.ref}]"
        return f"{text}  {self.reason}" if self.reason else text


def run_check(check: Check, target: Target) -> Result:
    for need in check.needs:
        if not target.has(need):
            return Result(check, SKIP, NEED_HINTS.get(need, f"needs {need}"))
    try:
        check.run(target)
    except Fail as exc:
        return Result(check, FAIL, str(exc))
    except Skip as exc:
        return Result(check, SKIP, str(exc))
    except Exception as exc:  # a check that trips over an answer has found a failure, not crashed the kit
        return Result(check, FAIL, f"{type(exc).__name__}: {exc}")
    return Result(check, PASS)


def run_checks(target: Target, checks: list[Check] = CHECKS, out=None) -> list[Result]:
    """Run ``checks`` in order against ``target``, printing each line to ``out`` as it ends."""
    results = []
    for check in checks:
        result = run_check(check, target)
        results.append(result)
        if out is not None:
            print(result.line(), file=out, flush=True)
    return results


def summary(results: list[Result]) -> str:
    count = {verdict: sum(r.verdict == verdict for r in results) for verdict in (PASS, FAIL, SKIP)}
    return f"{count[PASS]} passed, {count[FAIL]} failed, {count[SKIP]} skipped"


def is_loopback(base_url: str) -> bool:
    host = urllib.parse.urlsplit(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def kit_upstream(target: Target):
    """The kit's own loopback upstream while the checks run, when the target can reach it."""
    if target.admin_token is None or not is_loopback(target.base_url):
        yield None
        return
    from ..demo.fake_upstream import FakeUpstream

    with FakeUpstream() as upstream:
        audio_url = upstream.set("/conformance/audio.wav", body=tune_for("conformance"), content_type="audio/wav")
        target.own_upstream = upstream
        if target.upstream_url is None:
            target.upstream_url = audio_url
        try:
            yield upstream
        finally:
            target.own_upstream = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsvc conformance",
                                     description="Check an implementation of the recsvc contract from outside.")
    parser.add_argument("--base-url", metavar="URL", help="where the implementation listens")
    parser.add_argument("--token", help="a business bearer token")
    parser.add_argument("--admin-token", help="the admin token: lets the kit provision calls and run the drills")
    parser.add_argument("--ready", metavar="SID", help="a call of --token's business whose recording is cached")
    parser.add_argument("--no-url", metavar="SID", help="a call of --token's business with no recording_url")
    parser.add_argument("--missing", metavar="SID", help="a call_sid --token's business does not have")
    parser.add_argument("--pending", metavar="SID", help="a call of --token's business whose job is active")
    parser.add_argument("--upstream-url", metavar="URL", help="a URL serving audio that the target may fetch")
    parser.add_argument("--timeout", metavar="S", type=float, default=30.0, help="socket timeout per request (default 30)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    return parser


def main(argv: list[str] | None = None, *, stdout=None, stderr=None) -> int:
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
            if args.list:
                for check in CHECKS:
                    print(f"{check.id}  [{check.ref}]" + (f"  needs {', '.join(check.needs)}" if check.needs else ""))
                return EXIT_OK
            if not args.base_url or not args.token:
                parser.error("--base-url and --token are required")
            if not args.timeout > 0:
                parser.error("--timeout must be a positive number")
            try:
                target = Target(args.base_url, args.token, admin_token=args.admin_token,
                                upstream_url=args.upstream_url, timeout=args.timeout)
            except ValueError as exc:
                parser.error(str(exc))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    calls = {"ready": args.ready, "no_url": args.no_url, "pending": args.pending,
             "missing": args.missing or f"conf-missing-{secrets.token_hex(8)}"}
    target.calls.update({state: (args.token, sid) for state, sid in calls.items() if sid})
    print(f"recsvc conformance: {args.base_url}, {len(CHECKS)} checks", file=stdout, flush=True)
    try:
        target.ask("GET", "/healthz", token=None)
    except Fail as exc:  # nothing to check; say so once per check rather than wait out each one's retries
        results = [Result(check, FAIL, f"target unreachable: {exc}") for check in CHECKS]
        for result in results:
            print(result.line(), file=stdout)
    else:
        with kit_upstream(target):
            results = run_checks(target, out=stdout)
    print(summary(results), file=stdout, flush=True)
    return EXIT_FAILED if any(r.verdict == FAIL for r in results) else EXIT_OK

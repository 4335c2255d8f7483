"""``recsvc sample-upstream``: one sample recording on loopback, for a first recording without a Twilio account.

It serves a short WAV at ``http://127.0.0.1:PORT/Recordings/RE-sample.wav``
(reach it from recsvc with ``RECSVC_ALLOW_UPSTREAM=loopback``) and stops by
itself after ``--minutes`` (10 by default), so a reader who started it in the
background has nothing left to clean up; SIGINT or SIGTERM stop it sooner.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .audio import tune_for
from .fake_upstream import FakeUpstream

SAMPLE_PATH = "/Recordings/RE-sample.wav"
DEFAULT_PORT = 8099


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsvc sample-upstream",
                                     description="Serve one sample recording on 127.0.0.1 for a while.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    parser.add_argument("--minutes", type=float, default=10.0, help="stop by itself after this long (default 10)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535 or args.minutes <= 0:
        print("recsvc sample-upstream: --port must be 0..65535 and --minutes above 0", file=sys.stderr)
        return 2
    try:
        upstream = FakeUpstream(port=args.port)
    except OSError as error:
        print(f"recsvc sample-upstream: cannot listen on 127.0.0.1:{args.port}: {error.strerror or error}",
              file=sys.stderr)
        return 2
    done = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: done.set())
    with upstream:
        url = upstream.set(SAMPLE_PATH, body=tune_for("sample", seconds=3.0))
        sys.stderr.write(f"sample recording at {url} (loopback), for {args.minutes:g} minutes\n")
        sys.stderr.flush()
        done.wait(args.minutes * 60)
    return 0

"""Counters and histograms of this process, rendered in the Prometheus text format.

In-process counters (requests, fail-fast trips, stuck jobs, job durations)
live here; values that belong to the database (jobs by status, queue
depth, live workers, cache bytes) are read at scrape time and passed to
``render()`` as gauges, so the hot paths only bump a counter under a lock.
Other parts of the process add gauges of their own (open connections, held
requests, memory) with ``add_gauges``; those are read at scrape time too.

Every counter family whose labels are known in advance (fail-fast trips by
error, stuck jobs by reason) is shown at 0 from the start, so a rate over it
is defined before the first trip (CONTRACT 6, /metrics).
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import defaultdict
from typing import Callable, Iterable

from ..contract.decision import RECORDING_DOWNLOAD_FAILED, STUCK_KINDS, WORKER_NOT_PROCESSING_QUEUE

Gauges = dict[str, tuple[str, list[tuple[tuple[tuple[str, str], ...], float]]]]
Family = tuple[str, str, list[str]]  # kind, help, sample lines

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: tuple[tuple[str, str], ...]) -> list[str]:
        out = []
        running = 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f"{name}_bucket{_labels(labels + (('le', f'{bound:g}'),))} {running}")
        out.append(f"{name}_bucket{_labels(labels + (('le', '+Inf'),))} {self.n}")
        out.append(f"{name}_sum{_labels(labels)} {self.total:.6f}")
        out.append(f"{name}_count{_labels(labels)} {self.n}")
        return out


class Metrics:
    """The process's counters; one lock guards them all (updates are a few adds)."""

    def __init__(self, process: str | None = None):
        """``process``: this process's index in ``serve --processes N``; every sample gets it as a label."""
        self._process_labels: tuple[tuple[str, str], ...] = (("process", process),) if process is not None else ()
        self._lock = threading.Lock()  # guards every field below
        self._requests: dict[tuple, int] = defaultdict(int)
        self._request_seconds: dict[tuple, _Histogram] = {}
        self._fail_fast: dict[str, int] = {WORKER_NOT_PROCESSING_QUEUE: 0, RECORDING_DOWNLOAD_FAILED: 0}
        self._stuck: dict[str, int] = {kind: 0 for kind in STUCK_KINDS}
        self._jobs_finished: dict[tuple, int] = defaultdict(int)
        self._job_seconds = _Histogram(DURATION_BUCKETS)
        self._retries = 0
        self._abandoned = 0
        self._counter_outages = 0
        self._gauge_sources: list[Callable[[], Gauges]] = [process_gauges]

    def add_gauges(self, source: Callable[[], Gauges]) -> None:
        """A callable read at every scrape, returning gauges in ``render()``'s shape."""
        with self._lock:
            self._gauge_sources.append(source)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (("route", route), ("method", method), ("status", str(status)))
        with self._lock:
            self._requests[key] += 1
            hist = self._request_seconds.get(key)
            if hist is None:
                hist = self._request_seconds[key] = _Histogram(DURATION_BUCKETS)
            hist.observe(seconds)

    def fail_fast_trip(self, error: str) -> None:
        with self._lock:
            self._fail_fast[error] = self._fail_fast.get(error, 0) + 1

    def retry(self) -> None:
        with self._lock:
            self._retries += 1

    def counter_outage(self) -> None:
        with self._lock:
            self._counter_outages += 1

    def download_abandoned(self) -> None:
        with self._lock:
            self._abandoned += 1

    def stuck_job(self, kind: str) -> None:
        with self._lock:
            self._stuck[kind] = self._stuck.get(kind, 0) + 1

    def job_finished(self, status: str, error_code: str = "") -> None:
        with self._lock:
            self._jobs_finished[(("status", status), ("error_code", error_code))] += 1

    def observe_job_duration(self, seconds: float) -> None:
        with self._lock:
            self._job_seconds.observe(seconds)

    def families(self) -> dict[str, Family]:
        """This process's own families (counters, histograms, its gauges), in print order.

        With a ``process`` label (``serve --processes N``), every sample carries it, so the
        families of several processes merge into one page without clashing (``render``).
        """
        out: dict[str, Family] = {}
        mine = self._process_labels

        def family(name: str, kind: str, help_text: str) -> list[str]:
            lines: list[str] = []
            out[name] = (kind, help_text, lines)
            return lines

        with self._lock:
            lines = family("recsvc_http_requests_total", "counter", "HTTP requests answered, by route, method and status.")
            for key, value in sorted(self._requests.items()):
                lines.append(f"recsvc_http_requests_total{_labels(mine + key)} {value}")
            lines = family("recsvc_http_request_duration_seconds", "histogram", "Time to answer an HTTP request.")
            for key, hist in sorted(self._request_seconds.items()):
                lines.extend(hist.lines("recsvc_http_request_duration_seconds", mine + key))
            lines = family("recsvc_fail_fast_trips_total", "counter", "Retries refused because the retry limit was reached, by error.")
            for error, value in sorted(self._fail_fast.items()):
                lines.append(f"recsvc_fail_fast_trips_total{_labels(mine + (('error', error),))} {value}")
            lines = family("recsvc_retries_total", "counter", "Retry jobs created (CONTRACT 3, row 10b).")
            lines.append(f"recsvc_retries_total{_labels(mine)} {self._retries}")
            lines = family("recsvc_stuck_jobs_total", "counter", "Active jobs marked failed as stuck, by rule.")
            for kind, value in sorted(self._stuck.items()):
                lines.append(f"recsvc_stuck_jobs_total{_labels(mine + (('reason', kind),))} {value}")
            lines = family("recsvc_counter_outages_total", "counter",
                           "Outages of the shared retry counter, each counted in the process meanwhile.")
            lines.append(f"recsvc_counter_outages_total{_labels(mine)} {self._counter_outages}")
            lines = family("recsvc_downloads_abandoned_total", "counter",
                           "Downloads cut because their job was no longer this worker's (CONTRACT 4).")
            lines.append(f"recsvc_downloads_abandoned_total{_labels(mine)} {self._abandoned}")
            lines = family("recsvc_jobs_finished_total", "counter", "Jobs this process's workers finished, by status and error code.")
            for key, value in sorted(self._jobs_finished.items()):
                lines.append(f"recsvc_jobs_finished_total{_labels(mine + key)} {value}")
            lines = family("recsvc_job_duration_seconds", "histogram", "Time from claiming a job to its end, in this process.")
            lines.extend(self._job_seconds.lines("recsvc_job_duration_seconds", mine))
            sources = list(self._gauge_sources)
        for source in sources:
            for name, (help_text, samples) in source().items():
                family(name, "gauge", help_text).extend(
                    f"{name}{_labels(mine + labels)} {value:g}" for labels, value in samples)
        return out

    def render(self, gauges: Gauges, peers: Iterable[dict[str, Family]] = ()) -> str:
        """Prometheus text: this process's families, those of ``peers`` (other processes of
        ``serve --processes N``, as their ``families()``), then ``gauges``, the values
        of the shared database, given as name -> (help, [(labels, value), ...])."""
        merged = self.families()
        for peer in peers:
            for name, (kind, help_text, lines) in peer.items():
                if name in merged:
                    merged[name][2].extend(lines)
                else:
                    merged[name] = (kind, help_text, list(lines))
        for name, (help_text, samples) in gauges.items():
            merged[name] = ("gauge", help_text, [f"{name}{_labels(labels)} {value:g}" for labels, value in samples])
        out: list[str] = []
        for name, (kind, help_text, lines) in merged.items():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n"


def process_gauges() -> Gauges:
    """Resident memory (Linux /proc) and threads of this process."""
    gauges: Gauges = {"recsvc_threads": ("Threads of this process.", [((), threading.active_count())])}
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return gauges
    gauges["process_resident_memory_bytes"] = ("Resident memory of this process, in bytes.",
                                              [((), resident_pages * os.sysconf("SC_PAGE_SIZE"))])
    return gauges

"""Wiring: one recsvc process built from Settings — store, counter, workers, sweeper, HTTP.

``App(settings)`` builds every part; ``start(http=True)`` recovers orphans
(CONTRACT 4), starts the download workers (unless ``--workers 0``), the
sweeper and the HTTP server; ``stop()`` undoes it in reverse. ``serve`` is
``App.start(http=True)``; ``worker`` is ``App.start(http=False)``: the same
workers, pause flag and heartbeat table, no HTTP and no sweeper.

Tests build an App in-process with a fake ``clock`` and step it by hand
(``app.pool.heartbeat()``, ``app.service.cleanup()``), talking to it through
real sockets on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from typing import Callable

from ..contract.clock import Clock, system_clock
from ..contract.settings import Settings, parse_redis_url
from ..core.cache import RecordingCache
from ..core.links import LinkSigner, load_secret
from ..core.metrics import Metrics
from ..core.service import RecordingService
from ..core.upstream import Downloader
from ..core.waiters import JobWaiters
from ..core.worker import WorkerPool, recover_orphans
from ..http.api import Api
from ..http.proxies import TrustedProxies
from ..http.routes import PROBE_PATHS, PROBE_RESERVE
from ..http.server import HTTPServer
from ..storage.counter import RetryCounter
from ..storage.counters import open_counter
from ..storage.files import RecordingFiles
from ..storage.private_files import private_database, private_dir
from ..storage.store import StorageOutage, Store, StoreError
from .metrics_exchange import MetricsExchange

log = logging.getLogger(__name__)

DATABASE_FILE = "recsvc.sqlite3"


class StartError(Exception):
    """A start-up that cannot go on; its text is the one line the command line prints. ``passing``:
    a fault that can pass by itself (a store server not reachable yet), so a restart may work (exit 1
    rather than 2, which tells a supervisor not to restart)."""

    def __init__(self, line: str, *, passing: bool = False):
        super().__init__(line)
        self.passing = passing


def prepare_data_dir(path: str) -> None:
    """Make sure ``path`` is a data dir this process can write, creating it only inside a folder that exists.

    A mistyped ``--data-dir`` should be reported, not created with all its
    missing parents; a read-only one should be named in one line before
    SQLite or the link secret stumble on it.
    """
    absolute = os.path.abspath(path)
    if not os.path.isdir(absolute):
        parent = os.path.dirname(absolute)
        if os.path.exists(absolute):
            raise StartError(f"--data-dir {path} is not a folder")
        if not os.path.isdir(parent):
            raise StartError(f"--data-dir {path}: its parent folder {parent} does not exist (create it first)")
        try:
            os.mkdir(absolute, 0o700)
        except FileExistsError:  # another process made it meanwhile
            pass
        except OSError as exc:
            raise StartError(f"--data-dir {path} cannot be created: {exc.strerror}") from None
    try:
        probe, probe_path = tempfile.mkstemp(prefix=".write-check-", dir=absolute)
        os.close(probe)
        os.unlink(probe_path)
    except OSError as exc:
        raise StartError(f"--data-dir {path} cannot be written: {exc.strerror}") from None


class App:
    def __init__(self, settings: Settings, *, clock: Clock = system_clock, counter: RetryCounter | None = None,
                 downloader: Downloader | None = None, environ: dict | None = None, process_index: int = 0):
        """``process_index``: which of the ``--processes`` this one is (0 = the first)."""
        self.settings = settings
        self.clock = clock
        private_dir(settings.data_dir)  # CONTRACT 6: 0700, the database and secrets in it 0600
        self.store = self._open_store(settings)
        self.files = RecordingFiles(settings.data_dir)
        self.metrics = Metrics(process=str(process_index) if settings.processes > 1 else None)
        self.exchange: MetricsExchange | None = None
        if settings.processes > 1:
            self.exchange = MetricsExchange(settings.data_dir, process_index, settings.processes, self.metrics.families)
        if counter is None and self.store.optimistic:
            # The Redis store counts retries on its own server, in the script that queues the retry;
            # this counter reads and resets the same keys. No fallback: the store cannot fail open.
            from ..storage.redis_counter import RedisCounter  # only the nodes of a Redis store load it
            counter = RedisCounter(settings.store)
        self.counter = counter if counter is not None else open_counter(settings.counter, clock, store=self.store,
                                                                        on_outage=self.metrics.counter_outage)
        self.metrics.add_gauges(self._counter_gauges)
        self.downloader = downloader if downloader is not None else Downloader(settings)
        self.waiters = JobWaiters(self.store)
        self.cache = RecordingCache(self.store, self.files, settings.cache_max_bytes, clock)
        self.pool: WorkerPool | None = None
        # Also told when a job ends here: the serving processes of --processes N (recsvc.run.prefork).
        self.job_end_listeners: list[Callable[[int], None]] = []
        # Also told when a job is queued here: the first process, from a serving process.
        self.job_queue_listeners: list[Callable[[], None]] = []
        if settings.workers > 0:
            self.pool = WorkerPool(self.store, self.files, self.downloader, threads=settings.workers,
                                   heartbeat_interval=settings.heartbeat_interval, clock=clock,
                                   metrics=self.metrics, job_timeout=settings.job_timeout,
                                   on_job_done=lambda job: self._job_ended(job.id),
                                   on_stored=lambda job: self.cache.evict_over_limit(keep=(job.business_id, job.call_sid)))
        self.signer = LinkSigner(load_secret(settings.data_dir, environ))
        self.service = RecordingService(settings, self.store, self.files, self.counter, clock, self.metrics,
                                        self.signer, self.waiters, on_job_queued=self._job_queued,
                                        on_job_ended=self._job_ended)
        self.api = Api(settings, self.service, self.signer, self.metrics, clock, self.cache)
        self.http: HTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @staticmethod
    def _open_store(settings: Settings) -> Store:
        """The store ``--store`` names: the data dir's SQLite database, or a Redis server (a RedisStore,
        which offers the same interface; loaded only then)."""
        if settings.store != "sqlite://":
            from ..storage.redis_store import AccessRefused, RedisStore
            try:
                return RedisStore(settings.store)
            except Exception as exc:  # unreachable, AUTH refused, a newer layout: one line names the store
                # Unreachable, loading, a replica during a failover: a restart may find it working.
                passing = isinstance(exc, StoreError) and not isinstance(exc, AccessRefused)
                raise StartError(f"the store {parse_redis_url(settings.store)} cannot be used: {exc}",
                                 passing=passing) from None
        database = os.path.join(settings.data_dir, DATABASE_FILE)
        private_database(database)
        try:
            return Store(database)
        except Exception as exc:  # not SQLite, a newer schema, ...: the operator's line names the file
            raise StartError(f"the database {database} cannot be used: {getattr(exc, 'strerror', None) or exc}") from None

    # ---- lifecycle

    def start(self, http: bool = True, *, listen_socket: socket.socket | None = None) -> "App":
        """Start the parts; with ``listen_socket``, this is an extra serving process of
        ``serve --processes N`` (recsvc.run.prefork): it serves that socket and leaves orphan
        recovery and the sweeper to the first process, which runs them for all."""
        first = listen_socket is None
        if http:
            # Bound before anything is written: a port in use leaves no worker row behind.
            self.http = self._listen(listen_socket)
        try:
            self._start_parts(http, first)
        except BaseException:
            if self.http is not None:  # never served: shutdown() would wait for serve_forever
                self.http.server_close()
                self.http = None
            raise
        return self

    def _start_parts(self, http: bool, first: bool) -> None:
        if first and self.store.leases:
            # Nodes on several machines: a dead worker's jobs are failed when its lease expires, by any
            # node (fail_lost_leases), not by asking whether a pid of this host is alive.
            self.files.remove_dead_temp_files(own_pid=os.getpid())
        elif first:
            worker_id = self.pool.worker_id if self.pool else None
            replaced = recover_orphans(self.store, self.files, self.clock, worker_id)
            if replaced:
                log.warning("%d orphaned job(s) failed and replaced", replaced)
        if self.pool is not None:
            self.pool.start()
            self.metrics.add_gauges(self._pool_gauges)
        self.cache.start()
        if self.store.leases:
            self._spawn("events", lambda: self.store.listen(self._on_event, self._stopping,
                                                            self.settings.heartbeat_interval))
        if http:
            if first:
                self._spawn("sweeper", self._sweep_loop)
                if self.store.leases:
                    self._spawn("leases", self._lease_loop)
            # A short poll interval: shutdown() returns within it (tests stop many apps).
            self._spawn("http", lambda: self.http.serve_forever(poll_interval=0.05))
            self.metrics.add_gauges(self._http_gauges)
        if self.exchange is not None:
            self.api.peer_metrics = self.exchange.start().peers

    def _listen(self, listen_socket: socket.socket | None) -> HTTPServer:
        host, port = self.settings.host, self.settings.port
        try:
            return HTTPServer((host, port), self.api, idle_timeout=self.settings.idle_timeout,
                              max_connections=self.settings.max_connections, listen_socket=listen_socket,
                              reserve=PROBE_RESERVE, reserved_paths=PROBE_PATHS,
                              trusted_proxies=TrustedProxies(self.settings.trusted_proxies))
        except OSError as exc:
            shown = f"[{host}]" if ":" in host else host
            raise StartError(f"cannot listen on {shown}:{port}: {exc.strerror or exc}") from None

    def _job_queued(self) -> None:
        if self.pool is not None:
            self.pool.wake()
        for listener in self.job_queue_listeners:
            listener()

    def _job_ended(self, job_id: int) -> None:
        self.waiters.job_ended(job_id)
        for listener in self.job_end_listeners:
            listener(job_id)

    def _on_event(self, event: str) -> None:
        """A message of the store's events channel: a job ended or was queued, on any node."""
        kind, _, job_id = event.partition(":")
        if kind == "ended" and job_id.isdigit():
            self.waiters.job_ended(int(job_id))
        elif kind in ("queued", "subscribed") and self.pool is not None:
            self.pool.wake()

    def _http_gauges(self) -> dict:
        http = self.http
        return {
            "recsvc_http_connections": ("Client connections open now.", [((), http.connections if http else 0)]),
            "recsvc_held_requests": ("Requests held by Prefer: wait now (CONTRACT 5b).", [((), self.waiters.held_count())]),
        }

    def _counter_gauges(self) -> dict:
        in_fallback = getattr(self.counter, "in_fallback", False)  # only a shared counter has a fallback
        return {"recsvc_counter_fallback": ("1 while the shared retry counter is unreachable and this process "
                                            "counts retries alone (CONTRACT 3).", [((), int(in_fallback))])}

    def _pool_gauges(self) -> dict:
        pool = self.pool
        return {
            "recsvc_abandoned_downloads": (
                "Download threads still busy on jobs that are no longer theirs (CONTRACT 4).",
                [((), pool.abandoned_downloads())]),
            "recsvc_busy_downloads": ("Download threads busy on a job now.", [((), pool.busy)]),
        }

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=f"recsvc-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.http.server_address[:2]
        return host, port

    @property
    def base_url(self) -> str:
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def stop(self, grace: float | None = None) -> bool:
        """Stop accepting, let in-flight downloads finish within ``grace``; True when they did."""
        grace = self.settings.shutdown_grace if grace is None else grace
        self._stopping.set()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.exchange is not None:
            self.exchange.stop()
        self.waiters.stop()
        self.cache.stop()
        finished = self.pool.stop(grace) if self.pool is not None else True
        for thread in self._threads:
            thread.join(1.0)
        self.counter.close()
        self.store.close()
        return finished

    # ---- the sweeper (CONTRACT 4)

    def _lease_loop(self) -> None:
        """Every heartbeat interval, fail the jobs of workers whose lease expired (a store of leases)."""
        outage = StorageOutage("the lease check", log)
        while not self._stopping.wait(self.settings.heartbeat_interval):
            try:
                self.service.fail_lost_leases()
                outage.worked()
            except StoreError as exc:
                outage.failed(exc)
            except Exception:
                log.exception("lease check failed")

    def _sweep_loop(self) -> None:
        outage = StorageOutage("the sweeper", log)
        while not self._stopping.wait(self.settings.sweep_interval):
            try:
                self.service.cleanup()
                outage.worked()
            except StoreError as exc:
                outage.failed(exc)
            except Exception:
                log.exception("sweeper pass failed")

"""Several serving processes on one listening socket: ``serve --processes N``.

Theory of operation
-------------------
One Python process answers at most about one core's worth of requests (the
GIL). ``serve --processes N`` runs N processes that accept from the *same*
listening socket, so the kernel spreads connections across them and a
machine with several cores serves several times the requests, in the manner
of a pre-forking server:

- The first process is an ordinary ``serve``: it binds the port, recovers
  orphans, runs the sweeper and the download workers, and answers requests.
- It then starts N-1 *serving processes* with ``ServingProcesses``: the same
  ``python -m recsvc serve`` with the same flags (and the same environment),
  plus hidden flags that hand them the listening socket and two pipes of
  their own, as inherited file descriptors. A serving process answers
  requests only: ``--workers 0``, no sweeper, no orphan recovery
  (recsvc.app.App.start). The jobs it queues are claimed by the first
  process's workers: it writes a byte down one pipe, which wakes them at
  once (they also poll the shared queue, as for a separate ``worker``).
- Every decision is taken on the shared SQLite file under ``BEGIN
  IMMEDIATE``, and the retry counter must be shared too (``--counter
  sqlite://`` or ``redis://``; settings refuse ``memory://`` with N > 1), so
  the contract's answers are the same whichever process a request reaches.
- When a job ends in the first process, it writes the job's id down every
  pipe, so a request held by ``Prefer: wait`` in any process answers at
  once, not at its watcher's next look at the database.
- A serving process that exits unexpectedly is started again (after 1 s,
  doubling up to 30 s while it keeps dying young). If the first process dies,
  even by SIGKILL, the write end of the pipe closes; each serving process
  sees end-of-file on its read end and stops as if it got SIGTERM.
- On SIGTERM the first process sends SIGTERM to every serving process, stops
  itself, then waits for them (``--shutdown-grace`` plus a margin) and kills
  what is left.

Passing the socket (rather than each process binding with SO_REUSEPORT)
keeps ``--port 0`` working, needs no socket option, and leaves one accept
queue: a process that is busy simply accepts less.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

from .private_files import PRIVATE_FILE, private_dir
from .store import StorageOutage

log = logging.getLogger(__name__)

_RESTART_DELAY = 1.0
_MAX_RESTART_DELAY = 30.0
_HEALTHY_AFTER = 10.0  # a process that lived this long is restarted after the shortest delay


def package_root() -> str:
    """The folder (or zipapp file) that holds the ``recsvc`` package, for PYTHONPATH."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServingProcesses:
    """Start, watch and stop the extra serving processes of ``serve --processes N``."""

    def __init__(self, listen_socket: socket.socket, flags: list[str], count: int, *, stop_timeout: float,
                 on_job_queued: Callable[[], None] = lambda: None):
        """``flags`` are the ``serve`` flags as given; ``count`` is N-1; ``on_job_queued`` is
        called when a serving process queued a job (the first process wakes its workers)."""
        share(listen_socket)
        self._on_job_queued = on_job_queued
        self._socket = listen_socket
        self._flags = list(flags)
        self._count = count
        self._stop_timeout = stop_timeout
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _procs and _pipes
        self._procs: dict[int, subprocess.Popen] = {}
        self._pipes: dict[int, int] = {}  # index -> write end of its pipe, open while we live

    def command(self, index: int, pipe_read: int, queued_write: int) -> list[str]:
        return [sys.executable, "-m", "recsvc", "serve", *self._flags,
                "--listen-fd", str(self._socket.fileno()), "--parent-fd", str(pipe_read),
                "--queued-fd", str(queued_write), "--process-index", str(index)]

    def start(self) -> "ServingProcesses":
        for index in range(1, self._count + 1):
            self._spawn(index)
            threading.Thread(target=self._watch, args=(index,), name=f"recsvc-process-{index}", daemon=True).start()
        return self

    def _spawn(self, index: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root(), env.get("PYTHONPATH")) if p)
        pipe_read, pipe_write = os.pipe()  # not inheritable: only this child gets the read end
        os.set_blocking(pipe_write, False)  # job_ended never waits for a slow child
        queued_read, queued_write = os.pipe()  # the other way: "I queued a job"
        try:
            proc = subprocess.Popen(self.command(index, pipe_read, queued_write), env=env,
                                    pass_fds=(self._socket.fileno(), pipe_read, queued_write))
        except BaseException:
            os.close(pipe_write)
            os.close(queued_read)
            raise
        finally:
            os.close(pipe_read)
            os.close(queued_write)
        threading.Thread(target=read_wakeups, args=(queued_read, self._on_job_queued), name=f"recsvc-queued-{index}",
                         daemon=True).start()
        with self._lock:
            self._procs[index] = proc
            old = self._pipes.pop(index, None)
            self._pipes[index] = pipe_write
        if old is not None:
            os.close(old)
        log.info("serving process %d started (pid %d)", index, proc.pid)

    def job_ended(self, job_id: int) -> None:
        """Tell every serving process that a job ended, so its held requests answer now.

        One line per job on each process's pipe; a write that would block (a
        process that is not reading) is dropped, and that process's watcher
        query finds the end within its poll interval instead.
        """
        line = b"%d\n" % job_id
        with self._lock:
            pipes = list(self._pipes.values())
        for fd in pipes:
            try:
                os.write(fd, line)
            except OSError:  # full (BlockingIOError), or the process is gone (BrokenPipeError)
                pass

    def _watch(self, index: int) -> None:
        delay = _RESTART_DELAY
        while True:
            with self._lock:
                proc = self._procs[index]
            started = time.monotonic()
            status = proc.wait()
            if self._stopping.is_set():
                return
            delay = _RESTART_DELAY if time.monotonic() - started >= _HEALTHY_AFTER else min(delay * 2, _MAX_RESTART_DELAY)
            log.error("serving process %d (pid %d) exited with status %s; starting it again in %gs",
                      index, proc.pid, status, delay)
            if self._stopping.wait(delay):
                return
            self._spawn(index)

    def stop(self) -> None:
        """SIGTERM to every serving process; returns at once (``wait`` waits)."""
        self._stopping.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def wait(self) -> None:
        """Wait for the serving processes to stop; kill what is left after the timeout."""
        deadline = time.monotonic() + self._stop_timeout
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("serving process pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
        with self._lock:
            pipes, self._pipes = list(self._pipes.values()), {}
        for fd in pipes:
            os.close(fd)


def watch_parent(parent_fd: int, on_gone: Callable[[], None], on_job_ended: Callable[[int], None]) -> None:
    """In a serving process: read the first process's pipe.

    Each line names a job that ended (``on_job_ended(job_id)``); end-of-file
    means the first process exited, however it did (``on_gone()``).
    """

    def wait() -> None:
        pending = b""
        try:
            while chunk := os.read(parent_fd, 4096):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    try:
                        on_job_ended(int(line))
                    except ValueError:
                        log.warning("ignored a malformed line from the first process: %r", line[:40])
        except OSError:
            pass
        on_gone()

    threading.Thread(target=wait, name="recsvc-parent-watch", daemon=True).start()


def read_wakeups(fd: int, on_wake: Callable[[], None]) -> None:
    """In the first process: ``on_wake()`` for what a serving process's notifier sends;
    returns, closing ``fd``, when that process has exited."""
    try:
        while os.read(fd, 512):
            on_wake()
    except OSError:
        pass
    finally:
        os.close(fd)


def job_queued_notifier(fd: int) -> Callable[[], None]:
    """In a serving process: tell the first process that a job was queued (one byte).

    Non-blocking: a full pipe already holds wake-ups the workers have not read.
    """
    os.set_blocking(fd, False)

    def notify() -> None:
        try:
            os.write(fd, b"q")
        except OSError:  # full, or the first process is gone (its pipe end closed)
            pass

    return notify


def adopt_socket(fd: int) -> socket.socket:
    """The listening socket inherited from the first process (non-blocking: see ``share``)."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def share(listen_socket: socket.socket) -> None:
    """Make a listening socket safe to accept from in several processes.

    Every process's accept loop wakes when a connection arrives, but only one
    gets it; a *blocking* accept() in the others would then wait for the next
    connection and never see a shutdown. Non-blocking, they get EAGAIN, which
    socketserver ignores, and go back to their loop. (The flag belongs to the
    shared open file, so it holds in every process.)
    """
    listen_socket.setblocking(False)


class MetricsExchange:
    """/metrics of ``serve --processes N``: whichever process a scrape reaches shows them all.

    Every process writes its own families (``Metrics.families()``, each sample
    labelled ``process="i"``) to ``<data_dir>/metrics/process-<i>.json`` once a
    second, replaced atomically; a scrape renders its own process live and the
    others as of their last write (at most about a second old). A file not
    rewritten for ``STALE_AFTER`` seconds belongs to a process that is gone,
    and is left out until that process is back.
    """

    INTERVAL = 1.0
    STALE_AFTER = 5.0

    def __init__(self, data_dir: str, index: int, count: int, families: Callable[[], dict], *,
                 clock: Callable[[], float] = time.time):
        self._folder = os.path.join(data_dir, "metrics")
        private_dir(self._folder)
        self._index = index
        self._count = count
        self._families = families
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _path(self, index: int) -> str:
        return os.path.join(self._folder, f"process-{index}.json")

    def publish(self) -> None:
        path = self._path(self._index)
        temp = f"{path}.{os.getpid()}.tmp"
        try:
            with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE), "w") as out:
                json.dump(self._families(), out, separators=(",", ":"))
            os.replace(temp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(temp)  # a half-written file would hold space on a full disk
            raise

    def peers(self) -> list[dict]:
        """The other processes' families, from their files that are fresh."""
        found = []
        now = self._clock()
        for index in range(self._count):
            if index == self._index:
                continue
            try:
                with open(self._path(index)) as file:
                    if now - os.fstat(file.fileno()).st_mtime > self.STALE_AFTER:
                        continue
                    found.append({name: tuple(family) for name, family in json.load(file).items()})
            except (OSError, ValueError):
                continue  # not written yet, or gone
        return found

    def start(self) -> "MetricsExchange":
        self.publish()
        self._thread = threading.Thread(target=self._loop, name="recsvc-metrics-exchange", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        # A full disk costs one line when it starts and one when it ends (CONTRACT 3, storage faults).
        outage = StorageOutage("writing this process's metrics for the others", log)
        while not self._stopping.wait(self.INTERVAL):
            try:
                self.publish()
            except OSError as exc:
                outage.failed(exc)
            else:
                outage.worked()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2)
        try:
            os.remove(self._path(self._index))  # a clean stop: the others stop showing it at once
        except OSError:
            pass

"""The download workers: a thread pool that claims queued jobs and brings recordings home.

Theory of operation. One ``WorkerPool`` per process (``serve`` or ``worker``)
is one row of the ``workers`` table, named for its host and pid, with its own
heartbeat interval (CONTRACT 4). Its threads are:

- N download threads, each looping over ``run_once()``: claim the next queued
  job in queue order with one atomic statement (nothing is claimed while the
  pause flag is set), download it, publish the file, and complete the job.
  Between claims a thread waits on ``wake()`` (jobs created in this process)
  or a short poll (jobs created by another process).
- a heartbeat thread, calling ``heartbeat()`` every interval: it refreshes the
  worker row *and* ``heartbeat_at`` of the jobs this process runs, so a
  crashed process is noticed by the fourth stuck rule within seconds.
- a supervisor that replaces a download thread that died.

Ownership: every status change a worker makes is a compare-and-set on
(job id, status running, this worker id). A worker that lost its job (it was
marked stuck or superseded meanwhile) changes no row and publishes no file:
the file is renamed into place under the write lock, after the ownership
check, so a job that lost its place never replaces a newer file.

Abandoning (CONTRACT 4). Each download in flight is held with a ``JobCut``.
The heartbeat learns, in the statement that refreshes this worker's running
jobs, which of them are still its own; the downloads of the others (failed
stuck, by the sweeper, orphaned, superseded) are cut at once: the upstream
connection is shut, the temporary file removed, and the thread takes the
next job. So a thread notices within one heartbeat
interval. The cut also carries the job's deadline, ``started_at +
job-timeout``: a try still running there is cut and the job failed
``stuck`` with the running reason. ``abandoned_downloads()`` counts the
threads still busy on jobs that are no longer theirs (a gauge).

Storage faults. A claim or a heartbeat that cannot be written (disk full,
read-only, I/O error, locked) is one outage: one line when it starts, one
when it ends, and the threads wait a heartbeat interval between tries. A
job whose end could not be recorded is remembered and recorded by the
first heartbeat that can write.

``recover_orphans()`` runs once at start: jobs left running by a process of
this host that no longer exists are failed ``orphaned`` and replaced in place.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
import time
import uuid
from typing import Callable

from ..contract.clock import Clock
from ..contract.decision import running_too_long
from ..contract.model import DOWNLOAD_FAILED, ORPHANED, ORPHANED_MESSAGE, STORAGE_ERROR, STUCK, TWILIO_CREDENTIALS, Job, Recording
from ..storage.files import HOSTNAME, RecordingFiles, parse_worker_id, process_alive
from ..storage.store import StorageOutage, Store, StoreError
from .media import AUDIO_TYPES
from .metrics import Metrics
from .upstream import DownloadAbandoned, Downloader, DownloadFailed, JobCut, JobDeadlinePassed

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{HOSTNAME}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def recover_orphans(store: Store, files: RecordingFiles, clock: Clock, own_worker_id: str | None = None) -> int:
    """Fail and replace the jobs left running by dead processes of this host (CONTRACT 4).

    A job is an orphan when its worker names this host and a pid that no
    longer exists, or this very pid under another worker id (a restarted
    container reuses pids). Its replacement keeps its place in the queue and
    its attempt number: orphans do not count as retries.
    """
    now = clock()
    replaced: list[Job] = []
    with store.writing() as tx:
        for job in tx.running_jobs():
            owner = parse_worker_id(job.worker_id or "")
            if owner is None or owner[0] != HOSTNAME:
                continue
            pid = owner[1]
            same_pid_other_run = pid == os.getpid() and job.worker_id != own_worker_id
            if process_alive(pid) and not same_pid_other_run:
                continue
            if tx.replace_job(job, ORPHANED, ORPHANED_MESSAGE, now) is not None:
                replaced.append(job)
        for worker_id, host, pid, *_ in tx.all_workers():
            if host == HOSTNAME and worker_id != own_worker_id and (pid == os.getpid() or not process_alive(pid)):
                tx.delete_worker(worker_id)
    for job in replaced:  # told once the commit made it true (CONTRACT 3)
        log.warning("[ORPHAN] job=%d call_sid=%s failed: worker restarted; replacement queued",
                    job.id, job.call_sid)
    files.remove_dead_temp_files(own_pid=os.getpid())
    return len(replaced)


class _Running:
    """A download in flight: its job, its cut, and whether its thread is recording its end."""

    def __init__(self, job: Job, cut: JobCut):
        self.job = job
        self.cut = cut
        self.settled = False


class WorkerPool:
    """Download threads, their heartbeat and their supervisor, for one process."""

    def __init__(self, store: Store, files: RecordingFiles, downloader: Downloader, *,
                 threads: int, heartbeat_interval: float, clock: Clock, metrics: Metrics,
                 poll_interval: float = 0.5, on_job_done: Callable[[Job], None] | None = None,
                 on_stored: Callable[[Job], None] | None = None,
                 worker_id: str | None = None, job_timeout: float | None = None):
        self.store = store
        self.files = files
        self.downloader = downloader
        self.threads = threads
        self.heartbeat_interval = heartbeat_interval
        self.clock = clock
        self.metrics = metrics
        self.poll_interval = min(poll_interval, heartbeat_interval)
        self.on_job_done = on_job_done
        self.on_stored = on_stored
        self.worker_id = worker_id or new_worker_id()
        self._stopping = threading.Event()
        self._work = threading.Condition()  # guards _pending_wakes
        self._pending_wakes = 0
        self._download_threads: list[threading.Thread] = []
        self._service_threads: list[threading.Thread] = []
        self.job_timeout = job_timeout  # None: no deadline of the job's own, only --download-timeout per try
        self._busy = 0
        self._busy_lock = threading.Lock()  # guards _busy
        self._running_lock = threading.Lock()  # guards _running and _unrecorded
        self._running: dict[int, _Running] = {}
        self._unrecorded: dict[int, tuple[Job, str, str]] = {}  # job id -> (job, error_code, message)
        self._claims = 0  # claims begun so far; under _running_lock, as is _claiming
        self._claiming = 0  # claims begun whose job is not in _running yet (or that found none)
        self.claim_outage = StorageOutage("download threads cannot claim jobs", log)
        self.heartbeat_outage = StorageOutage(f"worker {self.worker_id} heartbeat", log)

    # ---- lifecycle

    def register(self) -> None:
        """Write this process's worker row (a first heartbeat)."""
        self.started_at = self.clock()
        with self.store.writing() as tx:
            tx.upsert_worker(self.worker_id, HOSTNAME, os.getpid(), self.threads,
                             self.heartbeat_interval, self.started_at)

    def start(self) -> None:
        self.register()
        for index in range(self.threads):
            self._download_threads.append(self._start_download_thread(index))
        for name, target in (("heartbeat", self._heartbeat_loop), ("supervisor", self._supervise)):
            thread = threading.Thread(target=target, name=f"recsvc-{name}", daemon=True)
            thread.start()
            self._service_threads.append(thread)
        log.info("worker %s started with %d download thread(s)", self.worker_id, self.threads)

    def stop(self, grace: float = 5.0) -> bool:
        """Stop claiming, let in-flight downloads finish within ``grace``; True when all finished."""
        self._stopping.set()
        self.wake()
        deadline = time.monotonic() + grace
        for thread in self._download_threads + self._service_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        finished = not any(t.is_alive() for t in self._download_threads)
        if finished:
            try:
                with self.store.writing() as tx:
                    tx.delete_worker(self.worker_id)
            except Exception:  # the store may already be gone; the row just ages out
                log.debug("could not remove worker row", exc_info=True)
        return finished

    @property
    def busy(self) -> int:
        with self._busy_lock:
            return self._busy

    def wake(self) -> None:
        """A job was queued in this process: let one idle thread look now."""
        with self._work:
            self._pending_wakes += 1
            self._work.notify_all()

    # ---- threads

    def _start_download_thread(self, index: int) -> threading.Thread:
        thread = threading.Thread(target=self._download_loop, name=f"recsvc-download-{index}", daemon=True)
        thread.start()
        return thread

    def _download_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                worked = self.run_once()
            except StoreError as exc:  # CONTRACT 3: a storage fault, one line per outage
                self.claim_outage.failed(exc)
                self._stopping.wait(self.heartbeat_interval)
                continue
            except Exception:
                if self._stopping.is_set():  # the store may be closed under a download that outlived stop()
                    log.info("download thread ended during shutdown", exc_info=True)
                    return
                log.exception("download thread error; continuing")
                worked = False
            if not worked:
                with self._work:
                    if self._pending_wakes == 0 and not self._stopping.is_set():
                        self._work.wait(self.poll_interval)
                    self._pending_wakes = max(0, self._pending_wakes - 1)

    def _heartbeat_loop(self) -> None:
        pause = self.heartbeat_interval
        while not self._stopping.wait(pause):
            pause = self.heartbeat_interval
            try:
                self.heartbeat()
            except StoreError as exc:
                self.heartbeat_outage.failed(exc)
                # Sooner while it fails: once storage is back, the beat is fresh again before
                # anyone can take the missing beats for "no live worker" (CONTRACT 3, row 7).
                pause = self.heartbeat_interval / 4
            except Exception:
                log.exception("heartbeat failed")

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            for index, thread in enumerate(self._download_threads):
                if not thread.is_alive() and not self._stopping.is_set():
                    log.error("download thread %s died; starting a new one", thread.name)
                    self._download_threads[index] = self._start_download_thread(index)

    # ---- one step each (tests call these directly)

    def heartbeat(self) -> None:
        """Refresh this worker and the jobs its threads run; cut those that are no longer its own,
        and record the ends that a storage fault kept from being recorded (CONTRACT 4)."""
        with self._running_lock:
            in_flight = {job_id: running for job_id, running in self._running.items() if not running.settled}
            unrecorded = list(self._unrecorded.values())
            known = set(self._running) | set(self._unrecorded)
            claims = self._claims if not self._claiming else None
        now = self.clock()
        lease = (HOSTNAME, os.getpid(), self.threads, self.heartbeat_interval, self.started_at)
        with self.store.writing() as tx:
            mine = tx.beat(self.worker_id, now, lease=lease)
            recorded = [(job, code, message) for job, code, message in unrecorded
                        if tx.fail_owned_job(job.id, self.worker_id, code, message, now)]
        self.heartbeat_outage.worked()
        with self._running_lock:
            for job, *_ in unrecorded:
                self._unrecorded.pop(job.id, None)
        for job, code, message in recorded:
            self._failed(job, code, message)
        for job_id, running in in_flight.items():
            if job_id not in mine:
                log.warning("job=%d call_sid=%s is no longer ours; abandoning its download",
                            job_id, running.job.call_sid)
                running.cut.abandon()
        with self._running_lock:  # no claim began since the look at _running: its job would be unknown
            settled = claims is not None and claims == self._claims
        if settled and mine - known:
            self._give_back(mine - known, now)

    def _give_back(self, job_ids: set[int], now: float) -> None:
        """Jobs the store runs under this worker that no thread of it holds: a claim the store made
        whose reply never came (its server died in between). They are replaced in their queue place
        with the same attempt, as orphans are (CONTRACT 4): the claim was never a try."""
        replaced = []
        with self.store.writing() as tx:
            for job_id in sorted(job_ids):
                job = tx.get_job(job_id)
                if job is not None and job.worker_id == self.worker_id and \
                        tx.replace_job(job, ORPHANED, "its claim's reply was lost", now) is not None:
                    replaced.append(job)
        for job in replaced:  # told once the commit made it true (CONTRACT 3)
            log.warning("[ORPHAN] job=%d call_sid=%s failed: its claim's reply was lost; replacement queued",
                        job.id, job.call_sid)

    def abandoned_downloads(self) -> int:
        """Download threads busy on jobs that are no longer theirs, as the database says now."""
        with self._running_lock:
            in_flight = [job_id for job_id, running in self._running.items() if not running.settled]
        if not in_flight:
            return 0
        with self.store.reading() as tx:
            lost = set(tx.lost_jobs(in_flight, self.worker_id))
        with self._running_lock:  # a thread that settled meanwhile is no longer busy on it
            return sum(1 for job_id in lost if job_id in self._running and not self._running[job_id].settled)

    def run_once(self) -> bool:
        """Claim and run one job; False when there was nothing to claim."""
        running = self._claim()
        if running is None:
            return False
        with self._busy_lock:
            self._busy += 1
        try:
            self._run(running.job, running)
        finally:
            with self._running_lock:
                del self._running[running.job.id]
            with self._busy_lock:
                self._busy -= 1
        return True

    def _claim(self) -> _Running | None:
        """Claim the next job and hold it in ``_running``; meanwhile the heartbeat knows that a claim
        is under way, and gives back no job of this worker that it cannot find there yet."""
        now = self.clock()
        with self._running_lock:
            self._claims += 1
            self._claiming += 1
        try:
            with self.store.writing() as tx:
                job = tx.claim_next_job(self.worker_id, now)
            self.claim_outage.worked()
            if job is None:
                return None
            running = _Running(job, JobCut(self._seconds_left(job, now)))
            with self._running_lock:
                self._running[job.id] = running
            return running
        finally:
            with self._running_lock:
                self._claiming -= 1

    def _seconds_left(self, job: Job, claimed_at: float) -> float | None:
        """Time to the job's deadline, ``started_at + job-timeout`` (CONTRACT 4), from the claim: the
        clock read after the claim could already be past a deadline that the claim itself set."""
        if self.job_timeout is None or job.started_at is None:
            return None
        return job.started_at + self.job_timeout - claimed_at

    def _run(self, job: Job, running: _Running) -> None:
        started = time.monotonic()
        log.info("job=%d call_sid=%s download started", job.id, job.call_sid)
        try:
            failure = self._download(job, running)
            if failure is not None:  # recorded once the temporary file is gone: a failed job leaves nothing
                self._fail(job, *failure)
        finally:
            self.metrics.observe_job_duration(time.monotonic() - started)
            if self.on_job_done is not None:
                self.on_job_done(job)

    def _download(self, job: Job, running: _Running) -> tuple[str, str] | None:
        """Download and publish the job's recording; the failure to record, if any."""
        temp = temp_path = None
        try:
            temp, temp_path = self.files.create_temp(job.business_id)
            got = self.downloader.download(job.recording_url, temp, self._credentials(job), running.cut)
            running.settled = True
            if self._publish(job, temp, temp_path, got):
                temp_path = None
        except DownloadAbandoned:
            self.metrics.download_abandoned()
            log.info("job=%d call_sid=%s abandoned: no longer ours; nothing recorded", job.id, job.call_sid)
        except JobDeadlinePassed:
            running.settled = True
            return STUCK, running_too_long(self.clock() - (job.started_at or self.clock()))
        except DownloadFailed as exc:
            running.settled = True
            return exc.code, exc.message
        except OSError as exc:
            running.settled = True
            return STORAGE_ERROR, f"could not store the recording: {exc.strerror or exc}"
        except StoreError as exc:  # the end could not be recorded
            self._cannot_record(job, "finished", exc, STORAGE_ERROR, f"could not record the recording: {exc}")
        except Exception as exc:  # a fault of ours must not leave the job running until job-timeout
            running.settled = True
            log.exception("job=%d call_sid=%s: unexpected error", job.id, job.call_sid)
            return DOWNLOAD_FAILED, f"unexpected error: {type(exc).__name__}"
        finally:
            if temp is not None and not temp.closed:
                # Closing retries a flush that already failed (disk full): that
                # second error must not skip removing the temporary file.
                with contextlib.suppress(OSError):
                    temp.close()
            if temp_path is not None:
                self.files.discard(temp_path)
        return None

    def _cannot_record(self, job: Job, what: str, exc: StoreError, code: str, message: str) -> None:
        """An end the store did not take: failed ``code`` by the next heartbeat that can write. Once
        this process stops there is no next heartbeat (a download that outlived the stop): the job is
        left running for the orphan check of the next start, or its worker's lease (CONTRACT 4)."""
        if self._stopping.is_set():
            log.warning("job=%d call_sid=%s %s but that could not be recorded (%s) as this process stops; "
                        "left running for the orphan check of the next start or its worker's lease",
                        job.id, job.call_sid, what, exc)
            return
        log.warning("job=%d call_sid=%s %s but that could not be recorded (%s); kept for the next heartbeat",
                    job.id, job.call_sid, what, exc)
        with self._running_lock:
            self._unrecorded[job.id] = (job, code, message)

    def _credentials(self, job: Job) -> dict[str, str]:
        """Headers that authenticate the download: HTTP Basic with the business's Twilio account
        for calls stored by its webhook. The downloader never forwards them to another host."""
        with self.store.reading() as tx:
            if tx.call_credentials(job.business_id, job.call_sid) != TWILIO_CREDENTIALS:
                return {}
            account = tx.twilio_account_of_business(job.business_id)
        if account is None:
            return {}
        pair = f"{account.account_sid}:{account.auth_token}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}

    def _publish(self, job: Job, temp, temp_path: str, got) -> bool:
        """Rename the file into place and record it; False when the job is no longer ours."""
        extension = AUDIO_TYPES[got.content_type]
        now = self.clock()
        if self.store.unique_file_names:
            return self._publish_own_name(job, temp, temp_path, got, extension, now)
        relative = self.files.relative_path(job.business_id, job.call_sid, extension)
        # The rename happens under the write lock after the ownership check,
        # so a job that lost its place never replaces a newer file.
        with self.store.writing() as tx:
            if not tx.owns_job(job.id, self.worker_id):
                self._not_ours(job)
                return False
            previous = tx.get_recording(job.business_id, job.call_sid)
            self.files.publish(temp, temp_path, relative)
            tx.upsert_recording(Recording(job.business_id, job.call_sid, job.recording_url, relative,
                                          got.size, got.sha256, got.content_type, now), now)
            tx.complete_owned_job(job.id, self.worker_id, now)
        self._published(job, got, previous.path if previous is not None else None, relative)
        return True

    def _publish_own_name(self, job: Job, temp, temp_path: str, got, extension: str, now: float) -> bool:
        """A store without a lock to hold across the rename (the Redis store): the file is renamed
        into a name of this job's own, then recorded by one compare-and-set on the job's owner; a job
        that lost its place removes its file, and never replaces the file of a newer one."""
        relative = self.files.relative_path(job.business_id, job.call_sid, extension, job_id=job.id)
        self.files.publish(temp, temp_path, relative)
        recording = Recording(job.business_id, job.call_sid, job.recording_url, relative, got.size, got.sha256,
                              got.content_type, now)
        # A store fault here leaves the file where it is: the script may have run before the reply was
        # lost, and then the row names it. It is whole either way, and unnamed it is never served.
        with self.store.writing() as tx:
            completed, previous = tx.complete_job(job.id, self.worker_id, recording, now)
        if not completed:
            self.files.remove(relative)
            self._not_ours(job)
            return False
        self._published(job, got, previous, relative)
        return True

    def _not_ours(self, job: Job) -> None:
        log.warning("job=%d call_sid=%s finished but is no longer ours; nothing recorded", job.id, job.call_sid)

    def _published(self, job: Job, got, previous: str | None, relative: str) -> None:
        if previous is not None and previous != relative:
            self.files.remove(previous)
        if self.on_stored is not None:
            self.on_stored(job)
        self.metrics.job_finished("completed")
        log.info("job=%d call_sid=%s completed: %d bytes %s", job.id, job.call_sid, got.size, got.content_type)

    def _fail(self, job: Job, code: str, message: str) -> None:
        try:
            with self.store.writing() as tx:
                owned = tx.fail_owned_job(job.id, self.worker_id, code, message, self.clock())
        except StoreError as exc:
            self._cannot_record(job, f"failed ({code})", exc, code, message)
            return
        if owned:
            self._failed(job, code, message)
        else:
            log.warning("job=%d call_sid=%s failed (%s) but is no longer ours; nothing recorded",
                        job.id, job.call_sid, code)

    def _failed(self, job: Job, code: str, message: str) -> None:
        """Log lines and metrics of a failure, once its commit made it true (CONTRACT 3)."""
        self.metrics.job_finished("failed", code)
        if code == STUCK:
            self.metrics.stuck_job("running")
            log.warning("[STUCK] job=%d call_sid=%s reason=%s", job.id, job.call_sid, message)
        else:
            log.warning("job=%d call_sid=%s failed: %s %s", job.id, job.call_sid, code, message)

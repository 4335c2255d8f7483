"""The bounded recording cache: when each file was last played, and evicting the least recent.

Theory of operation (CONTRACT 5, ``--cache-max-bytes``). A play is a GET
answered 200 or 206; storing a file counts as its first play. Recording a
play must not cost a database write on the hot path, so ``played()`` only
notes the time in memory; ``flush()`` writes the notes in one batch, every
``flush_interval`` seconds from a background thread and always before an
eviction decides. The interval is short (a second) because the eviction may
be decided by another process: a ``recsvc worker`` that stores a file sees
only the plays the server has flushed, so a recording played a second ago
must not look older than one stored an hour ago. One batched write a second
at most, whatever the traffic.

``evict_over_limit()`` runs after a file is stored. While the cached bytes
exceed the limit it removes the least recently played recording other than
the one just stored: first its row, in a write transaction, then its file.
A reader that already opened the file keeps reading it whole (POSIX keeps an
unlinked file alive while open); a reader that comes later finds no row, or
a row whose file is gone (treated as not cached, CONTRACT 3), and gets a
clean 202 while the recording is downloaded again.
"""

from __future__ import annotations

import logging
import threading

from ..contract.clock import Clock
from ..storage.files import RecordingFiles
from ..storage.store import StorageOutage, Store, StoreError

log = logging.getLogger(__name__)


class RecordingCache:
    def __init__(self, store: Store, files: RecordingFiles, max_bytes: int, clock: Clock,
                 flush_interval: float = 1.0):
        self.store = store
        self.files = files
        self.max_bytes = max_bytes
        self.clock = clock
        self.flush_interval = flush_interval
        self._plays_lock = threading.Lock()  # guards _plays
        self._plays: dict[tuple[int, str], float] = {}
        self._evict_lock = threading.Lock()  # one eviction pass at a time in this process
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = StorageOutage("flushing play times", log)

    def played(self, business_id: int, call_sid: str) -> None:
        with self._plays_lock:
            self._plays[(business_id, call_sid)] = self.clock()

    def flush(self) -> int:
        with self._plays_lock:
            plays, self._plays = self._plays, {}
        if plays:
            try:
                with self.store.writing() as tx:
                    tx.note_plays([(at, bid, sid) for (bid, sid), at in plays.items()])
            except StoreError:  # kept for the next flush: a storage fault loses no play
                with self._plays_lock:
                    for key, at in plays.items():
                        self._plays[key] = max(at, self._plays.get(key, at))
                raise
        return len(plays)

    def evict_over_limit(self, keep: tuple[int, str] | None = None) -> int:
        """Evict least recently played recordings until the cache fits; returns how many."""
        if self.max_bytes <= 0:
            return 0
        evicted = 0
        with self._evict_lock:
            self.flush()
            while True:
                with self.store.writing() as tx:
                    total, _count = tx.cache_bytes()
                    if total <= self.max_bytes:
                        break
                    victim = tx.least_recently_played(keep)
                    if victim is None:
                        break
                    tx.delete_recording(victim.business_id, victim.call_sid, victim.sha256)
                self.files.remove(victim.path)
                evicted += 1
                log.info("evicted call_sid=%s (%d bytes): cache over %d bytes",
                         victim.call_sid, victim.size, self.max_bytes)
        return evicted

    def start(self) -> None:
        self._thread = threading.Thread(target=self._flush_loop, name="recsvc-play-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(1.0)
        try:
            self.flush()
        except Exception:
            log.debug("final flush of play times failed", exc_info=True)

    def _flush_loop(self) -> None:
        while not self._stopping.wait(self.flush_interval):
            try:
                self.flush()
                self._outage.worked()
            except StoreError as exc:
                self._outage.failed(exc)
            except Exception:
                log.exception("flushing play times failed")

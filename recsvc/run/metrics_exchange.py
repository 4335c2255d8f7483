"""/metrics across the processes of ``serve --processes N``: each writes its families, any scrape shows all."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Callable

from ..storage.private_files import PRIVATE_FILE, private_dir
from ..storage.store import StorageOutage

log = logging.getLogger(__name__)


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

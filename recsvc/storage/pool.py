"""A small fixed pool of SQLite connections, each opened on first need and then kept.

The store (``recsvc.storage.store``) keeps two: one for reads, one for the
writer. Each connection keeps its own page cache and prepared statements, so
the pools are small and fixed rather than one connection per thread.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # connections are only passed through here; the store opens and uses them
    import sqlite3


class HeldConnections(threading.local):
    """How many connections of one store the current thread holds."""

    depth = 0  # connections of this store the current thread holds


class ConnectionPool:
    """At most ``size`` connections, each opened on first need and then kept.

    A thread holding none waits its turn (first come, first served) for one,
    at most ``wait`` seconds, then gets the ``busy`` error (the store's ``StoreBusy``). A thread that already
    holds a connection of the store never waits: it takes a free one or opens
    an extra, closed after use. So a nested checkout cannot wait for itself,
    and a thread that waits holds nothing another could be waiting for.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], size: int, wait: float, held: HeldConnections,
                 busy: Callable[[str], Exception]):
        self._connect = connect
        self._busy = busy  # the error of a wait that ran out
        self._wait = wait
        self._held = held
        self._free: queue.SimpleQueue[sqlite3.Connection | None] = queue.SimpleQueue()
        for _ in range(size):
            self._free.put(None)  # a place whose connection is not open yet

    def take(self) -> tuple[sqlite3.Connection, bool]:
        """(a connection, whether it belongs to the pool)."""
        held = self._held
        try:
            if held.depth:
                conn = self._free.get_nowait()
            else:
                conn = self._free.get(timeout=self._wait)
        except queue.Empty:
            if not held.depth:
                raise self._busy(f"no database connection came free within {self._wait:g}s") from None
            conn, pooled = self._connect(), False
        else:
            pooled = True
            if conn is None:
                try:
                    conn = self._connect()
                except BaseException:
                    self._free.put(None)
                    raise
        held.depth += 1
        return conn, pooled

    def give(self, conn: sqlite3.Connection, pooled: bool, close) -> None:
        self._held.depth -= 1
        if not pooled:
            close(conn)
            return
        if conn.in_transaction:  # never hand a half-open transaction to the next user
            try:
                conn.rollback()
            except BaseException:
                close(conn)
                self._free.put(None)
                raise
        self._free.put(conn)

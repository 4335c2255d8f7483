"""Files only the service's own user may read: the data dir 0700, the database and secrets 0600.

CONTRACT 6: the database holds Twilio auth tokens, and the data dir holds
the link secret, so neither may be readable by other users whatever the
umask. Each helper sets the mode explicitly (``chmod`` after creating), so
a umask of 0 cannot widen it and a file left 0644 by an older recsvc is
narrowed at the next start. SQLite creates the WAL and shared-memory files
with the mode of the database file, so they follow it; they are narrowed
too in case they already existed.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_dir(path: str) -> None:
    """Create ``path`` (and its parents) if needed; ``path`` itself ends up 0700."""
    os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
    _chmod(path, PRIVATE_DIR)


def private_file(path: str) -> None:
    """Create ``path`` empty if it does not exist; either way it ends up 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def private_database(path: str) -> None:
    """The SQLite file at ``path`` and whichever of its WAL, SHM and journal exist: 0600."""
    private_file(path)
    for suffix in SQLITE_COMPANIONS:
        if os.path.exists(path + suffix):
            _chmod(path + suffix, PRIVATE_FILE)


def _chmod(path: str, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except PermissionError:  # not ours (a shared folder): say so, and go on
        log.warning("cannot set mode %o on %s: it is not owned by this user", mode, path)

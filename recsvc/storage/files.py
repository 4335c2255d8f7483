"""Recording files on disk: temporary writes, atomic publication, and the intact check.

Theory of operation. A download is written to a temporary file in the same
folder it will end in (so the rename stays on one filesystem), flushed and
fsynced, then ``os.replace``d onto ``recordings/{business_id}/{call_sid}.{ext}``
and the folder fsynced. Only after that does the caller record the
recording row, so a file is visible to readers only once it is complete,
durable and verified (CONTRACT 1). A crash at any instant leaves either the
old state or a temporary file that no row names; temporary files carry
their writer's host and pid, so a restarting process removes the leftovers
of dead processes and never those of a live one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from typing import BinaryIO

from .private_files import PRIVATE_FILE, private_dir

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".part"


def process_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


HOSTNAME = socket.gethostname()


def parse_worker_id(worker_id: str) -> tuple[str, int] | None:
    """(host, pid) of a worker id (``host:pid:tag``, recsvc.core.worker), or None when it is not one of ours."""
    host, sep, rest = worker_id.rpartition(":")
    host, sep2, pid = host.rpartition(":")
    if not sep or not sep2 or not pid.isdigit():
        return None
    return host, int(pid)


class RecordingFiles:
    """The ``recordings/`` folder of a data dir."""

    def __init__(self, data_dir: str):
        self.root = os.path.join(os.path.abspath(data_dir), "recordings")
        private_dir(self.root)  # call audio: 0700 folders and 0600 files, whatever the umask

    def relative_path(self, business_id: int, call_sid: str, extension: str, job_id: int | None = None) -> str:
        """Where a call's recording is published; with ``job_id``, a name of that job's own (the Redis
        store renames before it records, so no two jobs may share a name)."""
        if job_id is not None:
            return f"{int(business_id)}/{call_sid}.{int(job_id)}.{extension}"
        return f"{int(business_id)}/{call_sid}.{extension}"

    def absolute(self, relative: str) -> str:
        return os.path.join(self.root, relative)

    def create_temp(self, business_id: int) -> tuple[BinaryIO, str]:
        """A new temporary file beside the final one; its name says who writes it."""
        folder = os.path.join(self.root, str(int(business_id)))
        private_dir(folder)
        name = f".{HOSTNAME}.{os.getpid()}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        return os.fdopen(fd, "wb"), path

    def publish(self, temp_file: BinaryIO, temp_path: str, relative: str) -> None:
        """Flush, fsync, rename into place, fsync the folder. Raises OSError on failure."""
        temp_file.flush()
        os.fsync(temp_file.fileno())
        temp_file.close()
        final = self.absolute(relative)
        os.replace(temp_path, final)
        folder_fd = os.open(os.path.dirname(final), os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)

    def discard(self, temp_path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)

    def remove(self, relative: str) -> None:
        """Remove a published file; a reader that already opened it keeps reading it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.absolute(relative))

    def open_intact(self, relative: str, size: int) -> BinaryIO | None:
        """The open file when it exists with its recorded size, else None (CONTRACT 3, vanished file)."""
        try:
            handle = open(self.absolute(relative), "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            return None
        if os.fstat(handle.fileno()).st_size != size:
            handle.close()
            return None
        return handle

    def remove_dead_temp_files(self, own_pid: int | None = None) -> int:
        """Remove temporary files whose writer is gone (same host, pid dead or this process's own pid)."""
        removed = 0
        for folder, _dirs, names in os.walk(self.root):
            for name in names:
                if not name.endswith(TEMP_SUFFIX):
                    continue
                parts = name[1:].rsplit(".", 3)  # host may contain dots: split from the right
                if len(parts) != 4:
                    continue
                host, pid_text = parts[0], parts[1]
                if host != HOSTNAME or not pid_text.isdigit():
                    continue
                pid = int(pid_text)
                if pid == own_pid or not process_alive(pid):
                    self.discard(os.path.join(folder, name))
                    removed += 1
        if removed:
            log.info("removed %d leftover temporary file(s)", removed)
        return removed

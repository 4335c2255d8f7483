"""recsvc's processes share two glibc malloc arenas (``recsvc.cli.cap_malloc_arenas``).

Each case runs a fresh interpreter in which eight threads allocate at once and
hold what they allocated, then counts the arenas glibc's ``malloc_stats()``
reports on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, wait_until

try:
    GLIBC = bool(os.confstr("CS_GNU_LIBC_VERSION"))
except (ValueError, OSError):
    GLIBC = False

pytestmark = pytest.mark.skipif(not GLIBC, reason="malloc arenas are glibc's")

ALLOCATING_THREADS = '''
import ctypes, sys, threading
if sys.argv[1] == "cap":
    from recsvc.cli import cap_malloc_arenas
    print("capped", cap_malloc_arenas(), flush=True)
gate = threading.Barrier(9)

def allocate():
    held = [bytes(bytearray(4096)) for _ in range(64)]  # above pymalloc's limit: malloc, in this thread
    gate.wait()
    gate.wait()

threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
gate.wait()  # every thread holds its memory now
ctypes.CDLL(None).malloc_stats()
gate.wait()
'''


def arenas(mode: str, **env: str) -> tuple[int, str]:
    """(how many arenas malloc_stats listed, what the script printed)."""
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", ALLOCATING_THREADS, mode], capture_output=True, text=True,
                          env={**environ, "PYTHONPATH": ROOT, **env}, timeout=30, check=True)
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines()), done.stdout


def test_threads_of_a_recsvc_process_share_two_arenas():
    count, printed = arenas("cap")
    assert printed.strip() == "capped True"
    assert count == 2


def test_without_the_cap_the_same_threads_take_arenas_of_their_own():
    count, _ = arenas("none")
    assert count > 2  # what the cap changes: glibc's default is up to 8 per core


def test_an_arena_limit_set_in_the_environment_is_left_alone():
    count, printed = arenas("cap", MALLOC_ARENA_MAX="3")
    assert printed.strip() == "capped False"
    assert count == 3


def arena_heaps(pid: int) -> int:
    """glibc's heaps of non-main arenas in a running process: anonymous 64 MiB
    reservations on a 64 MiB boundary (read and write, then the unused rest)."""
    heap = 64 << 20
    maps = []
    with open(f"/proc/{pid}/maps") as lines:
        for line in lines:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            maps.append((low, high, fields[1], len(fields) > 5))
    count = 0
    for i, (low, high, perms, named) in enumerate(maps):
        if named or low % heap or not perms.startswith("rw"):
            continue
        if i + 1 < len(maps) and maps[i + 1][0] == high and maps[i + 1][2] == "---p" and not maps[i + 1][3]:
            high = maps[i + 1][1]
        count += high - low == heap
    return count


def serve(processes, data_dir, env: dict | None = None) -> int:
    """The pid of a real ``serve`` with 16 download threads, each of which looks for a job at once."""
    server = processes.start("serve", data_dir, "--port", "0", "--workers", "16", env=env)
    server.base_url()
    with open(f"/proc/{server.pid}/status") as status:
        assert int(next(line for line in status if line.startswith("Threads:")).split()[1]) > 16
    return server.pid


def test_serve_caps_its_arenas_before_its_threads_start(processes, tmp_path):
    pid = serve(processes, tmp_path / "capped")
    # 1.5 s: the uncapped serve below shows its extra arenas well within that.
    assert not wait_until(lambda: arena_heaps(pid) > 1, timeout=1.5)  # arena 0 is the main heap, not counted


def test_the_heap_count_sees_a_serve_with_more_arenas(processes, tmp_path):
    pid = serve(processes, tmp_path / "eight", env={"MALLOC_ARENA_MAX": "8"})
    assert wait_until(lambda: arena_heaps(pid) > 1, timeout=5)

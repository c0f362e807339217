"""What the kernel knows about the processes a test started: read from /proc, never from them.

Tests that kill or load real processes need to see them from outside, without hooks in the
production code:

- `live_with_env`: the live processes whose environment holds one variable, for example a
  test's unique ``RIVERSTREAM_REDIS_PREFIX``. A process forked by the learner (its snapshot
  child) inherits the environment, so this finds it even after it was re-parented.
- `live_in`: the live processes that run in a directory or name it in their command line (what
  a private state directory's services left running).
- `children`, `cmdline`: the live children of a process (a learner's snapshot child, uvicorn's
  workers) and what they run.
- `pending_signals`: the signals sent to a process and not yet delivered (a test that signals a
  process, then acts, waits for the delivery).
- `freeze`: SIGSTOP a process and wait until every one of its threads is stopped. ``kill()``
  returns before that: on a loaded machine a broker's threads may still answer requests for
  tens of milliseconds after it (a test that froze a broker, then sent, saw its sends
  acknowledged).
- `socket_owner`: which of some processes holds the TCP connection between two local ports,
  from ``/proc/net/tcp`` and the processes' file descriptors. It says which process wrote a
  command that Redis' MONITOR shows (the client's port), or which API worker answered a request
  (the client's port, while its connection is still open).

Linux only, like the rest of the suite.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path

from tests.support.waiting import wait_until

PROC = Path("/proc")


def _pids() -> Iterator[int]:
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            yield int(entry.name)


def state(pid: int) -> str | None:
    """The process state letter (``R``, ``S``, ``Z``...), or None when it is gone.

    >>> state(os.getpid()) in {"R", "S"}
    True
    """
    return state_of(PROC / str(pid))


def alive(pid: int) -> bool:
    """Running (a zombie, dead and waiting to be reaped, is not)."""
    return state(pid) not in (None, "Z")


def thread_states(pid: int) -> list[str]:
    """The state letter of each of ``pid``'s threads (none when it is gone)."""
    try:
        tasks = [entry.name for entry in os.scandir(PROC / str(pid) / "task")]
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [letter for tid in tasks if (letter := state_of(PROC / str(pid) / "task" / tid))]


def state_of(path: Path) -> str | None:
    try:
        stat = (path / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def freeze(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP ``pid`` and return once all its threads are stopped (SIGCONT resumes them).

    >>> import subprocess, sys
    >>> child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    >>> freeze(child.pid); set(thread_states(child.pid))
    {'T'}
    >>> child.kill(); _ = child.wait()
    """
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: _stopped(thread_states(pid)),
            timeout,
            f"every thread of {pid} stopped",
            interval=0.002,
            detail=lambda: thread_states(pid),
        )
    except AssertionError:
        os.kill(pid, signal.SIGCONT)  # not left half stopped: its stop by the test can be quick
        raise


def _stopped(states: list[str]) -> bool:
    """Every live thread stopped (``T``; ``t`` when traced); an exited main thread stays in
    the list as a zombie (``Z``) while the others run, and counts as stopped.

    >>> _stopped(["T", "T"]), _stopped(["Z", "t"]), _stopped(["T", "R"]), _stopped(["Z"])
    (True, True, False, False)
    """
    live = [s for s in states if s not in "ZX"]
    return bool(live) and all(s in "Tt" for s in live)


def pending_signals(pid: int) -> set[int]:
    """The signals sent to ``pid`` and not yet delivered (to the process or its main thread).

    >>> pending_signals(os.getpid())
    set()
    """
    try:
        lines = (PROC / str(pid) / "status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return set()
    mask = 0
    for line in lines:
        field, _, value = line.partition(":")
        if field in ("SigPnd", "ShdPnd"):
            mask |= int(value, 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def parent(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    """The live children of ``pid``.

    >>> import subprocess, sys
    >>> child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    >>> child.pid in children(os.getpid())
    True
    >>> child.kill(); _ = child.wait(); child.pid in children(os.getpid())
    False
    """
    return sorted(p for p in _pids() if parent(p) == pid and alive(p))


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (empty when it is gone).

    >>> "python" in cmdline(os.getpid())[0]
    True
    """
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def live_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment has ``name=value`` (those of our user only)."""
    wanted = f"{name}={value}".encode()
    found = []
    for pid in _pids():
        try:
            environ = (PROC / str(pid) / "environ").read_bytes()
        except (PermissionError, FileNotFoundError, ProcessLookupError):
            continue
        if wanted in environ.split(b"\0") and alive(pid):
            found.append(pid)
    return sorted(found)


def _socket_inodes(local_port: int, remote_port: int) -> set[int]:
    """Inodes of the IPv4/IPv6 TCP sockets from ``local_port`` to ``remote_port``."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if (
                inode
                and int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port
            ):
                inodes.add(inode)
    return inodes


def socket_owner(local_port: int, remote_port: int, candidates: Iterable[int]) -> int | None:
    """Which of ``candidates`` holds the connection from ``local_port`` to ``remote_port``."""
    targets = {f"socket:[{inode}]" for inode in _socket_inodes(local_port, remote_port)}
    if not targets:
        return None
    for pid in candidates:
        if targets & set(_fd_links(pid)):
            return pid
    return None


def _fd_links(pid: int) -> Iterator[str]:
    """What the open file descriptors of ``pid`` point to (those still open while read)."""
    try:
        entries = list(os.scandir(PROC / str(pid) / "fd"))
    except (PermissionError, FileNotFoundError, ProcessLookupError):
        return
    for entry in entries:
        try:
            yield os.readlink(entry.path)
        except (FileNotFoundError, ProcessLookupError):
            continue


def live_in(directory: Path) -> list[int]:
    """Live processes that run in ``directory`` (their working directory is in it) or name it
    in their command line: what a state directory's services left running, even a server that
    rewrites its title (Redis' shows its address only, but it runs in its data directory)."""
    root = str(directory.resolve())
    found = []
    for pid in _pids():
        try:
            cwd = os.readlink(PROC / str(pid) / "cwd")
        except (PermissionError, FileNotFoundError, ProcessLookupError):
            cwd = ""
        inside = cwd == root or cwd.startswith(f"{root}/")
        if (inside or any(root in part for part in cmdline(pid))) and alive(pid):
            found.append(pid)
    return sorted(found)

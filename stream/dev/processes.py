"""Processes of local services: where they run, spawning them, knowing them alive, stopping them.

A `Host` says where a server runs: the address it binds and serves on, and the command prefix
that puts it there. On one machine that is ``127.0.0.1`` and no prefix (`LOCAL`); a network
namespace (`stream.dev.netns`) is its private address and ``ip netns exec NAME``, which
``exec``s the server in place, so the pid recorded is the server's own and it is stopped by pid
like any other.

`Processes` spawns and stops the processes of one cluster, recorded in ``home`` (so that a
later command finds and stops them), each checked by a marker in its command line before a
signal is sent: a pid that the kernel gave to another program since is left alone.

`deferred_signals` holds Ctrl-C, SIGTERM and SIGHUP while a process is spawned and recorded (a
process started in a session of its own outlives the command that started it). `EndOnSignal`
turns SIGTERM and SIGHUP into an exception, `Signalled`, as Ctrl-C is one: a command that starts
processes (the demo, `riverstream services up`) then stops or records them before it ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from schemas.errors import ServiceError

Log = Callable[[str], None]
RECORDS = "processes.json"


@dataclass(frozen=True)
class Host:
    """Where a server runs: the address it binds, and the command prefix that runs it there."""

    address: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()

    def endpoint(self, port: int) -> str:
        """``address:port``.

        >>> Host("10.77.0.11").endpoint(9092)
        '10.77.0.11:9092'
        """
        return f"{self.address}:{port}"


LOCAL = Host()


@dataclass(frozen=True)
class Node:
    """One process of a cluster: its name, pid, port and log."""

    name: str
    pid: int
    port: int
    log: str
    marker: str


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``check`` until it is true or raise `ServiceError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} was not ready within {timeout:.0f} s")
        time.sleep(interval)


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Inside, Ctrl-C (SIGINT), SIGTERM and SIGHUP wait for the block's end, where the first one
    received goes to the handler that was there before (Ctrl-C raises `KeyboardInterrupt`
    there): a process spawned inside is recorded, or guarded, before the signal can end the
    command that spawned it. Blocks nest. In the main thread only: Python runs signal handlers
    nowhere else, so elsewhere there is nothing to defer."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    try:
        for deferred in DEFERRED_SIGNALS:
            previous[deferred] = signal.signal(deferred, hold)
        yield
    finally:
        for signum, handler in previous.items():  # None: a handler not set from Python
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])


class Signalled(SystemExit):
    """The command was sent SIGTERM or SIGHUP (`EndOnSignal`): it ends as on Ctrl-C, its cleanup
    run, with the exit status of a process killed by ``signum`` (128 + its number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


class EndOnSignal:
    """While entered (in the main thread), SIGTERM and SIGHUP raise `Signalled`: without it,
    either killed the command at once, the processes it had started left running in their own
    sessions (one not yet recorded, where nothing could find it). Inside `deferred_signals` a
    signal (Ctrl-C too) waits for the block's end, so that a process started is recorded, and a
    cleanup begun is finished; a second signal is ignored (the first one's cleanup runs)."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
        self._received: int | None = None

    def __enter__(self) -> EndOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if kind is None and self._received is not None:
            # The handler's `Signalled` was swallowed where it was raised: a handler runs
            # wherever the main thread is, also inside a weakref callback or a finalizer, whose
            # exceptions Python only prints ("Exception ignored in ..."). The block then ran to
            # its end; the command still ends as signalled.
            raise Signalled(self._received)

    def check(self) -> None:
        """Raise `Signalled` again if a signal came whose exception was swallowed where it was
        raised (see `__exit__`): for a long block's loop to stop at its next step instead of
        running to its end."""
        if self._received is not None:
            raise Signalled(self._received)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self._received is None:
            self._received = signum
            raise Signalled(signum)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs: a zombie is dead for our purposes, but only once all
    its threads are. A killed JVM's main thread turns zombie first while its other threads still
    hold its files and sockets (a listening port among them) for a while."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # no /proc, or reaped meanwhile
        return Path(f"/proc/{pid}").exists() or not Path("/proc/self").exists()
    for task in tasks:
        with contextlib.suppress(OSError):  # a thread that vanished meanwhile is dead
            if (task / "stat").read_text().rsplit(")", 1)[-1].split()[0] not in ("Z", "X"):
                return True
    return False


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments separated by spaces ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (None if it is gone, or without /proc):
    with the pid, it names one process for ever, where a pid alone is given again later.

    >>> start_ticks(os.getpid()) == start_ticks(os.getpid()) is not None
    True
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[-1].split()[19])  # field 22; the 3rd follows the name


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_pid(pid: int, marker: str, timeout: float = 20.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; only if the process still runs ``marker``."""
    if not pid_alive(pid) or marker not in cmdline(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10, f"process {pid} to die")
    _reap(pid)
    return True


def kill_pid(pid: int, marker: str) -> bool:
    """SIGKILL at once and wait for the death, only if the process still runs ``marker``."""
    if not pid_alive(pid) or marker not in cmdline(pid):
        return False
    os.kill(pid, signal.SIGKILL)
    wait_until(functools.partial(_dead, pid), 10, f"process {pid} to die")
    _reap(pid)
    return True


def _dead(pid: int) -> bool:
    return not pid_alive(pid)


class Processes:
    """Spawning and stopping the processes of one cluster, recorded in ``home``."""

    def __init__(self, home: Path, log: Log = lambda _m: None) -> None:
        self.home, self.log = home, log

    def records(self) -> dict[str, Node]:
        path = self.home / RECORDS
        if not path.exists():
            return {}
        nodes = {name: Node(**raw) for name, raw in json.loads(path.read_text()).items()}
        return {name: node for name, node in nodes.items() if pid_alive(node.pid)}

    def _save(self, nodes: dict[str, Node]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.home / (RECORDS + ".tmp")
        tmp.write_text(json.dumps({n: asdict(node) for n, node in nodes.items()}, indent=2))
        tmp.replace(self.home / RECORDS)

    def spawn(
        self, name: str, argv: list[str], cwd: Path, port: int, marker: str, host: Host = LOCAL
    ) -> Node:
        """Start ``argv`` on ``host`` (behind its prefix) in a session of its own, and record
        it before a signal can end the command (`deferred_signals`)."""
        cwd.mkdir(parents=True, exist_ok=True)
        log_path = cwd / f"{name}.log"
        with deferred_signals():
            with open(log_path, "ab") as log_file:
                proc = subprocess.Popen(
                    [*host.prefix, *argv], cwd=cwd, stdin=subprocess.DEVNULL, stdout=log_file,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            node = Node(name, proc.pid, port, str(log_path), marker)
            self.add(node)
        return node

    def add(self, node: Node) -> None:
        """Record ``node``, a process started by someone else (the demo's, as soon as it
        starts), so that `stop` stops it later, from another command."""
        records = self.records()
        records[node.name] = node
        self._save(records)

    def stop(self, names: list[str] | None = None, *, graceful: bool = True) -> list[str]:
        """Stop by pid (if it still runs its program): SIGTERM and a wait, or with
        ``graceful=False`` SIGKILL at once (for data about to be deleted)."""
        records = self.records()
        stopped = []
        for name in list(records) if names is None else names:
            node = records.pop(name, None)
            if node is None:
                continue
            stop = stop_pid if graceful else kill_pid
            if stop(node.pid, node.marker):
                stopped.append(name)
        self._save(records)
        return stopped


def ensure_debian_binary(command: str, package: str) -> str:
    """Path of ``command``; installs Debian's ``package`` with apt-get when missing (as root)."""
    found = shutil.which(command) or (
        f"/usr/bin/{command}" if Path(f"/usr/bin/{command}").exists() else None
    )
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(f"{command} not found: install Debian's {package} package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise ServiceError(f"{' '.join(argv)} failed: {result.stderr[-1000:]}")
    found = shutil.which(command)
    if found is None:
        raise ServiceError(f"{package} installed but {command} is still missing")
    return found

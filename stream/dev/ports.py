"""TCP ports of the local services: choosing them, keeping them across crashes, naming holders.

A local service keeps its ports for life (until ``services down --purge``): they are recorded
in ``<state_dir>/<service>/ports.json`` when first chosen and reused by every later start, so a
crashed Redis or broker comes back where its clients look for it, with its data.

Whether a port is free is asked the way servers ask it: a bind with ``SO_REUSEADDR``, which
Redis, the JVM and Go all set on their listening sockets. Without it, the sockets that a server
killed with clients connected leaves behind (FIN_WAIT, then TIME_WAIT, for up to a minute or
more) make its port look taken although the server itself could bind it at once. Only a
listening socket really holds a port; when one does, `port_holders` names the program (from
``/proc/net/tcp*`` and ``/proc/<pid>/fd``, else ``ss -ltnp``) so the error can say who.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from schemas.errors import ServiceError

PORTS_FILE = "ports.json"
_LISTEN = "0A"  # TCP state of a listening socket in /proc/net/tcp


def free_port() -> int:
    """A port the kernel has just given out as free (for a service's first start)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel has just given out as free. Asked for one at a time,
    two calls can get the same port back (the first is closed before the second is asked): a
    KRaft node once got its broker and controller listeners on one port. Here every socket is
    held until all are given.

    >>> a, b, c = free_ports(3)
    >>> len({a, b, c})
    3
    """
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (bound as servers bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def preferred_port(port: int) -> int:
    """``port`` if it is free, else any free port."""
    return port if port_is_free(port) else free_port()


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (any address, IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == _LISTEN
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    return inodes


def _command_of(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return " ".join(a.decode(errors="replace") for a in argv if a)[:200]
    except OSError:
        return ""


def port_holders(port: int) -> list[str]:
    """``"pid N (command)"`` of every process seen listening on ``port``; ``[]`` if there is
    none or its process cannot be seen (another user's, or one still exiting)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:  # gone, or not ours to look at
            continue
        links = set()
        for fd in fds:  # one closed meanwhile (the listing's own, in this process) is skipped
            with contextlib.suppress(OSError):
                links.add(os.readlink(fd))
        if links & targets:
            found.append(f"pid {proc.name} ({_command_of(int(proc.name))})")
    return found or _holders_from_ss(port)


def _holders_from_ss(port: int) -> list[str]:
    """What ``ss -ltnp`` says listens on ``port`` (it may see what /proc hides from us)."""
    ss = shutil.which("ss")
    if ss is None:
        return []
    result = subprocess.run(
        [ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False
    )
    users = re.findall(r'\("([^"]*)",pid=(\d+)', result.stdout)
    return [f"pid {pid} ({name})" for name, pid in users]


def await_port(port: int, timeout: float, what: str) -> None:
    """Return once a server can listen on ``port``; fail at once if a program that can be seen
    listens on it, else after ``timeout`` seconds (the holder may be a process still exiting),
    naming the port and, if it can be found, the program."""
    deadline = time.monotonic() + timeout
    while not port_is_free(port):
        holders = port_holders(port)
        if holders or time.monotonic() > deadline:
            if holders:
                held = f"held by {', '.join(holders)}"
            elif _listening_inodes(port):
                held = (
                    f"held by a program that cannot be seen (another user's?) for {timeout:.0f} s"
                )
            else:
                held = f"still taken after {timeout:.0f} s"
            raise ServiceError(
                f"{what}: port {port} is {held}. Stop that program, or start {what} afresh on "
                f"new ports with `riverstream services down --purge {what}` (deletes its data)"
            )
        time.sleep(0.1)


def recorded_ports(
    home: Path, choose: Callable[[], dict[str, int]], what: str, timeout: float
) -> dict[str, int]:
    """The ports of the service in ``home``: those recorded at its first start (each awaited
    with `await_port`), else ``choose()``'s, recorded now."""
    path = home / PORTS_FILE
    if path.exists():
        ports = {name: int(port) for name, port in json.loads(path.read_text()).items()}
        for port in ports.values():
            await_port(port, timeout, what)
        return ports
    ports = choose()
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    tmp.replace(path)
    return ports

"""Hosts on one machine: Linux network namespaces joined by a bridge (for the cross-host test).

`Network(n).up()` makes ``n`` hosts. Each is a network namespace ``rs-<pid>-<i>`` with its own
loopback and one interface (a veth pair) on a bridge in the root namespace, and a private
address ``10.77.K.(10 + i)/24`` (K: the first subnet 10.77.K.0/24 no interface of the machine
uses). The root namespace holds ``10.77.K.1`` on the bridge, so a test (a client) reaches
every host and every host reaches the others; nothing is routed further. A server started
with a host's `Host.prefix` (``ip netns exec NAME``, which ``exec``s it: its pid is the
server's) and bound to its `Host.address` is only reachable at that address, as on a real
machine of its own.

Each host also gets its own ``/etc/hosts`` and ``/etc/resolv.conf`` (files in
``/etc/netns/NAME/``, which ``ip netns exec`` mounts over the machine's): every address of the
network has a name, and DNS is the host's own loopback, where nothing answers. A namespace cannot
reach the machine's DNS server, and servers that look up their peers' names (Kafka does, for
TLS and SASL connections) would otherwise wait 10 s for each lookup to time out.

`down` deletes the namespaces and the bridge (a namespace's veth goes with it); it is
idempotent and meant for a ``finally``. Stop the processes first, by pid: a namespace that
still has processes lives on, unnamed, until they exit. `remove_stale` deletes what a run
killed before its ``finally`` left behind (namespaces and bridges of creator pids that no longer
run). Needs root and iproute2 (``ip``), as in CI.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from schemas.errors import ServiceError
from stream.dev.processes import Host, pid_alive

_PREFIX = "rs-"
_ETC = Path("/etc/netns")  # ip netns exec NAME: /etc/netns/NAME/* mounted over /etc/*


def _ip() -> str:
    found = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
    if found is None:
        raise ServiceError("network namespaces need iproute2's `ip`: install Debian's iproute2")
    return found


def _run(*argv: str, check: bool = True) -> str:
    result = subprocess.run([_ip(), *argv], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ServiceError(f"ip {' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def free_subnet(used: str) -> int:
    """The first K in 0..255 such that no address of ``used`` (``ip -o -4 addr`` output) is
    in 10.77.K.0/24.

    >>> free_subnet("3: eth0 inet 10.77.0.1/24 brd 10.77.0.255 scope global\\n")
    1
    """
    taken = {int(k) for k in re.findall(r"inet 10\.77\.(\d+)\.\d+/", used)}
    for k in range(256):
        if k not in taken:
            return k
    raise ServiceError("no free subnet 10.77.K.0/24 for the test network")


class Network:
    """``hosts`` network namespaces on one bridge (see the module)."""

    def __init__(self, hosts: int) -> None:
        self.tag = str(os.getpid())
        self.count = hosts
        self.bridge = f"rs{self.tag}br"[:15]
        self.names = [f"{_PREFIX}{self.tag}-{i}" for i in range(1, hosts + 1)]
        self.hosts: list[Host] = []
        self.gateway = ""

    def _veth(self, i: int) -> str:
        return f"rs{self.tag}v{i}"[:15]

    def up(self) -> list[Host]:
        """Create the bridge and the namespaces; the hosts, in order."""
        if os.geteuid() != 0:
            raise ServiceError("network namespaces need root (CI runs the tests as root)")
        k = free_subnet(_run("-o", "-4", "addr"))
        self.gateway = f"10.77.{k}.1"
        try:
            _run("link", "add", self.bridge, "type", "bridge")
            _run("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("link", "set", self.bridge, "up")
            for i, name in enumerate(self.names, start=1):
                address = f"10.77.{k}.{10 + i}"
                _run("netns", "add", name)
                _run("link", "add", self._veth(i), "type", "veth", "peer", "name", "eth0",
                     "netns", name)  # fmt: skip
                _run("link", "set", self._veth(i), "master", self.bridge, "up")
                _run("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
                _run("-n", name, "link", "set", "eth0", "up")
                _run("-n", name, "link", "set", "lo", "up")
                _run("-n", name, "route", "add", "default", "via", self.gateway)
                self.hosts.append(Host(address, (_ip(), "netns", "exec", name)))
            names = [f"{self.gateway} rs-gateway"]
            names += [f"{h.address} rs-host-{i}" for i, h in enumerate(self.hosts, start=1)]
            for name in self.names:
                etc = _ETC / name
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text("\n".join(["127.0.0.1 localhost", *names, ""]))
                (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1\n")
        except BaseException:
            self.down()
            raise
        return self.hosts

    def down(self) -> None:
        """Delete the namespaces and the bridge (whatever of them exists)."""
        existing = _namespaces()
        for i, name in enumerate(self.names, start=1):
            if name in existing:
                _run("netns", "delete", name, check=False)
            _run("link", "delete", self._veth(i), check=False)
            shutil.rmtree(_ETC / name, ignore_errors=True)
        _run("link", "delete", self.bridge, check=False)
        self.hosts = []

    def __enter__(self) -> Network:
        self.up()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()


def _namespaces() -> set[str]:
    return {line.split()[0] for line in _run("netns", "list", check=False).splitlines() if line}


def remove_stale() -> list[str]:
    """Delete the namespaces and bridges of `Network`s whose creating process is gone."""
    removed = []
    for name in sorted(_namespaces()):
        match = re.fullmatch(rf"{_PREFIX}(\d+)-\d+", name)
        if match and not pid_alive(int(match.group(1))):
            _run("netns", "delete", name, check=False)
            removed.append(name)
    for etc in _ETC.glob(f"{_PREFIX}*") if _ETC.is_dir() else ():
        match = re.fullmatch(rf"{_PREFIX}(\d+)-\d+", etc.name)
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(etc, ignore_errors=True)
    for line in _run("-o", "link", "show", "type", "bridge", check=False).splitlines():
        match = re.search(r"^\d+: (rs(\d+)br)[:@]", line)
        if match and not pid_alive(int(match.group(2))):
            with contextlib.suppress(ServiceError):
                _run("link", "delete", match.group(1))
            removed.append(match.group(1))
    return removed

"""Redis with a replica and Sentinels, the real engines: Debian's redis-server and redis-sentinel.

`RedisHA` runs a primary, one replica and three Sentinels (quorum 2, a primary unreachable for
1 s is down). On the primary's death the Sentinels promote the replica within a few seconds, and
clients that ask them (`stream.store.connect`) follow. Each process has its own directory under
``home`` with its configuration, data and log; ports are chosen at the first start and recorded
(``ports.json``), so a process that died comes back in place with its data (a returning primary
is turned into a replica by the Sentinels). Every process runs on a `Host`: 127.0.0.1 by
default, or a network namespace of its own (`stream.dev.netns`, the cross-host test), where it
binds that host's address only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.dev.ports import free_ports, recorded_ports
from stream.dev.processes import (
    LOCAL,
    Host,
    Log,
    Node,
    Processes,
    ensure_debian_binary,
    wait_until,
)

if TYPE_CHECKING:
    from stream.dev.certificates import Certificates

SENTINEL_MASTER = "riverstream"


def _protected(host: str) -> str:
    """Redis' protected mode (no password: loopback clients only) off for a host's private
    address: the other hosts of its test network must reach it.

    >>> _protected("127.0.0.1"), _protected("10.77.0.11")
    ('yes', 'no')
    """
    return "yes" if host.startswith("127.") else "no"


class RedisHA:
    """Redis primary + replica + three Sentinels in ``home`` (see the module); ``hosts``: the
    `Host` of each role (``primary``, ``replica``, ``sentinel-1``..3), 127.0.0.1 if not given.

    ``tls``: every server and Sentinel speaks TLS only (no plain port; replication and the
    Sentinels' own connections over TLS too); ``user``: (name, password) of the one ACL user
    allowed in, the ``default`` user off (the replica and the Sentinels log in as it)."""

    ROLES = ("primary", "replica", "sentinel-1", "sentinel-2", "sentinel-3")

    def __init__(
        self,
        home: Path,
        log: Log = lambda _m: None,
        *,
        start_timeout: float = 60.0,
        hosts: Mapping[str, Host] | None = None,
        tls: Certificates | None = None,
        user: tuple[str, str] | None = None,
    ) -> None:
        self.home, self.tls, self.user = home, tls, user
        self.processes = Processes(home, log)
        self.start_timeout = start_timeout
        self.hosts = {role: (hosts or {}).get(role, LOCAL) for role in self.ROLES}
        self.ports = recorded_ports(
            home,
            lambda: dict(zip(self.ROLES, free_ports(len(self.ROLES)), strict=True)),
            "redis cluster",
            15.0,
        )

    def address(self, role: str) -> tuple[str, int]:
        return self.hosts[role].address, self.ports[role]

    @property
    def sentinels(self) -> str:
        """``RIVERSTREAM_REDIS_SENTINELS`` for this cluster."""
        return ",".join(self.hosts[r].endpoint(self.ports[r]) for r in self.ROLES[2:])

    def url(self, role: str) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.hosts[role].endpoint(self.ports[role])}/0"

    def client(self, role: str) -> Any:
        """A redis-py client of ``role`` (a server or a Sentinel), with TLS and the user."""
        import redis

        host, port = self.address(role)
        options: dict[str, Any] = {}
        if self.tls:
            options |= {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        if self.user:
            options |= {"username": self.user[0], "password": self.user[1]}
        return redis.Redis(host=host, port=port, socket_timeout=0.5, **options)

    def ping(self, role: str) -> bool:
        with self.client(role) as client:
            return bool(client.ping())

    def _listen(self, port: int) -> list[str]:
        """Configuration lines: the port, and TLS (`tls`)."""
        if not self.tls:
            return [f"port {port}"]
        return ["port 0", f"tls-port {port}", f"tls-cert-file {self.tls.cert}",
                f"tls-key-file {self.tls.key}", f"tls-ca-cert-file {self.tls.ca}",
                "tls-auth-clients no", "tls-replication yes"]  # fmt: skip

    def _acl(self) -> list[str]:
        """Configuration lines: the ACL user (`user`), the default user off."""
        if not self.user:
            return []
        name, password = self.user
        return ["user default off", f"user {name} on >{password} ~* &* +@all"]

    def up(self) -> dict[str, Node]:
        """Start what is not running (idempotent); wait until the Sentinels watch a primary
        with a replica in sync."""
        server = ensure_debian_binary("redis-server", "redis-server")
        sentinel = ensure_debian_binary("redis-sentinel", "redis-sentinel")
        running = self.processes.records()
        primary_host, primary_port = self.address("primary")
        for role in ("primary", "replica"):
            if role in running:
                continue
            data = self.home / role
            data.mkdir(parents=True, exist_ok=True)
            host, port = self.address(role)
            lines = [f"bind {host}", *self._listen(port), f"dir {data}", "appendonly yes",
                     "appendfsync everysec", 'save ""', "daemonize no", "io-threads 1",
                     f"protected-mode {_protected(host)}", *self._acl()]  # fmt: skip
            if self.user:  # a replica (this one, or the primary once demoted) logs in
                lines += [f"masteruser {self.user[0]}", f"masterauth {self.user[1]}"]
            if role == "replica" and not (data / "appendonlydir").exists():
                lines.append(f"replicaof {primary_host} {primary_port}")
            config = data / "redis.conf"
            config.write_text("\n".join([*lines, ""]))
            config.chmod(0o600)
            self.processes.spawn(role, [server, str(config)], data, port, "redis-server",
                                 self.hosts[role])  # fmt: skip
            ping = functools.partial(self.ping, role)
            wait_until(ping, self.start_timeout, f"redis {role}")
        for role in self.ROLES[2:]:
            if role in running:
                continue
            home = self.home / role
            config = home / "sentinel.conf"
            host, port = self.address(role)
            if not config.exists():  # a Sentinel rewrites its file: the state it learnt
                home.mkdir(parents=True, exist_ok=True)
                config.write_text(self.sentinel_config(host, port, home))
            self.processes.spawn(role, [sentinel, str(config)], home, port, "redis-sentinel",
                                 self.hosts[role])  # fmt: skip
            wait_until(functools.partial(self.ping, role), self.start_timeout, role)
        wait_until(self._healthy, self.start_timeout, "the Sentinels to watch a replicated primary")
        return self.processes.records()

    def sentinel_config(self, host: str, port: int, home: Path) -> str:
        """sentinel.conf of the Sentinel at ``host:port`` whose directory is ``home``."""
        primary_host, primary_port = self.address("primary")
        auth = []
        if self.user:  # to the servers, and to the other Sentinels
            name, password = self.user
            auth = [f"sentinel auth-user {SENTINEL_MASTER} {name}",
                    f"sentinel auth-pass {SENTINEL_MASTER} {password}",
                    f"sentinel sentinel-user {name}", f"sentinel sentinel-pass {password}"]  # fmt: skip
        return "\n".join([
            *self._listen(port), f"bind {host}", f"protected-mode {_protected(host)}",
            "daemonize no", f"dir {home}", *self._acl(),
            f"sentinel monitor {SENTINEL_MASTER} {primary_host} {primary_port} 2",
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000",
            f"sentinel failover-timeout {SENTINEL_MASTER} 10000",
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1",
            *auth,
            "",
        ])  # fmt: skip

    def primary(self) -> tuple[str, int] | None:
        """The primary's address as the Sentinels say (None if none answers)."""
        import redis

        for role in self.ROLES[2:]:
            client = self.client(role)
            with contextlib.suppress(redis.RedisError), client:
                found: Any = client.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
                if found:
                    host = found[0]
                    return host.decode() if isinstance(host, bytes) else str(host), int(found[1])
        return None

    def primary_port(self) -> int | None:
        """The primary's port as the Sentinels say (None if none answers)."""
        found = self.primary()
        return None if found is None else found[1]

    def _healthy(self) -> bool:
        """Every Sentinel knows the primary, its replica (in sync) and the two other Sentinels."""
        primary = self.primary()
        if primary is None:
            return False
        role = "primary" if primary == self.address("primary") else "replica"
        with self.client(role) as client:
            info = client.info("replication")
            if info.get("role") != "master" or int(info.get("connected_slaves", 0)) < 1:
                return False
            if info["slave0"].get("state") != "online":
                return False
        for role in self.ROLES[2:]:
            with self.client(role) as sentinel:
                master = sentinel.sentinel_master(SENTINEL_MASTER)
                if int(master["num-slaves"]) < 1 or int(master["num-other-sentinels"]) < 2:
                    return False
                if master["flags"] != "master":
                    return False
        return True

    def stop(self, *, graceful: bool = True) -> list[str]:
        return self.processes.stop(graceful=graceful)

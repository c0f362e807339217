"""Kafka and Redis that refuse plain connections, as managed services do: for the tests (and
anyone trying the settings) of `stream.kafka.security` and `stream.store.connect`.

- certificates from `stream.dev.certificates` (`make_certificates`: a private CA and a server
  certificate it signed, for given IP addresses);
- `SecureKafkaCluster`: `stream.dev.cluster.KafkaCluster` whose client and inter-broker listener
  is ``SASL_SSL`` (TLS with the server certificate, SASL/SCRAM-SHA-512 users) and whose
  controller listener is ``SSL``. The SCRAM users are created when the nodes' storage is
  formatted (``kafka-storage format --add-scram``: the KRaft way, before the first start); the
  brokers authenticate to each other as ``admin``.
- `SecureRedis`: one Debian ``redis-server`` that speaks TLS only (no plain port) and whose
  ``default`` user is off: an ACL user with a password is the only way in.

Every process is stopped by pid (`stop`).
"""

from __future__ import annotations

import functools
import secrets
from pathlib import Path
from typing import Any

from stream.dev.certificates import Certificates, make_certificates
from stream.dev.cluster import KafkaCluster
from stream.dev.ports import free_port
from stream.dev.processes import (
    LOCAL,
    Host,
    Log,
    Node,
    Processes,
    ensure_debian_binary,
    wait_until,
)
from stream.kafka.security import KafkaSecurity

MECHANISM = "SCRAM-SHA-512"

__all__ = ["MECHANISM", "Certificates", "SecureKafkaCluster", "SecureRedis", "make_certificates"]


class SecureKafkaCluster(KafkaCluster):
    """A `KafkaCluster` with TLS and SASL/SCRAM (see the module); ``users``: name → password
    of the SCRAM users besides ``admin`` (the brokers' own)."""

    def __init__(
        self,
        home: Path,
        cache_dir: Path,
        version: str,
        certificates: Certificates,
        users: dict[str, str],
        log: Log = lambda _m: None,
        **options: Any,
    ) -> None:
        super().__init__(home, cache_dir, version, log, **options)
        self.certificates = certificates
        secret = home / "admin.secret"
        if not secret.exists():
            home.mkdir(parents=True, exist_ok=True)
            secret.write_text(secrets.token_urlsafe(16))
        self.users = {"admin": secret.read_text(), **users}

    def security(self, user: str = "admin") -> KafkaSecurity:
        """How a client connects as ``user``."""
        return KafkaSecurity("SASL_SSL", MECHANISM, user, self.users[user],
                             str(self.certificates.ca))  # fmt: skip

    def listener(self) -> dict[str, str]:
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="admin" password="{self.users["admin"]}";'
        )
        certs = self.certificates
        return {
            "protocol": "SASL_SSL",
            "controller.protocol": "SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(certs.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(certs.ca),
            "ssl.endpoint.identification.algorithm": "https",
        }

    def format_options(self) -> list[str]:
        options = []
        for user, password in self.users.items():
            options += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
        return options

    def ready(self, node: int) -> bool:
        """Whether node ``node`` answers a metadata request over TLS + SCRAM: a fresh client's
        handshake with a cold broker takes seconds on a loaded machine (10 s measured at load
        15), so each try may take up to 15 s."""
        from stream.kafka.client import broker_ready

        return broker_ready(self.address(node), timeout=15, security=self.security())


class SecureRedis:
    """One Redis that speaks TLS only and lets in one ACL user (see the module)."""

    def __init__(
        self,
        home: Path,
        certificates: Certificates,
        user: str,
        password: str,
        *,
        host: Host = LOCAL,
        start_timeout: float = 60.0,
    ) -> None:
        self.home, self.certificates, self.host = home, certificates, host
        self.user, self.password, self.start_timeout = user, password, start_timeout
        self.processes = Processes(home)
        self.port = free_port()

    @property
    def url(self) -> str:
        """``RIVERSTREAM_REDIS_URL`` (TLS; the user and password are set apart)."""
        return f"rediss://{self.host.endpoint(self.port)}/0"

    def up(self) -> Node:
        server = ensure_debian_binary("redis-server", "redis-server")
        certs = self.certificates
        config = self.home / "redis.conf"
        self.home.mkdir(parents=True, exist_ok=True)
        config.write_text("\n".join([
            f"bind {self.host.address}", "port 0", f"tls-port {self.port}",
            f"tls-cert-file {certs.cert}", f"tls-key-file {certs.key}",
            f"tls-ca-cert-file {certs.ca}", "tls-auth-clients no",
            f"dir {self.home}", 'save ""', "appendonly no", "daemonize no",
            "user default off",
            f"user {self.user} on >{self.password} ~* &* +@all",
            "",
        ]))  # fmt: skip
        config.chmod(0o600)
        node = self.processes.spawn("redis", [server, str(config)], self.home, self.port,
                                    "redis-server", self.host)  # fmt: skip
        wait_until(functools.partial(self.ping), self.start_timeout, "redis (TLS)")
        return node

    def client(self) -> Any:
        """A redis-py client of this server, as the user."""
        import redis

        return redis.Redis(host=self.host.address, port=self.port, ssl=True,
                           ssl_ca_certs=str(self.certificates.ca), username=self.user,
                           password=self.password, socket_timeout=2)  # fmt: skip

    def ping(self) -> bool:
        with self.client() as client:
            return bool(client.ping())

    def stop(self) -> list[str]:
        return self.processes.stop(graceful=False)

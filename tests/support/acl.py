"""A secure Kafka cluster whose ACLs are enforced (`tests/stream/kafka/test_security_acl.py`).

`AclKafkaCluster` is `stream.dev.secure.SecureKafkaCluster` with KRaft's StandardAuthorizer and
no access for a user without ACLs; its ``admin`` (the brokers' own user) is a super user, and so
is ``ANONYMOUS``: the brokers reach the controllers over TLS without a client certificate. The
README's ``kafka-acls.sh`` lines are applied as they read (`grant_lines`, through the admin
client: Kafka's command-line tools are not among the jars `stream.dev` fetches).
"""

from __future__ import annotations

import contextlib
import shlex
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from schemas.settings import Settings
from stream.dev.secure import SecureKafkaCluster, SecureRedis, make_certificates

README = Path(__file__).resolve().parents[2] / "README.md"


class AclKafkaCluster(SecureKafkaCluster):
    """A `SecureKafkaCluster` that enforces ACLs (see the module)."""

    def listener(self) -> dict[str, str]:
        return {
            **super().listener(),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:admin;User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }

    def grant(self, user: str, acls: Iterable[tuple[str, str, str, bool]]) -> None:
        """Allow ``user`` each (operation, resource type, name, prefixed) of ``acls``, e.g.
        ``("Write", "topic", "riverstream.", True)``."""
        admin = self._admin()
        for future in admin.create_acls(_bindings(user, acls)).values():
            future.result(timeout=30)

    def revoke(self, user: str, acls: Iterable[tuple[str, str, str, bool]]) -> None:
        """Remove what `grant` allowed ``user`` for each of ``acls``."""
        admin = self._admin()
        for future in admin.delete_acls(_bindings(user, acls, filters=True)).values():
            future.result(timeout=30)

    def _admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap, **self.security().librdkafka()})


@dataclass
class AclServices:
    """An `AclKafkaCluster` and a TLS Redis with an ACL user; ``settings`` connect to both as
    the Kafka user ``riverstream`` (no ACL of its own until granted)."""

    kafka: AclKafkaCluster
    settings: Settings

    def as_user(self, user: str, **changes: object) -> Settings:
        """``settings`` as the Kafka user ``user`` (one of those the services were started
        with), with ``changes``."""
        password = SecretStr(self.kafka.users[user])
        return self.settings.model_copy(
            update={"kafka_sasl_username": user, "kafka_sasl_password": password, **changes}
        )

    def topics(self, prefix: str) -> dict[str, str]:
        """Settings naming riverstream's five topics ``PREFIX.features``, ... (Kafka's ACLs
        grant them by that prefix)."""
        kinds = ("features", "labels", "dlq", "requests", "predictions")
        return {f"topic_{kind}": f"{prefix}.{kind}" for kind in kinds}


@contextlib.contextmanager
def acl_services(tmp_path: Path, users: Iterable[str]) -> Iterator[AclServices]:
    """`AclServices` with the SCRAM ``users`` (and ``riverstream``), stopped on exit."""
    base = Settings()
    certificates = make_certificates(tmp_path / "certs")
    passwords = {user: uuid.uuid4().hex for user in {"riverstream", *users}}
    kafka = AclKafkaCluster(tmp_path / "kafka", base.cache_dir.expanduser(), base.kafka_version,
                            certificates, passwords)  # fmt: skip
    redis_password = uuid.uuid4().hex
    server = SecureRedis(tmp_path / "redis", certificates, "app", redis_password)
    settings = Settings(
        kafka_bootstrap_servers=kafka.bootstrap, kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="riverstream",
        kafka_sasl_password=kafka.users["riverstream"], kafka_ssl_cafile=certificates.ca,
        redis_url=server.url, redis_username="app", redis_password=redis_password,
        redis_ssl_cafile=certificates.ca, state_dir=tmp_path / "state", partitions=3,
        learner_metrics_port=0, snapshot_key=f"key-{uuid.uuid4().hex}",
        watermark_idle_grace=0.2,
    )  # type: ignore[arg-type]  # fmt: skip
    try:
        server.up()
        kafka.up()
        yield AclServices(kafka, settings)
    finally:
        kafka.stop(graceful=False)
        server.stop()


def _bindings(
    user: str, acls: Iterable[tuple[str, str, str, bool]], *, filters: bool = False
) -> list[Any]:
    """confluent-kafka's bindings of ``acls`` (filters that match them exactly: ``filters``)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    binding = AclBindingFilter if filters else AclBinding
    return [
        binding(
            ResourceType[kind.upper()],
            name,
            ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL,
            f"User:{user}",
            "*",
            AclOperation[_snake(operation)],
            AclPermissionType.ALLOW,
        )
        for operation, kind, name, prefixed in acls
    ]


def readme_acl_lines(readme: Path = README) -> list[str]:
    """The README's ``kafka-acls.sh`` lines (its Security section)."""
    lines = readme.read_text().splitlines()
    return [line for line in lines if line.startswith("kafka-acls.sh ")]


def parse_acl_line(line: str) -> tuple[str, list[tuple[str, str, str, bool]]]:
    """The principal's user and the (operation, resource type, name, prefixed) of one
    ``kafka-acls.sh --add`` line: its ``--allow-principal``, ``--operation``s, ``--topic``s,
    ``--group``s, ``--cluster`` and ``--resource-pattern-type``.

    >>> parse_acl_line("kafka-acls.sh --add --allow-principal User:rs --operation Read "
    ...                "--group rs --resource-pattern-type prefixed")
    ('rs', [('Read', 'group', 'rs', True)])
    """
    words = shlex.split(line)[1:]
    user, operations, resources, prefixed = "", [], [], False
    for option, value in zip(words, [*words[1:], ""], strict=True):
        if option == "--allow-principal":
            user = value.removeprefix("User:")
        elif option == "--operation":
            operations.append(value)
        elif option in ("--topic", "--group"):
            resources.append((option[2:], value))
        elif option == "--cluster":
            resources.append(("broker", "kafka-cluster"))
        elif option == "--resource-pattern-type":
            prefixed = value == "prefixed"
    if "--add" not in words or not user or not operations or not resources:
        raise ValueError(f"not a kafka-acls.sh --add line this parser reads: {line}")
    return user, [(op, kind, name, prefixed) for kind, name in resources for op in operations]


def _snake(operation: str) -> str:
    """``IdempotentWrite`` → ``IDEMPOTENT_WRITE`` (confluent-kafka's `AclOperation` names)."""
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(operation)).upper()

"""A secure Kafka cluster whose ACLs are enforced (`tests/stream/kafka/test_security_acl.py`).

`AclKafkaCluster` is `stream.dev.secure.SecureKafkaCluster` with KRaft's StandardAuthorizer and
no access for a user without ACLs; its ``admin`` (the brokers' own user) is a super user, and so
is ``ANONYMOUS``: the brokers reach the controllers over TLS without a client certificate. The
README's ``kafka-acls.sh`` lines are run as they read by Kafka's own tool
(`AclKafkaCluster.acl_command`: ``AclCommand`` of kafka-tools, among the jars `stream.dev`
fetches), and the ACLs it adds (`AclKafkaCluster.acls`) compared with what `parse_acl_line`
reads from them (`acl_bindings`).
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from schemas.settings import Settings
from stream.dev.kafka_node import KafkaNode
from stream.dev.secure import MECHANISM, SecureKafkaCluster, SecureRedis, make_certificates

README = Path(__file__).resolve().parents[2] / "README.md"
ACL_COMMAND = "org.apache.kafka.tools.AclCommand"  # what kafka-acls.sh runs (Kafka 4)


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
        for future in admin.create_acls(acl_bindings(user, acls)).values():
            future.result(timeout=30)

    def revoke(self, user: str, acls: Iterable[tuple[str, str, str, bool]]) -> None:
        """Remove what `grant` allowed ``user`` for each of ``acls``."""
        admin = self._admin()
        for future in admin.delete_acls(acl_bindings(user, acls, filters=True)).values():
            future.result(timeout=30)

    def acls(self, user: str) -> set[Any]:
        """The ACL bindings of ``User:user`` that the brokers hold (as `acl_bindings` makes
        them: the permission and the host included)."""
        from confluent_kafka.admin import (
            AclBindingFilter,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )

        any_name: Any = None  # None matches any (the stubs say str)
        match = AclBindingFilter(ResourceType.ANY, any_name, ResourcePatternType.ANY,
                                 f"User:{user}", any_name, AclOperation.ANY,
                                 AclPermissionType.ANY)  # fmt: skip
        admin = self._admin()  # held while its future runs (collected, it fails it)
        return set(admin.describe_acls(match).result(timeout=30))

    def acl_command(self, line: str, workdir: Path) -> subprocess.CompletedProcess[str]:
        """Run a ``kafka-acls.sh`` line (the README's) with Kafka's own tool: ``java -cp
        '<lib>/*' org.apache.kafka.tools.AclCommand`` for ``kafka-acls.sh`` (``<lib>``: the jars
        `stream.dev.kafka_node.KafkaNode.classpath` fetched), this cluster's bootstrap for
        ``BROKERS`` and, for ``admin.properties``, a file in ``workdir`` with the admin's
        SASL_SSL settings (`client_properties`)."""
        java = shutil.which("java")
        assert java is not None, "Java runs Kafka's AclCommand"
        lib = KafkaNode(self.home, self.cache_dir, self.version, self.log).classpath()
        config = workdir / "admin.properties"
        config.write_text(self.client_properties())
        config.chmod(0o600)
        tool, *words = shlex.split(line)
        if tool != "kafka-acls.sh":
            raise ValueError(f"not a kafka-acls.sh line: {line}")
        swap = {"BROKERS": self.bootstrap, "admin.properties": str(config)}
        argv = [java, "-cp", f"{lib}/*", ACL_COMMAND, *(swap.get(w, w) for w in words)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    def client_properties(self, user: str = "admin") -> str:
        """A Java client's properties connecting as ``user`` (SASL_SSL, SCRAM, the CA)."""
        jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{user}" password="{self.users[user]}";')  # fmt: skip
        return "\n".join([
            "security.protocol=SASL_SSL", f"sasl.mechanism={MECHANISM}",
            f"sasl.jaas.config={jaas}", "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.certificates.ca}", "",
        ])  # fmt: skip

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
        kafka_sasl_password=SecretStr(kafka.users["riverstream"]),
        kafka_ssl_cafile=certificates.ca, redis_url=server.url, redis_username="app",
        redis_password=SecretStr(redis_password), redis_ssl_cafile=certificates.ca,
        state_dir=tmp_path / "state", partitions=3, learner_metrics_port=0,
        snapshot_key=SecretStr(f"key-{uuid.uuid4().hex}"), watermark_idle_grace=0.2,
    )  # fmt: skip
    try:
        server.up()
        kafka.up()
        yield AclServices(kafka, settings)
    finally:
        kafka.stop(graceful=False)
        server.stop()


def acl_bindings(
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

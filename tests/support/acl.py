"""A secure Kafka cluster whose ACLs are enforced (`tests/stream/kafka/test_security_acl.py`).

`AclKafkaCluster` is `stream.dev.secure.SecureKafkaCluster` with KRaft's StandardAuthorizer and
no access for a user without ACLs; its ``admin`` (the brokers' own user) is a super user, and so
is ``ANONYMOUS``: the brokers reach the controllers over TLS without a client certificate. The
README's ``kafka-acls.sh`` lines are applied as they read (`grant_lines`, through the admin
client: Kafka's command-line tools are not among the jars `stream.dev` fetches).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stream.dev.secure import SecureKafkaCluster

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

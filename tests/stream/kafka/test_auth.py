"""`stream.kafka.auth.write_refusal`: what Kafka says its ACLs allow on a topic (KIP-430's
authorized operations) read as a write's denial, before any write is tried."""

from __future__ import annotations

import pytest

from stream.kafka.auth import KafkaAccessError, write_refusal
from stream.kafka.security import KafkaSecurity

SECURITY = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "learner", "s3cret")


@pytest.mark.parametrize(
    "operations", [["READ", "DESCRIBE"], ["DESCRIBE"], ["ALTER", "DELETE", "DESCRIBE_CONFIGS"]]
)
def test_operations_without_write_or_all_are_a_denied_write_of_the_topic(
    operations: list[str],
) -> None:
    refusal = write_refusal(operations, "rs.dlq", "k1:9093", SECURITY)
    assert isinstance(refusal, KafkaAccessError)
    assert (refusal.operation, refusal.resource) == ("write", "topic rs.dlq")
    assert "RIVERSTREAM_KAFKA_SASL_USERNAME (learner) write topic rs.dlq" in str(refusal)
    assert "s3cret" not in str(refusal)


@pytest.mark.parametrize(
    "operations", [["READ", "WRITE", "DESCRIBE"], ["WRITE"], ["ALL"], frozenset({"ALL", "READ"})]
)
def test_write_or_all_allows_the_write(operations: list[str] | frozenset[str]) -> None:
    assert write_refusal(operations, "rs.dlq", "k1:9093", SECURITY) is None


def test_brokers_that_do_not_say_let_it_go() -> None:
    assert write_refusal(None, "rs.dlq", "k1:9093", SECURITY) is None

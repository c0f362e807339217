"""Where a time falls in Kafka partitions: the first offset whose record timestamp is at or after
it (Kafka's ListOffsets by timestamp, through librdkafka's ``offsets_for_times``).

Record timestamps are the producers' (CreateTime): when an event was published, not its event
time. Client errors are wrapped in `KafkaAdapterError` here, where they enter.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.errors import KafkaAdapterError
from stream.kafka.auth import connect_error
from stream.kafka.security import PLAINTEXT, KafkaSecurity

Partition = tuple[str, int]


def offsets_for_times(
    bootstrap: str,
    partitions: Sequence[Partition],
    epoch_seconds: float,
    timeout: float = 10.0,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> dict[Partition, int | None]:
    """Per partition, the first offset whose record was published at or after
    ``epoch_seconds``; None when no record of the partition is that recent."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    if not partitions:
        return {}
    ms = int(epoch_seconds * 1000)
    try:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "rs-offsets-for-times",
                "enable.auto.commit": False,
                **security.librdkafka(),
            }
        )
    except KafkaException as exc:
        raise KafkaAdapterError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(t, p, ms) for t, p in partitions], timeout=timeout
        )
    except KafkaException as exc:  # Kafka away, or refusing the login (`KafkaAuthError`)
        failed = f"offsets for time {epoch_seconds:g} failed"
        raise connect_error(exc, bootstrap, security, failed=failed) from exc
    finally:
        consumer.close()
    out: dict[Partition, int | None] = {}
    for tp in found:
        if tp.error is not None:
            raise KafkaAdapterError(f"offsets for time on {tp.topic}/{tp.partition}: {tp.error}")
        out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
    return out

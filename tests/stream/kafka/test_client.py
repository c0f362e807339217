"""The Kafka adapter against the real broker: the producer outlives a failed metadata refresh."""

from __future__ import annotations

import uuid
from collections.abc import Coroutine
from typing import Any

from schemas.settings import Settings
from stream.kafka.client import EventProducer, create_topics, read_all
from tests.support.waiting import wait_until


def test_a_reset_during_a_metadata_refresh_does_not_end_the_refreshes(settings: Settings) -> None:
    """kafka-python's refresh loop ends on a bare OSError, as a broker killed while it answers
    a metadata request can give (seen in CI): the producer then never learns a new leader or a
    new topic. One such error is injected where the broker's answer would come; the producer
    must still learn a topic created afterwards."""
    bootstrap = settings.kafka_bootstrap_servers or ""
    first, later = (f"t{uuid.uuid4().hex[:10]}.{name}" for name in ("first", "later"))
    create_topics(bootstrap, {first: 1})
    producer = EventProducer(bootstrap, max_block_ms=5_000)
    try:
        producer.send(first, b"k", b"before")
        producer.flush(30)
        cluster = producer._producer._metadata
        manager = cluster._manager
        send = manager.send
        resets: list[str] = []

        def reset_once(request: Any, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
            if resets or "Metadata" not in type(request).__name__:
                return send(request, *args, **kwargs)
            resets.append(type(request).__name__)

            async def reset() -> None:
                raise ConnectionResetError(104, "Connection reset by peer")

            return reset()

        manager.send = reset_once
        cluster.request_update()
        wait_until(lambda: bool(resets), 10, "a metadata refresh to meet the reset")
        create_topics(bootstrap, {later: 1})
        producer.send(later, b"k", b"after")  # waits for the new topic's metadata
        producer.flush(30)
    finally:
        producer.close()
    assert producer.sent == 2 and producer.failed == 0, producer.errors
    records = read_all(bootstrap, [first, later])  # in partition order, the topics in any
    expected = [(first, b"before"), (later, b"after")]
    assert sorted((r.topic, r.value) for r in records) == sorted(expected)

"""`EventProducer.flush` waits, by default, past the producer's delivery timeout: until then
kafka-python still retries the records (through a broker's death, a leader election), and a
flush that gave up before would fail a publish or stop a learner whose records were about to
be delivered.

Unit level: kafka-python's `KafkaProducer` is replaced by one that records its configuration
and the timeout each flush is given (no broker is involved)."""

from __future__ import annotations

from typing import Any

import kafka
import pytest

from stream.kafka.client import FLUSH_MARGIN_SECONDS, EventProducer


class _Recording:
    """Stands for `kafka.KafkaProducer`: its configuration, and each flush's timeout."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.flushes: list[float | None] = []

    def flush(self, timeout: float | None = None) -> None:
        self.flushes.append(timeout)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "KafkaProducer", _Recording)


def _flushes(producer: EventProducer) -> list[float | None]:
    client = producer._producer
    assert isinstance(client, _Recording)
    return client.flushes


@pytest.mark.usefixtures("recording")
@pytest.mark.parametrize("delivery_timeout_ms", [None, 45_000, 300_000])
def test_a_flush_waits_past_the_delivery_timeout(delivery_timeout_ms: int | None) -> None:
    extra: dict[str, Any] = (
        {} if delivery_timeout_ms is None else {"delivery_timeout_ms": delivery_timeout_ms}
    )
    producer = EventProducer("unused:9092", **extra)
    configured = producer._producer.config["delivery_timeout_ms"] / 1000
    producer.flush()
    [waited] = _flushes(producer)
    assert waited is not None and waited == configured + FLUSH_MARGIN_SECONDS > configured


@pytest.mark.usefixtures("recording")
def test_a_timeout_given_is_the_flushs() -> None:
    producer = EventProducer("unused:9092")
    producer.flush(3.0)
    producer.flush(timeout=0)
    assert _flushes(producer) == [3.0, 0]

"""The librdkafka clients that only ask Kafka whether it answers (`broker_ready`,
`partitions_for`) write nothing of their own on stderr: the error they raise says what failed.
librdkafka wrote a ``%3|…|FAIL|…`` line at each failed try (every 50 ms or so, for the whole
timeout) before it, straight to the process's stderr, where a command's one clear error got
lost (a `riverstream learn` whose login Kafka refuses, a broker that is away)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import KafkaException

from schemas.errors import KafkaAdapterError
from stream.dev.services import free_port
from stream.kafka.client import broker_ready, partitions_for


@pytest.mark.parametrize(
    ("ask", "raised"),
    [(lambda b: broker_ready(b, timeout=1.0), KafkaException),
     (lambda b: partitions_for(b, "any-topic"), KafkaAdapterError)],
    ids=["broker_ready", "partitions_for"],
)  # fmt: skip
def test_asking_a_kafka_that_is_away_writes_nothing_but_the_error(
    capfd: pytest.CaptureFixture[str], ask: Callable[[str], object], raised: type[Exception]
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nobody listens there
    with pytest.raises(raised, match=r"transport failure|cannot reach Kafka"):
        ask(bootstrap)
    out, err = capfd.readouterr()
    assert "|FAIL|" not in err and out == "", err[-3000:]

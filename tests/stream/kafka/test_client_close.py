"""`EventProducer.close` is bounded: it waits for what was sent within its timeout, then gives
up on the rest (failed, counted, each future's errback told) and ends the producer's I/O thread.
kafka-python's own close raised from its flush when a record was pending, closing nothing: the
stop of an API hung for the timeout, then its thread retried the records on, no one told.

On real brokers: the test's own (`private_kafka`), taken away, and the suite's."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from typing import Any

import pytest

from schemas.settings import Settings
from stream.dev.services import ServiceManager
from stream.kafka.client import CLOSE_GRACE_SECONDS, EventProducer, create_topics, read_all
from tests.support.outage import private_kafka
from tests.support.procs import freeze

pytestmark = [pytest.mark.integration]
__all__ = ["private_kafka"]  # a fixture

TIMEOUT = 2.0  # the close's, in these tests


def started_by(make: Any) -> tuple[Any, set[threading.Thread]]:
    """What ``make()`` returns, and the threads it started."""
    before = set(threading.enumerate())
    made = make()
    return made, set(threading.enumerate()) - before


@pytest.mark.slow
@pytest.mark.parametrize("gone", ["killed", "stopped"])
def test_a_close_with_the_broker_gone_gives_up_in_time_and_ends_the_producers_thread(
    private_kafka: tuple[ServiceManager, str], gone: str
) -> None:
    """``killed``: the broker is down (connections refused); ``stopped``: SIGSTOP, as behind a
    network black hole (sends wait, nothing answers)."""
    manager, bootstrap = private_kafka
    topic = f"t{uuid.uuid4().hex[:10]}.close"
    create_topics(bootstrap, {topic: 3})
    producer, threads = started_by(lambda: EventProducer(bootstrap, linger_ms=1))
    assert threads and all(t.is_alive() for t in threads)
    producer.send(topic, b"k", b"before")
    producer.flush(30)  # the topic's leaders known: the sends below do not wait for metadata
    broker = manager.running()["kafka"]
    if gone == "killed":
        manager.down(("kafka",))
    else:
        freeze(broker.pid)
    try:
        futures = [producer.send_future(topic, b"%d" % i, b"lost") for i in range(6)]
        start = time.monotonic()
        given_up = producer.close(TIMEOUT)
        took = time.monotonic() - start
    finally:
        if gone == "stopped":
            os.kill(broker.pid, signal.SIGCONT)
    assert TIMEOUT - 0.1 <= took < TIMEOUT + CLOSE_GRACE_SECONDS, took
    assert not [t.name for t in threads if t.is_alive()]  # no thread left retrying
    assert given_up == 6 and (producer.sent, producer.failed) == (1, 6), producer.errors
    assert all(f.is_done and f.failed() for f in futures)  # each errback told, before the return


def test_a_close_with_the_broker_up_delivers_what_was_sent(settings: Settings) -> None:
    """What was sent and not flushed is delivered by the close, which waits for it."""
    bootstrap = settings.kafka_bootstrap_servers or ""
    topic = f"t{uuid.uuid4().hex[:10]}.close"
    create_topics(bootstrap, {topic: 2})
    producer, threads = started_by(lambda: EventProducer(bootstrap, linger_ms=50))
    for i in range(50):
        producer.send(topic, b"%d" % i, b"v%d" % i)
    assert producer.close() == 0
    assert (producer.sent, producer.failed) == (50, 0), producer.errors
    assert not [t.name for t in threads if t.is_alive()]
    assert len(read_all(bootstrap, [topic])) == 50

"""A log handed over on the shadows' one thread (`Publisher.send_later`) may wait up to the
producer's ``max_block_ms`` (3 s) when the broker is away and the producer never sent to its
topics (it waits for their metadata). Such an attempt is a probe, as a publish's: one per
outage window, the other logs failed at once (counted as ``outage``) and the requests refused
while it tries. Before, only a log without a producer was held back: with one, each log
queued before the outage was known waited 3 s in turn (a backlog of 1000: 50 min), the
shadows of every graph and the API's stop behind them; and past the window every request was
admitted while a log tried again. A log whose topics the producer knows waits for nothing: it
is handed over even during an outage, and the producer's close, giving up on it, tells it.

On a broker of this test's own (`private_kafka`), killed once the producer exists."""

from __future__ import annotations

import threading
import time

import pytest

from schemas.settings import Settings
from serving import feedback
from stream.dev.services import ServiceManager
from stream.kafka.client import create_topics
from tests.support.outage import private_kafka
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_kafka"]  # a fixture

WAITS = 3.0  # the publisher's producer's max_block_ms, in seconds


def test_a_log_that_waits_for_metadata_is_one_probe_per_outage_window(
    settings: Settings,
    private_kafka: tuple[ServiceManager, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, bootstrap = private_kafka
    s = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
    create_topics(bootstrap, {s.topic_labels: 1, s.topic_features: 1, s.topic_predictions: 1})
    publisher = feedback.Publisher(s)
    try:
        # The producer exists and knows the labels topic alone (an ingest request's).
        publisher.publish([(s.topic_labels, b"k", b'{"id": "k", "label": true}')], 10)
        manager.down(("kafka",))
        monkeypatch.setattr(feedback, "OUTAGE_SECONDS", 60.0)
        log = [(s.topic_features, b"k", b"{}"), (s.topic_predictions, b"k", b"{}")]
        told: list[feedback.KafkaUnavailable] = []

        def timed_send() -> float:
            start = time.monotonic()
            publisher.send_later(log, told.append)
            return time.monotonic() - start

        # 1. Five logs queued before the outage was known: the first waits for the metadata,
        # fails and is remembered; the others are failed at once.
        took = [timed_send() for _ in range(5)]
        assert took[0] >= WAITS - 0.5 and all(t < 0.5 for t in took[1:]), took
        assert [e.reason for e in told] == ["not_acknowledged"] + ["outage"] * 4
        assert all(str(e) == str(told[0]) for e in told[1:]), told

        # 2. Past the window, one log tries again: meanwhile requests and logs are refused.
        monkeypatch.setattr(feedback, "OUTAGE_SECONDS", 0.0)
        probe = threading.Thread(target=timed_send)
        probe.start()
        try:
            wait_until(lambda: publisher._probing, what="the log to try again")
            with pytest.raises(feedback.KafkaUnavailable) as refused:
                publisher.check()
            assert refused.value.reason == "outage"
            assert timed_send() < 0.5 and told[-1].reason == "outage"
        finally:
            probe.join(WAITS + 5)
        assert not probe.is_alive() and not publisher._probing
        assert [e.reason for e in told[-2:]] == ["outage", "not_acknowledged"]

        # 3. A log whose topic the producer knows is handed over, even during the outage; the
        # producer's close gives up on it within its bound and tells it.
        monkeypatch.setattr(feedback, "OUTAGE_SECONDS", 60.0)
        start = time.monotonic()
        publisher.send_later([(s.topic_labels, b"k2", b"{}")], told.append)
        assert time.monotonic() - start < 0.5
        assert len(told) == 7 and [d.done for d in publisher._later] == [False]
    finally:
        start = time.monotonic()
        publisher.close()
        closed_in = time.monotonic() - start
    assert closed_in < 15, closed_in
    assert len(told) == 8 and told[-1].reason == "not_acknowledged"
    assert str(told[-1]).startswith("the API stopped before Kafka acknowledged the log")

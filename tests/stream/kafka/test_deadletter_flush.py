"""A dead letter that the producer failed to deliver fails `DeadLetters.flush`: a flush waits
past the producer's delivery timeout (`stream.kafka.client.EventProducer.flush`), so a broker
away for longer ends in failed deliveries, not in a flush that times out, and dead letters are
at least once: the learner must stop rather than go on (and checkpoint past them).

Unit level: the producer is a `Sender` that fails the deliveries it is told to (no broker)."""

from __future__ import annotations

import pytest

from schemas.errors import KafkaAdapterError, SchemaError
from stream.kafka.client import Record
from stream.kafka.deadletter import DeadLetters


class _Producer:
    """A `Sender` whose flush delivers what was sent, failing the first ``failing`` of it."""

    def __init__(self, failing: int = 0) -> None:
        self.failing = failing
        self.unsent = 0
        self.failed = 0
        self.flushes = 0

    def send(self, *_args: object, **_kwargs: object) -> None:
        self.unsent += 1

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        failing = min(self.failing, self.unsent)
        self.failed += failing
        self.failing -= failing
        self.unsent = 0


def _record(offset: int) -> Record:
    return Record("features", 0, offset, b"k", b"{", 0)


def _error() -> SchemaError:
    return SchemaError("bad_json", None, "not JSON")


def test_dead_letters_that_were_delivered_flush_quietly() -> None:
    producer = _Producer()
    dead = DeadLetters(producer, "dlq")
    dead.send(_record(1), _error())
    dead.flush()
    dead.flush()  # nothing pending: no flush
    assert producer.flushes == 1 and dead.pending == 0


def test_a_dead_letter_not_delivered_fails_the_flush() -> None:
    producer = _Producer(failing=1)
    dead = DeadLetters(producer, "dlq")
    dead.send(_record(1), _error())
    dead.send_unusable("features", b"k", b"{}", "model_error", "boom")
    with pytest.raises(KafkaAdapterError, match="1 of 2 dead letters to dlq"):
        dead.flush()
    assert dead.pending == 0
    dead.send(_record(2), _error())
    dead.flush()  # the failure counted before is not this flush's
    assert producer.failed == 1 and producer.flushes == 2


class _FailingAtSend(_Producer):
    """A `Sender` whose sends fail before any flush while ``at_send`` (kafka-python fails a
    record in `send` when its topic's metadata answers with an error, and its sender thread may
    fail a batch while the learner still decodes the rest of a poll)."""

    at_send = True

    def send(self, *args: object, **kwargs: object) -> None:
        if self.at_send:
            self.failed += 1
        else:
            super().send(*args, **kwargs)


def test_a_dead_letter_that_failed_before_the_flush_fails_it() -> None:
    producer = _FailingAtSend()
    dead = DeadLetters(producer, "dlq")
    dead.send(_record(1), _error())
    dead.send(_record(2), _error())
    with pytest.raises(KafkaAdapterError, match="2 of 2 dead letters to dlq"):
        dead.flush()
    producer.at_send = False
    dead.send(_record(3), _error())  # delivered: the failures counted before are not its
    dead.flush()

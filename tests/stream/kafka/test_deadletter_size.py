"""A dead letter that Kafka could not take whole (its record near the 1 MB message size, plus
headers) is sent without the record's value, with ``rs.value_bytes``: otherwise it would be
refused at every attempt, and the record read and refused again at every start.

Unit level: the producer is a `Sender` that records what it is given (no broker); the worker's
end-to-end test sends such a request through Kafka (`tests/stream/predict/test_worker.py`)."""

from __future__ import annotations

import pytest

from schemas.errors import SchemaError
from stream.kafka.client import Record
from stream.kafka.deadletter import MAX_DEAD_LETTER_BYTES, DeadLetters


class _Recorder:
    failed = 0

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append((key, value, dict(headers or [])))

    def flush(self, timeout: float | None = None) -> None:
        pass


ERROR = SchemaError("bad_json", None, "not JSON")


@pytest.mark.parametrize("size", [0, 1000, MAX_DEAD_LETTER_BYTES - 1000])
def test_a_dead_letter_that_fits_holds_the_original_bytes(size: int) -> None:
    producer = _Recorder()
    value = b"x" * size
    DeadLetters(producer, "dlq").send(Record("t", 2, 7, b"k", value, 0), ERROR)
    [(key, sent, headers)] = producer.sent
    assert (key, sent) == (b"k", value) and "rs.value_bytes" not in headers


@pytest.mark.parametrize("size", [MAX_DEAD_LETTER_BYTES, 999_000, 2_000_000])
def test_a_dead_letter_too_large_says_where_the_record_is_not_what(size: int) -> None:
    producer = _Recorder()
    DeadLetters(producer, "dlq").send(
        Record("t", 2, 7, b"k", b"x" * size, 0), ERROR, [("x-trace", b"1")]
    )
    [(key, value, headers)] = producer.sent
    assert key == b"k" and value == b""
    assert headers["rs.value_bytes"] == str(size).encode()
    assert (headers["rs.topic"], headers["rs.partition"], headers["rs.offset"]) == (
        b"t", b"2", b"7",
    )  # fmt: skip
    assert headers["rs.reason"] == b"bad_json" and headers["x-trace"] == b"1"


def test_an_unusable_event_too_large_is_sent_without_its_value() -> None:
    producer = _Recorder()
    value = b"y" * (MAX_DEAD_LETTER_BYTES + 1)
    DeadLetters(producer, "dlq").send_unusable("features", b"id", value, "unusable", "lr: E")
    [(_, sent, headers)] = producer.sent
    assert sent == b"" and headers["rs.value_bytes"] == str(len(value)).encode()


def test_a_tombstone_is_dead_lettered_as_one() -> None:
    """A record without a value (a Kafka tombstone, refused as ``no_value``) keeps no value;
    measuring it for the cap raised TypeError and stopped the learner."""
    producer = _Recorder()
    record = Record("t", 0, 3, b"k", None, 0)  # type: ignore[arg-type]  # as Kafka gives it
    DeadLetters(producer, "dlq").send(record, SchemaError("no_value", None, "a tombstone"))
    [(key, value, headers)] = producer.sent
    assert (key, value) == (b"k", None) and headers["rs.reason"] == b"no_value"

"""A dead letter that Kafka could not take whole (its record near the 1 MB message size, plus
headers) is sent without the record's value, with ``rs.value_bytes``: otherwise it would be
refused at every attempt, and the record read and refused again at every start. A huge key, a
huge passed header, many headers or a huge error are cut down the same way, the headers saying
where the original is always kept.

Unit level: the producer is a `Sender` that records what it is given (no broker); the worker's
end-to-end test sends such a request through Kafka (`tests/stream/predict/test_worker.py`)."""

from __future__ import annotations

import pytest

from schemas.errors import SchemaError
from stream.kafka.client import Record
from stream.kafka.deadletter import (
    ERROR_KEPT_BYTES,
    HEADER_OVERHEAD,
    MAX_DEAD_LETTER_BYTES,
    DeadLetters,
)
from tests.support.senders import KeptSender

ERROR = SchemaError("bad_json", None, "not JSON")


@pytest.mark.parametrize("size", [0, 1000, MAX_DEAD_LETTER_BYTES - 1000])
def test_a_dead_letter_that_fits_holds_the_original_bytes(size: int) -> None:
    producer = KeptSender()
    value = b"x" * size
    DeadLetters(producer, "dlq").send(Record("t", 2, 7, b"k", value, 0), ERROR)
    [(key, sent, headers)] = producer.sent
    assert (key, sent) == (b"k", value) and "rs.value_bytes" not in headers


@pytest.mark.parametrize("size", [MAX_DEAD_LETTER_BYTES, 999_000, 2_000_000])
def test_a_dead_letter_too_large_says_where_the_record_is_not_what(size: int) -> None:
    producer = KeptSender()
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
    producer = KeptSender()
    value = b"y" * (MAX_DEAD_LETTER_BYTES + 1)
    DeadLetters(producer, "dlq").send_unusable("features", b"id", value, "unusable", "lr: E")
    [(_, sent, headers)] = producer.sent
    assert sent == b"" and headers["rs.value_bytes"] == str(len(value)).encode()


def test_a_tombstone_is_dead_lettered_as_one() -> None:
    """A record without a value (a Kafka tombstone, refused as ``no_value``) keeps no value;
    measuring it for the cap raised TypeError and stopped the learner."""
    producer = KeptSender()
    record = Record("t", 0, 3, b"k", None, 0)  # type: ignore[arg-type]  # as Kafka gives it
    DeadLetters(producer, "dlq").send(record, SchemaError("no_value", None, "a tombstone"))
    [(key, value, headers)] = producer.sent
    assert (key, value) == (b"k", None) and headers["rs.reason"] == b"no_value"


WHERE = ("rs.topic", "rs.partition", "rs.offset", "rs.reason")


def measured(key: bytes | None, value: bytes | None, headers: dict[str, bytes]) -> int:
    """A dead letter's size as Kafka's producer counts it, each header with its lengths."""
    return (
        len(key or b"") + len(value or b"")
        + sum(len(k) + len(v) + HEADER_OVERHEAD for k, v in headers.items())
    )  # fmt: skip


def sent_for(
    key: bytes | None, value: bytes, extra: list[tuple[str, bytes]]
) -> tuple[bytes | None, bytes | None, dict[str, bytes]]:
    producer = KeptSender()
    DeadLetters(producer, "dlq").send(Record("t", 2, 7, key, value, 0), ERROR, extra)
    [sent] = producer.sent
    assert measured(*sent) <= MAX_DEAD_LETTER_BYTES
    assert [sent[2][h] for h in WHERE] == [b"t", b"2", b"7", b"bad_json"]
    return sent


def test_a_key_too_large_goes_with_a_header_saying_so() -> None:
    """The key counted: a 950 kB key was sent whole (with the value dropped for nothing)."""
    key, value, headers = sent_for(b"k" * 950_000, b"{bad", [("x-trace", b"1")])
    assert key is None and headers["rs.key_bytes"] == b"950000"
    assert value == b"{bad" and "rs.value_bytes" not in headers
    assert headers["x-trace"] == b"1" and headers["rs.error"] == str(ERROR).encode()


def test_a_passed_header_too_large_goes_with_a_header_saying_so() -> None:
    """Key and headers together over Kafka's 1 MB: the producer refused the dead letter and
    the sender stopped (`tests/stream/predict/test_worker_deadletter.py` through Kafka)."""
    extra = [("x-trace", b"1"), ("x-big", b"h" * 500_001)]
    key, value, headers = sent_for(b"k" * 500_000, b"{bad", extra)
    assert (key, value) == (b"k" * 500_000, b"{bad")
    assert "x-big" not in headers and headers["rs.headers_dropped"] == b"1"
    assert headers["x-trace"] == b"1"


def test_many_small_headers_count_and_go() -> None:
    """200 000 empty headers: nothing but their lengths, 2 MB of them in a record."""
    extra = [(f"x-{i}", b"") for i in range(200_000)]
    key, value, headers = sent_for(b"k", b"{bad", extra)
    assert (key, value) == (b"k", b"{bad")
    kept = [h for h in headers if h.startswith("x-")]
    assert kept and int(headers["rs.headers_dropped"]) == len(extra) - len(kept)


def test_an_error_too_long_is_cut_with_its_length() -> None:
    error = "lr: " + "é" * 600_000  # two bytes a character: the cut keeps whole ones
    producer = KeptSender()
    value = b"v" * 400_000
    DeadLetters(producer, "dlq").send_unusable("features", b"id", value, "unusable", error)
    [(key, sent, headers)] = producer.sent
    assert measured(key, sent, headers) <= MAX_DEAD_LETTER_BYTES
    assert (key, sent) == (b"id", value), "the value kept: the error was the larger part"
    assert headers["rs.error_bytes"] == str(len(error.encode())).encode()
    kept = headers["rs.error"].decode()  # whole characters
    assert error.startswith(kept) and ERROR_KEPT_BYTES - 1 <= len(kept.encode()) <= ERROR_KEPT_BYTES
    assert (headers["rs.topic"], headers["rs.reason"]) == (b"features", b"unusable")


def test_the_largest_parts_go_first_and_where_the_original_is_stays() -> None:
    extra = [("x-a", b"a" * 400_000), ("x-b", b"b" * 400_000), ("x-c", b"c")]
    key, value, headers = sent_for(b"k" * 400_000, b"v" * 400_000, extra)
    assert (key, value) == (b"k" * 400_000, b"v" * 400_000)  # the headers were larger
    assert headers["rs.headers_dropped"] == b"2" and headers["x-c"] == b"c"
    extra = [("x-a", b"a" * 950_000)]
    key, value, headers = sent_for(b"k" * 950_000, b"v" * 950_000, extra)
    assert (key, value) == (None, b"") and "x-a" not in headers
    assert (headers["rs.key_bytes"], headers["rs.value_bytes"]) == (b"950000", b"950000")
    assert headers["rs.headers_dropped"] == b"1"

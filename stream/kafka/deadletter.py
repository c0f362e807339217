"""Dead letters: a malformed record goes to the dead-letter topic with its reason.

The message value is the original bytes, untouched; the key is the original key; headers say
where it came from (``rs.topic``, ``rs.partition``, ``rs.offset``) and why it was refused
(``rs.reason``, ``rs.error``). The stream goes on.

A dead letter is its record plus headers, and Kafka's producers and brokers refuse messages of
about 1 MB by default (confluent-kafka's ``message.max.bytes`` is 1 000 000): a record near
that size, refused for its JSON say, would make a dead letter that cannot be written, and the
record would be read and refused again at every start. A dead letter over
`MAX_DEAD_LETTER_BYTES` is therefore sent without its value, with ``rs.value_bytes`` (the
value's length) instead; the original stays in its topic, where the headers point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from schemas.errors import KafkaAdapterError, SchemaError
from stream.kafka.client import Record

MAX_DEAD_LETTER_BYTES = 900_000
"""The largest dead letter sent whole: its key, value and headers (see the module docstring)."""


class Sender(Protocol):
    """What dead letters need of a producer (`EventProducer`, or the prediction worker's)."""

    failed: int
    """Deliveries that failed for good so far."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None: ...

    def flush(self, timeout: float | None = ...) -> None:
        """Wait until every message sent so far is acknowledged or failed for good (by default
        as long as the producer waits by default)."""


class DeadLetters:
    """Dead letters sent through ``producer``, whose ``failed`` count must grow only with its
    own failed deliveries (the learner's producer sends dead letters alone)."""

    def __init__(self, producer: Sender, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.pending = 0
        self._failed_before = 0  # the producer's failures before the first dead letter pending

    def _sending(self) -> None:
        if not self.pending:  # a delivery may fail in `send` itself, or before `flush`
            self._failed_before = self.producer.failed
        self.pending += 1

    def send(
        self, record: Record, error: SchemaError, extra: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Dead-letter ``record``; ``extra`` headers (e.g. a request's ``x-`` ones) follow ours."""
        headers = [
            ("rs.topic", record.topic.encode()),
            ("rs.partition", str(record.partition).encode()),
            ("rs.offset", str(record.offset).encode()),
            ("rs.reason", error.reason.encode()),
            ("rs.error", str(error).encode()),
            *extra,
        ]
        self._send(record.key, record.value, headers)

    def send_unusable(self, topic: str, key: bytes, value: bytes, reason: str, error: str) -> None:
        """An event that was valid but that no model could use (every model raised on it):
        re-encoded, with the models' errors. ``topic`` is where it was read from."""
        headers = [("rs.topic", topic.encode()), ("rs.reason", reason.encode()),
                   ("rs.error", error.encode())]  # fmt: skip
        self._send(key, value, headers)

    def _send(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Send one dead letter; ``value`` None: a record without one (a tombstone)."""
        value_size = 0 if value is None else len(value)
        size = len(key or b"") + value_size + sum(len(k) + len(v) for k, v in headers)
        if size > MAX_DEAD_LETTER_BYTES:  # too large to be written: where it is, not what
            headers = [*headers, ("rs.value_bytes", str(value_size).encode())]
            value = b""
        self._sending()
        self.producer.send(self.topic, key, value, headers=headers)

    def flush(self) -> None:
        """Wait until the dead letters sent are acknowledged; `KafkaAdapterError` if one of them
        failed for good (a flush waits past the producer's delivery timeout, so a broker away
        for longer ends in failed deliveries, not in a flush that times out): dead letters are
        at least once, and the caller must not go on as if they were written."""
        if self.pending:
            pending = self.pending
            self.producer.flush()
            self.pending = 0
            lost = self.producer.failed - self._failed_before
            if lost > 0:
                raise KafkaAdapterError(
                    f"{lost} of {pending} dead letters to {self.topic} were not delivered"
                )

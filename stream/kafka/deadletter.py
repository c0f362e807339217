"""Dead letters: a malformed record goes to the dead-letter topic with its reason.

The message value is the original bytes, untouched; the key is the original key; headers say
where it came from (``rs.topic``, ``rs.partition``, ``rs.offset``) and why it was refused
(``rs.reason``, ``rs.error``). The stream goes on.

A dead letter is its record plus headers, and Kafka's producers and brokers refuse messages of
about 1 MB by default (confluent-kafka's ``message.max.bytes`` is 1 000 000, key and headers
included): a record near that size, refused for its JSON say, would make a dead letter that
cannot be written, and the record would be read and refused again at every start. A dead
letter over `MAX_DEAD_LETTER_BYTES` (key, value and headers) is therefore cut down, its largest
part first, until it fits (`fitted`): the value goes (``rs.value_bytes``: its length), the key
goes (``rs.key_bytes``), a passed header goes (``rs.headers_dropped``: how many did), or
``rs.error`` is cut to its first `ERROR_KEPT_BYTES` (``rs.error_bytes``: its whole length).
The headers that say where the original is and why it was refused (``rs.topic``,
``rs.partition``, ``rs.offset``, ``rs.reason``) always stay: the original stays in its topic,
where they point.

Kafka's ACLs denying the dead-letter topic's Write is a configuration error
(`stream.kafka.auth.KafkaAccessError`), not a delivery that failed: `DeadLetters.flush` raises
it naming the user's setting, the topic and how many dead letters were not written, and the
caller must not go on past their records (the learner stops, exit 2, its checkpoint before
them: started again, it reads them and dead-letters them again). So that this does not wait
for the first malformed record, hours after the start, `check_writable` asks Kafka at start
for the user's operations on the topic (KIP-430's authorized operations; one describe, a few
seconds at most): a learner its ACLs deny the Write does not start. Brokers without an
authorizer say every operation; those that say nothing, or a describe denied or unanswered,
let the start go on (the first dead letter tells then).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from schemas.errors import KafkaAdapterError, SchemaError
from stream.kafka.auth import KafkaAccessError, write_refusal
from stream.kafka.client import Record, topic_operations
from stream.kafka.security import KafkaSecurity

log = logging.getLogger(__name__)

MAX_DEAD_LETTER_BYTES = 900_000
"""The largest dead letter sent whole: its key, value and headers (see the module docstring)."""
HEADER_OVERHEAD = 10
"""What a record header takes besides its name and value (their two varint lengths, at most):
many small headers count too."""
ERROR_KEPT_BYTES = 1000
"""What is kept of an ``rs.error`` too long for a dead letter."""

Header = tuple[str, bytes]


def _header_size(header: Header) -> int:
    return len(header[0].encode()) + len(header[1]) + HEADER_OVERHEAD


def message_bytes(key: bytes | None, value: bytes | None, headers: Sequence[Header]) -> int:
    """What a message's key, value and headers take (each header with `HEADER_OVERHEAD`): what
    `fitted` keeps under `MAX_DEAD_LETTER_BYTES`, and what the prediction worker measures of an
    answer before sending it.

    >>> message_bytes(b"id", b"{}", [("x-trace", b"7")])
    22
    """
    return len(key or b"") + len(value or b"") + sum(map(_header_size, headers))


def fitted(
    key: bytes | None,
    value: bytes | None,
    where: Sequence[Header],
    error: bytes,
    extra: Sequence[Header] = (),
) -> tuple[bytes | None, bytes | None, list[Header]]:
    """The ``(key, value, headers)`` of a dead letter: ``where`` (the headers saying where the
    original is and why it was refused, always kept), ``("rs.error", error)``, then ``extra``.
    Over `MAX_DEAD_LETTER_BYTES`, its parts go, the largest first, until it fits, each with a
    header saying so (see the module docstring).

    >>> key, value, headers = fitted(b"k" * 600_000, b"v", [("rs.reason", b"r")], b"e",
    ...                              [("x-big", b"h" * 600_000), ("x-trace", b"7")])
    >>> len(key), value, headers
    (600000, b'v', [('rs.reason', b'r'), ('rs.error', b'e'), ('x-trace', b'7'), ('rs.headers_dropped', b'1')])
    """
    headers = [*where, ("rs.error", error), *extra]
    size = message_bytes(key, value, headers)
    if size <= MAX_DEAD_LETTER_BYTES:
        return key, value, headers
    # What each part frees, the largest first; a passed header by its index in ``extra``.
    parts: list[tuple[int, str | int]] = [
        (len(value or b""), "value"),
        (len(key or b""), "key"),
        (len(error) - ERROR_KEPT_BYTES, "error"),
        *((_header_size(h), i) for i, h in enumerate(extra)),
    ]
    parts.sort(key=lambda part: part[0], reverse=True)
    notes: list[Header] = []
    dropped: set[int] = set()
    for freed, part in parts:
        if size <= MAX_DEAD_LETTER_BYTES or freed <= 0:
            break
        if part == "value":
            note = ("rs.value_bytes", str(len(value or b"")).encode())
            value = b""
        elif part == "key":
            note = ("rs.key_bytes", str(len(key or b"")).encode())
            key = None
        elif part == "error":
            note = ("rs.error_bytes", str(len(error)).encode())
            error = error[:ERROR_KEPT_BYTES].decode(errors="ignore").encode()
        else:
            assert isinstance(part, int)
            if not dropped:  # its note, counted as wide as it can be
                size += _header_size(("rs.headers_dropped", str(len(extra)).encode()))
            dropped.add(part)
            size -= freed
            continue
        notes.append(note)
        size += _header_size(note) - freed
    if dropped:
        notes.append(("rs.headers_dropped", str(len(dropped)).encode()))
    kept = [h for i, h in enumerate(extra) if i not in dropped]
    return key, value, [*where, ("rs.error", error), *kept, *notes]


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
        where = [
            ("rs.topic", record.topic.encode()),
            ("rs.partition", str(record.partition).encode()),
            ("rs.offset", str(record.offset).encode()),
            ("rs.reason", error.reason.encode()),
        ]
        self._send(*fitted(record.key, record.value, where, str(error).encode(), extra))

    def send_unusable(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        reason: str,
        error: str,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        """An event that was valid but that no model could use (every model raised on it):
        re-encoded, with the models' errors. ``topic`` is where it was read from, and
        ``partition`` and ``offset`` when they are known (headers as `send` writes them)."""
        where = [("rs.topic", topic.encode())]
        if partition is not None and offset is not None:
            where += [
                ("rs.partition", str(partition).encode()),
                ("rs.offset", str(offset).encode()),
            ]
        where.append(("rs.reason", reason.encode()))
        self._send(*fitted(key, value, where, error.encode()))

    def _send(self, key: bytes | None, value: bytes | None, headers: list[Header]) -> None:
        """Send one dead letter (`fitted`); ``value`` None: a record without one (a tombstone)."""
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
            # A producer that says so (`EventProducer`, the prediction worker's) keeps the
            # ACLs' denial of a write; a `Sender` need not.
            denial: KafkaAccessError | None = getattr(self.producer, "denied", None)
            if lost > 0 and denial is not None:
                raise denial.meaning(
                    f"{lost} of {pending} dead letters to {self.topic} were not written, and "
                    "their records are not passed (read and dead-lettered again once the ACLs "
                    "allow it)"
                )
            if lost > 0:
                raise KafkaAdapterError(
                    f"{lost} of {pending} dead letters to {self.topic} were not delivered"
                )


def check_writable(bootstrap: str, topic: str, security: KafkaSecurity) -> None:
    """`KafkaAccessError` when Kafka says that its ACLs deny this process's user the Write of
    dead-letter ``topic`` (`write_refusal`), asked once, at start (`topic_operations`); when
    it cannot be told (the describe denied, or unanswered), one log line, and the start goes on.
    """
    try:
        operations = topic_operations(bootstrap, topic, security=security)
    except KafkaAdapterError as exc:  # no answer, or the describe denied (an ACL to fix)
        level = logging.WARNING if isinstance(exc, KafkaAccessError) else logging.INFO
        log.log(level, "the dead-letter topic's Write could not be checked at start (its first "
                "dead letter will tell): %s", exc)  # fmt: skip
        return
    refusal = write_refusal(operations, topic, bootstrap, security)
    if refusal is not None:
        raise refusal.meaning(
            "the learner does not start: it would stop at its first malformed record, unable "
            "to dead-letter it"
        )

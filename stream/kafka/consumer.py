"""The learner's consumer: confluent-kafka (librdkafka) with manual assignment.

Chosen over kafka-python and faust-streaming by `bench/consume_path.py` (consuming alone,
librdkafka reads ≈ 105-124k msg/s on this machine against ≈ 33-39k for kafka-python). Offsets
come from the learner's snapshots, never from the consumer group; every client exception is
wrapped in `KafkaAdapterError` where it enters.

Kafka refusing the login (`stream.kafka.auth`) is `KafkaAuthError` at the assignment (a
process's start: it stops), and an ERROR naming the settings while reading (credentials
changed under a running process, refused at its next connection): reading waits as for a
broker that is away, nothing is skipped, and the log says what it is. Kafka's ACLs denying the
user a topic or the group (`stream.kafka.auth.KafkaAccessError`) are the same: raised at the
assignment (a topic it may not describe) and by a read before this process ever read (a topic it
may not read; the group, which librdkafka looks up as the consumer starts and tells at its first
consume, though offsets are never committed), an ERROR each minute once it had read (an ACL
removed under a running learner, even one whose topics were quiet for hours) while reading
waits. Reading is records, or a fetch response without any: the empty topics of a deployment
waiting for traffic were read too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, cast

from schemas.errors import KafkaAdapterError
from stream.kafka.auth import (
    KafkaAccessError,
    KafkaAuthError,
    LoginWatch,
    RefusalLog,
    connect_error,
    denied,
    read_denial,
)
from stream.kafka.records import Record, RecordRun
from stream.kafka.security import PLAINTEXT, KafkaSecurity

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError

log = logging.getLogger(__name__)
_DENIED_MEANWHILE = "reading waits until they do (nothing is skipped)"
_BROKER_ASK_SECONDS = 5.0
_FIRST_FETCH_GRACE_SECONDS = 1.0
_BROKER_RECHECK_SECONDS = 1.0
_DENIAL_QUIET_SECONDS = 10.0
"""A denied read is told again at each fetch (librdkafka backs off ≈ 0.5 s): this long without
one, the ACL allows it again, even for a partition with no new record to show it."""


class _ConsumedMessage(Protocol):
    """A confluent-kafka ``Message`` as `ConfluentSource.poll` reads it.

    confluent-kafka types every accessor as optional, because a ``Message`` may also be an
    error event; a consumed message without error has its topic, partition and offset set.
    ``value`` is None for a null value (a tombstone), which riverstream's producers never write
    and the learner does not accept (the event decoder needs bytes).
    """

    def error(self) -> KafkaError | None: ...
    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes: ...
    def timestamp(self) -> tuple[int, int]: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...


class ConfluentSource:
    """librdkafka consumer with manual assignment: offsets come from our snapshots."""

    def __init__(
        self, bootstrap: str, group_id: str, *, security: KafkaSecurity = PLAINTEXT
    ) -> None:
        from confluent_kafka import Consumer

        self._bootstrap, self._security, self._group = bootstrap, security, group_id
        self._login = LoginWatch(self._on_error)
        self._refusals = RefusalLog(
            log, "reading waits until Kafka accepts them (nothing is skipped)"
        )
        self._denials = RefusalLog(log, _DENIED_MEANWHILE)
        self._read = False  # this process read (`fetched`): a denial is no longer a start's
        self._denied_topics: set[str] = set()
        self._denied_at = 0.0  # the last denial, monotonic
        """Topics whose reads Kafka's ACLs denied (``*``: the group, every topic), until one
        of their records comes: none of their partitions counts as caught up meanwhile."""
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                "queued.min.messages": 200_000,
                # Small fetches per partition interleave the partitions from the start: with
                # whole partitions per fetch (1 MB), a replay's first ≈ 100k events came one
                # partition after another and nothing could be learned until all had begun.
                "max.partition.fetch.bytes": 64 * 1024,
                # A broker that went away is asked again every 0.1 s growing to 2 s, not 50 ms.
                "reconnect.backoff.ms": 100,
                "reconnect.backoff.max.ms": 2000,
                "error_cb": self._login,
                **security.librdkafka(),
            }
        )
        self._assigned: list[tuple[str, int]] = []
        self._ask_after = 0.0
        self._asked: dict[tuple[str, int], tuple[float, int]] = {}
        self._broker_lost = False
        self._broker_checked = 0.0

    def _on_error(self, error: Any) -> None:
        """librdkafka's error callback (served by poll, after `LoginWatch`): a lost broker
        connection means the cached log ends may be stale, so no partition counts as caught up
        until it is back. A refused login is one too, and an ERROR that says so."""
        from confluent_kafka import KafkaError

        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._broker_lost = True
        refusal = self._login.refusal
        if error.code() != KafkaError._AUTHENTICATION or refusal is None:
            return
        self._broker_lost = True
        self._refusals.refused(KafkaAuthError(self._bootstrap, refusal, self._security))

    def assign(self, positions: dict[tuple[str, int], int]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        parts = [
            TopicPartition(t, p, off if off >= 0 else OFFSET_BEGINNING)
            for (t, p), off in positions.items()
        ]
        # Knowing the partition leaders before assigning saves librdkafka's offset-query
        # retry timer: the first records then come in ≈ 50 ms instead of ≈ 550 ms (measured).
        for topic in {t for t, _ in positions}:
            try:
                metadata = self._consumer.list_topics(topic, timeout=10)
            except KafkaException as exc:  # refused (`KafkaAuthError`), or away
                raise connect_error(exc, self._bootstrap, self._security) from exc
            info = metadata.topics.get(topic)
            if info is not None and denied(info.error) is not None:
                raise self._denied("describe", f"topic {topic}")
        self._consumer.assign(parts)
        self._assigned = list(positions)
        self._ask_after = time.monotonic() + _FIRST_FETCH_GRACE_SECONDS
        self._asked.clear()

    def poll(self, max_records: int, timeout: float) -> list[RecordRun]:
        # What is queued already, without waiting for ``max_records`` to arrive. Only an empty
        # queue is waited on, and then for a whole batch (or ``timeout``): when a quiet stream
        # wakes up, the batch then holds what every partition received in that window, so a
        # partition a few ms behind the others is not left out of the watermark.
        consumer = self._consumer
        messages = cast(
            "list[_ConsumedMessage]",
            consumer.consume(max_records, 0) or consumer.consume(max_records, timeout),
        )
        runs: list[RecordRun] = []
        topic: str | None = None
        partition: int | None = None
        offsets: list[int] = []
        values: list[bytes] = []
        for index, m in enumerate(messages):
            err = m.error()
            if err is not None:
                if err.code() == -191:  # _PARTITION_EOF
                    topic = partition = None  # a run maps its indexes onto a slice
                    continue
                denial = read_denial(err, m.topic(), self._group, self._bootstrap, self._security)
                if denial is None:
                    raise KafkaAdapterError(f"consume failed: {err}")
                if not self._read:
                    raise denial
                self._denials.refused(denial)
                self._denied_topics.add("*" if denied(err) == "group" else m.topic() or "*")
                self._denied_at = time.monotonic()
                topic = partition = None
                continue
            t, p = m.topic(), m.partition()
            if p != partition or t != topic:
                topic, partition, offsets, values = t, p, [], []
                runs.append(
                    RecordRun(
                        t,
                        p,
                        offsets,
                        values,
                        _message_at(messages, index),
                        _timestamps_at(messages, index, offsets),
                    )
                )
            offsets.append(m.offset())
            values.append(m.value())
        if runs:
            self._read = True
            if self._denied_topics:
                self._allowed_again({run.topic for run in runs})
        elif not self._read:
            self._read = fetched(self._consumer, self._assigned)
        return runs

    def _allowed_again(self, topics: set[str]) -> None:
        """Records came from ``topics``: their reads are allowed again (all, for the group)."""
        again = topics if "*" in self._denied_topics else self._denied_topics & topics
        if again:
            self._denied_topics -= again | {"*"}
            named = ", ".join(sorted(again - {"*"})) or "its group's topics"
            log.warning("Kafka's ACLs let this process read %s again", named)
            if not self._denied_topics:
                self._denials = RefusalLog(log, _DENIED_MEANWHILE)  # a next denial is said at once

    def _denied(self, operation: str, resource: str) -> KafkaAccessError:
        return KafkaAccessError(self._bootstrap, operation, resource, self._security)

    def end_offsets(self) -> dict[tuple[str, int], int]:
        from confluent_kafka import KafkaException, TopicPartition

        # librdkafka keeps each partition's high watermark from its fetch responses: asking
        # the broker instead costs a round trip per partition (tens of ms each, measured).
        # A partition with no fetch response yet has no cached mark: it counts as not caught
        # up. Its first fetch response normally comes within ≈ 100 ms of the assignment, so
        # the broker is asked only after a grace (asking at once cost the learner's first
        # batch ≈ 0.2 s), then at most every few seconds, in case fetches never come.
        ends: dict[tuple[str, int], int] = {}
        now = time.monotonic()
        if self._broker_lost:
            # While the broker is away, its partitions may be filling: none is caught up (an
            # outage must not count as idleness, which would release events out of order).
            if now - self._broker_checked < _BROKER_RECHECK_SECONDS:
                return ends
            self._broker_checked = now
            try:
                self._consumer.list_topics(timeout=1.0)
            except KafkaException:
                return ends
            self._broker_lost = False
            if not self._refusals.accepted():
                log.warning("Kafka broker reachable again")
            self._login.refusal = None
        if self._denied_topics and now - self._denied_at > _DENIAL_QUIET_SECONDS:
            self._allowed_again(set(self._denied_topics))
        denied = self._denied_topics
        for topic, partition in self._assigned:
            if denied and ("*" in denied or topic in denied):
                continue  # its reads are denied: its end is not known to be reached
            tp = TopicPartition(topic, partition)
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                asked = self._asked.get((topic, partition))
                if now >= self._ask_after and (
                    asked is None or now - asked[0] > _BROKER_ASK_SECONDS
                ):
                    try:
                        _low, high = self._consumer.get_watermark_offsets(
                            tp, timeout=5, cached=False
                        )
                    except KafkaException as exc:  # unknown for now: not caught up
                        log.warning("log end of %s/%d unknown: %s", topic, partition, exc)
                        high = -1
                    self._asked[(topic, partition)] = (now, high)
                elif asked is not None:
                    high = asked[1]
            if high >= 0:
                ends[(topic, partition)] = high
        return ends

    def close(self) -> None:
        self._consumer.close()


def fetched(consumer: Consumer, partitions: Iterable[tuple[str, int]]) -> bool:
    """Whether a fetch response came for one of ``partitions`` (topic, partition) assigned to
    ``consumer``: librdkafka then caches its high watermark (-1001 before, -1 after a denied
    fetch). A process that had one has read, records or not: a read denied afterwards is no
    longer a start's. Ask after empty polls until one did, never once records came (the hot
    path): a denial wipes its topic's mark, so it is too late to ask when the denial comes
    (and the other topics' marks may come from the same fetches, before a start's denial is
    told)."""
    from confluent_kafka import KafkaException, TopicPartition

    marks = consumer.get_watermark_offsets
    try:
        return any(marks(TopicPartition(t, p), cached=True)[1] >= 0 for t, p in partitions)
    except KafkaException:  # a partition librdkafka does not know yet: not fetched
        return False


def _message_at(messages: list[_ConsumedMessage], start: int) -> Callable[[int], Record]:
    """Index within a run → the whole `Record` of a confluent message."""

    def record(index: int) -> Record:
        m = messages[start + index]
        return Record(
            m.topic(),
            m.partition(),
            m.offset(),
            m.key(),
            m.value(),
            m.timestamp()[1],
            tuple(m.headers() or ()),
        )

    return record


def _timestamps_at(
    messages: list[_ConsumedMessage], start: int, offsets: list[int]
) -> Callable[[], list[int]]:
    """The reader of a run's timestamps (`RecordRun.timestamps`): the run starts at ``start``
    of ``messages`` and holds as many as ``offsets`` once it is built. Read only when asked
    (≈ 50 ns a record here, ≈ 100 ns with the timestamp's type as well): reading them in
    `ConfluentSource.poll` would cost every record, for the runs whose timestamps the learner
    looks at. librdkafka gives -1 (`NO_TIMESTAMP`) for a record without one."""

    def timestamps() -> list[int]:
        return [m.timestamp()[1] for m in messages[start : start + len(offsets)]]

    return timestamps

"""The one small adapter over the Kafka clients.

kafka-python is the chosen client for administration and producing. The learner's consume path
uses confluent-kafka (librdkafka), the sanctioned alternative, because `bench/consume_path.py`
shows kafka-python's consumer capping the learner: consuming alone, kafka-python reads
≈ 33-39k msg/s and librdkafka ≈ 105-124k msg/s on this machine, while the bare River loop for
``logreg`` runs ≈ 53-64k events/s; with the model, kafka-python reaches 0.28-0.42 of the bare
loop and confluent-kafka 0.47-0.69 (faust-streaming 0.08-0.16). Both consumers implement
`RecordSource`, so the processor does not know which one it has. Every client exception is wrapped
in `KafkaAdapterError` where it enters.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

from schemas.errors import KafkaAdapterError
from stream.kafka.security import PLAINTEXT, KafkaSecurity

if TYPE_CHECKING:
    from confluent_kafka import KafkaError

log = logging.getLogger(__name__)
_BROKER_ASK_SECONDS = 5.0
_FIRST_FETCH_GRACE_SECONDS = 1.0
_BROKER_RECHECK_SECONDS = 1.0


class Record(NamedTuple):
    """One consumed message (a named tuple: cheaper to build than a frozen dataclass)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


class RecordRun:
    """Consecutive records of one partition, in offset order, as the consumer returned them.

    The learner needs only offsets and values, so a run holds just those two lists; a whole
    `Record` (key, timestamp, headers, for a dead letter) is built on demand by `record`.
    Building one `Record` per message cost more than consuming it (measured: 0.77 µs per
    message against 0.19 µs for the runs).
    """

    __slots__ = ("_record", "offsets", "partition", "topic", "values")

    def __init__(
        self,
        topic: str,
        partition: int,
        offsets: list[int],
        values: list[bytes],
        record: Callable[[int], Record],
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offsets = offsets
        self.values = values
        self._record = record

    def __len__(self) -> int:
        return len(self.offsets)

    def __repr__(self) -> str:
        return f"RecordRun({self.topic}/{self.partition}, {len(self)} records)"

    def record(self, index: int) -> Record:
        """The whole record at ``index`` of this run."""
        return self._record(index)

    def records(self) -> list[Record]:
        return [self._record(i) for i in range(len(self))]


class RecordSource(Protocol):
    """What the processor needs from a consumer."""

    def assign(self, positions: dict[tuple[str, int], int]) -> None: ...

    def poll(self, max_records: int, timeout: float) -> list[RecordRun]:
        """What is ready, up to ``max_records``; waits at most ``timeout`` s for anything."""
        ...

    def end_offsets(self) -> dict[tuple[str, int], int]:
        """Log end offset per partition; a partition whose end is not known yet is left out."""
        ...

    def close(self) -> None: ...


def broker_ready(
    bootstrap: str, timeout: float = 2.0, *, security: KafkaSecurity = PLAINTEXT
) -> bool:
    """True when the broker answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, **security.librdkafka()})
    metadata = admin.list_topics(timeout=timeout)
    return bool(metadata.brokers)


def create_topics(
    bootstrap: str, topics: dict[str, int], *, security: KafkaSecurity = PLAINTEXT
) -> list[str]:
    """Create missing topics (name → partitions); returns those created. Idempotent."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="rs-admin", **security.kafka_python()
        )
    except KafkaError as exc:
        raise KafkaAdapterError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        # Replication: the broker's default.replication.factor (-1), so that a replicated
        # cluster (`riverstream services up --cluster`: 3, with min.insync.replicas 2)
        # replicates every topic and a single node keeps one copy.
        new = [NewTopic(n, p, -1) for n, p in topics.items() if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
        return [t.name for t in new]
    except KafkaError as exc:
        raise KafkaAdapterError(f"creating topics failed: {exc}") from exc
    finally:
        admin.close()


def partitions_for(bootstrap: str, topic: str, *, security: KafkaSecurity = PLAINTEXT) -> list[int]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, **security.librdkafka()})
    meta = admin.list_topics(topic, timeout=10)
    info = meta.topics.get(topic)
    if info is None or info.error is not None:
        raise KafkaAdapterError(f"topic {topic} not found: {info.error if info else 'missing'}")
    return sorted(info.partitions)


class EventProducer:
    """kafka-python producer with batching, compression and delivery accounting."""

    def __init__(
        self,
        bootstrap: str,
        *,
        compression: str | None = "gzip",
        linger_ms: int = 20,
        max_block_ms: int = 60_000,
        bootstrap_timeout_ms: int = 30_000,
        delivery_timeout_ms: int = 120_000,
        security: KafkaSecurity = PLAINTEXT,
    ):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                # Nothing acknowledged is lost (acks=all: on every in-sync replica) and nothing is
                # written twice by a retry (idempotence); retried through a leader election
                # (a broker's death) for up to delivery_timeout_ms.
                acks="all",
                enable_idempotence=True,
                delivery_timeout_ms=delivery_timeout_ms,
                linger_ms=linger_ms,
                batch_size=512 * 1024,
                compression_type=compression,
                max_in_flight_requests_per_connection=1,
                max_block_ms=max_block_ms,
                bootstrap_timeout_ms=bootstrap_timeout_ms,
                **security.kafka_python(),
            )
        except KafkaError as exc:
            raise KafkaAdapterError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        self.sent = 0
        self.failed = 0
        self.errors: list[str] = []

    def _ok(self, _meta: Any) -> None:
        self.sent += 1

    def _fail(self, exc: BaseException) -> None:
        self.failed += 1
        if len(self.errors) < 20:
            self.errors.append(str(exc))

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        from kafka.errors import KafkaError

        try:
            future = self._producer.send(
                topic, key=key, value=value, partition=partition, headers=headers
            )
        except KafkaError as exc:
            raise KafkaAdapterError(f"send to {topic} failed: {exc}") from exc
        future.add_callback(self._ok).add_errback(self._fail)

    def send_future(self, topic: str, key: bytes | None, value: bytes) -> Any:
        """Send one message; the returned future's ``get(timeout)`` waits for the broker's
        acknowledgement (acks=all) and raises if it does not come."""
        from kafka.errors import KafkaError

        try:
            future = self._producer.send(topic, key=key, value=value)
        except KafkaError as exc:
            raise KafkaAdapterError(f"send to {topic} failed: {exc}") from exc
        future.add_callback(self._ok).add_errback(self._fail)
        return future

    def flush(self, timeout: float | None = 60.0) -> None:
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise KafkaAdapterError(f"flush failed: {exc}") from exc

    def close(self) -> None:
        self._producer.close(timeout=10)


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
                "error_cb": self._on_error,
                **security.librdkafka(),
            }
        )
        self._assigned: list[tuple[str, int]] = []
        self._ask_after = 0.0
        self._asked: dict[tuple[str, int], tuple[float, int]] = {}
        self._broker_lost = False
        self._broker_checked = 0.0

    def _on_error(self, error: Any) -> None:
        """librdkafka's error callback (served by poll): a lost broker connection means the
        cached log ends may be stale, so no partition counts as caught up until it is back."""
        from confluent_kafka import KafkaError

        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._broker_lost = True

    def assign(self, positions: dict[tuple[str, int], int]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        parts = [
            TopicPartition(t, p, off if off >= 0 else OFFSET_BEGINNING)
            for (t, p), off in positions.items()
        ]
        # Knowing the partition leaders before assigning saves librdkafka's offset-query
        # retry timer: the first records then come in ≈ 50 ms instead of ≈ 550 ms (measured).
        for topic in {t for t, _ in positions}:
            self._consumer.list_topics(topic, timeout=10)
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
                raise KafkaAdapterError(f"consume failed: {err}")
            t, p = m.topic(), m.partition()
            if p != partition or t != topic:
                topic, partition, offsets, values = t, p, [], []
                runs.append(RecordRun(t, p, offsets, values, _message_at(messages, index)))
            offsets.append(m.offset())
            values.append(m.value())
        return runs

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
            log.warning("Kafka broker reachable again")
        for topic, partition in self._assigned:
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


def open_source(
    bootstrap: str, group_id: str, *, security: KafkaSecurity = PLAINTEXT
) -> RecordSource:
    """The learner's source: confluent-kafka (measured against kafka-python and faust in
    ``bench/consume_path.py``; the kafka-python source lives there, for that benchmark)."""
    return ConfluentSource(bootstrap, group_id, security=security)


def read_all(
    bootstrap: str,
    topics: Sequence[str],
    timeout: float = 10.0,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> list[Record]:
    """Every record currently in ``topics`` (for tests and tools), in partition order."""
    import time

    source = ConfluentSource(bootstrap, "rs-read-all", security=security)
    parts = {t: partitions_for(bootstrap, t, security=security) for t in topics}
    positions = {(t, p): 0 for t in topics for p in parts[t]}
    source.assign(positions)
    out: list[Record] = []
    seen = dict.fromkeys(positions, 0)
    deadline = time.monotonic() + timeout
    try:
        ends = source.end_offsets()  # a partition not fetched yet has no known end
        while any(seen[tp] < ends.get(tp, 1) for tp in positions) and time.monotonic() < deadline:
            for run in source.poll(10_000, 0.2):
                out.extend(run.records())
                seen[(run.topic, run.partition)] = run.offsets[-1] + 1
            ends = source.end_offsets()
    finally:
        source.close()
    return out


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


def group_by_partition(records: Iterable[Record]) -> dict[tuple[str, int], list[Record]]:
    grouped: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        grouped.setdefault((r.topic, r.partition), []).append(r)
    return grouped

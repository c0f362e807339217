"""The one small adapter over the Kafka clients: administration, producing, reading.

kafka-python is the chosen client for administration and producing (`EventProducer`). The
learner consumes with confluent-kafka (librdkafka): `stream.kafka.consumer.ConfluentSource`,
chosen by `bench/consume_path.py`, returns the runs of `stream.kafka.records`; both modules'
names are importable from here too. Every client exception is wrapped in `KafkaAdapterError`
where it enters (Kafka refusing the login in `KafkaAuthError`, `stream.kafka.auth`); connection
security (`stream.kafka.security`) is added where each client's configuration is built.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from schemas.errors import KafkaAdapterError
from stream.kafka.auth import (
    KafkaAccessError,
    LoginQuestions,
    LoginWatch,
    answer,
    connect_error,
    denied,
    write_denial,
)
from stream.kafka.consumer import ConfluentSource
from stream.kafka.records import Record, RecordRun, RecordSource, group_by_partition
from stream.kafka.security import PLAINTEXT, KafkaSecurity

__all__ = [  # the records and the consumer live in their own modules; imported from here too
    "ConfluentSource", "EventProducer", "Record", "RecordRun", "RecordSource", "broker_ready",
    "create_topics", "group_by_partition", "open_source", "partitions_for", "read_all",
    "topic_operations",
]  # fmt: skip


def broker_ready(
    bootstrap: str, timeout: float = 2.0, *, security: KafkaSecurity = PLAINTEXT
) -> bool:
    """True when the broker answers a metadata request (else librdkafka's ``KafkaException``);
    `KafkaAuthError` as soon as it refuses the login."""
    from confluent_kafka.admin import AdminClient

    watch = LoginWatch()
    admin = AdminClient(_asking(bootstrap, security), error_cb=watch)
    metadata = answer(admin, watch, timeout, bootstrap, security)
    return bool(metadata.brokers)


def _asking(bootstrap: str, security: KafkaSecurity) -> dict[str, str | int | float | bool]:
    """The configuration of a librdkafka client that only asks (`broker_ready`,
    `partitions_for`): ``log_level`` 0, so that its own lines (``%3|…|FAIL|…`` at each failed
    try) stay off stderr, where the error raised says what failed (`_Bootstrapping`); its
    ``error_cb`` still hears every error."""
    return {"bootstrap.servers": bootstrap, "log_level": 0, **security.librdkafka()}


class _Bootstrapping(logging.Handler):
    """kafka-python's lines (``kafka.*``) held back while `create_topics`'s client bootstraps,
    which every process does first: each refused try of the login, each try at a broker that is
    away, was an ERROR line of kafka-python's, dozens of them on stderr above the one error
    raised that says what failed and which settings to fix (`connect_error`). They are kept
    instead: the only place kafka-python says *why* (a certificate refused, a name not
    resolved), added to that error (`why`). Its lines once connected are left as they are.
    Concurrent holds share one: the logger is given back when the last ends."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._hold = threading.Lock()
        self._holds = 0
        self._saved = (logging.NOTSET, True)
        self.said: list[str] = []  # distinct, in order, at most `_KEPT`

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.said and len(self.said) < _KEPT:
            self.said.append(message)

    def why(self, failed: BaseException) -> str | None:
        """The last line kept that tells a failure other than ``failed`` itself (logged again),
        as a connection's (``Connection failed: … CERTIFICATE_VERIFY_FAILED …``); else None."""
        known = str(failed)
        told = (m for m in reversed(self.said) if known not in m and "failed" in m.lower())
        return next(told, None)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        logger = logging.getLogger("kafka")
        with self._hold:
            if self._holds == 0:
                self._saved = (logger.level, logger.propagate)
                self.said = []
                logger.setLevel(logging.WARNING)
                logger.propagate = False
                logger.addHandler(self)
            self._holds += 1
        try:
            yield
        finally:
            with self._hold:
                self._holds -= 1
                if self._holds == 0:
                    logger.removeHandler(self)
                    logger.setLevel(self._saved[0])
                    logger.propagate = self._saved[1]


_KEPT = 50
_bootstrapping = _Bootstrapping()


def create_topics(
    bootstrap: str, topics: dict[str, int], *, security: KafkaSecurity = PLAINTEXT
) -> list[str]:
    """Create missing topics (name → partitions); returns those created. Idempotent. Every
    process that uses Kafka calls it first: `KafkaAuthError` when Kafka refuses its login,
    `KafkaAccessError` when its ACLs deny creating them (a topic the user may not describe
    counts as missing: creating it is denied too)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    def bootstrapped() -> KafkaAdminClient:
        with _bootstrapping():
            return KafkaAdminClient(
                bootstrap_servers=bootstrap, client_id="rs-admin", **security.kafka_python()
            )

    try:  # a refused login is told as soon as the brokers say it, not at the bootstrap's end
        admin = LoginQuestions(bootstrap, security).connect_or_stop(
            bootstrapped, KafkaAdminClient.close
        )
    except KafkaError as exc:
        error = connect_error(exc, bootstrap, security)
        why = _bootstrapping.why(exc)
        if type(error) is KafkaAdapterError and why is not None:
            error = KafkaAdapterError(f"{error} (kafka-python's last words: {why})")
        raise error from exc
    new: list[NewTopic] = []
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
        if denied(exc) is not None:
            names = ", ".join(t.name for t in new) if new else ", ".join(topics)
            raise KafkaAccessError(bootstrap, "create", f"topics {names}", security) from exc
        raise KafkaAdapterError(f"creating topics failed: {exc}") from exc
    finally:
        admin.close()


def partitions_for(bootstrap: str, topic: str, *, security: KafkaSecurity = PLAINTEXT) -> list[int]:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    watch = LoginWatch()
    admin = AdminClient(_asking(bootstrap, security), error_cb=watch)
    try:
        meta = answer(admin, watch, 10, bootstrap, security, topic)
    except KafkaException as exc:
        raise KafkaAdapterError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    info = meta.topics.get(topic)
    if info is not None and denied(info.error) is not None:
        raise KafkaAccessError(bootstrap, "describe", f"topic {topic}", security)
    if info is None or info.error is not None:
        raise KafkaAdapterError(f"topic {topic} not found: {info.error if info else 'missing'}")
    return sorted(info.partitions)


OPERATIONS_SECONDS = 3.0
"""How long `topic_operations` waits for the brokers' answer: a process's start asks it, and a
slow broker must not hold that start for long."""


def topic_operations(
    bootstrap: str,
    topic: str,
    *,
    security: KafkaSecurity = PLAINTEXT,
    timeout: float = OPERATIONS_SECONDS,
) -> frozenset[str] | None:
    """What Kafka's ACLs allow this process's user on ``topic``, as the brokers say (KIP-430's
    authorized operations, by confluent-kafka's ``AclOperation`` names: ``WRITE``, ...); None
    when they do not say. One describe within ``timeout`` seconds: `KafkaAccessError` when the
    ACLs deny describing the topic, else `KafkaAdapterError` when no answer came."""
    from confluent_kafka import KafkaException, TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(_asking(bootstrap, security))
    try:
        futures = admin.describe_topics(
            TopicCollection([topic]), include_authorized_operations=True, request_timeout=timeout
        )
        description = futures[topic].result(timeout=timeout + 1)  # the request's own, else ours
    except KafkaException as exc:
        if denied(exc) is not None:
            raise KafkaAccessError(bootstrap, "describe", f"topic {topic}", security) from exc
        raise KafkaAdapterError(f"describing topic {topic} failed: {exc}") from exc
    except TimeoutError as exc:
        raise KafkaAdapterError(f"describing topic {topic}: no answer in {timeout} s") from exc
    operations = description.authorized_operations
    return None if operations is None else frozenset(op.name for op in operations)


FLUSH_MARGIN_SECONDS = 5.0
"""How much longer than the delivery timeout `EventProducer.flush` waits by default: by then
every record sent before it was acknowledged or failed for good (expired)."""
CLOSE_TIMEOUT_SECONDS = 10.0
"""How long `EventProducer.close` waits, by default, for what was sent to be acknowledged."""
CLOSE_GRACE_SECONDS = 2.0
"""How long `EventProducer.close` waits, past its timeout, for the producer's I/O thread to end
once it gave up on what was pending (the thread fails those records, then closes its sockets)."""


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
        _keep_refreshing_metadata(self._producer)
        self.flush_timeout = delivery_timeout_ms / 1000 + FLUSH_MARGIN_SECONDS
        """`flush`'s default: the delivery timeout plus `FLUSH_MARGIN_SECONDS`."""
        self.sent = 0
        self.failed = 0
        self.errors: list[str] = []
        self.denied: KafkaAccessError | None = None
        """Kafka's ACLs denied a record's write (the first such), as its error says."""
        self._bootstrap, self._security = bootstrap, security
        self._pending = 0  # handed to the producer, neither acknowledged nor failed yet
        self._settled = threading.Condition()  # notified as each of them is

    def _track(self, future: Any) -> Any:
        """Count ``future``'s record as pending until its callback or errback (which may run at
        once, in this thread, when it is done already)."""
        with self._settled:
            self._pending += 1
        return future.add_callback(self._ok).add_errback(self._fail)

    def _ok(self, _meta: Any) -> None:
        with self._settled:
            self.sent += 1
            self._pending -= 1
            self._settled.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._settled:
            self.failed += 1
            self._pending -= 1
            if len(self.errors) < 20:
                self.errors.append(str(exc))
            if self.denied is None:  # kafka-python's denial names the topic (or a set of them)
                topic = exc.args[0] if exc.args else "?"
                if isinstance(topic, set | frozenset):
                    topic = ", ".join(sorted(topic))
                self.denied = write_denial(exc, topic, self._bootstrap, self._security)
            self._settled.notify_all()

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
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
        self._track(future)

    def send_future(self, topic: str, key: bytes | None, value: bytes) -> Any:
        """Send one message; the returned future's ``get(timeout)`` waits for the broker's
        acknowledgement (acks=all) and raises if it does not come."""
        from kafka.errors import KafkaError

        try:
            future = self._producer.send(topic, key=key, value=value)
        except KafkaError as exc:
            raise KafkaAdapterError(f"send to {topic} failed: {exc}") from exc
        return self._track(future)

    def knows(self, topic: str) -> bool:
        """Whether a send to ``topic`` goes without waiting: the producer knows its partitions
        (else a send waits for the broker's metadata, up to ``max_block_ms``)."""
        cluster = getattr(self._producer, "_metadata", None)
        partitions = getattr(cluster, "partitions_for_topic", None)
        return partitions is not None and partitions(topic) is not None

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged or failed for good (counted in
        ``sent`` and ``failed``); `KafkaAdapterError` if a record is still pending after
        ``timeout`` seconds (kafka-python waits that long for each pending batch in turn).
        None: `flush_timeout`, past the delivery timeout, so that a flush never gives up on
        records the producer still retries (through a broker's death, a leader election)."""
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=self.flush_timeout if timeout is None else timeout)
        except KafkaError as exc:
            raise KafkaAdapterError(f"flush failed: {exc}") from exc

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> int:
        """Close within ``timeout`` seconds (and twice `CLOSE_GRACE_SECONDS` more at most),
        the producer's I/O thread ended; returns how many records it gave up on: those still
        neither acknowledged nor failed at the deadline (the broker slow or away), each failed
        (counted in ``failed``, its future's errback told) before this returns. Raises no Kafka
        error: it is called as a process stops.

        kafka-python's own close cannot give up: its flush raises when a record is pending
        after the timeout (even 0), and nothing is closed: its I/O thread would retry the
        records for their delivery timeout, no one told. So that thread is closed by force
        (what kafka-python's close does once its flush succeeded but the thread outlasted the
        timeout), which fails what it holds; then nothing is left for the flush."""
        from kafka.errors import KafkaError

        with self._settled:
            self._settled.wait_for(lambda: self._pending == 0, timeout)
            given_up = self._pending
        if not given_up:  # its flush has nothing to wait for: it sends what it holds, closes
            with contextlib.suppress(KafkaError):
                self._producer.close(timeout=CLOSE_GRACE_SECONDS)
        sender = getattr(self._producer, "_sender", None)  # kafka-python's I/O thread
        if sender is not None and sender.is_alive():
            with self._settled:
                given_up = self._pending  # what the force fails
            sender.force_close()
            sender.join(CLOSE_GRACE_SECONDS)
        with contextlib.suppress(KafkaError):  # closed already, or with nothing left to flush
            self._producer.close(timeout=0)
        return given_up


def _keep_refreshing_metadata(producer: Any) -> None:
    """Keep kafka-python's metadata refresh loop alive through a broker's death.

    kafka-python (3.0.12, the newest) refreshes metadata in one loop that retries a
    ``KafkaError`` but ends on any other exception. A broker killed while a metadata request
    to it is under way can fail that request with a bare ``ConnectionResetError``: the loop
    ends for the producer's life, the leaders it knows never change, and the records of the
    partitions that moved off the dead broker are retried against it until they expire (a
    flush timed out so in CI, in ``test_netns``). Such errors become ``KafkaConnectionError``
    here, which the loop retries (after ``retry_backoff_ms``) on another broker."""
    from kafka.errors import KafkaConnectionError, KafkaError

    cluster = getattr(producer, "_metadata", None)
    refresh = getattr(cluster, "_do_refresh_metadata", None)
    if refresh is None:  # another kafka-python's layout: nothing to guard
        return

    async def refresh_or_retry(node_id: Any = None) -> None:
        try:
            await refresh(node_id)
        except KafkaError:
            raise
        except Exception as exc:
            raise KafkaConnectionError(f"metadata refresh: {exc!r}") from exc

    cluster._do_refresh_metadata = refresh_or_retry  # type: ignore[union-attr]


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


def electing(error: Exception) -> bool:
    """Whether ``error`` (a `confluent_kafka.KafkaException`) says that a partition has no
    leader yet, or one that does not know itself so yet: a topic just created, a broker
    restarting; asked again, the partition answers.

    >>> from confluent_kafka import KafkaError, KafkaException
    >>> electing(KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)))
    True
    >>> electing(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    False
    """
    from confluent_kafka import KafkaError

    kafka_error = error.args[0] if error.args else None
    if not isinstance(kafka_error, KafkaError):
        return False
    return kafka_error.code() in (
        KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    )  # fmt: skip

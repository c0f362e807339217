"""The asynchronous prediction worker: requests from Kafka, answers to Kafka.

`PredictWorker` is a member of a Kafka consumer group (``RIVERSTREAM_PREDICT_GROUP``) on the
request topic: start more workers, on any host, and the group shares the partitions among them;
when one stops or dies, its partitions move to the others. Each worker follows the promoted
model versions live with a `SnapshotFollower` and the promoted graph versions with a
`GraphFollower`, like every API process: a request's target may name a model or a graph
(`stream.predict.graph_target`).

For each request (``{"id", "target", "features"}``, key = id) it produces one answer (see
`schemas.predictions.PredictionAnswer`) to the prediction topic, with the same key and the
request's ``x-`` headers, or, when the request cannot be answered, a dead letter (the original
bytes, the reason in ``rs.reason`` / ``rs.error``, the ``x-`` headers too). A bad request never
stops the worker: nor does a valid one whose answer, with its key and ``x-`` headers, would pass
what the producer sends (``message.max.bytes``): measured before it is sent, that answer is a
dead letter ``answer_too_large`` (cut down to fit, `stream.kafka.deadletter.fitted`), where
the producer would have refused it and the worker stopped, to read the request again at every
start. A worker joins the group only once its followers have read Redis: before,
it knows no model, and every request would be an ``unknown_target``. While it waits it says
why (which follower has not read Redis, and its error) at once and every ``report_every``
seconds: a log warning and a status line with ``waiting``. A worker whose targets are all
models it serves does not wait for the graphs' follower (models answer first).

Redis refusing the worker's credentials (`stream.store.snapshots.RedisAuthError`, naming
``RIVERSTREAM_REDIS_PASSWORD`` and ``RIVERSTREAM_REDIS_USERNAME``) before its followers have
read it is a configuration error, not an outage: the worker does not start (`build_worker`, or
`PredictWorker.run` while it waits: `riverstream predict-worker` exits non-zero), where it
waited for ever, saying why. A password changed under a running worker is ridden out: it answers
with the models it holds, its followers log the refusal as an error and read Redis again once it
accepts the credentials (`stream.store.following`).

Kafka refusing the worker's login (`stream.kafka.auth.KafkaAuthError`, naming
``RIVERSTREAM_KAFKA_SASL_USERNAME``, ``RIVERSTREAM_KAFKA_SASL_PASSWORD`` and
``RIVERSTREAM_KAFKA_SASL_MECHANISM``) stops it at start: its first word with Kafka is
`create_topics`, before its consumer and producer connect (`riverstream predict-worker` exits
2). Credentials that stop working under a running worker (refused at its next connection: Kafka
keeps those it authenticated) are said by its consumer's and producer's error callback as an
ERROR naming the settings, each minute while it lasts; requests wait in Kafka meanwhile, and
the worker says when Kafka accepts the credentials again.

Kafka's ACLs denying the worker its consumer group or the requests topic
(`stream.kafka.auth.KafkaAccessError`, naming ``RIVERSTREAM_KAFKA_SASL_USERNAME``, the operation
and the resource) stop it before it has read (`riverstream predict-worker` exits 2; it sat
without a request, after one warning): read a request, or a fetch response without any
(`stream.kafka.consumer.fetched`). Later (an ACL removed under a running worker, even one whose
requests topic was quiet for hours: it exited 2), an ERROR says it each minute while requests
wait in Kafka. A write they deny (the predictions or the dead-letter topic) fails the batch's
deliveries: the batch is not committed and is answered again (each second, counted in
``riverstream_predict_batch_retries_total``), nothing lost, and an ERROR naming the topic says
it each minute (it said "not stored" and Kafka's error code each second).

**Delivery: at least once, answers deduplicable by id.** The loop is

1. consume a batch of requests (what is queued, waiting only when nothing is);
2. answer each, producing answers and dead letters (``acks=all``, idempotent producer);
3. flush: wait until the broker has acknowledged every message of the batch;
4. only then commit the batch's offsets to the group (asynchronously; synchronously when a
   partition is revoked and when the worker stops).

A worker asked to stop (SIGTERM) finishes its batch: it waits for the batch's answers at most
``RIVERSTREAM_PREDICT_STOP_SECONDS`` (10 s) longer; when the broker is away that long, the
batch is not committed and the worker leaves: the group answers those requests again.

A worker killed between 2 and 4 has answered requests whose offsets are not committed: the
worker that takes over its partitions answers them again. Nothing is lost; some ids may be
answered twice. A duplicate is harmless to a client that keeps the first answer per id: the
prediction is a pure function of the features and the model version, and the answer names the
version, so two answers with the same id and versions are equal but for ``answered_at``. (Two
answers for one id can differ only when a new version was promoted between them, and then
``versions`` says so.) If the broker refuses a batch's messages for good (after the producer's
own retries), the batch is not committed: the worker seeks back and answers it again.

Exactly-once with Kafka transactions was not chosen: it would hide duplicates only from
``read_committed`` consumers, costs a transaction commit per batch, and a client must still
handle the same id sent twice by itself; deduplication by id covers both.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from schemas.errors import ConfigError, SchemaError
from schemas.events import Limits
from schemas.settings import Settings
from stream.kafka.auth import (
    KafkaAccessError,
    KafkaAuthError,
    LoginWatch,
    RefusalLog,
    read_denial,
)
from stream.kafka.client import Record, create_topics
from stream.kafka.consumer import fetched
from stream.kafka.deadletter import DeadLetters, message_bytes
from stream.kafka.security import kafka_security
from stream.predict.answer import Answerer
from stream.predict.graph_target import Shadows
from stream.predict.metrics import FollowerLog, WorkerMetrics
from stream.predict.producer import AnswerProducer, passed_headers
from stream.store.follower import SnapshotFollower
from stream.store.following import Follower, stop_if_refused
from stream.store.graph_follower import GraphFollower, ServedModels
from stream.store.graphs import GraphStore
from stream.store.snapshots import open_store

log = logging.getLogger(__name__)

LAG_EVERY_SECONDS = 1.0
_FLUSH_SLICE_SECONDS = 0.25  # how often a flush looks at a stop request while answers wait
_READY_POLL_SECONDS = 0.1  # how often a starting worker looks whether Redis was read
_LOGIN_RECHECK_SECONDS = 1.0  # how often Kafka is asked whether it accepts the login again
Report = Callable[[dict[str, Any]], None]


@dataclass
class WorkerStats:
    answered: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retried_batches: int = 0


class PredictWorker:
    """One consumer-group member answering requests; `run` until `stop`."""

    def __init__(
        self,
        settings: Settings,
        answerer: Answerer,
        *,
        batch: int = 10_000,
        session_timeout_ms: int = 10_000,
        metrics: WorkerMetrics | None = None,
        waiting: Callable[[], str | None] = lambda: None,
    ) -> None:
        bootstrap = settings.kafka_bootstrap_servers
        if not bootstrap:
            raise ConfigError(
                "no Kafka address: set RIVERSTREAM_KAFKA_BOOTSTRAP_SERVERS or run "
                "`riverstream services up`"
            )
        security = kafka_security(settings)
        create_topics(bootstrap, settings.topics(), security=security)  # refused: stops here
        self.settings = settings
        self.answerer = answerer
        self.batch = batch
        self._bootstrap, self._security = bootstrap, security
        self._login = LoginWatch(self._on_kafka_error)  # the consumer's and the producer's
        self._refusals = RefusalLog(log, "requests wait in Kafka until it accepts them")
        self._login_checked = 0.0
        self._read_denials = RefusalLog(log, "requests wait in Kafka until they do")
        self._write_denials = RefusalLog(
            log, "the batch is answered again until they do, not committed (nothing is lost)"
        )
        self._read = False  # a request or a fetch response came: a denial is no longer a start's
        self.producer = AnswerProducer(bootstrap, security=security, error_cb=self._login)
        self.dead_letters = DeadLetters(self.producer, settings.topic_dlq)
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": settings.predict_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(100, session_timeout_ms // 5),
                "error_cb": self._login,
                **security.librdkafka(),
            }
        )
        self.stats = WorkerStats()
        self.metrics = metrics
        self.waiting = waiting
        """Why the worker cannot tell an unknown target from one it has not looked up yet
        (`build_worker`: which follower's look at Redis has not succeeded, and why); None when
        it can. It joins the group only then."""
        self._next_lag = 0.0
        self._answered: dict[tuple[str, int], int] = {}  # acknowledged, next offset to commit
        self._stop = threading.Event()

    def stop(self) -> None:
        """Finish the current batch, commit it, leave the group (callable from a signal)."""
        self._stop.set()

    # -- the loop ----------------------------------------------------------------------------
    def run(self, *, report: Report | None = None, report_every: float = 10.0) -> WorkerStats:
        consumer = self.consumer
        try:
            self._wait_for_redis(report, report_every)
        except BaseException:  # Redis refuses the credentials (`waiting_for`): never joined
            self._leave_group()
            raise
        consumer.subscribe(
            [self.settings.topic_requests], on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        next_report = time.monotonic() + report_every
        if self.metrics is not None:
            self.metrics.up.set(1)
        try:
            while not self._stop.is_set():
                messages = consumer.consume(self.batch, 0) or consumer.consume(1, 0.1)
                if messages and len(messages) == 1:  # woken by one: take what came with it
                    messages += consumer.consume(self.batch - 1, 0)
                if messages:
                    self._answer_batch(messages)
                if not self._read:  # until one came: a poll with requests never asks
                    assigned = [(tp.topic, tp.partition) for tp in consumer.assignment()]
                    self._read = fetched(consumer, assigned)
                if self._refusals.refusing:
                    self._check_login()
                if self.metrics is not None and time.monotonic() >= self._next_lag:
                    self._measure_lag(self.metrics)
                if report is not None and time.monotonic() >= next_report:
                    report({**asdict(self.stats), "assigned": len(consumer.assignment())})
                    next_report = time.monotonic() + report_every
        finally:
            self._close()
            if self.metrics is not None:
                self.metrics.up.set(0)
        if report is not None:
            report({**asdict(self.stats), "assigned": 0, "stopped": True})
        return self.stats

    def _wait_for_redis(self, report: Report | None, report_every: float) -> None:
        """Wait until `waiting` has nothing to say (else every request would be an unknown
        target, dead-lettered) or the worker is stopped, saying why at once and every
        ``report_every`` seconds: a log warning, and a status line with ``waiting``. What
        `waiting` raises (`waiting_for`: Redis refuses the credentials) stops the wait."""
        reason = self.waiting()
        if reason is None:
            return
        next_report = 0.0
        while reason is not None:
            now = time.monotonic()
            if now >= next_report:
                log.warning("waiting for a first look at Redis before taking requests: %s", reason)
                if report is not None:
                    report({**asdict(self.stats), "assigned": 0, "waiting": reason})
                next_report = now + report_every
            if self._stop.wait(_READY_POLL_SECONDS):
                return
            reason = self.waiting()
        log.info("Redis read: joining the group")

    def _on_kafka_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (served by the consumer's ``consume`` and the producer's
        ``flush``, after `LoginWatch`): Kafka refusing the login is said (`RefusalLog`)."""
        refusal = self._login.refusal
        if refusal is not None and error.code() == KafkaError._AUTHENTICATION:
            self._refusals.refused(KafkaAuthError(self._bootstrap, refusal, self._security))

    def _check_login(self) -> None:
        """While Kafka refuses the login, ask it for the requests topic at most every
        `_LOGIN_RECHECK_SECONDS` (librdkafka tells failures, not their end): once answered, it
        accepts the credentials again, which is said."""
        now = time.monotonic()
        if now < self._login_checked + _LOGIN_RECHECK_SECONDS:
            return
        self._login_checked = now
        try:
            self.consumer.list_topics(self.settings.topic_requests, timeout=_LOGIN_RECHECK_SECONDS)
        except KafkaException:
            return
        self._login.refusal = None
        self._refusals.accepted()

    def _answer_batch(self, messages: list[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], int] = {}
        answer, send = self.answerer.answer, self.producer.send
        max_bytes = self.producer.max_bytes
        topic = self.settings.topic_predictions
        targets: dict[str, int] = {}  # answers by target
        dead: dict[str, int] = {}  # dead letters by reason
        requested: list[float] = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self._consume_failed(m, err)
                continue
            self._read = True
            # A message without an error has its topic, partition and offset.
            tp = cast("tuple[str, int]", (m.topic(), m.partition()))
            offset = cast(int, m.offset())
            first.setdefault(tp, offset)
            last[tp] = offset + 1
            raw = m.value() or b""
            raw_headers = m.headers()
            passed = passed_headers(raw_headers) if raw_headers else None
            requested_at = m.timestamp()[1] / 1000
            try:
                request_id, target, body = answer(raw, requested_at, time.time())
            except SchemaError as exc:
                self._dead_letter(m, tp, offset, exc, passed or ())
                dead[exc.reason] = dead.get(exc.reason, 0) + 1
                continue
            key = m.key()
            if key is None:
                key = request_id.encode()
            size = message_bytes(key, body, passed or ())
            if size > max_bytes:  # the producer would refuse it, and the worker stop on it
                too_large = SchemaError(
                    "answer_too_large", None,
                    f"the answer, with the request's key and x- headers, takes {size} bytes, "
                    f"over the {max_bytes} an answer may take (message.max.bytes)",
                )  # fmt: skip
                self._dead_letter(m, tp, offset, too_large, passed or ())
                dead[too_large.reason] = dead.get(too_large.reason, 0) + 1
                continue
            send(topic, key, body, None, passed)
            self.stats.answered += 1
            targets[target] = targets.get(target, 0) + 1
            requested.append(requested_at)
        if not self._acknowledged():
            log.warning(
                "stopping with answers the broker has not acknowledged: the %d requests of "
                "this batch are not committed, the group answers them again",
                len(messages),
            )
            return
        denial = self.producer.denied  # before `take_failures` forgets it
        failed = self.producer.take_failures()
        if failed:
            self._retry(first, failed, denial)
            return
        self.stats.batches += 1
        if self.metrics is not None:
            acknowledged = time.time()
            self.metrics.requests.inc(len(requested) + sum(dead.values()))
            self.metrics.answered(targets, [acknowledged - t for t in requested])
            for reason, n in dead.items():
                self.metrics.dead_letters.labels(reason=reason).inc(n)
        assigned = [(tp.topic, tp.partition) for tp in self.consumer.assignment()]
        last = still_assigned(last, assigned)
        self._answered.update(last)
        offsets = [TopicPartition(t, p, o) for (t, p), o in last.items()]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:  # not committed: answered again later, never lost
                log.warning("commit failed (these requests may be answered twice): %s", exc)

    def _consume_failed(self, m: Message, err: KafkaError) -> None:
        """A consume error: Kafka's ACLs denying the group or the requests topic raise before
        the worker read (a request or a fetch response: a start's, exit 2), and are said each
        minute after; others warn."""
        group = self.settings.predict_group
        denial = read_denial(err, m.topic(), group, self._bootstrap, self._security)
        if denial is None:
            log.warning("consume: %s", err)
        elif not self._read:
            raise denial
        else:
            self._read_denials.refused(denial)

    def _acknowledged(self) -> bool:
        """Wait until the broker has acknowledged (or refused for good) every message sent;
        False when the worker is stopping and messages were still waiting
        ``predict_stop_seconds`` after the stop (the broker is away)."""
        deadline: float | None = None
        while self.producer.unacknowledged(_FLUSH_SLICE_SECONDS):
            if self._stop.is_set():
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.settings.predict_stop_seconds
                if now >= deadline:
                    return False
        return True

    def _dead_letter(
        self,
        m: Message,
        tp: tuple[str, int],
        offset: int,
        error: SchemaError,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        record = Record(tp[0], tp[1], offset, m.key(), m.value() or b"", m.timestamp()[1])
        self.dead_letters.send(record, error, headers)
        self.stats.dead_lettered += 1

    def _retry(
        self, first: dict[tuple[str, int], int], failed: int, denial: KafkaAccessError | None
    ) -> None:
        """Some messages of the batch were refused for good: answer the batch again; Kafka's
        ACLs denying a write (``denial``) is said as such, each minute."""
        if denial is not None:  # said each minute, not each retry
            self._write_denials.refused(denial)
        else:
            log.error(
                "%d answers or dead letters were not stored (%s); answering the batch again",
                failed,
                "; ".join(list(self.producer.errors)[-3:]),
            )
        self.stats.retried_batches += 1
        if self.metrics is not None:
            self.metrics.retries.inc()
        self.producer.recheck()  # a topic refused at once: a grant since is seen
        for (topic, partition), offset in first.items():
            with contextlib.suppress(KafkaException):  # revoked meanwhile: its owner answers
                self.consumer.seek(TopicPartition(topic, partition, offset))
        self._stop.wait(1.0)  # back off before asking the broker again

    def _measure_lag(self, metrics: WorkerMetrics) -> None:
        """Requests behind the log end of each assigned partition (the client's cached log
        ends: no request to the broker), at most once a second."""
        self._next_lag = time.monotonic() + LAG_EVERY_SECONDS
        lags: dict[tuple[str, int], int] = {}
        try:
            positions = self.consumer.position(self.consumer.assignment())
            for tp in positions:
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:  # nothing fetched yet
                    continue
                at = tp.offset if tp.offset >= 0 else low
                lags[(tp.topic, tp.partition)] = max(0, high - at)
        except KafkaException as exc:  # the broker is away: keep the last figures
            log.debug("lag not measured: %s", exc)
            return
        metrics.set_lag(lags)

    # -- group membership --------------------------------------------------------------------
    def _commit_now(self, partitions: Collection[tuple[str, int]]) -> None:
        offsets = [TopicPartition(t, p, self._answered[(t, p)]) for t, p in partitions
                   if (t, p) in self._answered]  # fmt: skip
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:  # the next owner answers them again
                log.warning("commit on revoke failed: %s", exc)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        self._commit_now(revoked)
        for tp in revoked:
            self._answered.pop(tp, None)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:  # no longer ours: committing would be refused
            self._answered.pop((tp.topic, tp.partition), None)

    def _close(self) -> None:
        try:
            if not self.producer.unacknowledged(0):  # else the broker is away: commit nothing
                self._commit_now(list(self._answered))
        finally:
            self._leave_group()

    def _leave_group(self) -> None:
        """Close the consumer, which leaves the group (its partitions move at once), waiting
        at most ``predict_stop_seconds``: with the broker away librdkafka's close can wait
        indefinitely (confluent-kafka-python#1667); the group then moves the partitions after
        the session timeout."""
        closing = threading.Thread(target=self.consumer.close, name="consumer-close", daemon=True)
        closing.start()
        closing.join(max(self.settings.predict_stop_seconds, _FLUSH_SLICE_SECONDS))
        if closing.is_alive():
            log.warning("the consumer did not leave its group (the broker is away): exiting")


def still_assigned(
    offsets: Mapping[tuple[str, int], int], assigned: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The ``offsets`` (next to commit, by topic and partition) of the partitions still
    ``assigned``: a partition revoked while a batch was read (a rebalance runs inside
    ``consume``) is another member's now, so its offsets are neither kept nor committed.

    >>> still_assigned({("r", 0): 5, ("r", 1): 9}, [("r", 0), ("r", 2)])
    {('r', 0): 5}
    """
    mine = set(assigned)
    return {tp: offset for tp, offset in offsets.items() if tp in mine}


def waiting_for(
    follower: SnapshotFollower, graphs: GraphFollower, targets: Sequence[str] = ()
) -> str | None:
    """Why a worker answering for ``targets`` cannot tell an unknown target yet (None: it
    can): a follower whose look at Redis has not succeeded, and its error; when Redis refused
    its credentials, that `RedisAuthError` is raised: a configuration error that waiting does
    not mend. The graphs' follower does not matter once every target is a model served
    (models answer first)."""
    if not follower.synced:
        return _unsynced(follower)
    if graphs.synced or (targets and all(follower.get(t) is not None for t in targets)):
        return None
    return _unsynced(graphs)


def _unsynced(follower: Follower) -> str | None:
    refused = follower.credentials_refused
    if refused is not None:
        raise refused
    return follower.unsynced_reason()


def build_worker(
    settings: Settings,
    targets: Sequence[str] = (),
    *,
    session_timeout_ms: int = 10_000,
    metrics: WorkerMetrics | None = None,
    shadows: Shadows | None = None,
) -> tuple[PredictWorker, SnapshotFollower, GraphFollower]:
    """A worker answering for ``targets`` (empty: every model and graph), with its followers
    started and their first look at Redis done (or ``serve_start_wait_seconds`` spent waiting).
    ``metrics``: the followers report the versions served to it too; ``shadows``: where graph
    answers' shadows run (None: not run).

    When a target names a graph at start, the worker follows every model (a graph's members
    change with its versions); otherwise only the target models."""
    store = open_store(settings)
    graphs = GraphFollower(
        GraphStore(store.client, store.keys.prefix), metrics or FollowerLog(),
        poll_seconds=settings.serve_poll_seconds,
    )  # fmt: skip
    graphs.start()
    graphs.first_sync.wait(settings.serve_start_wait_seconds)
    stop_if_refused(graphs)
    graph_targets = [t for t in targets if graphs.get(t) is not None]
    follower = SnapshotFollower(
        store, metrics or FollowerLog(), models=() if graph_targets else targets,
        poll_seconds=settings.serve_poll_seconds,
    )  # fmt: skip
    follower.start()
    deadline = time.monotonic() + settings.serve_start_wait_seconds
    follower.first_sync.wait(settings.serve_start_wait_seconds)
    stop_if_refused(follower, graphs)

    def missing() -> list[str]:
        absent = [t for t in targets if t not in graph_targets and follower.get(t) is None]
        for graph in graph_targets:
            served = graphs.get(graph)
            if served is not None:
                absent += [m for m in served.spec.model_names() if follower.get(m) is None]
        return absent

    while targets and missing():
        if time.monotonic() >= deadline:
            log.warning("starting without %s: not loaded yet", ", ".join(missing()))
            break
        time.sleep(0.05)  # polling the follower's state with a deadline
    metric = settings.serve_graph_metric or None
    weights: dict[tuple[str, int], float | None] = {}  # by_metric, per model version

    def graph_models() -> ServedModels:  # one view of the served models per request
        return ServedModels(follower.served, metric, weights)

    answerer = Answerer(
        follower.get, is_known=follower.is_known, targets=targets,
        limits=Limits.from_settings(settings), graphs=graphs.get, graph_models=graph_models,
        shadows=shadows,
    )  # fmt: skip
    worker = PredictWorker(
        settings, answerer, session_timeout_ms=session_timeout_ms, metrics=metrics,
        waiting=lambda: waiting_for(follower, graphs, targets),
    )  # fmt: skip
    return worker, follower, graphs

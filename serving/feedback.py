"""The closed loop over HTTP: predictions that learn from their own outcomes.

An application that calls ``/predict`` can tell riverstream the outcome, and the model learns
from exactly the features it served with (Chantilly's ``/predict`` + ``/learn`` by id, without
its lost updates: the events go through Kafka and the exactly-once learner).

- ``POST /v1/models/{name}/predict`` with an ``"id"`` (and an optional ``"time"``, default the
  server's clock in seconds): the answer is computed as usual, then the feature event *as
  served* — id, time, features and the answer (`schemas.events.Served`: model, version,
  prediction, probabilities) — goes to the features topic, and the prediction record (the
  asynchronous answers' format) to the predictions topic. The learner learns from the feature
  event when its label comes, and scores the served answer against it per model and version
  (``riverstream_served_metric``), beside its progressive metric.
- ``POST /v1/graphs/{name}/predict`` with an ``"id"`` and ``"log": true`` (and an optional
  ``"time"``): the graph's answer is logged the same way, with what each of its shadow branches
  answered, so that the learner scores the served answer and each shadow against the label
  and compares them (`serving.feedback_graphs`). An id alone keeps its meaning for graphs
  (sticky splits, shadow sampling) and logs nothing. When shadows were selected for the
  request, its answer does not wait for them (see below).
- ``POST /v1/features`` (``{"id", "time"?, "features"}`` or ``{"events": [...]}``) and
  ``POST /v1/labels`` (``{"id", "time"?, "label"}`` or ``{"labels": [...]}``) publish events with
  the validation Kafka producers get (`schemas.events.EventCodec`).

**Nothing is acknowledged that is not stored**: the answer (200, or 202 for the ingest routes)
is sent only after the broker acknowledged every message (acks=all); when Kafka cannot be
reached the caller gets 503 naming the cause (with ``Retry-After``), and for a predict with an
id, no answer. The 503 says whether something may have been stored: once messages were handed
to the producer, some may have been acknowledged, and the producer retries the others after the
request gave up (for up to its delivery timeout). Sending them again is safe for the learner,
which keeps one feature event per id until its label (the last one read) and learns from it with
one label; a surplus event waits unmatched (`learners.join`). Each such 503 is counted in
``riverstream_closed_loop_publish_failures_total{reason}``. A message larger than the producer
sends (its ``max_request_size``, 1 MiB, the record's overhead included) is 413 naming the
limit, before anything is published.

**A logged graph answer with shadows is sent before its log**: the log must carry the shadows'
answers, and the shadows run off the event loop after the answer, as for any graph request
(`serving.shadows`); the log is then handed to the producer from the shadows' thread, without a
thread waiting for its acknowledgement (`Publisher.send_later`). What can refuse it is asked
before the answer, which gets the statuses above: features that cannot be an event (422), a
log over the producer's limit without the shadows' answers (413), Kafka not configured or an
outage remembered (503), including a log of this kind still unacknowledged after
`PUBLISH_TIMEOUT_SECONDS`. A failure after the answer (the producer cannot be created, or
gives up on a message after its delivery timeout, retrying meanwhile) cannot reach the client:
it is counted in ``riverstream_closed_loop_publish_failures_total{reason}``, logged as a
warning and remembered as an outage (Kafka's ACLs denying the write: see below). So for these
answers alone, a 200 means *admitted*, not *stored*; and their events may reach Kafka after a
label the client posts at once (the learner keeps that label as an orphan until its features
come, `learners.join`), or after the logs of later requests (a late event if the learner's
watermark has passed its time: counted, and still learned). A log whose shadows' answers make
it invalid or too large is written without them; when the shadows' backlog is full, the
shadows are dropped (counted) and the answer is logged without them, acknowledged before the
200 as above. Stopping the API writes the logs of the
answers sent (`serving.shadows.ShadowRunner.stop`, then the producer's close). Those whose
shadows were still queued are written without the shadows' answers (the learner still learns
from, and scores, the served answer; those shadows are not scored), so that the logs reach the
producer at once rather than after the backlog's shadows (1000 of 50 ms: 50 s, past a pod's
grace period). A log the broker has not acknowledged when the producer's close gives up (10 s)
is counted and logged as lost.

**Writing events is a way to poison a model**, so it is closed when ``RIVERSTREAM_INGEST_TOKEN``
is set: the ingest routes and predict-with-id then need ``Authorization: Bearer <token>`` (401
without it, 403 with another; compared in constant time). ``RIVERSTREAM_PREDICT_TOKEN`` closes
every predict route likewise (models, graphs and ``/v2`` infer). A logged predict (an id, or a
graph's ``"log": true``) writes events, so with the ingest token set it needs that token, which
authorizes its prediction as well; the predict token alone gets 403 there. A predict that logs
nothing takes the predict token.

An ingest request carries at most ``RIVERSTREAM_SERVE_MAX_INSTANCES`` events (the most instances
of a predict batch): more is 422 naming the limit, before anything is validated or published.
A body that is JSON but not an object (``5``, ``null``) is 422 too.

**Fail fast, bounded.** Publishing runs on threads of the `Publisher` (a producer's send may
wait for metadata, and an acknowledgement for `PUBLISH_TIMEOUT_SECONDS`, when the broker is
away): the event loop never blocks on Kafka. At most `MAX_PUBLISHES_IN_FLIGHT` publishes wait at
once, each on a thread of its own; a request beyond them gets 503 at once (reason ``busy``).
When the producer cannot be created or a publish is not acknowledged, the failure is remembered
for `OUTAGE_SECONDS`: meanwhile every request gets the same 503 at once (``outage``), nothing
sent, instead of waiting for its own attempt; then one request tries again while the others
still get that 503, and the first acknowledgement ends the outage. A log handed over after its
answer (`Publisher.send_later`, on the shadows' one thread) whose sends may wait (for the
producer's creation, or a topic's metadata: up to 3 s) is held to the same rule: meanwhile it
fails at once (counted as ``outage``), and past the window one tries again.

**Kafka refusing the login** (a wrong SASL password, an unknown user, a mechanism the brokers
do not enable) is no outage: the producer's creation fails with `stream.kafka.auth.KafkaAuthError`,
whose message names the settings (never the password), and the 503s say it, counted as ``auth``:
that attempt's and those refused at once while it is remembered. The log says it too, an ERROR
each minute while it lasts, and when Kafka accepts the credentials again. kafka-python tells a
refused login only as its bootstrap's timeout (3 s here): the brokers are asked beside a
creation still under way after `stream.kafka.auth.ASK_AFTER_SECONDS`, one question at a time
(`LoginQuestions`), so that no failure waits for their answer, an outage's included.

**Kafka's ACLs denying a write** (a topic the user may not write) are a configuration error
too, and no outage: the publish's 503 (reason ``auth``) names the user's setting and the topic
(`stream.kafka.auth.KafkaAccessError`) and says whether anything else was stored; it is not
remembered (what may be written goes on), and the log says it, an ERROR each minute. It was
``not_acknowledged``, "may have been stored", and every request refused for `OUTAGE_SECONDS`.
A log written after its answer (`Publisher.send_later`) that the ACLs deny is classified by the
same rule (`Publisher._denial`): counted as ``auth``, said by that ERROR (not a warning per
log), and not remembered (it was ``not_acknowledged``, and the next logs and requests refused).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.errors import KafkaAdapterError, SchemaError
from schemas.events import EventCodec, Limits
from schemas.settings import Settings
from serving.asgi import read_upto, receive_body, render, replay, replay_whole
from serving.feedback_graphs import graph_messages
from serving.inputs import json_type
from serving.telemetry import ServingMetrics, get_metrics
from stream.kafka.auth import KafkaAuthError, LoginQuestions, RefusalLog, write_denial
from stream.kafka.client import EventProducer
from stream.kafka.security import kafka_security

if TYPE_CHECKING:
    from learners.graph import ShadowResult

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 10.0
OUTAGE_SECONDS = 3.0
"""How long a failure to reach Kafka (the producer could not be created, or the broker did not
acknowledge a publish) is remembered: meanwhile every request gets the same 503 at once, nothing
sent; then one request tries again while the others still get that 503."""
MAX_PUBLISHES_IN_FLIGHT = 32
"""The most publishes waiting for the broker in one process, each on a thread of its own: a
request beyond them gets 503 at once (it would wait behind the others' timeouts)."""
_PREDICT_PREFIX, _PREDICT_SUFFIX = "/v1/models/", "/predict"
_GRAPH_PREFIX = "/v1/graphs/"
_INGEST = {"/v1/features": ("features", "events"), "/v1/labels": ("labels", "labels")}
_JSON = [(b"content-type", b"application/json")]

Outgoing = tuple[str, bytes, bytes]  # topic, key, value
_STOPPED = (
    "the API stopped before Kafka acknowledged the log (it was handed to the producer: it may "
    "be stored)"
)
Failed = Callable[["KafkaUnavailable"], None]
"""Told that a log handed to `Publisher.send_later` was not stored, and why."""


class KafkaUnavailable(Exception):
    """The broker did not acknowledge: nothing may be answered as stored.

    ``reason``: a short code (the label of ``riverstream_closed_loop_publish_failures_total``);
    ``maybe_stored``: whether messages were handed to the producer (which may have stored them,
    or may still: it retries them after the request gave up), else nothing was stored;
    ``retry_after``: seconds after which a new attempt may succeed (None: not by itself)."""

    def __init__(
        self, why: str, *, reason: str, maybe_stored: bool = False, retry_after: int | None = None
    ) -> None:
        super().__init__(why)
        self.reason, self.maybe_stored, self.retry_after = reason, maybe_stored, retry_after


def record_bytes(key: bytes, value: bytes) -> int:
    """The size of one message as kafka-python's producer checks it against its
    ``max_request_size`` (a record batch holding only this record).

    >>> record_bytes(b"id", b"x" * 1000)
    1088
    """
    from kafka.record.default_records import DefaultRecordBatchBuilder

    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []))


def max_record_bytes() -> int:
    """The producer's ``max_request_size`` (kafka-python's default: the Publisher leaves it)."""
    from kafka import KafkaProducer

    return int(KafkaProducer.DEFAULT_CONFIG["max_request_size"])


class Publisher:
    """One acks=all producer per process, created on first use (after the workers fork).

    Fail fast and bounded: at most ``max_in_flight`` publishes wait for the broker (each on a
    thread of this publisher's own, never queued), and a failure is remembered for
    `OUTAGE_SECONDS` (a circuit breaker: the requests meanwhile get its 503 at once, then one
    tries again while the others still get it)."""

    def __init__(self, settings: Settings, *, max_in_flight: int | None = None) -> None:
        self.bootstrap = settings.kafka_bootstrap_servers
        self.security = kafka_security(settings)
        self.max_in_flight = MAX_PUBLISHES_IN_FLIGHT if max_in_flight is None else max_in_flight
        self._producer: EventProducer | None = None
        self._creating = threading.Lock()  # held while the producer is created (≤ 3 s)
        self._login = LoginQuestions(self.bootstrap or "", self.security)  # under _creating
        self._refusals = RefusalLog(log, "the closed loop answers 503 until Kafka accepts them")
        self._denials = RefusalLog(
            log, "the closed loop answers 503 (auth) for it, and a log written after its answer "
            "is not stored (counted as auth), until they do",
        )  # fmt: skip
        self._state = threading.Lock()  # guards what follows; never held while waiting
        self._failed: tuple[float, str, str] | None = None
        """The last failure: when, why, and the reason of the 503s it answers meanwhile
        (``outage``, or ``auth`` when Kafka refused the login)."""
        self._probing = False  # a request tries again after a failure
        self._in_flight = 0
        self._executor = ThreadPoolExecutor(self.max_in_flight, "closed-loop-publish")
        self._later: deque[_Delivery] = deque()  # `send_later`'s logs, in the order sent
        self._closing = False  # `close` has begun: a log failed from now on, it failed

    def publish(self, messages: Sequence[Outgoing], timeout: float) -> None:
        """Send ``messages`` and wait until the broker acknowledged each (blocking: call it on
        a worker thread, or `publish_async`); `KafkaUnavailable` names the cause otherwise."""
        self._run(messages, timeout, self._admit())

    async def publish_async(self, messages: Sequence[Outgoing], timeout: float) -> None:
        """`publish` on one of this publisher's threads; refused at once (`KafkaUnavailable`)
        when ``max_in_flight`` publishes wait already or a failure is remembered."""
        admitted = self._admit()
        try:
            job = self._executor.submit(self._run, messages, timeout, admitted)
        except BaseException:
            self._release(admitted)
            raise

        # A request cancelled before a thread took its publish cancels the job: `_run` never
        # runs, so its place (and a probe's flag) is given back here, not leaked.
        def given_back(done: Future[None]) -> None:
            if done.cancelled():
                self._release(admitted)

        job.add_done_callback(given_back)
        await asyncio.wrap_future(job)

    def _admit(self) -> tuple[float, bool]:
        """Take a place among the publishes in flight: (when, whether this one tries again
        after a failure); `KafkaUnavailable` at once when there is none, or a failure is
        remembered."""
        self._configured()
        with self._state:
            now = time.monotonic()
            if self._in_flight >= self.max_in_flight:
                raise KafkaUnavailable(
                    f"{self._in_flight} publishes already wait for Kafka to acknowledge (the "
                    "most in flight): the broker is slow or away", reason="busy", retry_after=1,
                )  # fmt: skip
            probe = self._probe(now)
            self._in_flight += 1
            return now, probe

    def _configured(self) -> str:
        """The bootstrap servers; `KafkaUnavailable` at once when none are configured."""
        if not self.bootstrap:
            raise KafkaUnavailable(
                "no Kafka configured (RIVERSTREAM_KAFKA_BOOTSTRAP_SERVERS)", reason="no_kafka"
            )
        return self.bootstrap

    def _refusal(self, now: float) -> KafkaUnavailable | None:
        """The outage's refusal (``_state`` held): a failure remembered less than
        `OUTAGE_SECONDS` ago, or past them while another tries again; else None."""
        if self._failed is None:
            return None
        since, why, reason = self._failed
        left = OUTAGE_SECONDS - (now - since)
        if left > 0 or self._probing:
            return KafkaUnavailable(why, reason=reason, retry_after=max(1, math.ceil(left)))
        return None

    def _probe(self, now: float) -> bool:
        """Admit an attempt (``_state`` held): `KafkaUnavailable` when `_refusal` refuses it;
        True when it tries again after a failure (the others are refused until it is over:
        give the flag back, `_release`), False when no failure is remembered."""
        refused = self._refusal(now)
        if refused is not None:
            raise refused
        if self._failed is None:
            return False
        self._probing = True
        return True

    def _release(
        self, admitted: tuple[float, bool], *, ok: bool = False, failed: str | None = None
    ) -> None:
        """Give back the place ``admitted`` took; ``ok``: the broker acknowledged (it is back);
        ``failed``: why the broker could not be reached, remembered from now."""
        with self._state:
            self._in_flight -= 1
            if admitted[1]:
                self._probing = False
            if ok:
                self._failed = None
            elif failed is not None:
                self._failed = (time.monotonic(), failed, "outage")

    def _run(
        self, messages: Sequence[Outgoing], timeout: float, admitted: tuple[float, bool]
    ) -> None:
        """Publish (admitted by `_admit`), then give the place back and remember a failure."""
        try:
            self._send_and_wait(messages, timeout, admitted[0])
        except KafkaUnavailable as exc:  # remembered unless a refusal of the one remembered
            self._release(admitted, failed=str(exc) if exc.reason == "not_acknowledged" else None)
            raise
        except BaseException:
            self._release(admitted)
            raise
        self._release(admitted, ok=True)

    def _send_and_wait(self, messages: Sequence[Outgoing], timeout: float, since: float) -> None:
        """A send waits for a topic's metadata (up to the producer's ``max_block_ms``, 3 s)
        when the broker is away and the producer never sent to that topic. Bounded by
        `_admit`: only the publishes admitted before a failure is remembered wait so (at most
        ``max_in_flight``), then one per `OUTAGE_SECONDS` (the probe), the others refused."""
        producer = self._producer_or_raise(self._configured(), since)
        futures: list[Any] = []
        waiting: Any = None  # the future waited for
        deadline = time.monotonic() + timeout
        try:
            for topic, key, value in messages:
                futures.append(producer.send_future(topic, key, value))
            for waiting in futures:
                waiting.get(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaAdapterError as exc:
            why = f"Kafka unreachable: {exc}"
        except Exception as exc:  # kafka-python's errors and timeouts on a future
            if waiting is not None and not waiting.is_done:  # the wait timed out
                why = f"Kafka did not acknowledge within {timeout:g} s"
            else:
                if waiting is not None:
                    refused = [f for f in futures if f.is_done and f.failed()]
                    topic = messages[futures.index(waiting)][0]
                    denied = self._denial(exc, topic, maybe_stored=len(refused) < len(futures))
                    if denied is not None:
                        raise denied from exc
                why = f"Kafka did not acknowledge: {type(exc).__name__}: {exc}"
        else:
            return
        # What was handed to the producer may be stored, now or later: it retries it.
        raise KafkaUnavailable(
            why, reason="not_acknowledged", maybe_stored=bool(futures), retry_after=_retry_after()
        )

    def _denial(
        self, exc: BaseException, topic: str, *, maybe_stored: bool
    ) -> KafkaUnavailable | None:
        """The failure (``auth``) of a write when ``exc``, that of a message to ``topic``, is
        Kafka's ACLs denying it (`write_denial`), said in the log (`RefusalLog`: an ERROR each
        minute, not one per message); None when it is no denial. A publish's and a log's of
        `send_later` alike, and never remembered as an outage: what may be written goes on.
        ``maybe_stored``: whether other messages of it may be stored."""
        denial = write_denial(exc, topic, self.bootstrap or "", self.security)
        if denial is None:
            return None
        with self._state:
            self._denials.refused(denial)
        return KafkaUnavailable(
            str(denial), reason="auth", maybe_stored=maybe_stored, retry_after=_retry_after()
        )

    def _producer_or_raise(self, bootstrap: str, since: float) -> EventProducer:
        """The producer, created on first use. A request that waited for another's attempt,
        which failed, gets that failure (requests do not queue behind one another's
        attempts). Kafka refusing the login is ``auth``, said in the log (`RefusalLog`)."""
        with self._creating:
            if self._producer is not None:
                return self._producer
            with self._state:
                failed = self._failed
            if failed is not None and failed[0] >= since:
                raise KafkaUnavailable(failed[1], reason=failed[2], retry_after=_retry_after())
            reason = "not_acknowledged"
            try:
                self._producer = self._login.connect(
                    lambda: EventProducer(
                        bootstrap, linger_ms=1, max_block_ms=3000, bootstrap_timeout_ms=3000,
                        security=self.security,
                    )
                )  # fmt: skip
            except KafkaAuthError as exc:
                self._refusals.refused(exc)
                why, reason = str(exc), "auth"
            except KafkaAdapterError as exc:
                why = f"Kafka unreachable: {exc}"
            except Exception as exc:
                why = f"Kafka did not acknowledge: {type(exc).__name__}: {exc}"
            else:
                self._refusals.accepted()
                return self._producer
            with self._state:  # before the lock lets the others in
                self._failed = (time.monotonic(), why, "auth" if reason == "auth" else "outage")
            raise KafkaUnavailable(why, reason=reason, retry_after=_retry_after())

    def check(self) -> None:
        """`KafkaUnavailable` at once when a log handed to `send_later` now would be refused or
        likely lost: no Kafka configured, a failure remembered (or being tried again), or a log
        sent over `PUBLISH_TIMEOUT_SECONDS` ago still not acknowledged (then remembered as a
        failure, as a publish that timed out, for as long as it stays so). Takes no place among
        the publishes in flight: `send_later` does not wait on a thread."""
        self._configured()
        with self._state:
            now = time.monotonic()
            later = self._later
            while later and later[0].done:
                later.popleft()
            stale = later and now - later[0].sent > PUBLISH_TIMEOUT_SECONDS
            if stale and (self._failed is None or now - self._failed[0] >= OUTAGE_SECONDS):
                why = f"Kafka did not acknowledge a log within {PUBLISH_TIMEOUT_SECONDS:g} s"
                self._failed = (now, why, "outage")
            refused = self._refusal(now)
            if refused is not None:
                raise refused

    def send_later(self, messages: Sequence[Outgoing], failed: Failed) -> None:
        """Hand ``messages`` to the producer without waiting for the broker (call it where
        blocking is fine: the producer may be created, ≤ 3 s, and a send may wait for a topic's
        metadata, ≤ 3 s). ``failed`` is called once, on the producer's thread or this one, if
        one is not acknowledged (within the producer's delivery timeout: it retries them
        meanwhile), and the failure is remembered as a publish's (Kafka's ACLs denying a write
        are not: ``auth``, as a publish's, `_denial`); the acknowledgement of them all ends a
        failure remembered. What is handed over before `close` is sent (the producer's close
        waits for it, ≤ 10 s, then fails the rest: ``failed`` is told).

        The caller is the shadows' one thread: an attempt that may wait (no producer yet, or
        one that never sent to a topic of ``messages``) is a probe, as a publish's (`_admit`).
        While a failure is remembered (as `check` refuses) or another tries again, ``failed``
        is told at once, without an attempt; past `OUTAGE_SECONDS` this one tries again and
        the others (logs, requests) are refused until it is over. Else each log queued before
        the outage was known would wait 3 s, the shadows of every graph (and the API's stop,
        which writes the queued logs) behind them. A log that waits for nothing is handed over
        even during an outage: the producer keeps it until the broker is back. Never raises."""
        delivery = _Delivery(self, len(messages), failed)
        probe = False
        topic = ""  # the message being sent
        try:
            bootstrap = self._configured()
            known = self._producer
            if known is None or not all(known.knows(topic) for topic, _, _ in messages):
                with self._state:
                    probe = self._probe(time.monotonic())
            producer = self._producer_or_raise(bootstrap, time.monotonic())
            with self._state:
                later = self._later
                while later and later[0].done:
                    later.popleft()
                later.append(delivery)
            for topic, key, value in messages:
                sent = producer.send_future(topic, key, value)
                sent.add_callback(delivery.acknowledged).add_errback(delivery.lost, topic=topic)
        except KafkaUnavailable as exc:  # refused, or no producer: it could not be created
            delivery.fail(exc)
        except Exception as exc:  # the send itself: no metadata in max_block_ms
            delivery.lost(exc, topic=topic)
        finally:
            if probe:  # its failure, if any, is remembered by now (`_Delivery.fail`)
                with self._state:
                    self._probing = False

    def _remember(self, why: str | None) -> None:
        """Remember a failure (``why``) of `send_later`'s, or forget the one remembered."""
        with self._state:
            self._failed = None if why is None else (time.monotonic(), why, "outage")

    def close(self) -> None:
        """Close the producer, which waits (≤ 10 s, `EventProducer.close`) for what it was
        handed to be acknowledged, then fails the rest: each log of `send_later` still
        unacknowledged is told so (counted and logged as any log lost after its answer), as
        the API stopped before the broker acknowledged it. Never raises: the API calls it as
        it stops."""
        self._closing = True
        self._executor.shutdown(wait=False)
        if self._producer is not None:
            try:
                self._producer.close()
            except Exception as exc:
                log.warning("the Kafka producer did not close cleanly: %s: %s",
                            type(exc).__name__, exc)  # fmt: skip
        with self._state:
            pending = [delivery for delivery in self._later if not delivery.done]
            self._later.clear()
        for delivery in pending:  # the producer's thread did not end in time to fail them
            delivery.fail(KafkaUnavailable(_STOPPED, reason="not_acknowledged", maybe_stored=True))


def _retry_after() -> int:
    return max(1, math.ceil(OUTAGE_SECONDS))


def _bearer_problem(scope: Scope, token: str | None) -> tuple[int, str] | None:
    """None when ``token`` is unset or given as the bearer token; else (401 | 403, why)."""
    if not token:
        return None
    for name, value in scope["headers"]:
        if name == b"authorization":
            given = value.decode("latin-1")
            scheme, _, secret = given.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(secret.encode(), token.encode()):
                return None
            return 403, "the bearer token is not valid for this route"
    return 401, "this route needs Authorization: Bearer <token>"


class ClosedLoop:
    """ASGI middleware: the ingest routes, predict-with-id, and the routes' tokens."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        max_body_bytes: int,
        publisher: Publisher | None = None,
        clock: Callable[[], float] = time.time,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.max_body_bytes = max_body_bytes
        self.codec = EventCodec(Limits.from_settings(settings))
        self.publisher = publisher or Publisher(settings)
        self.clock = clock
        self.metrics = metrics
        """Where publish failures are counted (None: the app's, found at the first one)."""
        self.max_record_bytes = max_record_bytes()
        self.ingest_token = _secret(settings.ingest_token)
        self.predict_token = _secret(settings.predict_token)
        self.max_events = settings.serve_max_instances
        """The most events in one ingest request: the most instances of a predict batch."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in _INGEST:
            await self._ingest(scope, receive, send, path)
            return
        if _is_predict(path):
            # A logged predict writes events: the ingest token authorizes it, its prediction
            # included, so a holder of the ingest token alone may go on to see if it is logged.
            problem = _bearer_problem(scope, self.predict_token)
            may_log = self.ingest_token is not None and path.startswith(
                (_PREDICT_PREFIX, _GRAPH_PREFIX)
            )
            if problem is not None and not (
                may_log and _bearer_problem(scope, self.ingest_token) is None
            ):
                # the Open Inference Protocol's errors are {"error": ...}, as `serving.v2`'s
                key = "error" if path.startswith("/v2/") else "detail"
                await _respond(send, *problem, auth=problem[0] == 401, key=key)
                return
            if path.startswith(_PREDICT_PREFIX):
                raw, more = await read_upto(receive, self.max_body_bytes)
                if not more and b'"id"' in raw:
                    await self._predict_with_id(scope, send, path, raw, problem)
                    return
                if await _refused(send, problem):  # not logged: the ingest token is not enough
                    return
                # the app answers as if nothing had been read (an oversized body included)
                receive = replay(raw, then=receive if more else None)
            elif path.startswith(_GRAPH_PREFIX):
                raw, more = await read_upto(receive, self.max_body_bytes)
                if not more and b'"log"' in raw:
                    await self._graph_logged(scope, send, path, raw, problem)
                    return
                if await _refused(send, problem):
                    return
                # then the real receive: a graph answer's shadows run once the response is sent,
                # as a background task that a replayed disconnect would have cut short
                receive = replay(raw, then=receive) if more else replay_whole(raw, receive)
        await self.app(scope, receive, send)

    def _logging_problem(self, scope: Scope) -> tuple[int, str] | None:
        """None when a logged predict may write its events (the ingest token, when it is set);
        else (401 | 403, why), naming the ingest token."""
        problem = _bearer_problem(scope, self.ingest_token)
        if problem is None:
            return None
        why = "a logged prediction writes events: it needs"
        if problem[0] == 401:
            return 401, f"{why} Authorization: Bearer <the ingest token>"
        return 403, f"{why} the ingest token (RIVERSTREAM_INGEST_TOKEN), not this one"

    # -- POST /v1/features, /v1/labels ---------------------------------------------------------
    async def _ingest(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        problem = _bearer_problem(scope, self.ingest_token)
        if problem is not None:
            await _respond(send, *problem, auth=problem[0] == 401)
            return
        kind, many = _INGEST[path]
        raw = await receive_body(receive, self.max_body_bytes)
        if raw is None:
            await _respond(send, 413, f"body larger than {self.max_body_bytes} bytes")
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await _respond(send, 422, f"invalid JSON: {exc}")
            return
        if not isinstance(body, dict):
            await _respond(
                send, 422, f"expected an event object or {{{many!r}: [events]}}, "
                f"got {json_type(body)}",
            )  # fmt: skip
            return
        listed = many in body
        items = body[many] if listed else [body]
        if not isinstance(items, list) or not items:
            await _respond(send, 422, f"expected an event object or {{{many!r}: [events]}}")
            return
        if len(items) > self.max_events:
            await _respond(
                send, 422, f"{many}: {len(items)} events, the limit is {self.max_events} "
                "(RIVERSTREAM_SERVE_MAX_INSTANCES)",
            )  # fmt: skip
            return
        topic = self.settings.topic_features if kind == "features" else self.settings.topic_labels
        decode = self.codec.decode_feature if kind == "features" else self.codec.decode_label
        now = self.clock()
        messages: list[Outgoing] = []
        wheres: list[str] = []
        for i, item in enumerate(items):
            where = f"{many}[{i}]" if listed else "body"
            if not isinstance(item, dict):
                await _respond(send, 422, f"{where}: expected an object")
                return
            event = {"time": now, **item}
            try:
                value = orjson.dumps(event)
                decode(value)  # the validation of Kafka producers: reason and field
            except (SchemaError, TypeError) as exc:
                await _respond(send, 422, f"{where}: {exc}")
                return
            messages.append((topic, str(item["id"]).encode(), value))
            wheres.append(where)
        if not await self._publish(scope, send, messages, wheres):
            return
        await _send_json(send, 202, {"accepted": len(messages), "topic": topic})

    async def _publish(
        self, scope: Scope, send: Send, messages: Sequence[Outgoing], wheres: Sequence[str] | None
    ) -> bool:
        """Publish ``messages`` (acknowledged by the broker), the events of an ingest request
        (``wheres``: where each is in the body) or a logged prediction's (None); return False
        once the answer is sent: 413 naming the limit when a message is larger than the
        producer sends, nothing published; 503 naming the cause and what may be stored when
        Kafka did not acknowledge, counted."""
        if await self._too_large(send, messages, wheres):
            return False
        try:
            await self.publisher.publish_async(messages, PUBLISH_TIMEOUT_SECONDS)
        except KafkaUnavailable as exc:
            await self._unavailable(scope, send, exc, logged=wheres is None)
            return False
        return True

    async def _too_large(
        self, send: Send, messages: Sequence[Outgoing], wheres: Sequence[str] | None
    ) -> bool:
        """Whether a message is larger than the producer sends (then 413 naming the limit is
        answered); ``wheres`` as in `_publish`."""
        i = _over_limit(messages, self.max_record_bytes)
        if i is None:
            return False
        topic, key, value = messages[i]
        where = f"the prediction's log to {topic}" if wheres is None else wheres[i]
        await _respond(
            send, 413, f"{where}: {record_bytes(key, value)} bytes as a Kafka record, over the "
            f"producer's limit of {self.max_record_bytes} bytes (max_request_size): nothing was "
            "stored",
        )  # fmt: skip
        return True

    async def _unavailable(
        self, scope: Scope, send: Send, exc: KafkaUnavailable, *, logged: bool
    ) -> None:
        """503 naming why Kafka did not acknowledge (or would not be tried), counted."""
        self._metrics(scope).closed_loop_publish_failures_total.labels(exc.reason).inc()
        retry = [] if exc.retry_after is None else [(b"retry-after", b"%d" % exc.retry_after)]
        await _respond(send, 503, _unavailable(exc, logged=logged), headers=retry)

    def _metrics(self, scope: Scope) -> ServingMetrics:
        """The metrics given, else the app's (its snapshot follower's), else the process'."""
        if self.metrics is None:
            state = getattr(scope.get("app"), "state", None)
            found = getattr(getattr(state, "follower", None), "metrics", None)
            self.metrics = found if isinstance(found, ServingMetrics) else get_metrics()
        return self.metrics

    # -- predict with an id ----------------------------------------------------------------
    async def _predict_with_id(
        self, scope: Scope, send: Send, path: str, raw: bytes, refused: tuple[int, str] | None
    ) -> None:
        """``refused``: why the predict token refused the request (None: it did not)."""
        body = _json_object(raw)
        if body is None or "id" not in body:  # not logged: let the app name the problem
            if not await _refused(send, refused):
                await self.app(scope, replay(raw), send)
            return
        problem = self._logging_problem(scope)
        if problem is not None:
            await _respond(send, *problem, auth=problem[0] == 401)
            return
        event_id, event_time = body.pop("id"), body.pop("time", None)
        if not isinstance(event_id, str) or not event_id:
            await _respond(send, 422, "id: expected a non-empty string")
            return
        if event_time is None:
            event_time = self.clock()
        if "features" not in body or "instances" in body:
            await _respond(send, 422, "an id logs one prediction: give 'features', not 'instances'")
            return
        status, headers, answer = await _call(self.app, scope, orjson.dumps(body))
        if status != 200:
            await _send_raw(send, status, headers, answer)
            return
        content = orjson.loads(answer)
        name = path[len(_PREDICT_PREFIX) : -len(_PREDICT_SUFFIX)]
        served = {"model": name, "version": content["version"],
                  "prediction": content["prediction"], "probabilities": content["probabilities"]}  # fmt: skip
        feature = {"id": event_id, "time": event_time, "features": body["features"],
                   "served": served}  # fmt: skip
        try:
            value = orjson.dumps(feature, option=orjson.OPT_NON_STR_KEYS)
            self.codec.decode_feature(value)
        except (SchemaError, TypeError) as exc:
            await _respond(send, 422, f"the features cannot be logged as an event: {exc}")
            return
        record = {"id": event_id, "target": name, "versions": {name: content["version"]},
                  "prediction": content["prediction"], "probabilities": content["probabilities"],
                  "decided_by": name, "requested_at": event_time, "answered_at": self.clock()}  # fmt: skip
        key = event_id.encode()
        messages = [
            (self.settings.topic_features, key, value),
            (self.settings.topic_predictions, key,
             orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS)),
        ]  # fmt: skip
        if not await self._publish(scope, send, messages, None):
            return
        content["id"], content["time"] = event_id, event_time
        await _send_json(send, 200, content)

    # -- a graph predict with "log": true ------------------------------------------------
    async def _graph_logged(
        self, scope: Scope, send: Send, path: str, raw: bytes, refused: tuple[int, str] | None
    ) -> None:
        """``refused``: why the predict token refused the request (None: it did not)."""
        body = _json_object(raw)
        if body is None or "log" not in body:  # not logged: let the app name the problem
            if not await _refused(send, refused):
                await self.app(scope, replay(raw), send)
            return
        log_it = body.pop("log")
        if log_it is not True and await _refused(send, refused):  # not logged
            return
        if log_it is not True and log_it is not False:
            await _respond(send, 422, "log: expected true or false")
            return
        event_time = body.pop("time", None)
        if not log_it:  # answered as if "log" had not been given
            if event_time is not None:
                body["time"] = event_time  # the app names it: not a field of graph bodies
            await self.app(scope, replay(orjson.dumps(body)), send)
            return
        problem = self._logging_problem(scope)
        if problem is not None:
            await _respond(send, *problem, auth=problem[0] == 401)
            return
        event_id = body.get("id")
        if isinstance(event_id, int) and not isinstance(event_id, bool):
            event_id = str(event_id)
        if not isinstance(event_id, str) or not event_id:
            await _respond(send, 422, "a logged prediction needs an id: a non-empty string")
            return
        if "features" not in body or "instances" in body:
            await _respond(send, 422, "log logs one prediction: give 'features', not 'instances'")
            return
        service = getattr(getattr(scope.get("app"), "state", None), "graphs", None)
        if service is None:
            await _respond(send, 404, "this API serves no graphs")
            return
        name = path[len(_GRAPH_PREFIX) : -len(_PREDICT_SUFFIX)]
        status, content, job = service.answer(name, orjson.dumps(body))
        if status != 200:
            await _send_raw(send, status, list(_JSON), render(content))
            return
        if event_time is None:
            event_time = self.clock()
        answered_at = self.clock()

        def log_of(shadows: list[ShadowResult]) -> list[Outgoing]:
            return graph_messages(
                self.settings, self.codec, name, event_id, event_time, body, content, shadows,
                answered_at=answered_at,
            )  # fmt: skip

        # What may refuse the log is asked before the answer: its events without the shadows'
        # answers (422, 413), and Kafka (503: not configured, an outage remembered).
        try:
            bare = log_of([])
        except (SchemaError, TypeError) as exc:
            service.run_later(job)
            await _respond(send, 422, f"the features cannot be logged as an event: {exc}")
            return
        if await self._too_large(send, bare, None):
            service.run_later(job)
            return
        later = False
        if job is not None:
            try:
                self.publisher.check()
            except KafkaUnavailable as exc:
                service.run_later(job)
                await self._unavailable(scope, send, exc, logged=True)
                return
            log_later = _LogLater(self.publisher, log_of, self.max_record_bytes,
                                  self._metrics(scope), name)  # fmt: skip
            # False: the backlog is full, the shadows dropped (counted): logged without them
            later = service.shadows.submit(replace(job, then=log_later))
        if not later and not await self._publish(scope, send, bare, None):
            return
        answer = render({**content, "id": event_id, "time": event_time})
        headers = [*_JSON, (b"content-length", str(len(answer)).encode())]
        await _send_raw(send, 200, headers, answer)


class _LogLater:
    """The log of a graph answer already sent, handed to the producer once its shadows have
    run (`serving.shadows.ShadowJob.then`, on the shadow runner's thread). A log that is not
    stored is counted in ``riverstream_closed_loop_publish_failures_total`` and logged as a
    warning (the client has its answer: nothing else can tell it). A log whose shadows' answers
    make it invalid or too large is written without them."""

    def __init__(
        self,
        publisher: Publisher,
        log_of: Callable[[list[ShadowResult]], list[Outgoing]],
        limit: int,
        metrics: ServingMetrics,
        graph: str,
    ) -> None:
        self.publisher, self.log_of, self.limit = publisher, log_of, limit
        self.metrics, self.graph = metrics, graph

    def __call__(self, results: list[list[ShadowResult]]) -> None:
        try:
            messages = self.log_of(results[0] if results else [])
            if _over_limit(messages, self.limit) is not None:
                raise ValueError("over the producer's limit")
        except (SchemaError, TypeError, ValueError) as exc:
            log.warning("graph %s: logged without its shadows' answers: %s", self.graph, exc)
            messages = self.log_of([])  # checked before the answer was sent
        self.publisher.send_later(messages, self.failed)

    def failed(self, exc: KafkaUnavailable) -> None:
        self.metrics.closed_loop_publish_failures_total.labels(exc.reason).inc()
        if exc.reason == "auth":  # the publisher's ERROR says it, each minute: not each log
            return
        log.warning("graph %s: a logged answer was sent, but its log not stored: %s",
                    self.graph, exc)  # fmt: skip


class _Delivery:
    """The acknowledgements of one log handed to `Publisher.send_later`: ``failed`` is told at
    most once; ``done`` once every message is acknowledged or one failed. Once done it lets go
    of ``failed`` (a `_LogLater`'s, which holds the request's body and answer): a done
    delivery may wait in `Publisher._later` behind a pending one, up to the producer's
    delivery timeout."""

    __slots__ = ("_lock", "done", "failed", "left", "messages", "publisher", "sent")

    def __init__(self, publisher: Publisher, messages: int, failed: Failed) -> None:
        self.publisher, self.left, self.messages = publisher, messages, messages
        self.failed: Failed | None = failed  # None once done
        self.sent = time.monotonic()
        self.done = False
        self._lock = threading.Lock()

    def acknowledged(self, _metadata: object) -> None:
        with self._lock:
            self.left -= 1
            last = self.left == 0 and not self.done
            if last:
                self.done, self.failed = True, None
        if last:
            self.publisher._remember(None)  # the broker is back, if it was away

    def lost(self, exc: BaseException, *, topic: str = "") -> None:
        """A message (to ``topic``) failed with ``exc``: Kafka's ACLs denying its write, told as
        a publish's denial (``auth``, `Publisher._denial`), else not acknowledged."""
        denied = self.publisher._denial(exc, topic, maybe_stored=self.messages > 1)
        if denied is not None:
            self.fail(denied)
            return
        cause = f"{type(exc).__name__}: {exc}"
        if self.publisher._closing:  # failed by the producer's close, giving up on it
            why = f"{_STOPPED}: {cause}"
        else:
            why = f"Kafka did not acknowledge a log: {cause}"
        self.fail(KafkaUnavailable(why, reason="not_acknowledged", maybe_stored=True))

    def fail(self, exc: KafkaUnavailable) -> None:
        with self._lock:
            failed, self.failed, self.done = self.failed, None, True
        if failed is not None:  # not done before: the first to tell
            if exc.reason == "not_acknowledged" and exc.maybe_stored:
                self.publisher._remember(str(exc))
            failed(exc)


def _unavailable(exc: KafkaUnavailable, *, logged: bool) -> str:
    """The 503's detail: the cause, and what may be stored (a resent event is harmless: the
    learner keeps one feature event per id until its label, the last one it read, and learns
    from it with one label, `learners.join`)."""
    if exc.maybe_stored and logged:
        return (
            f"{exc}; the prediction may have been logged, or may still be (the producer retries "
            "it): predicting again with the same id is safe, the learner keeping the last "
            "feature event of an id until its label"
        )
    if exc.maybe_stored:
        return (
            f"{exc}; some of these events may have been stored, or may still be (the producer "
            "retries them): sending them all again is safe, the learner keeping one feature "
            "event per id until its label and learning from it once (a surplus event waits "
            "unmatched, and would pair with a later event reusing its id)"
        )
    if logged:
        nothing, again = "the prediction was not logged (nothing was stored)", "predict again"
    else:
        nothing, again = "nothing was stored", "send again"
    return f"{exc}; {nothing}" + ("" if exc.retry_after is None else f", {again}")


def _over_limit(messages: Sequence[Outgoing], limit: int) -> int | None:
    """The index of the first message larger than ``limit`` as a Kafka record (None: none)."""
    for i, (_topic, key, value) in enumerate(messages):
        if record_bytes(key, value) > limit:
            return i
    return None


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` as a JSON object, or None when it is not JSON or not an object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


async def _refused(send: Send, problem: tuple[int, str] | None) -> bool:
    """Answer ``problem`` (a token's 401 or 403) if there is one, and say whether there was."""
    if problem is None:
        return False
    await _respond(send, *problem, auth=problem[0] == 401)
    return True


def _secret(value: SecretStr | str | None) -> str | None:
    if isinstance(value, SecretStr):
        return value.get_secret_value() or None
    return value or None


def _is_predict(path: str) -> bool:
    return (path.startswith(("/v1/models/", "/v1/graphs/")) and path.endswith("/predict")) or (
        path.startswith("/v2/models/") and path.endswith("/infer")
    )


async def _call(app: ASGIApp, scope: Scope, body: bytes) -> tuple[int, list[Any], bytes]:
    """Run ``app`` on ``body``; its response is kept, not sent."""
    status, headers, chunks = 500, [], []

    async def capture(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, replay(body), capture)
    return status, headers, b"".join(chunks)


async def _send_raw(send: Send, status: int, headers: list[Any], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, content: Any) -> None:
    body = orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await _send_raw(send, status, headers, body)


async def _respond(
    send: Send,
    status: int,
    detail: str,
    *,
    auth: bool = False,
    headers: Sequence[Any] = (),
    key: str = "detail",
) -> None:
    body = orjson.dumps({key: detail})
    headers = [*_JSON, (b"content-length", str(len(body)).encode()), *headers]
    if auth:
        headers.append((b"www-authenticate", b"Bearer"))
    await _send_raw(send, status, headers, body)

"""The closed loop's guards, on real Kafka and Redis: which token a logged predict takes when
both tokens are set, bodies that are not event objects, the most events in one ingest request,
bodies over the size limit, events larger than the producer sends (413), and a broker that cannot
be reached (503 at once, not in a queue, counted)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr
from river import datasets, linear_model

from schemas.errors import KafkaAdapterError
from schemas.settings import Settings
from serving import feedback
from serving.app import create_app
from serving.asgi import read_upto
from serving.telemetry import ServingMetrics
from stream.dev.ports import free_port
from stream.kafka.client import read_all
from stream.learner.runtime import snapshot_store
from stream.registry.graphs import GraphRegistry
from tests.serving.test_feedback import api, bearer, prometheus_registry
from tests.support.pipeline import fast
from tests.support.serving import asgi_post

pytestmark = pytest.mark.integration

INGEST, PREDICT = "ingest-secret", "predict-secret"


_APPS: list[Any] = []


def app_for(settings: Settings, **kwargs: Any) -> Any:
    """The API, called in this process without its lifespan: its producer is closed after the
    test (`closed_publishers`)."""
    app = create_app(settings, metrics=ServingMetrics(prometheus_registry()), **kwargs)
    _APPS.append(app)
    return app


@pytest.fixture(autouse=True)
def closed_publishers() -> Iterator[None]:
    """Close the producers of the apps a test made: one left behind keeps a thread retrying
    its broker, and drawing from `random` (Hypothesis, in later tests, refuses that)."""
    yield
    while _APPS:
        _APPS.pop().state.publisher.close()


def post(app: Any, path: str, body: bytes, token: str | None = None) -> tuple[int, Any]:
    """POST ``body`` to ``app`` in this process (no server, no lifespan): status, JSON answer."""
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    status, raw = asyncio.run(asgi_post(app, path, body, headers))
    return status, orjson.loads(raw)


def logged_ids(settings: Settings) -> set[str]:
    assert settings.kafka_bootstrap_servers is not None
    return {orjson.loads(r.value)["id"] for r in read_all(settings.kafka_bootstrap_servers,
                                                           [settings.topic_features])}  # fmt: skip


@contextlib.contextmanager
def served(settings: Settings, kit: Any) -> Iterator[tuple[httpx.Client, dict[str, float]]]:
    """The API on ``settings``, serving a model ``lr`` and a graph ``g`` of it; the client, and
    features to predict from."""
    samples = list(itertools.islice(datasets.Phishing(), 60))
    model = linear_model.LogisticRegression()
    for x, y in samples[:50]:
        model.learn_one(x, y)
    store = snapshot_store(settings)
    kit.publish(store, "lr", model, "classifier")
    GraphRegistry(store.client, store.keys.prefix, by="test").apply(
        {"name": "g", "root": {"model": "lr"}}, reason="test"
    )
    with api(kit, settings) as client:
        kit.wait_until(lambda: client.get("/readyz").status_code == 200)
        kit.wait_until(lambda: client.get("/v1/graphs/g").status_code == 200)
        yield client, samples[55][0]


def closed(settings: Settings, kit: Any, **changes: Any) -> Settings:
    """``settings`` with the predict token set (and the models signed with the kit's key)."""
    return fast(
        settings, snapshot_key=SecretStr(kit.KEY.decode()), predict_token=SecretStr(PREDICT),
        serve_poll_seconds=0.2, **changes,
    )  # fmt: skip


# -- 1. both tokens: a logged predict takes the ingest token ----------------------------------
def test_a_logged_predict_takes_the_ingest_token_when_both_tokens_are_set(
    settings: Settings, kit: Any
) -> None:
    s = closed(settings, kit, ingest_token=SecretStr(INGEST))
    with served(s, kit) as (client, x):
        logged = {"id": "m1", "time": 1, "features": x}
        graph_logged = {"id": "g1", "time": 2, "features": x, "log": True}
        routes = [("/v1/models/lr/predict", logged), ("/v1/graphs/g/predict", graph_logged)]
        for path, body in routes:
            # The ingest token authorizes the logged prediction: answered, and logged.
            answer = client.post(path, json=body, headers=bearer(INGEST))
            assert answer.status_code == 200, (path, answer.text)
            assert answer.json()["id"] == body["id"]
            # The predict token alone cannot log: 403 saying why.
            refused = client.post(path, json=body, headers=bearer(PREDICT))
            assert refused.status_code == 403, (path, refused.text)
            assert "ingest token" in refused.json()["detail"]
            assert client.post(path, json=body).status_code == 401
            # A predict that logs nothing takes the predict token, not the ingest token.
            plain = {"features": x}
            assert client.post(path, json=plain, headers=bearer(PREDICT)).status_code == 200
            assert client.post(path, json=plain, headers=bearer(INGEST)).status_code == 403
        unlogged = {"id": "g2", "features": x, "log": False}
        assert client.post("/v1/graphs/g/predict", json=unlogged,
                           headers=bearer(PREDICT)).status_code == 200  # fmt: skip
        assert client.post("/v1/graphs/g/predict", json=unlogged,
                           headers=bearer(INGEST)).status_code == 403  # fmt: skip
        # v2 refusals speak the Open Inference Protocol: {"error": ...} (tritonclient reads it)
        for headers, status in ((bearer(INGEST), 403), ({}, 401)):
            v2 = client.post("/v2/models/lr/infer", json={"inputs": []}, headers=headers)
            assert v2.status_code == status, v2.text
            assert set(v2.json()) == {"error"} and "token" in v2.json()["error"], v2.text
    # Both logged predictions reached Kafka (acknowledged before the 200); nothing else did.
    assert kit.wait_until(lambda: logged_ids(s) == {"m1", "g1"} or None, what="the events")


# -- 2. a body that is JSON but not an object ---------------------------------------------------
@pytest.mark.parametrize("body", [b"5", b"null", b"true", b"1.5", b'"labels"', b'"events"'])
@pytest.mark.parametrize("path", ["/v1/features", "/v1/labels"])
def test_an_ingest_body_that_is_not_an_object_is_422(
    settings: Settings, path: str, body: bytes
) -> None:
    status, answer = post(app_for(settings), path, body)
    assert status == 422, answer
    assert "expected an event object" in answer["detail"] and "got" in answer["detail"]


# -- 3. the most events in one ingest request --------------------------------------------------
def test_an_ingest_request_carries_at_most_serve_max_instances_events(settings: Settings) -> None:
    s = settings.model_copy(update={"serve_max_instances": 5})
    app = app_for(s)
    labels = [{"id": f"e{i}", "time": i, "label": True} for i in range(6)]
    # Over the limit: 422 naming it, before any event is validated (the last one is bad).
    too_many = orjson.dumps({"labels": [*labels[:5], {"id": "bad", "label": [1]}]})
    status, answer = post(app, "/v1/labels", too_many)
    assert status == 422, answer
    assert "6 events, the limit is 5" in answer["detail"], answer
    status, answer = post(app, "/v1/labels", orjson.dumps({"labels": labels}))
    assert status == 422 and "the limit is 5" in answer["detail"], answer
    # At the limit: stored.
    status, answer = post(app, "/v1/labels", orjson.dumps({"labels": labels[:5]}))
    assert status == 202, answer
    assert s.kafka_bootstrap_servers is not None
    records = read_all(s.kafka_bootstrap_servers, [s.topic_labels])
    assert sorted(orjson.loads(r.value)["id"] for r in records) == [f"e{i}" for i in range(5)]


# -- 4. a body over the limit, read whole ------------------------------------------------------
def chunks(*parts: bytes) -> Any:
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
                for i, p in enumerate(parts)]  # fmt: skip

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((b"0123456789",), (b"0123456789", False)),  # at the limit: whole
        ((b"01234", b"56789"), (b"0123456789", False)),
        ((b"0123456789a",), (b"0123456789a", True)),  # over, in one chunk
        ((b"012345", b"6789ab"), (b"0123456789ab", True)),  # the last chunk crosses the limit
        ((b"0123456789a", b"b", b"c"), (b"0123456789a", True)),  # more remains
    ],
)
def test_read_upto_says_a_body_over_the_limit_is_not_complete(
    parts: tuple[bytes, ...], expected: tuple[bytes, bool]
) -> None:
    assert asyncio.run(read_upto(chunks(*parts), 10)) == expected


def test_a_logged_predict_over_the_body_limit_is_413(settings: Settings, kit: Any) -> None:
    """Without its id, time and log, the body would be under the limit: still 413, never
    predicted nor logged (the predict token set: the closed loop reads bodies first)."""
    limit = 300
    s = closed(settings, kit, serve_max_body_bytes=limit)
    padding = "x" * 200
    with served(s, kit) as (client, _):
        for path, body in [
            ("/v1/models/lr/predict", {"id": padding, "time": 1, "features": {"a": 1}}),
            ("/v1/graphs/g/predict", {"id": padding, "log": True, "features": {"a": 1}}),
            ("/v1/models/lr/predict", {"features": {padding: 1}}),  # not logged
            ("/v1/graphs/g/predict", {"features": {padding: 1}}),
        ]:
            raw = orjson.dumps(body)
            raw += b" " * (limit + 1 - len(raw))  # just over the limit
            assert len(raw) == limit + 1
            response = client.post(path, content=raw, headers=bearer(PREDICT))
            assert response.status_code == 413, (path, response.text)
            under = client.post(path, content=raw[:limit], headers=bearer(PREDICT))
            assert under.status_code == 200, (path, under.text)  # the same body, at the limit


# -- 5. an event larger than the producer sends ----------------------------------------------
def test_an_event_larger_than_the_producer_sends_is_413_naming_the_limit(
    settings: Settings,
) -> None:
    """A valid event (under RIVERSTREAM_MAX_EVENT_BYTES) that is, with its key and the record's
    overhead, over the producer's max_request_size: 413 naming the limit, nothing published;
    one byte less is stored (the broker takes it too)."""
    from kafka import KafkaProducer
    from kafka.record.default_records import DefaultRecordBatchBuilder

    limit = KafkaProducer.DEFAULT_CONFIG["max_request_size"]  # the producer's, left as is
    assert limit == 1_048_576

    def event(event_id: str, n: int) -> dict[str, Any]:
        return {"id": event_id, "time": 1, "features": {"f": "x" * n}}

    def record(event_id: str, n: int) -> int:  # how the producer measures it
        value = orjson.dumps(event(event_id, n))
        return DefaultRecordBatchBuilder.estimate_size_in_bytes(event_id.encode(), value, [])

    n = limit - record("big", 0)
    while record("big", n) > limit:
        n -= 1
    assert record("big", n) <= limit < record("big", n + 1)
    over = orjson.dumps(event("big", n + 1))
    assert len(over) < settings.max_event_bytes  # a valid event: the codec takes it
    app = app_for(settings)
    status, answer = post(app, "/v1/features", over)
    assert status == 413, answer
    assert f"limit of {limit} bytes (max_request_size)" in answer["detail"], answer
    assert answer["detail"].startswith(f"body: {record('big', n + 1)} bytes"), answer
    # In a batch: named by its place, and nothing of the batch is published.
    batch = {"events": [event("small", 10), event("big", n + 1)]}
    status, answer = post(app, "/v1/features", orjson.dumps(batch))
    assert status == 413 and answer["detail"].startswith("events[1]: "), answer
    # At the limit: stored.
    status, answer = post(app, "/v1/features", orjson.dumps(event("big", n)))
    assert status == 202, answer
    assert settings.kafka_bootstrap_servers is not None
    records = read_all(settings.kafka_bootstrap_servers, [settings.topic_features])
    assert [(r.key, len(r.value)) for r in records] == [
        (b"big", len(orjson.dumps(event("big", n))))
    ]


# -- 6. Kafka unreachable: 503 at once, not after every other request's attempt ---------------
def test_an_unreachable_broker_answers_every_concurrent_request_503_within_a_bound(
    settings: Settings,
) -> None:
    s = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    metrics = ServingMetrics(prometheus_registry())
    app = create_app(s, metrics=metrics)
    _APPS.append(app)
    body = {"id": "a", "time": 1, "label": True}
    retry_after: list[str | None] = []

    async def wave(n: int) -> list[tuple[int, str, float]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

            async def one() -> tuple[int, str, float]:
                start = time.monotonic()
                response = await client.post("/v1/labels", json=body)
                retry_after.append(response.headers.get("retry-after"))
                return response.status_code, response.json()["detail"], time.monotonic() - start

            return await asyncio.gather(*(one() for _ in range(n)))

    def failures() -> dict[str, float]:
        counter = metrics.closed_loop_publish_failures_total
        return {r: counter.labels(r)._value.get() for r in ("not_acknowledged", "outage", "busy")}

    # The first attempt to reach the broker takes up to its 3 s timeout; the requests that
    # came meanwhile get its answer, not an attempt of their own each (8 × 3 s).
    first = asyncio.run(wave(8))
    assert {status for status, _, _ in first} == {503}, first
    assert len({detail for _, detail, _ in first}) == 1 and "Kafka" in first[0][1], first
    assert max(elapsed for _, _, elapsed in first) < 8.0, first
    assert "nothing was stored, send again" in first[0][1], first  # nothing reached a producer
    # Counted: one attempt, not acknowledged; the seven that waited for it got its answer.
    assert failures() == {"not_acknowledged": 1, "outage": 7, "busy": 0}
    # Right after: the failure is remembered, answered at once with the same message.
    again = asyncio.run(wave(8))
    assert {(status, detail) for status, detail, _ in again} == {(503, first[0][1])}, again
    assert max(elapsed for _, _, elapsed in again) < 1.5, again
    assert failures() == {"not_acknowledged": 1, "outage": 15, "busy": 0}
    # Every 503 says when to try again: when the remembered failure expires.
    assert retry_after == [str(math.ceil(feedback.OUTAGE_SECONDS))] * 16


class FailingProducer:
    attempts = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        FailingProducer.attempts += 1
        raise KafkaAdapterError(f"cannot reach Kafka (attempt {FailingProducer.attempts})")


@contextlib.contextmanager
def failing_producer(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FailingProducer]]:
    FailingProducer.attempts = 0
    monkeypatch.setattr(feedback, "EventProducer", FailingProducer)
    yield FailingProducer


def test_a_failed_producer_creation_is_remembered_then_tried_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pure logic: a stand-in producer that cannot be created."""
    with failing_producer(monkeypatch) as producer:
        publisher = feedback.Publisher(settings)
        messages = [("topic", b"k", b"v")]
        errors = []
        for _ in range(3):
            with pytest.raises(feedback.KafkaUnavailable) as caught:
                publisher.publish(messages, 1.0)
            errors.append(str(caught.value))
        assert producer.attempts == 1  # remembered: no new attempt
        assert errors == [errors[0]] * 3 and "attempt 1" in errors[0]
        monkeypatch.setattr(feedback, "OUTAGE_SECONDS", 0.0)  # the memory expired
        with pytest.raises(feedback.KafkaUnavailable, match="attempt 2"):
            publisher.publish(messages, 1.0)
        assert producer.attempts == 2


# -- 6. a request cancelled before its publish started gives its place back ---------------------
def test_a_publish_cancelled_before_it_started_does_not_keep_its_place() -> None:
    """A cancelled request whose publish still waited for a thread: the job is cancelled and
    `_run` never runs. Its place among those in flight was kept for good before (with the last
    place gone, every later request got 503 busy)."""
    publisher = feedback.Publisher(Settings(kafka_bootstrap_servers="127.0.0.1:1"), max_in_flight=1)
    gate = threading.Event()
    publisher._executor.submit(gate.wait)  # its only thread is busy: the publish queues

    async def cancelled() -> int:
        task = asyncio.create_task(publisher.publish_async([("t", b"k", b"v")], 0.1))
        await asyncio.sleep(0)  # admitted and queued
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gate.set()
        deadline = time.monotonic() + 5
        while publisher._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return publisher._in_flight

    try:
        assert asyncio.run(cancelled()) == 0
        assert not publisher._probing
    finally:
        gate.set()
        publisher.close()

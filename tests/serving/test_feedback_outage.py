"""The closed loop when the broker is lost after its producer exists (the test's own broker,
stopped with SIGSTOP: as behind a network black hole, sends wait and nothing answers).

Fail fast and bounded: at most `feedback.MAX_PUBLISHES_IN_FLIGHT` requests wait for the publish
timeout, the others get 503 at once (``busy``); after a timeout, every request gets 503 at once
for `feedback.OUTAGE_SECONDS` (``outage``), then one tries again while the others still get
it. Each 503 says truly whether its events may have been stored: those of a timed-out publish
are delivered by the producer once the broker is back; those answered at once never are.
Every 503 is counted in ``riverstream_closed_loop_publish_failures_total``."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from schemas.settings import Settings
from serving import feedback
from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.dev.services import ServiceManager
from stream.kafka.client import read_all
from tests.support.outage import private_kafka
from tests.support.procs import freeze
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_kafka"]  # a fixture

BOUND = 3  # publishes in flight (32 in production: fewer requests show the same)
Answer = tuple[str, int, str, str | None, float]  # id, status, detail, Retry-After, seconds


def wave(app: Any, ids: list[str]) -> list[Answer]:
    """POST one label per id to ``app``, all at once: each answer with its time."""

    async def run() -> list[Answer]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

            async def one(event_id: str) -> Answer:
                start = time.monotonic()
                response = await client.post(
                    "/v1/labels", json={"id": event_id, "time": 1, "label": True}
                )
                detail = response.json().get("detail", "")
                retry = response.headers.get("retry-after")
                return event_id, response.status_code, detail, retry, time.monotonic() - start

            return await asyncio.gather(*(one(i) for i in ids))

    return asyncio.run(run())


def test_a_broker_lost_after_the_producer_exists_is_answered_fast_and_bounded(
    settings: Settings,
    private_kafka: tuple[ServiceManager, str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    manager, bootstrap = private_kafka
    monkeypatch.setattr(feedback, "MAX_PUBLISHES_IN_FLIGHT", BOUND)
    monkeypatch.setattr(feedback, "OUTAGE_SECONDS", 60.0)  # remembered throughout the waves
    s = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
    metrics = ServingMetrics(CollectorRegistry())
    app = create_app(s, metrics=metrics)
    request.addfinalizer(app.state.publisher.close)  # no producer left retrying a gone broker
    timeout = feedback.PUBLISH_TIMEOUT_SECONDS
    # an answer that waited for the publish timeout, else one given without waiting for it (what
    # each says is checked too: the time alone only sorts them, as a loaded machine may be slow)
    waited = timeout - 0.5
    answers: list[Answer] = []

    def failures() -> dict[str, float]:
        counter = metrics.closed_loop_publish_failures_total
        return {r: counter.labels(r)._value.get() for r in ("not_acknowledged", "outage", "busy")}

    # The producer exists: a label stored.
    answers += wave(app, ["before"])
    assert answers[0][1] == 202, answers
    broker = manager.running()["kafka"]
    freeze(broker.pid)  # every thread stopped: none still answering
    try:
        # 1. Eight requests at once: BOUND wait for the publish timeout, the others get 503 at
        # once (the in-flight bound, not a queue behind the timeouts), nothing sent.
        first = wave(app, [f"w{i}" for i in range(8)])
        answers += first
        slow = [a for a in first if a[4] >= waited]
        fast = [a for a in first if a[4] < waited]
        for _, status, detail, retry, _ in slow:  # their events were handed to the producer
            assert status == 503 and "Kafka did not acknowledge" in detail, first
            assert "may have been stored" in detail and "nothing was stored" not in detail
            assert "sending them all again is safe" in detail, first
            assert detail.startswith(f"Kafka did not acknowledge within {timeout:g} s;"), first
            assert retry == "60", first
        assert len(slow) == BOUND and len(fast) == 8 - BOUND, first
        for _, status, detail, retry, _ in fast:
            assert status == 503 and "the most in flight" in detail, first
            assert detail.endswith("nothing was stored, send again") and retry == "1", first
        assert failures() == {"not_acknowledged": BOUND, "outage": 0, "busy": 8 - BOUND}
        cause = slow[0][2].split(";")[0]

        # 2. Right after: the timeout is remembered, every request answered at once with it.
        second = wave(app, [f"r{i}" for i in range(4)])
        answers += second
        for _, status, detail, retry, elapsed in second:
            assert (status, detail) == (503, f"{cause}; nothing was stored, send again"), second
            assert elapsed < waited and retry is not None and 1 <= int(retry) <= 60, second
        assert failures() == {"not_acknowledged": BOUND, "outage": 4, "busy": 8 - BOUND}

        # 3. Once the memory expired, one request tries again; the others still get the 503.
        monkeypatch.setattr(feedback, "OUTAGE_SECONDS", 0.0)
        third = wave(app, [f"p{i}" for i in range(3)])
        answers += third
        probe = [a for a in third if a[4] >= waited]
        assert len(probe) == 1 and "may have been stored" in probe[0][2], third
        others = [a for a in third if a is not probe[0]]
        assert all(a[1] == 503 and a[4] < waited and a[2].startswith(cause) for a in others), third
        assert all("nothing was stored" in a[2] for a in others), third
        assert failures() == {"not_acknowledged": BOUND + 1, "outage": 6, "busy": 8 - BOUND}
    finally:
        os.kill(broker.pid, signal.SIGCONT)

    # 4. The broker back: the next request that tries is acknowledged (ids of their own).
    tries = iter(range(1000))

    def stored_again() -> bool:
        answer = wave(app, [f"after{next(tries)}"])[0]
        answers.append(answer)
        return answer[1] == 202

    wait_until(stored_again, 60, "a label stored after the outage", detail=lambda: answers[-1])

    # 5. What each answer said is what the topic holds: the 202s, and the events that "may
    # have been stored" are (the producer delivered them after the requests gave up); those
    # answered "nothing was stored" are not.
    stored = {a[0] for a in answers if a[1] == 202}
    maybe = {a[0] for a in answers if a[1] == 503 and "may have been stored" in a[2]}
    never = {a[0] for a in answers if a[1] == 503 and "nothing was stored" in a[2]}
    assert len(stored) >= 2 and len(maybe) == BOUND + 1 and len(never) >= 8, answers
    assert stored | maybe | never == {a[0] for a in answers}, answers

    def topic() -> set[str]:
        return {orjson.loads(r.value)["id"] for r in read_all(bootstrap, [s.topic_labels])}

    wait_until(lambda: topic() >= stored | maybe, 60, "the events sent", detail=topic)
    assert topic() == stored | maybe

"""The API stopping while logs of answers already sent wait for the broker (`serving.feedback`,
`Publisher.close`): the producer's close gives up after 10 s and fails what it still holds
(`EventProducer.close`), so those logs are each counted in
``riverstream_closed_loop_publish_failures_total`` and logged, the stop goes on, and no thread
of the producer is left retrying them.
On real Redis and a broker of this test's own, stopped with SIGSTOP (as behind a network black
hole: sends wait and nothing answers)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from schemas.settings import Settings
from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.dev.services import ServiceManager
from tests.serving.test_feedback_shadows_later import gate, shadowed
from tests.support.outage import private_kafka
from tests.support.procs import freeze
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["gate", "private_kafka"]  # fixtures


def test_logs_unacknowledged_when_the_api_stops_are_counted_and_the_stop_completes(
    settings: Settings,
    kit: Any,
    private_kafka: tuple[ServiceManager, str],
    gate: threading.Event,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager, bootstrap = private_kafka
    s, _, x = shadowed(settings, kit)
    s = s.model_copy(update={"kafka_bootstrap_servers": bootstrap})
    gate.set()  # the shadows answer at once
    metrics = ServingMetrics(CollectorRegistry())
    counter = metrics.closed_loop_publish_failures_total
    app = create_app(s, metrics=metrics)
    publisher, shadows = app.state.publisher, app.state.graphs.shadows
    broker = manager.running()["kafka"]

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://api") as client,
        ):

            async def predict(event_id: str) -> httpx.Response:
                body = {"id": event_id, "features": x, "log": True}
                return await client.post("/v1/graphs/g/predict", json=body)

            # p1: the producer exists and knows the topics' leaders; its log acknowledged.
            first = await predict("p1")
            assert first.status_code == 200, first.text
            wait_until(lambda: shadows.wait_idle(1), what="p1's shadows")
            wait_until(lambda: [d.done for d in publisher._later] == [True], what="p1's log")
            freeze(broker.pid)
            # p2: answered 200 (nothing refuses it yet), its log handed to the producer.
            second = await predict("p2")
            assert second.status_code == 200, second.text
            wait_until(lambda: shadows.wait_idle(1), what="p2's shadows")
            assert [d.done for d in publisher._later] == [False]  # p2's, unacknowledged
        # The lifespan's end closed the producer: it gave up on p2's log after 10 s.

    caplog.set_level(logging.WARNING, logger="serving.feedback")
    before = set(threading.enumerate())
    try:
        asyncio.run(run())  # the stop does not raise
        assert counter.labels("not_acknowledged")._value.get() == 1  # p2's log, counted
        assert counter.labels("outage")._value.get() == 0
        lost = [r.getMessage() for r in caplog.records if "its log not stored" in r.getMessage()]
        assert len(lost) == 1 and "the API stopped before Kafka acknowledged the log" in lost[0]
        assert not [d for d in publisher._later if not d.done]
        left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
        assert not [name for name in left if name.endswith("network-thread")], left
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    assert counter.labels("not_acknowledged")._value.get() == 1  # told once, not undone

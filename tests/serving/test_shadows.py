"""The shadow runner once it stopped (`serving.shadows.ShadowRunner`): a request answered as the
API stops submits its shadows after the runner's stop. Refused and counted as dropped, as when
its backlog is full: queued, they would run on a new thread that no one stops (started after
the stop), a logged job's log written after the producer's close. The caller is told (False),
so that it logs a logged answer otherwise; nothing raises into the request. Pure logic."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry

from serving.shadows import GraphMetrics, ShadowRunner
from tests.support.shadows import answering, shadow_job
from tests.support.waiting import wait_until


def runner() -> ShadowRunner:
    return ShadowRunner(GraphMetrics.for_registry(CollectorRegistry()))


def dropped(shadows: ShadowRunner, graph: str = "g") -> float:
    return float(shadows.metrics.shadow_dropped.labels(graph=graph)._value.get())


def shadow_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("graph-shadows")]


def test_a_job_submitted_after_the_stop_is_dropped_and_counted() -> None:
    shadows = runner()
    assert shadows.submit(shadow_job(answering(True, "ran")))
    assert shadows.wait_idle(10)
    shadows.stop()
    assert not shadow_threads()
    told: list[Any] = []
    assert not shadows.submit(shadow_job(answering(True, "late"), told.append))
    assert not shadows.submit(shadow_job(answering(True, "late")))
    assert dropped(shadows) == 2
    assert not shadow_threads()  # no thread started after the stop
    assert told == []  # a logged job's caller logs it otherwise
    runs = shadows.metrics.shadow_runs.labels(graph="g", shadow="root.shadow.shadows[0]")
    assert runs._value.get() == 1  # the first job's shadow alone


def test_a_job_submitted_while_the_runner_stops_is_dropped_and_counted() -> None:
    """The stop waits for the running job: a job submitted meanwhile is refused, not run on a
    new thread."""
    shadows = runner()
    gate, started = threading.Event(), threading.Event()

    def held(x: dict[str, Any], context: Any) -> Any:
        started.set()
        gate.wait(10)
        return answering(True, "held")(x, context)

    assert shadows.submit(shadow_job(held))
    wait_until(started.is_set, what="the held job to start")
    stopping = threading.Thread(target=shadows.stop)
    stopping.start()
    try:
        wait_until(lambda: shadows._executor is None, what="the stop to take the executor")
        assert not shadows.submit(shadow_job(answering(True, "late")))
        assert dropped(shadows) == 1
    finally:
        gate.set()
        stopping.join(10)
    assert not stopping.is_alive()
    assert not shadow_threads()

"""Shadows of serving graphs, and the graphs' Prometheus metrics.

Shadows
-------
A ``shadow`` node's primary answers; its shadows are evaluated after the response has been sent,
on one background thread (`ShadowRunner`), against the same model versions as the primary, so
the response is the same bytes whether a shadow ran, failed or was sampled out. Their results are
Prometheus metrics (labels ``graph``, ``shadow`` = the shadow node's path, bounded by the graph
documents): ``riverstream_shadow_runs_total``, ``riverstream_shadow_errors_total`` (with a
``reason``: ``member_unavailable``, ``model_input``, ``graph``, ``error``),
``riverstream_shadow_agreements_total`` (the shadow's prediction equals the primary's: divide by
the runs for the agreement rate; for regressors it counts exact equality only) and
``riverstream_shadow_duration_seconds``. When the backlog exceeds `SHADOW_BACKLOG` requests,
further shadows are dropped and counted (``riverstream_shadow_dropped_total``) rather than let
memory grow; so are those submitted once the runner stopped (the API stops: no thread would run
them).

A logged request's job (`serving.feedback`: a graph predict with ``"log": true``) carries
``then``, its log, called on the same thread once its shadows have run: the client has its
answer by then. Such a job's log is never dropped once queued: `ShadowRunner.stop` writes the
logs of the logged jobs it cancels (their answers were sent) without their shadows' answers,
and drops the others. Their shadows are not run (nor scored): 1000 queued jobs of a 50 ms
shadow would hold the API's stop for 50 s, past a pod's grace period (30 s), before the
producer's close starts, and every log would be lost with the process; the learner still
learns from, and scores, each served answer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from learners.graph import (
    GraphAnswer,
    GraphInputError,
    MemberUnavailable,
    ShadowResult,
    run_shadows,
)
from learners.predictor import MODEL_INPUT_ERRORS
from schemas.graph_errors import GraphError
from stream.store.graph_follower import ServedModels

log = logging.getLogger(__name__)

SHADOW_BACKLOG = 1000
"""Most requests whose shadows wait to run; beyond, shadows are dropped (and counted)."""
SHADOW_BUCKETS = (1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class GraphMetrics:
    """The graphs' and shadows' metrics, registered once per Prometheus registry."""

    _by_registry: ClassVar[dict[int, tuple[CollectorRegistry, GraphMetrics]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.graph_version = Gauge(
            "riverstream_graph_version", "Graph version served (min over live workers).",
            ["graph"], multiprocess_mode="livemin", registry=r,
        )  # fmt: skip
        self.graph_swaps = Counter(
            "riverstream_graph_swaps", "Graph versions swapped in.", ["graph"], registry=r
        )
        self.graphs_refused = Counter(
            "riverstream_graphs_refused", "Graph versions refused (invalid documents).",
            ["graph", "reason"], registry=r,
        )  # fmt: skip
        self.shadow_runs = Counter(
            "riverstream_shadow_runs", "Shadow evaluations run.", ["graph", "shadow"], registry=r
        )
        self.shadow_errors = Counter(
            "riverstream_shadow_errors", "Shadow evaluations that raised (the request was fine).",
            ["graph", "shadow", "reason"], registry=r,
        )  # fmt: skip
        self.shadow_agreements = Counter(
            "riverstream_shadow_agreements",
            "Shadow evaluations whose prediction equals the primary answer's.",
            ["graph", "shadow"], registry=r,
        )  # fmt: skip
        self.shadow_dropped = Counter(
            "riverstream_shadow_dropped", "Shadowed requests dropped: backlog full, or stopped.",
            ["graph"], registry=r,
        )  # fmt: skip
        self.shadow_duration_seconds = Histogram(
            "riverstream_shadow_duration_seconds", "Time to evaluate one shadow.",
            ["graph", "shadow"], buckets=SHADOW_BUCKETS, registry=r,
        )  # fmt: skip

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> GraphMetrics:
        """The metrics on ``registry``, created on first use (a registry refuses a second
        registration of the same names)."""
        with cls._lock:
            hit = cls._by_registry.get(id(registry))
            if hit is None or hit[0] is not registry:
                hit = (registry, cls(registry))
                cls._by_registry[id(registry)] = hit
            return hit[1]

    # GraphFollowerMetrics
    def graph_swapped(self, graph: str, version: int) -> None:
        self.graph_version.labels(graph=graph).set(version)
        self.graph_swaps.labels(graph=graph).inc()

    def graph_refused(self, graph: str, reason: str) -> None:
        self.graphs_refused.labels(graph=graph, reason=reason).inc()


ShadowsDone = Callable[[list[list[ShadowResult]]], None]
"""What runs once a job's shadows have: given, per answer, its shadows' results."""


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """The shadows of one request, to run after its response: each answer lists its pending
    shadows (`learners.graph.GraphAnswer.shadows`) and is paired with its features. ``then``:
    called with the results once they have run, on the runner's thread (a logged request's
    log, `serving.feedback`); called also when the shadows could not all run, with those that
    did."""

    graph: str
    answers: tuple[tuple[GraphAnswer, dict[str, Any]], ...]
    models: ServedModels
    then: ShadowsDone | None = None


def _shadow_reason(error: Exception) -> str:
    if isinstance(error, MemberUnavailable):
        return "member_unavailable"
    if isinstance(error, GraphError):
        return "graph"
    if isinstance(error, (*MODEL_INPUT_ERRORS, GraphInputError)):
        return "model_input"
    return "error"


class ShadowRunner:
    """Runs shadow jobs on one background thread; never raises into its caller."""

    def __init__(self, metrics: GraphMetrics, backlog: int = SHADOW_BACKLOG) -> None:
        self.metrics = metrics
        self.backlog = backlog
        self._slots = threading.BoundedSemaphore(backlog)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._logged: dict[Future[None], ShadowJob] = {}  # queued jobs with a ``then``
        self._stopped = False  # for good: `stop` ran, or runs

    def submit(self, job: ShadowJob) -> bool:
        """Queue ``job``; False and counted as dropped when the backlog is full, or once the
        runner stopped (no thread would run it: a request answered as the API stops); then
        ``job.then`` is not called: the caller logs otherwise. Never raises."""
        future: Future[None] | None = None
        if self._slots.acquire(blocking=False):
            with self._lock, contextlib.suppress(RuntimeError):  # the interpreter exits
                if not self._stopped:
                    if self._executor is None:
                        self._executor = ThreadPoolExecutor(1, thread_name_prefix="graph-shadows")
                    future = self._executor.submit(self._run, job)
                    if job.then is not None:
                        self._logged[future] = job
            if future is None:
                self._slots.release()
        if future is None:
            self.metrics.shadow_dropped.labels(graph=job.graph).inc()
            return False
        if job.then is not None:
            future.add_done_callback(self._forget)
        return True

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._logged.pop(future, None)

    def _run(self, job: ShadowJob) -> None:
        done: list[list[ShadowResult]] = []
        try:
            for answer, x in job.answers:
                results = run_shadows(answer, x, job.models)
                self.record(job.graph, results)
                done.append(results)
        except Exception:  # pragma: no cover - run_shadows captures what shadows raise
            log.exception("shadow job of graph %s failed", job.graph)
        finally:
            try:
                if job.then is not None:
                    job.then(done)
            except Exception:
                log.exception("after the shadows of graph %s", job.graph)
            finally:
                self._slots.release()

    def record(self, graph: str, results: list[ShadowResult]) -> None:
        """The metrics of shadow evaluations of ``graph``."""
        m = self.metrics
        for result in results:
            labels = {"graph": graph, "shadow": result.path}
            m.shadow_runs.labels(**labels).inc()
            m.shadow_duration_seconds.labels(**labels).observe(result.seconds)
            if result.error is not None:
                reason = _shadow_reason(result.error)
                m.shadow_errors.labels(**labels, reason=reason).inc()
            elif result.agrees:
                m.shadow_agreements.labels(**labels).inc()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every queued job has run within ``timeout`` seconds (for tests, shutdown)."""
        with self._lock:
            executor = self._executor
        if executor is None:
            return True
        done = threading.Event()
        try:
            executor.submit(done.set)  # one thread: it runs after everything queued before
        except RuntimeError:
            return True
        return done.wait(timeout)

    def stop(self) -> None:
        """Finish the running job, drop the queued ones (a restarted process starts afresh)
        but the logs of logged requests: their answers were sent, so their logs are written
        here, on the caller's thread, before it goes on to close the publisher; without their
        shadows' answers (``then([])``): their shadows are not run, which would delay the
        logs by the whole backlog's shadows. For good: a job submitted from now on is
        dropped (`submit`), not run on a thread no one would stop."""
        with self._lock:
            self._stopped = True
            executor, self._executor = self._executor, None
            logged, self._logged = self._logged, {}
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
            for future, job in logged.items():
                if future.cancelled() and job.then is not None:
                    try:
                        job.then([])
                    except Exception:
                        log.exception("the log of a queued job of graph %s", job.graph)

"""What the learner and its observer see of each other.

The learning loop (`stream.learner.loop.Learner`) calls an `Observer` after each batch, after
each snapshot and when it stops; the observer reads the learner through a `LearnerView`. The
Prometheus exporter (`stream.learner.observer.PrometheusObserver`) is the observer the CLI
installs; the loop does not import it (nor prometheus_client), only these protocols.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from learners.core import LearningCore
    from stream.checkpoint.protocol import SnapshotResult
    from stream.kafka.client import RecordRun
    from stream.learner.outage import Outage

log = logging.getLogger(__name__)


@dataclass
class LearnerStats:
    """What the loop has done so far (also the source of its Prometheus metrics)."""

    consumed: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    snapshots: int = 0
    last_snapshot_version: int | None = None
    max_stall_seconds: float = 0.0
    restored_from: int | None = None
    rollbacks: int = 0
    # the observer's failures by exception type: counted and logged, learning goes on
    observer_errors: dict[str, int] = field(default_factory=dict)


class LearnerView(Protocol):
    """What an observer reads of the learner (`stream.learner.loop.Learner` has this shape)."""

    @property
    def core(self) -> LearningCore:
        """The models, their metrics and counters, the join's counters and outcomes."""
        ...

    @property
    def stats(self) -> LearnerStats:
        """What the loop has done so far (consumed, dead letters, snapshots)."""
        ...

    @property
    def outage(self) -> Outage:
        """Whether Redis is reachable."""
        ...

    def timings(self) -> dict[str, dict[str, list[float]]]:
        """Per model: sampled predict latencies and amortized learning time per event."""
        ...

    def lags(self) -> dict[str, dict[int, int]]:
        """Messages behind the log end, per topic and partition."""
        ...

    def watermark_delay(self) -> float | None:
        """Newest event time seen minus the watermark (None until known)."""
        ...


class Observer(Protocol):
    """What the learner calls: after each batch (``records`` empty for the last call before
    the final snapshot), after each snapshot (``result.ok`` False if it failed), and ``close``
    once when the loop ends."""

    def after_batch(self, learner: LearnerView, records: list[RecordRun]) -> None: ...

    def snapshot(self, learner: LearnerView, result: SnapshotResult) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class ReportsFailures(Protocol):
    """An observer that exports the count of its own failures. It is handed the live count
    (``stats.observer_errors``, by exception type) once, before any of its calls, and must
    read it where its failing calls cannot stop it from being reported (the Prometheus
    observer: at each scrape)."""

    def report_failures(self, counts: Mapping[str, int]) -> None: ...


class GuardedObserver:
    """An `Observer` whose failures never stop the learner: an exception of the observer (a
    metric it cannot compute on a valid but odd event, a bug) is logged with its type and
    counted in ``stats.observer_errors``; the loop goes on. The first failure of each type is
    logged with its traceback, then at 2, 4, 8, ... of that type. An observer that
    `ReportsFailures` is handed that count when it is guarded."""

    def __init__(self, observer: Observer, stats: LearnerStats) -> None:
        self.observer = observer
        self.stats = stats
        if isinstance(observer, ReportsFailures):
            try:
                observer.report_failures(stats.observer_errors)
            except Exception as exc:
                self._failed("report_failures", exc)

    def after_batch(self, learner: LearnerView, records: list[RecordRun]) -> None:
        try:
            self.observer.after_batch(learner, records)
        except Exception as exc:
            self._failed("after_batch", exc)

    def snapshot(self, learner: LearnerView, result: SnapshotResult) -> None:
        try:
            self.observer.snapshot(learner, result)
        except Exception as exc:
            self._failed("snapshot", exc)

    def close(self) -> None:
        try:
            self.observer.close()
        except Exception as exc:
            self._failed("close", exc)

    def _failed(self, call: str, exc: Exception) -> None:
        kind = type(exc).__name__
        n = self.stats.observer_errors.get(kind, 0) + 1
        self.stats.observer_errors[kind] = n
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...
            log.error(
                "the learner's observer failed in %s (%s, %d so far): %s; learning goes on",
                call, kind, n, exc, exc_info=n == 1,
            )  # fmt: skip

"""What the learner and its observer see of each other.

The learning loop (`stream.learner.loop.Learner`) calls an `Observer` after each batch, after
each snapshot and when it stops; the observer reads the learner through a `LearnerView`. The
Prometheus exporter (`stream.learner.observer.PrometheusObserver`) is the observer the CLI
installs; the loop does not import it (nor prometheus_client), only these protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from learners.core import LearningCore
    from stream.checkpoint.protocol import SnapshotResult
    from stream.kafka.client import RecordRun
    from stream.learner.outage import Outage


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

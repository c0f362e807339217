"""The learner's side of the learning curve (the format and the semantics are in
`stream.store.trace`).

The learning core marks every model's metrics every K joined labels (`learners.core.CurveMark`).
`TraceRecorder` drains those marks after each step of the loop, stamps them with the wall-clock
time, and keeps them until a snapshot covers them: `for_snapshot` hands every kept point to the
snapshot (`stream.checkpoint.protocol.Snapshotter.take`), which writes them in its MULTI/EXEC;
`written` forgets them once that snapshot succeeded (a failed one leaves them for the next).

The recorder also keeps the trace's **lineage**, saved in every checkpoint: a replay from an
older checkpoint starts a new epoch at that checkpoint's label count (`branch`), so the next
snapshot deletes the points of the abandoned timeline before it appends the new ones.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from stream.store.trace import Lineage, TracePoint, TraceWrite

if TYPE_CHECKING:
    from learners.core import CurveMark, LearningCore

LINEAGE_EXTRA = "trace_lineage"
"""The checkpoint extra (`stream.learner.loop.Learner.extras`) holding the lineage."""


def fresh_lineage() -> Lineage:
    """The lineage of a stream learned from the start: one epoch, a new random id."""
    return [(0, uuid.uuid4().hex)]


class TraceRecorder:
    """Marks collected from the core, kept until a snapshot has written them."""

    def __init__(
        self, every: int, max_points: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.every = every
        self.max_points = max_points
        self.clock = clock
        self.lineage: Lineage = fresh_lineage()
        self._kept: list[tuple[CurveMark, float]] = []
        self._in_flight: int | None = None

    def attach(self, core: LearningCore) -> None:
        """Make ``core`` mark the curve every `every` labels (a restored core too)."""
        core.trace_every = self.every

    def collect(self, core: LearningCore) -> None:
        """Take the core's new marks, stamped now (at most `max_points` kept, the newest)."""
        if not core.trace_marks:
            return
        now = self.clock()
        self._kept.extend((mark, now) for mark in core.drain_marks())
        if len(self._kept) > self.max_points:  # Redis away for long: older points are dropped
            del self._kept[: len(self._kept) - self.max_points]

    def for_snapshot(self, core: LearningCore) -> TraceWrite:
        """What the snapshot about to be taken of ``core`` writes of the curve: every point
        kept (all of them are covered: the core has processed their labels)."""
        self.collect(core)
        covered = core.counters.labels_joined
        points: dict[str, list[TracePoint]] = {name: [] for name in core.models}
        for mark, wall in self._kept:
            for name, (samples, metrics) in mark.models.items():
                points.setdefault(name, []).append(
                    TracePoint(mark.labels, mark.time, wall, samples, dict(metrics))
                )
        self._in_flight = covered
        return TraceWrite(covered, list(self.lineage), points, self.max_points)

    def written(self) -> None:
        """The snapshot of the last `for_snapshot` succeeded: its points are in Redis."""
        if self._in_flight is not None:
            covered = self._in_flight
            self._kept = [(mark, wall) for mark, wall in self._kept if mark.labels > covered]
            self._in_flight = None

    def adopt(self, core: LearningCore, extras: dict[str, Any]) -> None:
        """Continue from a restored checkpoint: its lineage, nothing kept, ``core`` marking."""
        self.lineage = _lineage(extras.get(LINEAGE_EXTRA)) or fresh_lineage()
        self._kept.clear()
        self._in_flight = None
        core.drain_marks()
        self.attach(core)

    def branch(self, epoch: str, labels: int) -> None:
        """A replay starts from ``labels``: the points after it belong to a new epoch."""
        self.lineage = [(start, e) for start, e in self.lineage if start < labels]
        self.lineage.append((labels, epoch))

    def extra(self) -> list[list[Any]]:
        """The lineage as saved in the checkpoint."""
        return [[start, epoch] for start, epoch in self.lineage]

    @property
    def kept(self) -> int:
        """Points waiting for a snapshot."""
        return len(self._kept)


def _lineage(raw: Sequence[Sequence[Any]] | None) -> Lineage:
    """A lineage read back from a checkpoint.

    >>> _lineage([[0, "a"], [100, "b"]]), _lineage(None)
    ([(0, 'a'), (100, 'b')], [])
    """
    return [(int(start), str(epoch)) for start, epoch in raw or ()]

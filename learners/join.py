"""The event-time join of feature events with their (delayed) label events.

`EventTimeJoin` buffers events as they are read, then releases them in a deterministic
event-time order up to a watermark ``W`` (every event with time < W has arrived):

1. Buffered events are taken in order of ``(time, source, offset)``; at equal times labels
   come before features, as `river.stream.simulate_qa` releases every answer whose time is
   ≤ the time of the next question.
2. A **feature** with time ``t < W`` is *processed*: it becomes a `Pending` record waiting for
   its label and is yielded as ``(pending, None)`` (the core predicts and stores its
   predictions on the record).
3. **Labels** with time ``s < W`` are consumed together with all other labels of the same
   time. Those whose feature is pending are yielded as ``(pending, label)`` in the order the
   features were processed: with (1) this orders joined labels by (label time, feature
   sequence), which is how River's ``bisect.insort`` orders per-event delays.
4. A label whose feature is not pending yet (an *orphan*) waits in the orphan store; when a
   feature with its id is processed it is joined right after it.

Join state is bounded. With the time of the event being processed as the clock, a pending
feature older than ``ttl`` is dropped (``expired_without_label``) and so is an orphan label
(``orphan_labels``); a label arriving after its feature expired thus ends as an orphan. When
more than ``max_pending`` features (or orphan labels) wait, the oldest is evicted and counted
the same way. When more than ``max_pending`` events are buffered because the watermark does
not move, the oldest are processed anyway (``forced_events``): order is then best effort, but
nothing is dropped. An event whose time is below a watermark already passed is *late*: it is
counted (``late_events``) and still processed, at the next `EventTimeJoin.steps`.

A feature whose id is already pending replaces it (``duplicate_features``): ids are reused
only once the previous feature with that id has been labelled or has expired. A second orphan
label for the same id replaces the first, which is counted as an orphan.

Examples
--------
>>> from schemas.events import FeatureEvent, LabelEvent
>>> join = EventTimeJoin()
>>> join.push_label(LabelEvent("a", 2.0, True), (1, 0), 0)
>>> join.push_feature(FeatureEvent("b", 1.0, {"x": 2}), (0, 0), 1)
>>> join.push_feature(FeatureEvent("a", 0.0, {"x": 1}), (0, 0), 0)
>>> [(p.id, label) for p, label in join.steps(2.0)]  # the label (time 2) is not < 2 yet
[('a', None), ('b', None)]
>>> [(p.id, label.label) for p, label in join.steps(3.0)]
[('a', True)]
>>> join.counters.features_processed, join.counters.labels_joined, join.counters.pending_features
(2, 1, 1)
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from schemas.events import FeatureEvent, LabelEvent

Source = tuple[int, int]
_INF = math.inf


@dataclass(slots=True)
class JoinCounters:
    """What the join did so far (totals), and what it holds now (``pending_*``, ``buffered``)."""

    features_processed: int = 0
    labels_joined: int = 0
    expired_without_label: int = 0
    orphan_labels: int = 0
    late_events: int = 0
    pending_features: int = 0
    pending_labels: int = 0
    duplicate_features: int = 0
    forced_events: int = 0
    buffered_events: int = 0


@dataclass(slots=True)
class Pending:
    """A processed feature event waiting for its label, with the predictions made for it."""

    seq: int
    id: str
    time: float
    x: dict[str, Any]
    predictions: Any = None


class EventTimeJoin:
    """Buffers feature and label events and releases them joined, in event-time order.

    Parameters
    ----------
    ttl
        Event-time units a feature waits for its label, and an orphan label for its feature.
    max_pending
        Most pending features, most orphan labels and most buffered events held.
    """

    def __init__(self, *, ttl: float = 1e12, max_pending: int = 1_000_000) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be ≥ 1, got {max_pending}")
        self.ttl = ttl
        self.max_pending = max_pending
        self.counters = JoinCounters()
        self.events_processed = 0
        self._features: list[tuple[float, Source, int, int, FeatureEvent]] = []
        self._labels: list[tuple[float, Source, int, int, LabelEvent]] = []
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._orphans: OrderedDict[str, LabelEvent] = OrderedDict()
        self._pushed = 0  # breaks ties between identical (time, source, offset) keys only
        self._seq = 0
        self._passed = -_INF  # highest watermark already passed
        self._clock = -_INF  # time of the latest event processed
        self._nothing_older_than = -_INF  # no expiry check needed while cutoff is below it

    def push_feature(self, event: FeatureEvent, source: Source, offset: int) -> None:
        """Buffer a feature event read at ``offset`` of ``source``."""
        if event.time < self._passed:
            self.counters.late_events += 1
        heapq.heappush(self._features, (event.time, source, offset, self._pushed, event))
        self._pushed += 1

    def push_label(self, event: LabelEvent, source: Source, offset: int) -> None:
        """Buffer a label event read at ``offset`` of ``source``."""
        if event.time < self._passed:
            self.counters.late_events += 1
        heapq.heappush(self._labels, (event.time, source, offset, self._pushed, event))
        self._pushed += 1

    def steps(self, watermark: float) -> Iterator[tuple[Pending, LabelEvent | None]]:
        """Release every buffered event that is safe below ``watermark`` (``inf``: all).

        Yields ``(pending, None)`` for a processed feature and ``(pending, label)`` for a
        joined label. The records must be consumed in order: exhaust the iterator.
        """
        features, labels, counters = self._features, self._labels, self.counters
        limit = self.max_pending
        while True:
            f_time = features[0][0] if features else _INF
            l_time = labels[0][0] if labels else _INF
            forced = len(features) + len(labels) > limit  # the watermark stalls: take the oldest
            bound = _INF if forced else watermark
            before = self.events_processed
            if l_time <= f_time:
                if not l_time < bound:
                    break
                yield from self._consume_labels(l_time)
            else:
                if not f_time < bound:
                    break
                pending, early_label = self._process_feature()
                yield pending, None
                if early_label is not None:
                    yield pending, early_label
            if forced:
                counters.forced_events += self.events_processed - before
        if watermark == _INF:
            self._passed = max(self._passed, self._clock)
        else:
            self._passed = max(self._passed, watermark)
        counters.pending_features = len(self._pending)
        counters.pending_labels = len(self._orphans)
        counters.buffered_events = len(features) + len(labels)

    def _process_feature(self) -> tuple[Pending, LabelEvent | None]:
        """Make the next feature pending; return it with its early label, if one waited."""
        time, _, _, _, event = heapq.heappop(self._features)
        self._expire(time)
        pending = Pending(self._seq, event.id, time, event.features)
        self._seq += 1
        self.events_processed += 1
        self.counters.features_processed += 1
        if self._pending.pop(event.id, None) is not None:
            self.counters.duplicate_features += 1
        self._pending[event.id] = pending
        if len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.counters.expired_without_label += 1
        if self._orphans:
            label = self._orphans.pop(event.id, None)
            if label is not None and self._pending.pop(event.id, None) is not None:
                self.counters.labels_joined += 1
                return pending, label
        return pending, None

    def _consume_labels(self, time: float) -> list[tuple[Pending, LabelEvent]]:
        """Take every label of event time ``time``; return those joined, in feature order."""
        self._expire(time)
        labels, pending_by_id = self._labels, self._pending
        joined: list[tuple[int, Pending, LabelEvent]] = []
        while labels and labels[0][0] == time:
            event = heapq.heappop(labels)[4]
            self.events_processed += 1
            pending = pending_by_id.pop(event.id, None)
            if pending is not None:
                joined.append((pending.seq, pending, event))
            else:
                self._add_orphan(event)
        if len(joined) > 1:
            joined.sort(key=_first)
        self.counters.labels_joined += len(joined)
        return [(pending, event) for _, pending, event in joined]

    def _add_orphan(self, event: LabelEvent) -> None:
        if self._orphans.pop(event.id, None) is not None:
            self.counters.orphan_labels += 1
        self._orphans[event.id] = event
        if len(self._orphans) > self.max_pending:
            self._orphans.popitem(last=False)
            self.counters.orphan_labels += 1

    def _expire(self, now: float) -> None:
        """Drop pending features and orphan labels older than ``ttl`` at event time ``now``."""
        if now > self._clock:
            self._clock = now
        cutoff = now - self.ttl
        if cutoff < self._nothing_older_than:
            return
        pending = self._pending
        while pending and next(iter(pending.values())).time < cutoff:
            pending.popitem(last=False)
            self.counters.expired_without_label += 1
        orphans = self._orphans
        while orphans and next(iter(orphans.values())).time < cutoff:
            orphans.popitem(last=False)
            self.counters.orphan_labels += 1
        # Entries are added in (roughly) time order, so the fronts bound the next expiry.
        self._nothing_older_than = min(
            next(iter(pending.values())).time if pending else now,
            next(iter(orphans.values())).time if orphans else now,
        )


def _first(item: tuple[int, Pending, LabelEvent]) -> int:
    return item[0]

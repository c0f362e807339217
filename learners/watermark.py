"""The event-time watermark of a set of ordered sources.

Each source (a partition of the feature or label topic) is published in event-time order.
Once an event with time ``t`` has been read from a source, every earlier event of that source
has been read too; an event with the same time ``t`` may still follow. Hence, with ``W`` the
smallest of the largest times seen per source, **every event with time < W has arrived**:
exactly the promise `learners.core.LearningCore.advance` needs.

A source that has nothing to deliver (caught up, or empty) would hold the watermark back for
ever; the adapter marks it idle and it stops counting. When every source is idle, or some
source that counts has delivered nothing yet, nothing can be said and `Watermark.value` is
``None``: the caller then either waits or flushes.

Examples
--------
>>> wm = Watermark([(0, 0), (0, 1)])
>>> wm.observe((0, 0), 5.0)
>>> wm.value() is None  # partition (0, 1) has said nothing yet
True
>>> wm.observe((0, 1), 3.0)
>>> wm.value()
3.0
>>> wm.mark_idle((0, 1), True)
>>> wm.value()
5.0
>>> wm.observe((0, 1), 7.0)  # an event makes its source active again
>>> wm.value()
5.0
>>> wm.mark_idle((0, 0), True); wm.mark_idle((0, 1), True)
>>> wm.value() is None
True
"""

from __future__ import annotations

from collections.abc import Iterable

Source = tuple[int, int]
"""(topic index: 0 features, 1 labels; partition)."""


class Watermark:
    """Per-source largest event time seen, and the watermark derived from it.

    Parameters
    ----------
    sources
        Sources expected to deliver events. A registered source holds the watermark back
        (value ``None``) until it has delivered an event or is marked idle.
    """

    def __init__(self, sources: Iterable[Source] = ()) -> None:
        self._max: dict[Source, float | None] = {source: None for source in sources}
        self._idle: set[Source] = set()

    def observe(self, source: Source, time: float) -> None:
        """Record that ``source`` delivered an event at ``time``; the source is active again."""
        seen = self._max.get(source)
        if seen is None or time > seen:
            self._max[source] = time
        self._idle.discard(source)

    def mark_idle(self, source: Source, idle: bool) -> None:
        """Exclude (``idle=True``) or include again a source in the watermark."""
        self._max.setdefault(source, None)
        if idle:
            self._idle.add(source)
        else:
            self._idle.discard(source)

    def idle_sources(self) -> frozenset[Source]:
        """Sources marked idle (left out of the watermark)."""
        return frozenset(self._idle)

    def max_seen(self, source: Source) -> float | None:
        """Largest event time delivered by ``source`` (``None`` before its first event)."""
        return self._max.get(source)

    def rewound(self, earliest: dict[Source, float]) -> Watermark:
        """A copy for a checkpoint that leaves out unprocessed events: each source in
        ``earliest`` has delivered only up to the earliest time of its unprocessed events
        (they are read again after a restore), and is not idle.

        >>> wm = Watermark([(0, 0), (0, 1)])
        >>> wm.observe((0, 0), 9.0); wm.observe((0, 1), 5.0)
        >>> wm.rewound({(0, 0): 6.0}).value(), wm.value()
        (5.0, 5.0)
        >>> wm.rewound({(0, 1): 4.0}).value()
        4.0
        """
        copy = Watermark()
        copy._max = dict(self._max)
        copy._idle = set(self._idle)
        for source, time in earliest.items():
            seen = copy._max.get(source)
            if seen is None or time < seen:
                copy._max[source] = time
            copy._idle.discard(source)
        return copy

    def value(self) -> float | None:
        """Smallest largest-time over active sources: all events with time < it have arrived.

        ``None`` when no active source is known or an active one has delivered nothing yet.
        """
        active: list[float] = []
        for source, seen in self._max.items():
            if source not in self._idle:
                if seen is None:
                    return None
                active.append(seen)
        return min(active) if active else None

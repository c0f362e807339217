"""When the inputs are idle: a source (topic partition) is idle once it has been caught up with
its log end for the idle grace. An idle source stops holding the watermark back, and when every
source is idle the learner releases everything it holds (the end of a replay, a quiet stream).

A quiet stream that resumes gives every source the grace again: records that arrive while every
source is idle mark them all active, each idle again only after a grace without records. The
partitions of a stream resume together, but their first records reach the learner at different
moments (one fetch may bring one partition's batch before another's); a source left idle would
let the first partition's events pass the watermark before the others' older ones arrive.

The log ends come from the Kafka source (`RecordSource.end_offsets`): a partition whose end is
unknown (not fetched yet, or the broker unreachable) is not caught up.
"""

from __future__ import annotations

from collections.abc import Callable

from learners.watermark import Watermark
from stream.checkpoint.protocol import Offsets, offsets_key
from stream.kafka.client import RecordSource

Source = tuple[int, int]  # (0 features | 1 labels, partition)
POLL_SECONDS = 0.1


class Idleness:
    """Which sources are caught up, since when, and how long a poll may wait."""

    def __init__(
        self,
        source: RecordSource,
        sources: list[Source],
        topics: tuple[str, str],
        grace: float,
        clock: Callable[[], float],
    ) -> None:
        self.source, self.sources, self.topics = source, sources, topics
        self.grace, self.clock = grace, clock
        self.reset()

    def reset(self) -> None:
        """Forget what is known (after a seek: positions moved)."""
        self.ends: dict[tuple[str, int], int] = {}
        self.caught_up_since: dict[Source, float] = {}
        self._caught_up_at: dict[Source, int] = {}  # the position each source was caught up at
        self._last_ends_check = -1e9

    def update(self, now: float, got_records: bool, offsets: Offsets, watermark: Watermark) -> None:
        """Refresh the log ends (at most every 0.2 s; 0.5 s while records flow) and mark the
        sources caught up for the grace as idle in ``watermark``.

        Caught up for the grace means no record for the grace: a source that is caught up at
        every check but whose position moved in between (a partition trickling records, each
        read as soon as it comes) starts its grace again. Otherwise it would turn idle while
        still publishing, and the watermark would pass its next, older events (late).

        Records read while every source was idle resume the stream: every source starts its
        grace again (see the module's docstring)."""
        if got_records and self.all_idle():  # as the last update left them, or would have
            self._resume(now, watermark)
        if got_records and now - self._last_ends_check < 0.5:
            return
        if now - self._last_ends_check >= 0.2:
            self.ends = self.source.end_offsets()
            self._last_ends_check = now
        for t, p in self.sources:
            topic = self.topics[t]
            end = self.ends.get((topic, p))  # None: not known, so not caught up
            position = offsets.get(offsets_key(topic, p), 0)
            if end is None or position < end:
                self.caught_up_since.pop((t, p), None)
                self._caught_up_at.pop((t, p), None)
                watermark.mark_idle((t, p), False)
                continue
            if self._caught_up_at.get((t, p)) != position:  # records came: the grace restarts
                self._caught_up_at[(t, p)] = position
                self.caught_up_since[(t, p)] = now
                watermark.mark_idle((t, p), False)
            since = self.caught_up_since.setdefault((t, p), now)
            if now - since >= self.grace:
                watermark.mark_idle((t, p), True)

    def _resume(self, now: float, watermark: Watermark) -> None:
        for source in self.sources:
            watermark.mark_idle(source, False)
            if source in self.caught_up_since:
                self.caught_up_since[source] = now

    def poll_timeout(self, watermark: Watermark) -> float:
        """How long a poll may wait for records: at most `POLL_SECONDS`, and no longer than
        until the next caught-up source turns idle (which may release waiting labels)."""
        idle = watermark.idle_sources()
        turning = [since for s, since in self.caught_up_since.items() if s not in idle]
        if not turning:
            return POLL_SECONDS
        return min(POLL_SECONDS, max(0.0, min(turning) + self.grace - self.clock()))

    def all_caught_up(self) -> bool:
        return len(self.caught_up_since) == len(self.sources)

    def all_idle(self) -> bool:
        now = self.clock()
        return self.all_caught_up() and all(
            now - since >= self.grace for since in self.caught_up_since.values()
        )

    def lags(self, offsets: Offsets) -> dict[str, dict[int, int]]:
        """Messages behind the log end, per topic and partition (as of the last end check)."""
        lags: dict[str, dict[int, int]] = {}
        for (topic, partition), end in self.ends.items():
            position = offsets.get(offsets_key(topic, partition), 0)
            lags.setdefault(topic, {})[partition] = max(0, end - position)
        return lags

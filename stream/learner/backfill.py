"""Backfill: a challenger added to a stream that is already learning catches up from an earlier
time before it learns live.

A learner restarted with an extra model adds it at its checkpoint's position
(`stream.checkpoint.protocol.restore`, `LearningCore.add_models`): the new model knows only what
comes next. With ``riverstream learn --backfill-from TIME``, each model that the checkpoint did
not hold first learns, **alone**, the events published from ``TIME`` up to that position:

1. **Where to start.** Per partition of the feature and label topics, the first offset whose
   record was published at or after ``TIME`` (Kafka's offsets for times: record timestamps are
   the producers', `stream.kafka.times`).
2. **Where to stop.** The checkpoint's position: what the restored core has processed, that is
   every offset before the resume offset, plus the ranges after it that were handled already
   (`SkipRanges`); the gaps between those ranges were not processed and are left out
   (`replay_plan`). Events whose time falls in an excluded range (a rollback with replay) are
   left out, as the live path leaves them out.
3. **Learn.** The records are read with the learner's own consumer kind and decoded by the
   learner's `Ingest` (records the live path dead-lettered already are not sent again), pushed
   into a fresh `LearningCore` holding only the new models, and released by the same event-time
   join and watermark as the live path (a partition read to its stop no longer holds the
   watermark back); then everything is flushed. So each new model, and its progressive metric,
   is what River's progressive validation gives on that sequence.
4. **Hand over.** The new models' states replace the fresh ones in the restored core, at the
   same place; then the learner goes on live. The champion and every model of the checkpoint
   are never touched, nor is any checkpoint or version in Redis (no new prefix either): the
   backfilled models reach Redis with the learner's next snapshot.

The comparison of a champion with a backfilled challenger starts at the position, like any new
comparison: features processed before it carry no prediction of the challenger (``UNSEEN``), so
only labels that both scored are compared. A pending feature from before ``TIME`` whose label
comes live is learned by the challenger too (its prediction is `UNSEEN`, not scored).

A restart before the next snapshot does the backfill again (the checkpoint still lacks the model:
same result); after it, the model is in the checkpoint and ``--backfill-from`` has nothing to do.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from learners.core import LearningCore
from learners.watermark import Watermark
from schemas.errors import ConfigError, KafkaAdapterError
from schemas.events import EventCodec, Limits
from schemas.settings import Settings
from stream.checkpoint.protocol import Offsets, SkipRanges, offsets_key
from stream.kafka.client import RecordRun, RecordSource
from stream.kafka.deadletter import DeadLetters
from stream.learner.ingest import Ingest

log = logging.getLogger(__name__)

Partition = tuple[str, int]
Lookup = Callable[[Sequence[Partition], float], dict[Partition, "int | None"]]
"""Per partition, the first offset published at or after a time (`stream.kafka.times`)."""

_POLL_RECORDS = 10_000
_POLL_SECONDS = 0.2


def parse_since(text: str) -> float:
    """``--backfill-from``: epoch seconds, or an ISO 8601 time (UTC unless it says otherwise).

    >>> parse_since("1764500000"), parse_since("2025-11-30T10:53:20")
    (1764500000.0, 1764500000.0)
    >>> parse_since("yesterday")
    Traceback (most recent call last):
    ...
    schemas.errors.ConfigError: --backfill-from 'yesterday': give epoch seconds or an ISO 8601 time
    """
    from datetime import UTC, datetime

    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ConfigError(
                f"--backfill-from {text!r}: give epoch seconds or an ISO 8601 time"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"--backfill-from {text!r}: not a time")
    return value


def replay_plan(
    start: int, resume: int, handled: Sequence[tuple[int, int]]
) -> tuple[int, list[tuple[int, int]]]:
    """What to read of one partition from ``start``: the offset to stop before, and the ranges
    to leave out, given the checkpoint's ``resume`` offset and the ``handled`` ranges after it
    (processed already: they are read; the gaps between them were not and are left out).

    >>> replay_plan(3, 10, [])
    (10, [])
    >>> replay_plan(3, 10, [(12, 15), (20, 21)])
    (21, [(10, 12), (15, 20)])
    >>> replay_plan(13, 10, [(12, 15)])  # TIME falls after the resume offset
    (15, [(10, 12)])
    >>> replay_plan(11, 10, [])[0] <= 11  # nothing to read
    True
    """
    ranges = sorted((a, b) for a, b in handled if b > resume)
    end = max([resume, *(b for _a, b in ranges)])
    gaps, at = [], resume
    for a, b in ranges:
        if a > at:
            gaps.append((at, a))
        at = max(at, b)
    return end, gaps


@dataclass
class BackfillReport:
    """What one backfill did: the models, from when, what it read and learned, how long."""

    models: list[str]
    since: float
    records: dict[str, int] = field(default_factory=dict)
    """Records read per topic."""
    labels_joined: int = 0
    samples_learned: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        read = sum(self.records.values())
        learned = ", ".join(f"{m} {n}" for m, n in self.samples_learned.items())
        return (
            f"backfill of {', '.join(self.models)} from {self.since:.3f}: {read} records, "
            f"{self.labels_joined} labels joined, samples learned {learned} "
            f"({self.seconds:.1f} s)"
        )


class _AlreadyDeadLettered:
    """A `Sender` for the backfill's `Ingest`: the live path dead-lettered these records when
    it first read them; they are not sent a second time."""

    failed = 0

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        return None

    def flush(self, timeout: float | None = None) -> None:
        return None


class Backfill:
    """Catches new models up from ``since`` (epoch seconds of publication) at learner start."""

    def __init__(
        self,
        settings: Settings,
        since: float,
        *,
        partitions: Sequence[int],
        open_source: Callable[[], RecordSource],
        lookup: Lookup,
        stall_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.since = since
        self.partitions = list(partitions)
        self.open_source = open_source
        self.lookup = lookup
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.topics = (settings.topic_features, settings.topic_labels)

    def catch_up(
        self,
        core: LearningCore,
        names: Sequence[str],
        offsets: Offsets,
        skip: SkipRanges,
        excluded: Sequence[tuple[float, float]] = (),
    ) -> BackfillReport | None:
        """Let the models ``names`` of ``core`` (fresh, just added) learn the events published
        since `since` up to the position ``offsets``/``skip`` of the restored checkpoint, then
        put them back into ``core`` in place (see the module). None when there is none."""
        if not names:
            log.warning(
                "--backfill-from: no model is new to the checkpoint (a fresh stream learns from "
                "the earliest offsets anyway): nothing to backfill"
            )
            return None
        started = time.perf_counter()
        specs = [core.models[name].spec for name in names]
        s = self.settings
        fresh = LearningCore(specs, join_ttl=s.join_ttl, max_pending=s.join_max_pending)
        report = BackfillReport(list(names), self.since)
        parts = [(topic, p) for topic in self.topics for p in self.partitions]
        starts = self.lookup(parts, self.since)
        positions: dict[Partition, int] = {}
        ends: dict[Partition, int] = {}
        leave_out: SkipRanges = {}
        for topic, p in parts:
            key = offsets_key(topic, p)
            start, resume = starts.get((topic, p)), offsets.get(key)
            if start is None or resume is None:
                continue  # nothing published since, or never read by this learner
            end, gaps = replay_plan(start, resume, skip.get(key, []))
            if start >= end:
                continue
            positions[(topic, p)], ends[(topic, p)] = start, end
            if gaps:
                leave_out[key] = gaps
        if positions:
            self._read(fresh, positions, ends, leave_out, list(excluded), report)
        fresh.flush()
        fresh.drain_unusable()  # dead-lettered by the live path when it read them
        for name in names:
            core.models[name] = fresh.models[name]
        report.labels_joined = fresh.counters.labels_joined
        report.samples_learned = {n: fresh.models[n].samples_learned for n in names}
        report.seconds = time.perf_counter() - started
        log.warning("%s", report.describe())
        return report

    def _read(
        self,
        core: LearningCore,
        positions: dict[Partition, int],
        ends: dict[Partition, int],
        leave_out: SkipRanges,
        excluded: list[tuple[float, float]],
        report: BackfillReport,
    ) -> None:
        """Read every partition of ``positions`` up to its end, releasing events as the live
        path does: by the watermark of the partitions still being read."""
        features = self.topics[0]

        def source_of(topic: str, partition: int) -> tuple[int, int]:
            return (0 if topic == features else 1, partition)

        watermark = Watermark([source_of(t, p) for t, p in positions])
        codec = EventCodec(Limits.from_settings(self.settings))
        dead = DeadLetters(_AlreadyDeadLettered(), self.settings.topic_dlq)
        ingest = Ingest(
            codec, dead, self.topics, report.records, {},
            max_future=self.settings.max_future_seconds,
        )  # fmt: skip
        read: Offsets = {}
        remaining = set(positions)
        source = self.open_source()
        try:
            source.assign(dict(positions))
            progress_at = self.clock()
            while remaining:
                runs = [
                    kept
                    for run in source.poll(_POLL_RECORDS, _POLL_SECONDS)
                    if (run.topic, run.partition) in remaining
                    for kept in [_before(run, ends[(run.topic, run.partition)])]
                    if kept is not None
                ]
                if runs:
                    progress_at = self.clock()
                    ingest.push(runs, core, read, watermark, excluded, leave_out)
                for part in list(remaining):
                    if read.get(offsets_key(*part), -1) >= ends[part]:
                        remaining.discard(part)
                        watermark.mark_idle(source_of(*part), True)
                value = watermark.value()
                if value is not None:
                    core.advance(value)
                if remaining and self.clock() - progress_at > self.stall_seconds:
                    waiting = ", ".join(f"{t}/{p}" for t, p in sorted(remaining))
                    raise KafkaAdapterError(
                        f"backfill: nothing read for {self.stall_seconds:g} s from {waiting} "
                        "(is Kafka reachable?); start the learner again to retry"
                    )
        finally:
            source.close()


def _before(run: RecordRun, end: int) -> RecordRun | None:
    """``run`` without its records at or after offset ``end`` (None: nothing left)."""
    if run.offsets[0] >= end:
        return None
    if run.offsets[-1] < end:
        return run
    n = next(i for i, offset in enumerate(run.offsets) if offset >= end)
    return RecordRun(
        run.topic, run.partition, run.offsets[:n], run.values[:n], run.record,
        lambda: run.timestamps()[:n],
    )  # fmt: skip

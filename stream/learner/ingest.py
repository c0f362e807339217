"""Ingest: a batch of Kafka records decoded and pushed into the learning core.

Records come as runs, one partition at a time, in offset order (`stream.kafka.client.RecordRun`):
offsets and the watermark's latest time are updated once per run. A record that fails to
decode goes to the dead-letter topic with its reason; records handled before the checkpoint
the learner resumed from are skipped; events whose time falls in an excluded range (a rollback
with replay) are left out. Valid events that every model raised on come back from the core and
are dead-lettered too.

**An event far in the future** (most often a time sent in milliseconds: 1.7e12 where 1.7e9 was
meant) would carry its partition's watermark, then the join's clock, to the far future: the
features waiting for their labels would expire and every later event would be late; and while
it waits for the watermark, its offset holds the checkpoint back. As Kafka's
``log.message.timestamp.after.max.ms`` refuses a record stamped too far ahead of the broker's
clock, an event whose time is more than ``max_future`` seconds (`RIVERSTREAM_MAX_FUTURE_SECONDS`)
after its own record's Kafka timestamp goes to the dead-letter topic (``event_time_in_future``)
before the watermark or the core sees it. The decision reads the record only (its timestamp is
stored in the log), never the clock: a replay after a crash decides the same, and exactly-once
holds. Timestamps are read only for a run whose latest event time passes ``max_future`` (no
timestamp is smaller than 0), and looked at one by one only when it passes the run's earliest
timestamp by that much.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from operator import attrgetter
from typing import Any, TypeVar

import orjson

from learners.core import LearningCore
from learners.watermark import Watermark
from schemas.errors import SchemaError
from schemas.events import EventCodec, FeatureEvent, LabelEvent
from stream.checkpoint.protocol import Offsets, SkipRanges, kept_indexes, offsets_key
from stream.kafka.client import Record, RecordRun
from stream.kafka.deadletter import DeadLetters
from stream.store.commands import in_ranges

_Event = TypeVar("_Event", FeatureEvent, LabelEvent)
log = logging.getLogger(__name__)
_TIME = attrgetter("time")
IN_FUTURE = "event_time_in_future"
"""The dead-letter reason of an event too far ahead of its record's timestamp."""


class Ingest:
    """Decodes runs of records into the core; counts what it consumed and dead-lettered."""

    def __init__(
        self,
        codec: EventCodec,
        dead_letters: DeadLetters,
        topics: tuple[str, str],
        consumed: dict[str, int],
        dead: dict[str, int],
        *,
        max_future: float = 3600.0,
    ) -> None:
        """``max_future``: `RIVERSTREAM_MAX_FUTURE_SECONDS` (its default here; 0: no check)."""
        self.codec, self.dead_letters, self.topics = codec, dead_letters, topics
        self.consumed, self.dead = consumed, dead
        self.max_future = max_future

    def push(
        self,
        runs: list[RecordRun],
        core: LearningCore,
        offsets: Offsets,
        watermark: Watermark,
        excluded: list[tuple[float, float]],
        skip: SkipRanges,
    ) -> None:
        """Decode and push one batch; ``offsets`` and ``skip`` are updated in place."""
        features_topic = self.topics[0]
        codec, consumed, guard = self.codec, self.consumed, self.max_future > 0
        for run in runs:
            kind = 0 if run.topic == features_topic else 1
            source = (kind, run.partition)
            key = offsets_key(run.topic, run.partition)
            end = run.offsets[-1] + 1
            if skip and key in skip:
                run = _skip_handled(run, key, skip)
            if kind == 0:
                features, refused = codec.decode_features(run.values)
                kept = self._refused(run, refused)
                if features and guard:
                    features, kept = self._in_time(run, features, kept)
                if features:
                    features, kept = _observed(watermark, source, features, kept, excluded)
                    core.push_features(features, source, kept)
            else:
                labels, refused = codec.decode_labels(run.values)
                kept = self._refused(run, refused)
                if labels and guard:
                    labels, kept = self._in_time(run, labels, kept)
                if labels:
                    labels, kept = _observed(watermark, source, labels, kept, excluded)
                    core.push_labels(labels, source, kept)
            offsets[key] = end
            consumed[run.topic] = consumed.get(run.topic, 0) + len(run)
        self.dead_letters.flush()

    def _refused(self, run: RecordRun, refused: list[tuple[int, SchemaError]]) -> list[int]:
        """Dead-letter the records of ``run`` that failed to decode; the others' offsets."""
        if not refused:
            return run.offsets
        for index, error in refused:
            self.dead_letters.send(run.record(index), error)
            self._count(error.reason, 1, str(error))
        bad = {index for index, _ in refused}
        return [offset for i, offset in enumerate(run.offsets) if i not in bad]

    def _in_time(
        self, run: RecordRun, events: list[_Event], offsets: list[int]
    ) -> tuple[list[_Event], list[int]]:
        """``events`` (read at ``offsets`` of ``run``) without those more than ``max_future``
        seconds after their record's timestamp, which are dead-lettered (see the module)."""
        max_future = self.max_future
        top = max(map(_TIME, events))
        if top <= max_future:  # a timestamp is ≥ 0: none can be (times of a small scale)
            return events, offsets
        stamps = run.timestamps()
        if top - min(stamps) / 1000 <= max_future:  # none can be: the usual run
            return events, offsets
        indexes: Sequence[int] = range(len(run))
        if len(offsets) < len(run):  # records refused: the events' indexes in the run
            position = {offset: index for index, offset in enumerate(run.offsets)}
            indexes = [position[offset] for offset in offsets]
        kept: list[_Event] = []
        kept_offsets: list[int] = []
        for event, offset, index in zip(events, offsets, indexes, strict=True):
            stamp = stamps[index]
            if stamp >= 0 and event.time - stamp / 1000 > max_future:
                self._in_future(run.record(index), event.time, stamp)
            else:
                kept.append(event)
                kept_offsets.append(offset)
        return kept, kept_offsets

    def _in_future(self, record: Record, time: float, stamp: int) -> None:
        ahead = time - stamp / 1000
        error = SchemaError(
            IN_FUTURE,
            "time",
            f"event time {time:.17g} is {ahead:.6g} s after its record's Kafka timestamp "
            f"{stamp} ms ({stamp / 1000:.3f} s): more than RIVERSTREAM_MAX_FUTURE_SECONDS "
            f"({self.max_future:g} s). Is it in milliseconds ({time / 1000:.3f} s if so), or "
            "from a clock or time zone ahead of the producer's? Event times are epoch seconds "
            "(or smaller numbers); RIVERSTREAM_MAX_FUTURE_SECONDS=0 turns the check off",
        )
        self.dead_letters.send(record, error)
        self._count(IN_FUTURE, 1, str(error))

    def _count(self, reason: str, n: int, example: str) -> None:
        """Count ``n`` dead letters of ``reason``, and log the first of each reason, then each
        time its count reaches a power of two, with ``example`` (the latest's error): a stream
        whose every event is refused (labels of another type, times in milliseconds) says so
        in the log from its first event, in a line per doubling, not per event.

        >>> ingest = Ingest(None, None, ("f", "l"), {}, dead := {})  # type: ignore[arg-type]
        >>> for _ in range(5):
        ...     ingest._count("schema", 1, "bad")
        >>> dead
        {'schema': 5}
        """
        before = self.dead.get(reason, 0)
        after = self.dead[reason] = before + n
        if after.bit_length() > before.bit_length():  # 1, 2, 4, 8, ... passed
            log.warning(
                "%d events dead-lettered so far with reason %s (logged at each doubling); "
                "the latest: %s", after, reason, example[:500],
            )  # fmt: skip

    def dead_letter_unusable(self, core: LearningCore) -> None:
        """Valid events that every model raised on go to the dead-letter topic, re-encoded,
        with the models' errors and, when the core knows it, where they were read (at least
        once, like every dead letter)."""
        unusable = core.drain_unusable()
        for event in unusable:
            topic = self.topics[0] if event.kind == "feature" else self.topics[1]
            value = _encoded(event.to_event())
            error = "; ".join(event.errors)
            self.dead_letters.send_unusable(
                topic, event.id.encode(), value, "model_error", error, event.partition, event.offset
            )
        if unusable:
            last = unusable[-1]
            self._count("model_error", len(unusable), f"{last.kind} {last.id!r}: {last.errors[0]}")
            self.dead_letters.flush()
        dropped, core.unusable_dropped = core.unusable_dropped, 0
        if dropped:  # beyond the core's bound between two drains: counted, never silent
            self.dead["model_error_dropped"] = self.dead.get("model_error_dropped", 0) + dropped
            log.error("%d events no model could use were not kept for the dead letters", dropped)


def _encoded(event: dict[str, Any]) -> bytes:
    """``event`` as JSON: orjson, or the standard library for what orjson refuses (an integer
    beyond 64 bits, valid JSON that msgspec decodes as a Python int): never an exception,
    never a lost dead letter."""
    try:
        return orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(event, default=repr, separators=(",", ":"), ensure_ascii=False).encode()


def _observed(
    watermark: Watermark,
    source: tuple[int, int],
    events: list[_Event],
    offsets: list[int],
    excluded: list[tuple[float, float]],
) -> tuple[list[_Event], list[int]]:
    """Move ``source``'s watermark to the newest of ``events`` (not empty, in time order),
    then leave out the events whose time is in an ``excluded`` range."""
    watermark.observe(source, events[-1].time)
    if not excluded:
        return events, offsets
    kept = [i for i, e in enumerate(events) if not in_ranges(e.time, excluded)]
    return [events[i] for i in kept], [offsets[i] for i in kept]


def _skip_handled(run: RecordRun, key: str, skip: SkipRanges) -> RecordRun:
    """Leave out records handled before the checkpoint this learner resumed from."""
    ranges = skip[key]
    kept = kept_indexes(run.offsets, ranges)
    remaining = [(a, b) for a, b in ranges if b > run.offsets[-1] + 1]
    if remaining:
        skip[key] = remaining
    else:
        del skip[key]
    if len(kept) == len(run):
        return run
    return RecordRun(
        run.topic,
        run.partition,
        [run.offsets[i] for i in kept],
        [run.values[i] for i in kept],
        lambda index: run.record(kept[index]),
        lambda: list(map(run.timestamps().__getitem__, kept)),
    )

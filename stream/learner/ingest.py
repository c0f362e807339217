"""Ingest: a batch of Kafka records decoded and pushed into the learning core.

Records come as runs, one partition at a time, in offset order (`stream.kafka.client.RecordRun`):
offsets and the watermark's latest time are updated once per run. A record that fails to
decode goes to the dead-letter topic with its reason; records handled before the checkpoint
the learner resumed from are skipped; events whose time falls in an excluded range (a rollback
with replay) are left out. Valid events that every model raised on come back from the core and
are dead-lettered too.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

import orjson

from learners.core import LearningCore
from learners.watermark import Watermark
from schemas.errors import SchemaError
from schemas.events import EventCodec, FeatureEvent, LabelEvent
from stream.checkpoint.protocol import Offsets, SkipRanges, kept_indexes, offsets_key
from stream.kafka.client import RecordRun
from stream.kafka.deadletter import DeadLetters
from stream.store.commands import in_ranges

_Event = TypeVar("_Event", FeatureEvent, LabelEvent)
log = logging.getLogger(__name__)


class Ingest:
    """Decodes runs of records into the core; counts what it consumed and dead-lettered."""

    def __init__(
        self,
        codec: EventCodec,
        dead_letters: DeadLetters,
        topics: tuple[str, str],
        consumed: dict[str, int],
        dead: dict[str, int],
    ) -> None:
        self.codec, self.dead_letters, self.topics = codec, dead_letters, topics
        self.consumed, self.dead = consumed, dead

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
        codec, consumed = self.codec, self.consumed
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
                if features:
                    features, kept = _observed(watermark, source, features, kept, excluded)
                    core.push_features(features, source, kept)
            else:
                labels, refused = codec.decode_labels(run.values)
                kept = self._refused(run, refused)
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
            self.dead[error.reason] = self.dead.get(error.reason, 0) + 1
        bad = {index for index, _ in refused}
        return [offset for i, offset in enumerate(run.offsets) if i not in bad]

    def dead_letter_unusable(self, core: LearningCore) -> None:
        """Valid events that every model raised on go to the dead-letter topic, re-encoded,
        with the models' errors (at least once, like every dead letter)."""
        unusable = core.drain_unusable()
        for event in unusable:
            topic = self.topics[0] if event.kind == "feature" else self.topics[1]
            value = _encoded(event.to_event())
            error = "; ".join(event.errors)
            self.dead_letters.send_unusable(topic, event.id.encode(), value, "model_error", error)
        if unusable:
            self.dead["model_error"] = self.dead.get("model_error", 0) + len(unusable)
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
    )

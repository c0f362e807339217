"""Helpers that replay dataset events into a `LearningCore` the way the stream adapter would."""

from __future__ import annotations

import random
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from river import evaluate

from learners.core import LearningCore
from learners.datasets import load_dataset, river_delay
from learners.specs import ModelSpec, build_metric
from learners.watermark import Watermark
from schemas.events import FeatureEvent, LabelEvent

Event = FeatureEvent | LabelEvent


def river_reference(
    dataset: str, spec: ModelSpec, metric: str, delay: str | int, *, limit: int, seed: int
) -> tuple[float, Any]:
    """River's own progressive validation: final metric value and final model."""
    model = spec.build()
    samples: Any = load_dataset(dataset, limit=limit, seed=seed)  # River types x as Hashable keys
    result = evaluate.progressive_val_score(
        samples,
        model,
        build_metric(metric),
        delay=river_delay(delay, seed),
    )
    return result.get(), model


def feed_in_order(core: LearningCore, events: Iterable[Event], batch: int) -> None:
    """Push events in emission order from one partition, advancing every ``batch`` events."""
    offsets = [0, 0]
    for n, event in enumerate(events, start=1):
        topic = 0 if isinstance(event, FeatureEvent) else 1
        push = core.push_feature if topic == 0 else core.push_label
        push(event, (topic, 0), offsets[topic])  # type: ignore[arg-type]
        offsets[topic] += 1
        if n % batch == 0:
            core.advance(event.time)  # emission is in time order: all before it have arrived
    core.flush()


def partition_of(event_id: str, partitions: int) -> int:
    """Stable partition of an id, like a Kafka key hash."""
    return zlib.crc32(event_id.encode()) % partitions


def feed_partitioned(
    core: LearningCore,
    events: Iterable[Event],
    *,
    partitions: int = 3,
    seed: int = 0,
    advance_every: int = 7,
) -> None:
    """Spread events over ``partitions`` partitions of both topics (each in order), read the
    partitions interleaved at random and advance with the min-of-max watermark."""
    queues: dict[tuple[int, int], deque[Event]] = {
        (topic, p): deque() for topic in (0, 1) for p in range(partitions)
    }
    for event in events:
        topic = 0 if isinstance(event, FeatureEvent) else 1
        queues[(topic, partition_of(event.id, partitions))].append(event)
    watermark = Watermark(queues)
    offsets = dict.fromkeys(queues, 0)
    rng = random.Random(seed)
    live: list[tuple[int, int]] = sorted(queues)
    reads = 0
    while live:
        source = rng.choice(live)
        queue = queues[source]
        if queue:
            event = queue.popleft()
            push = core.push_feature if source[0] == 0 else core.push_label
            push(event, source, offsets[source])  # type: ignore[arg-type]
            offsets[source] += 1
            watermark.observe(source, event.time)
            reads += 1
        if not queue:
            watermark.mark_idle(source, True)
            live.remove(source)
        if reads % advance_every == 0:
            value = watermark.value()
            if value is not None:
                core.advance(value)
    core.flush()


def sample_inputs(dataset: str, n: int = 20, seed: int = 0) -> Sequence[dict[str, Any]]:
    """A few inputs to compare final models on."""
    return [x for x, _ in load_dataset(dataset, limit=n, seed=seed)]

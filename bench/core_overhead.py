"""LearningCore throughput against the bare River loop, in the same run.

Both learn ``logreg`` (StandardScaler | LogisticRegression) on the same ``synth.Agrawal``
samples. The bare loop is ``predict_one`` + ``learn_one`` per sample, labels at once. The core
gets the feature and label events of `learners.datasets.dataset_events` with a label delay of
100 (generated beforehand, not timed), pushed from one partition per topic in runs of
``--batch`` events and advanced after each, so it pays for buffering, ordering, the join and
the Accuracy metric.
Rates are samples per second (one sample = one feature event + one label event). The collector
is set as the learner's loop sets it (`gc.freeze`, young collections every 50 000 allocations);
with Python's defaults the join's bookkeeping alone went from 1.7 to 5.5 µs a sample as the
batches grew from 500 to 50 000 events (each young collection walking the batch), which the
learner never sees.

Usage: ``python bench/core_overhead.py [--samples 20000] [--delay 100] [--batch 500]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from learners.core import LearningCore
from learners.datasets import dataset_events, load_dataset
from learners.specs import ModelSpec
from schemas.events import FeatureEvent
from stream.learner.loop import learning_collector


def bare_river(samples: list, spec: ModelSpec) -> float:
    model: Any = spec.build()
    start = time.perf_counter()
    for x, y in samples:
        model.predict_one(x)
        model.learn_one(x, y)
    return time.perf_counter() - start


def push_batch(core: LearningCore, chunk: list, offsets: list[int]) -> None:
    """Push ``chunk`` as the learner pushes what it consumed (its feature events as one run of
    partition 0 of the features, its labels as one of the labels), then advance the core to
    its last time. ``offsets``: the next offset of each of the two, moved on."""
    features = [e for e in chunk if e.__class__ is FeatureEvent]
    labels = [e for e in chunk if e.__class__ is not FeatureEvent]
    core.push_features(features, (0, 0), list(range(offsets[0], offsets[0] + len(features))))
    core.push_labels(labels, (1, 0), list(range(offsets[1], offsets[1] + len(labels))))
    offsets[0] += len(features)
    offsets[1] += len(labels)
    core.advance(chunk[-1].time)


def learning_core(
    events: list, spec: ModelSpec, batch: int, *, stubbed: bool = False
) -> tuple[float, LearningCore]:
    """Pushed a batch at a time, each topic's events of the batch as one run (as the learner
    pushes what it consumed), then advanced to the batch's last time. ``stubbed``: the model
    neither predicts nor learns (what the join and the core's bookkeeping cost alone)."""
    core = LearningCore([spec])
    if stubbed:
        state = core.models[spec.name]
        state.predict = lambda x: (None, None)  # type: ignore[method-assign]
        state.learn = lambda x, y, prediction: None  # type: ignore[method-assign]
    offsets = [0, 0]
    start = time.perf_counter()
    for first in range(0, len(events), batch):
        chunk = events[first : first + batch]
        push_batch(core, chunk, offsets)
    core.flush()
    return time.perf_counter() - start, core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--delay", default="100")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--model", default="logreg", help="a model kind: logreg, hoeffding, …")
    args = parser.parse_args()

    spec = ModelSpec(args.model, args.model)
    with learning_collector():  # as `Learner.run` sets it
        _compare(args, spec)


def _compare(args: argparse.Namespace, spec: ModelSpec) -> None:
    samples = list(load_dataset("synth.Agrawal", limit=args.samples, seed=42))
    events = list(
        dataset_events("synth.Agrawal", label_delay=args.delay, limit=args.samples, seed=42)
    )
    bare = min(bare_river(samples, spec) for _ in range(args.repeat))
    runs = [learning_core(events, spec, args.batch) for _ in range(args.repeat)]
    core_time, core = min(runs, key=lambda run: run[0])
    assert core.counters.labels_joined == args.samples

    stub_time = min(
        learning_core(events, spec, args.batch, stubbed=True)[0] for _ in range(args.repeat)
    )

    bare_rate, core_rate = args.samples / bare, args.samples / core_time
    stub_rate = args.samples / stub_time
    print(f"samples={args.samples} delay={args.delay} batch={args.batch} model={args.model}")
    print(f"bare River loop : {bare_rate:10,.0f} samples/s  ({1e6 / bare_rate:6.1f} µs/sample)")
    print(f"LearningCore    : {core_rate:10,.0f} samples/s  ({1e6 / core_rate:6.1f} µs/sample)")
    print(f"  model stubbed : {stub_rate:10,.0f} samples/s  ({1e6 / stub_rate:6.1f} µs/sample)"
          "  (the join and the core's bookkeeping alone)")  # fmt: skip
    print(f"ratio core/bare : {core_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()

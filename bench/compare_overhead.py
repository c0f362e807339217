"""What paired champion/challenger comparisons cost the learning core, in the same run.

Two models learn the same ``synth.Agrawal`` events (label delay 100, pushed in runs of
``--batch`` like `bench/core_overhead.py`) in one `LearningCore`, three ways:

* ``none``: no comparison configured (the hot path pays one branch per label);
* ``one``: the pair ``a:b`` compared (a 0/1 loss per model and one betting update per label);
* ``both``: ``a:b`` and ``b:a``.

``--models`` picks the two specs (default ``logreg,logreg``: cheap models, so that the
comparison's share is as visible as it can be). Rates are samples per second (one sample = a
feature event and its label) of **CPU time** of this process (``time.process_time``: on a
machine shared with other jobs, wall time mostly measures the others); each is the best of
``--repeat`` runs, the variants interleaved so that a busy machine slows them alike. The last
line times `ModelComparison.update` alone: the cost per label and per compared pair.

Usage: ``python bench/compare_overhead.py [--samples 20000] [--models logreg,hoeffding]``
"""

from __future__ import annotations

import argparse
import inspect
import time
from typing import Any

from core_overhead import push_batch

from learners.core import LearningCore
from learners.datasets import dataset_events
from learners.specs import ModelSpec


def run(
    events: list[Any], specs: list[ModelSpec], pairs: list[tuple[str, str]], batch: int
) -> float:
    """CPU seconds to push and advance every event, a batch at a time, then flush."""
    # without pairs, the call works on a core from before comparisons too (measured "before")
    core = LearningCore(specs, compare=pairs) if pairs else LearningCore(specs)
    offsets = [0, 0]
    start = time.process_time()
    for first in range(0, len(events), batch):
        chunk = events[first : first + batch]
        push_batch(core, chunk, offsets)
    core.flush()
    return time.process_time() - start


def update_cost(repeat: int) -> float | None:
    """CPU µs of one `ModelComparison.update` (two stored predictions, one label)."""
    try:
        from learners.comparisons import ModelComparison
    except ImportError:  # before comparisons
        return None
    predictions = [(True, None), (False, None)]
    best = float("inf")
    for _ in range(repeat):
        comparison = ModelComparison.fresh("a", "b", "classifier")
        comparison.a, comparison.b = 0, 1
        update = comparison.update
        start = time.process_time()
        for i in range(100_000):
            update(i % 3 == 0, predictions)
        best = min(best, time.process_time() - start)
    return best / 100_000 * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--delay", default="100")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--models", default="logreg,logreg")
    parser.add_argument("--repeat", type=int, default=5, help="best of N runs")
    args = parser.parse_args()

    first, second = args.models.split(",")
    specs = [ModelSpec("a", first), ModelSpec("b", second)]
    events = list(
        dataset_events("synth.Agrawal", label_delay=args.delay, limit=args.samples, seed=42)
    )
    variants: dict[str, list[tuple[str, str]]] = {"none": []}
    if "compare" in inspect.signature(LearningCore).parameters:  # absent before comparisons
        variants["one"] = [("a", "b")]
        variants["both"] = [("a", "b"), ("b", "a")]
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(args.repeat):
        for name, pairs in variants.items():
            best[name] = min(best[name], run(events, specs, pairs, args.batch))

    print(
        f"samples={args.samples} delay={args.delay} batch={args.batch} "
        f"models=a:{first},b:{second} best of {args.repeat}"
    )
    base = args.samples / best["none"]
    for name, seconds in best.items():
        rate = args.samples / seconds
        print(
            f"comparisons {name:4s}: {rate:10,.0f} samples/s  ({1e6 / rate:6.1f} µs/sample)  "
            f"ratio {rate / base:.3f}"
        )
    cost = update_cost(args.repeat)
    if cost is not None:
        print(f"ModelComparison.update alone: {cost:.2f} µs per label and pair (CPU)")


if __name__ == "__main__":
    main()

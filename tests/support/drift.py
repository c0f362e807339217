"""A stream with a concept drift, and the two models of the champion/challenger tests.

`samples` is River's ``Sine`` whose label function is inverted (``classification_function``
0 → 1) around sample ``position``: a Hoeffding tree (the champion) keeps most of what it
learned before the drift, a Hoeffding *adaptive* tree (the challenger) notices the drift with
ADWIN and regrows, so it overtakes the champion after the drift (the same configuration as
`tests/learners/test_compare.py`). `events` turns the samples into feature and label events
exactly as `learners.datasets.dataset_events` does for River's datasets. `champion` and
`challenger` are ``package.module:function`` model factories for ``learn --model``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from river import base, tree
from river.datasets import synth

from schemas.events import FeatureEvent, LabelEvent

CHAMPION = "tests.support.drift:champion"
CHALLENGER = "tests.support.drift:challenger"


def champion() -> base.Classifier:
    return tree.HoeffdingTreeClassifier()


def challenger() -> base.Classifier:
    return tree.HoeffdingAdaptiveTreeClassifier(seed=1)


def samples(n: int, position: int = 1_000) -> list[tuple[dict[str, Any], Any]]:
    """``n`` samples of Sine with its concept inverted at ``position`` (deterministic)."""
    stream = synth.ConceptDriftStream(
        stream=synth.Sine(classification_function=0, seed=7),
        drift_stream=synth.Sine(classification_function=1, seed=8),
        position=position,
        width=20,
        seed=7,
    )
    return [({str(k): v for k, v in x.items()}, y) for x, y in stream.take(n)]


def events(
    data: list[tuple[dict[str, Any], Any]], delay: int
) -> Iterator[FeatureEvent | LabelEvent]:
    """Feature ``i`` at time ``i``, its label at ``i + delay``, in global event-time order
    (labels first at equal times), as `learners.datasets.dataset_events`."""
    waiting: list[tuple[int, int, Any]] = []
    for i, (x, y) in enumerate(data):
        while waiting and waiting[0][0] <= i:
            time, j, label = heapq.heappop(waiting)
            yield LabelEvent(str(j), float(time), label)
        yield FeatureEvent(str(i), float(i), x)
        heapq.heappush(waiting, (i + delay, i, y))
    while waiting:
        time, j, label = heapq.heappop(waiting)
        yield LabelEvent(str(j), float(time), label)

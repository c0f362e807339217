"""River datasets as the feature and label events that ``riverstream replay`` publishes.

Sample ``i`` of a dataset becomes the feature event ``FeatureEvent(id=str(i), time=i, x)`` and
the label event ``LabelEvent(id=str(i), time=i + d_i, y)``. The delay ``d_i`` is a constant, or
drawn per event uniformly from ``[A, B]`` by ``random.Random(seed)``. Events come out in
global event-time order: labels sorted by (time, i); at equal times labels come before
features, but a label never before its own feature. This is the order of
`river.stream.simulate_qa`, so `river_delay` gives the ``delay`` under which
``river.evaluate.progressive_val_score`` sees exactly the same stream.

Examples
--------
>>> events = dataset_events("Phishing", label_delay=1, limit=3)
>>> [(type(e).__name__[0], e.id, e.time) for e in events]  # doctest: +NORMALIZE_WHITESPACE
[('F', '0', 0.0), ('L', '0', 1.0), ('F', '1', 1.0), ('L', '1', 2.0), ('F', '2', 2.0),
 ('L', '2', 3.0)]
>>> parse_label_delay("random:0-80")
(0, 80)
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import random
from collections.abc import Iterable, Iterator
from typing import Any

from river import datasets
from river.datasets import base as datasets_base

from schemas.errors import RiverstreamError
from schemas.events import FeatureEvent, LabelEvent

LabelDelay = int | tuple[int, int]
"""A constant delay, or the bounds (A, B) of a uniform random integer delay."""


class DatasetError(RiverstreamError):
    """A dataset name or a label delay cannot be resolved."""


class RandomDelay:
    """Per-event integer delays, uniform in ``[low, high]``, drawn in sample order.

    Usable as River's ``delay`` callable: River calls it once per sample, in order, so it
    yields the same sequence as the one used by `dataset_events` with the same seed.

    >>> delay = RandomDelay(0, 80, seed=1)
    >>> [delay({}, None) for _ in range(4)]
    [17, 72, 8, 32]
    """

    def __init__(self, low: int, high: int, seed: int | None) -> None:
        self.low, self.high = low, high
        self._rng = random.Random(seed)

    def __call__(self, x: Any = None, y: Any = None) -> int:
        return self._rng.randint(self.low, self.high)


def parse_label_delay(text: str | int) -> LabelDelay:
    """Read a label delay: ``"50"`` (or ``50``), or ``"random:A-B"`` with ``0 ≤ A ≤ B``.

    >>> parse_label_delay("50"), parse_label_delay(0)
    (50, 0)
    >>> parse_label_delay("random:9-3")
    Traceback (most recent call last):
    ...
    learners.datasets.DatasetError: invalid label delay 'random:9-3': expected N or random:A-B with 0 ≤ A ≤ B
    """
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    raw = str(text).strip()
    error = DatasetError(f"invalid label delay {text!r}: expected N or random:A-B with 0 ≤ A ≤ B")
    if raw.isdigit():
        return int(raw)
    kind, _, bounds = raw.partition(":")
    low, _, high = bounds.partition("-")
    if kind != "random" or not (low.isdigit() and high.isdigit()) or int(low) > int(high):
        raise error
    return int(low), int(high)


def river_delay(label_delay: str | int, seed: int | None = None) -> int | RandomDelay:
    """The ``delay`` argument of River's ``progressive_val_score`` matching `dataset_events`.

    A fresh `RandomDelay` is returned on every call: give each River run its own.

    >>> river_delay(5), type(river_delay("random:1-2", seed=0)).__name__
    (5, 'RandomDelay')
    """
    parsed = parse_label_delay(label_delay)
    if isinstance(parsed, tuple):
        return RandomDelay(*parsed, seed=seed)
    return parsed


def load_dataset(
    name: str, *, limit: int | None = None, seed: int | None = None
) -> Iterable[tuple[dict[str, Any], Any]]:
    """The ``(x, y)`` samples of a bundled River dataset or a ``synth.`` generator.

    >>> next(iter(load_dataset("TrumpApproval")))[1]
    43.75505
    >>> load_dataset("synth.Nope")
    Traceback (most recent call last):
    ...
    learners.datasets.DatasetError: unknown dataset 'synth.Nope': not a class of river.datasets.synth
    """
    module, cls_name = (
        (datasets.synth, name.removeprefix("synth."))
        if name.startswith("synth.")
        else (datasets, name)
    )
    cls = getattr(module, cls_name, None) if cls_name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, datasets_base.Dataset)):
        raise DatasetError(f"unknown dataset {name!r}: not a class of {module.__name__}")
    if issubclass(cls, datasets_base.RemoteDataset):
        raise DatasetError(f"dataset {name!r} is not bundled with River (it must be downloaded)")
    kwargs = {"seed": seed} if "seed" in inspect.signature(cls).parameters else {}
    samples: Iterable[tuple[dict[str, Any], Any]] = cls(**kwargs)
    return samples if limit is None else itertools.islice(samples, limit)


def dataset_events(
    name: str,
    *,
    label_delay: str | int = 0,
    limit: int | None = None,
    seed: int | None = None,
) -> Iterator[FeatureEvent | LabelEvent]:
    """Feature and label events of dataset ``name``, in global event-time order.

    Parameters
    ----------
    name
        A class of ``river.datasets`` bundled with River (``Phishing``, ``TrumpApproval``,
        ...) or ``synth.<Class>`` (built with ``seed=seed`` when it takes one).
    label_delay
        See `parse_label_delay`.
    limit
        Number of samples (synthetic generators are endless without it).
    seed
        Seed of synthetic generators and of random delays.

    Examples
    --------
    >>> events = list(dataset_events("TrumpApproval", label_delay="random:0-3", limit=3, seed=7))
    >>> [(type(e).__name__[0], e.id, e.time) for e in events]  # doctest: +NORMALIZE_WHITESPACE
    [('F', '0', 0.0), ('F', '1', 1.0), ('L', '0', 2.0), ('L', '1', 2.0), ('F', '2', 2.0),
     ('L', '2', 5.0)]
    """
    delay = river_delay(label_delay, seed)
    samples = load_dataset(name, limit=limit, seed=seed)
    waiting: list[tuple[int, int, Any]] = []  # (label time, i, y)
    for i, (x, y) in enumerate(samples):
        while waiting and waiting[0][0] <= i:
            time, j, label = heapq.heappop(waiting)
            yield LabelEvent(str(j), float(time), label)
        d = delay(x, y) if isinstance(delay, RandomDelay) else delay
        yield FeatureEvent(str(i), float(i), {str(k): v for k, v in x.items()})
        heapq.heappush(waiting, (i + d, i, y))
    while waiting:
        time, j, label = heapq.heappop(waiting)
        yield LabelEvent(str(j), float(time), label)

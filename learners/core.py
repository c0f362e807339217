"""The learning core: models predicting, scoring and learning from joined events.

`LearningCore` is deterministic and pure (no I/O, no clock). The stream adapter pushes the
events it reads, tells the core how far event time is known to be complete (`advance`) and
snapshots the whole core, pickled, together with the input offsets it covers.

What happens, per model, when the join (`learners.join.EventTimeJoin`) releases an event:

* a **feature** is processed: each model predicts, with ``predict_proba_one`` if one of its
  metrics needs probabilities (``not metric.requires_labels``) on a classifier and
  ``predict_one`` if one needs labels, only the kinds needed; an anomaly detector scores with
  ``score_one``. The predictions are stored with the features until the label comes. An
  unsupervised model (anomaly detector) learns from the features right away.
* a **label** is joined: each metric is updated with the stored prediction (skipped when it
  is ``None`` or ``{}``, as River does), then a supervised model learns ``learn_one(x, y)``
  with the stored features.

**Bad events never stop the learner.** A ``null`` feature value means *missing*: the key is
dropped before any model sees it (River's convention for a missing value is an absent key).
Whatever a model raises on one event (a string where it needs a number, a label of the wrong
type...), the core goes on: the failure is counted for that model and reason in
`LearningCore.model_errors` (by ``(model, stage, exception type)``), the other models still
predict and learn from the event, and an event that *no* model could use is kept in
`LearningCore.unusable` for the adapter to dead-letter. Models are deterministic, so the same
event fails the same way after a restart: exactly-once and the equality with River (for data
that every model accepts) hold.

For supervised models this reproduces ``river.evaluate.progressive_val_score`` with the same
per-event delays exactly, whatever the order events are pushed in between two `advance`
calls, as long as no event is late. Unsupervised models learn at feature time, not at label
time as in River: identical to River when labels are not delayed.

**The learning curve.** With ``trace_every = K`` (an attribute, 0 by default) the core marks,
right after the K-th, 2K-th, ... joined label, every model's metrics and samples learned
(`CurveMark`, collected in ``trace_marks``): exactly where
``river.evaluate.iter_progressive_val_score(..., step=K)`` yields. The marks depend on the label
count only, not on how the work is cut into `advance` calls, so a restart from a checkpoint makes
the same marks again. The adapter drains them (`drain_marks`), stamps them with the wall-clock
time and writes them with the snapshot that covers them (`stream.learner.trace`).

Examples
--------
>>> from learners.specs import ModelSpec
>>> from schemas.events import FeatureEvent, LabelEvent
>>> core = LearningCore([ModelSpec("m", "logreg", ("Accuracy", "LogLoss"))])
>>> for i in range(4):
...     core.push_feature(FeatureEvent(str(i), float(i), {"x": float(i % 2)}), (0, 0), i)
...     core.push_label(LabelEvent(str(i), float(i), i % 2 == 1), (1, 0), i)
>>> core.advance(2.0)  # features 0, 1 and labels 0, 1: everything with time < 2
4
>>> core.counters.labels_joined, core.models["m"].samples_learned
(2, 2)
>>> core.flush()
4
>>> {name: round(value, 4) for name, value in core.metric_values("m").items()}
{'Accuracy': 0.75, 'LogLoss': 0.6923}
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from itertools import zip_longest
from typing import Any

import msgspec

from learners.comparisons import ComparePairs, ModelComparison, Pair
from learners.join import EventTimeJoin, JoinCounters, Pending, Source, Unprocessed
from learners.model_set import ModelSet
from learners.model_state import FAILED, UNSEEN, LabelTypeError, ModelState, Prediction
from learners.served import admit_score, keep_latest, score_shadows, scoring_model, update_metric
from learners.specs import ModelSpec
from schemas.errors import ModelSpecError
from schemas.events import FeatureEvent, Label, LabelEvent, Served, without_missing

__all__ = [  # ModelState and its predictions live in learners.model_state (pickles name both)
    "FAILED", "UNSEEN", "CurveMark", "LabelTypeError", "LearningCore", "ModelState",
    "Prediction", "Unusable",
]  # fmt: skip

OUTCOMES_KEPT = 4096
"""Joined (label, prediction) pairs kept for monitors between two drains."""

UNUSABLE_KEPT = 10_000
"""Events no model could use, kept for the adapter's dead letters between two drains, by
default (`LearningCore.unusable_kept`); those beyond are counted in ``unusable_dropped``."""


@dataclass(frozen=True, slots=True)
class Unusable:
    """An event that no model could use: what it was and what each model raised."""

    kind: str  # "feature" or "label"
    id: str
    time: float
    errors: tuple[str, ...]  # "model: ExceptionType: message", one per model
    value: Any  # the features (nulls dropped) or the label
    served: Served | None = None  # what the API answered, logged with the features
    partition: int | None = None
    """Where it was read (its topic follows from ``kind``), for its dead letter: None when not
    known (one kept in a checkpoint written before, or a label that waited for its feature
    in one)."""
    offset: int | None = None

    def to_event(self) -> dict[str, Any]:
        """The event as JSON-ready data, in the schema it came in."""
        field = "features" if self.kind == "feature" else "label"
        event = {"id": self.id, "time": self.time, field: self.value}
        if self.served is not None:
            event["served"] = msgspec.to_builtins(self.served)
        return event


def _unusable_setstate(self: Unusable, state: Sequence[Any]) -> None:
    """Unpickle an `Unusable`, also one pickled before its last fields were added (a
    checkpoint's undrained ones): those are None, their default. (A frozen dataclass with
    slots gets a ``__setstate__`` of its own, which would leave them unset.)"""
    for field, value in zip_longest(fields(Unusable), state):
        object.__setattr__(self, field.name, value)


Unusable.__setstate__ = _unusable_setstate  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class CurveMark:
    """The models' progressive metrics right after the ``labels``-th joined label."""

    labels: int
    time: float
    """Event time of that label."""
    models: dict[str, tuple[int, dict[str, float]]]
    """Per model: ``(samples learned, {metric: value})``."""


class LearningCore(ModelSet):
    """Models learning exactly once from feature and label events, in event-time order.

    Parameters
    ----------
    specs
        The models to run (unique names). Each gets its own estimator and metrics.
    join_ttl
        Event-time units a feature waits for its label (and an early label for its feature).
    max_pending
        Bound on pending features, on early labels and on buffered events.
    compare
        Champion/challenger pairs to compare on the labels both scored
        (`learners.comparisons`), or ``"all"``; none by default.
    """

    unusable_kept: int | None = UNUSABLE_KEPT
    """Unusable events kept between two drains (None: all of them). The learner's loop drains
    after every `advance` and keeps them all: each one is dead-lettered."""

    def __init__(
        self,
        specs: Sequence[ModelSpec],
        *,
        join_ttl: float = 1e12,
        max_pending: int = 1_000_000,
        compare: ComparePairs = (),
    ) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ModelSpecError(f"model names must be unique, got {names}")
        self.models: dict[str, ModelState] = {
            spec.name: ModelState.from_spec(spec) for spec in specs
        }
        self._join = EventTimeJoin(ttl=join_ttl, max_pending=max_pending)
        # (label, the predictions of every model): one entry per join, expanded when drained
        self._outcomes: deque[tuple[Label, Any]] = deque(maxlen=OUTCOMES_KEPT)
        self._last_x: dict[str, Any] | None = None
        self.model_errors: dict[tuple[str, str, str], int] = {}
        """Failures so far, by ``(model, "predict" | "learn", exception type)``."""
        self.unusable: list[Unusable] = []
        self.unusable_dropped = 0
        """Unusable events not kept (over `unusable_kept` between two drains), since the last
        time the adapter read this count."""
        self.served_metrics: dict[tuple[str, int], Any] = {}
        """The served answers' metric per (model, version) (see `_score_served`), of the latest
        `learners.served.VERSIONS_KEPT` versions of each model."""
        self.served_comparisons: dict[Pair, ModelComparison] = {}
        """A graph's primary answer against each of its shadows (`learners.served`), of the
        latest `learners.served.VERSIONS_KEPT` graph versions of each pair."""
        self.trace_every = 0
        """Mark the learning curve every this many joined labels (0: no marks; see the module)."""
        self.trace_marks: list[CurveMark] = []
        self.comparisons: dict[Pair, ModelComparison] = {}
        """The champion/challenger comparisons kept, by ``(champion, challenger)``."""
        self._compared: list[ModelComparison] = []
        self.set_comparisons(compare)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("model_errors", {})  # checkpoints written before failures were counted
        state.setdefault("served_metrics", {})
        state.setdefault("served_comparisons", {})
        # checkpoints written before the bound kept every version: the latest are what a
        # learner with the bound would hold (learners.served)
        keep_latest(state["served_metrics"], state["served_comparisons"])
        state["unusable"] = list(state.get("unusable", ()))  # a bounded deque before
        state.setdefault("unusable_dropped", 0)
        state.setdefault("trace_every", 0)  # checkpoints written before the learning curve
        state.setdefault("trace_marks", [])
        state.setdefault("comparisons", {})  # checkpoints written before comparisons
        state.setdefault("_compared", list(state["comparisons"].values()))
        self.__dict__.update(state)

    @property
    def counters(self) -> JoinCounters:
        """Join counters: processed, joined, expired, orphan and late events, pending sizes."""
        return self._join.counters

    def push_feature(self, event: FeatureEvent, source: Source, offset: int) -> None:
        """Buffer a feature event; ``source`` is (0, partition). Nothing is processed yet."""
        self._join.push_feature(event, source, offset)

    def push_label(self, event: LabelEvent, source: Source, offset: int) -> None:
        """Buffer a label event; ``source`` is (1, partition). Nothing is processed yet."""
        self._join.push_label(event, source, offset)

    def push_features(self, events: list[FeatureEvent], source: Source, offsets: list[int]) -> None:
        """Buffer feature events of one source, read at ``offsets`` (one per event)."""
        self._join.push_features(events, source, offsets)

    def push_labels(self, events: list[LabelEvent], source: Source, offsets: list[int]) -> None:
        """Buffer label events of one source, read at ``offsets`` (one per event)."""
        self._join.push_labels(events, source, offsets)

    @contextmanager
    def processed_only(self) -> Iterator[dict[Source, Unprocessed]]:
        """While inside, the core holds only what it has processed: buffered events are set
        aside, and put back on exit. Yields their offsets (sorted) and earliest time per
        source: a checkpoint pickled inside covers the processed events, and those offsets
        are to be read again. (What is pushed or processed inside is kept as well.)"""
        offsets, entries = self._join.set_aside()
        try:
            yield offsets
        finally:
            self._join.put_back(entries)

    def advance(self, watermark: float, max_labels: int | None = None) -> int:
        """Process what is safe now that all events with time < ``watermark`` have arrived.

        Returns how many events (features and labels) were processed. A model that raises on
        an event is counted and skipped for that event (see the module docstring). With
        ``max_labels``, stop once that many labels were joined (the rest stays buffered).
        """
        before = self._join.events_processed
        states = list(self.models.values())
        outcomes = self._outcomes
        last_x = None
        # Curve marks: ``joined`` counts labels as they come (the join's counter moves when the
        # call ends); ``mark_at`` is the next multiple of trace_every (-1: never).
        every = self.trace_every
        joined = self._join.counters.labels_joined
        mark_at = (joined // every + 1) * every if every > 0 else -1
        if len(states) == 1:  # the common case, without a loop over models per event
            state = states[0]
            predict, learn = state.predict, state.learn
            for pending, label in self._join.steps(watermark, max_labels):
                if label is None:
                    last_x = pending.x = without_missing(pending.x)
                    try:
                        pending.predictions = [predict(last_x)]
                    except Exception as exc:
                        pending.predictions = [FAILED]
                        self._failed(pending, None, [(state, "predict", exc)])
                else:
                    try:
                        learn(pending.x, label.label, pending.predictions[0])
                    except Exception as exc:
                        self._failed(pending, label, [(state, "learn", exc)])
                    outcomes.append((label.label, pending.predictions))
                    if pending.served is not None:
                        self._score_served(pending.served, label.label)
                    joined += 1
                    if joined == mark_at:
                        self._mark(joined, label.time)
                        mark_at += every
            if last_x is not None:
                self._last_x = last_x
            return self._join.events_processed - before
        compared = self._compared  # empty unless comparisons are configured
        for pending, label in self._join.steps(watermark, max_labels):
            failures: list[tuple[ModelState, str, Exception]] = []
            if label is None:
                last_x = pending.x = without_missing(pending.x)
                predictions = []
                for state in states:
                    try:
                        predictions.append(state.predict(last_x))
                    except Exception as exc:
                        predictions.append(FAILED)
                        failures.append((state, "predict", exc))
                pending.predictions = predictions
            else:
                y = label.label
                for state, prediction in zip(states, pending.predictions, strict=True):
                    try:
                        state.learn(pending.x, y, prediction)
                    except Exception as exc:
                        failures.append((state, "learn", exc))
                outcomes.append((y, pending.predictions))
                if pending.served is not None:
                    self._score_served(pending.served, y)
                if compared:
                    for comparison in compared:
                        comparison.update(y, pending.predictions)
                joined += 1
                if joined == mark_at:
                    self._mark(joined, label.time)
                    mark_at += every
            if failures:
                self._failed(pending, label, failures)
        if last_x is not None:
            self._last_x = last_x
        return self._join.events_processed - before

    def _score_served(self, served: Served, y: Label) -> None:
        """Score what the API actually answered (logged with the features) against ``y``, with
        the served model's first metric, per model and version: the quality of the answers
        production really got, beside the progressive metric of the learner's own predictions."""
        key = (served.model, served.version)
        metric = self.served_metrics.get(key)
        if metric is None or served.shadows:
            state = scoring_model(self.models, served)
            if state is None:
                return  # answered by models this learner does not run: not ours to score
            # the latest VERSIONS_KEPT versions of each target are kept (learners.served)
            if metric is None and admit_score(self.served_metrics, key):
                metric = self.served_metrics[key] = type(state.metrics[0])()
            if served.shadows:  # a graph's shadows (learners.served)
                score_shadows(
                    served, y, type(state.metrics[0]), state.kind, self.served_metrics,
                    self.served_comparisons,
                )  # fmt: skip
        if metric is not None:
            update_metric(metric, y, served.prediction, served.probabilities)

    def served_metric_values(self) -> dict[tuple[str, int], dict[str, float]]:
        """``{(model, version): {metric: value}}`` over the labels of logged answers."""
        return {key: {type(m).__name__: m.get()} for key, m in self.served_metrics.items()}

    def _failed(
        self,
        pending: Pending,
        label: LabelEvent | None,
        failures: list[tuple[ModelState, str, Exception]],
    ) -> None:
        """Count what the models raised; keep the event when none of them could use it."""
        errors = self.model_errors
        for state, stage, exc in failures:
            key = (state.spec.name, stage, type(exc).__name__)
            errors[key] = errors.get(key, 0) + 1
        reported = label is not None and all(p is FAILED for p in pending.predictions)
        if len(failures) == len(self.models) and not reported:  # once per event id
            detail = tuple(f"{s.spec.name}: {type(e).__name__}: {e}"[:300] for s, _, e in failures)
            at = self._join.released_at()  # the event being handled: where it was read
            partition, offset = (None, None) if at is None else (at[0][1], at[1])
            if label is None:
                found = Unusable(
                    "feature", pending.id, pending.time, detail, pending.x, pending.served,
                    partition, offset,
                )  # fmt: skip
            else:
                found = Unusable(
                    "label", label.id, label.time, detail, label.label, None, partition, offset
                )
            kept = self.unusable_kept
            if kept is not None and len(self.unusable) >= kept:
                self.unusable_dropped += 1
            else:
                self.unusable.append(found)

    def _mark(self, labels: int, time: float) -> None:
        self.trace_marks.append(
            CurveMark(
                labels,
                time,
                {n: (s.samples_learned, s.metric_values()) for n, s in self.models.items()},
            )
        )

    def drain_marks(self) -> list[CurveMark]:
        """The curve marks made since the last drain, oldest first (see the module)."""
        marks = self.trace_marks
        self.trace_marks = []
        return marks

    def drain_unusable(self) -> list[Unusable]:
        """Events no model could use since the last drain (for the dead-letter topic)."""
        drained = self.unusable
        self.unusable = []
        return drained

    def flush(self) -> int:
        """Process everything buffered (end of input, or every input idle)."""
        return self.advance(math.inf)

    def drain_outcomes(self) -> list[tuple[str, Label, Any]]:
        """``(model, label, prediction)`` of the latest joins (at most `OUTCOMES_KEPT`), for
        monitors such as drift detectors; draining empties the buffer."""
        names = list(self.models)
        drained = [
            (name, y, prediction[0])
            for y, predictions in self._outcomes
            for name, prediction in zip(names, predictions, strict=True)
        ]
        self._outcomes.clear()
        return drained

    def last_features(self) -> dict[str, Any] | None:
        """The features of the latest processed feature event (for latency sampling)."""
        return self._last_x

    def metric_values(self, name: str) -> dict[str, float]:
        """Current metrics of model ``name``, by metric class name."""
        state = self.models.get(name)
        if state is None:
            raise ModelSpecError(f"unknown model {name!r}; models are {sorted(self.models)}")
        return state.metric_values()

"""The set of models and comparisons of a learning core, changed while it learns.

`ModelSet` is the part of `learners.core.LearningCore` that adds models to a running core
(a restored one, typically), removes those handed over to another learner, and keeps the
champion/challenger comparisons in step, without touching the other models' state or their
stored predictions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from learners.comparisons import ComparePairs, ModelComparison, Pair, check_pairs
from learners.join import EventTimeJoin
from learners.model_state import UNSEEN, ModelState
from learners.specs import ModelSpec
from schemas.errors import ModelSpecError
from schemas.events import Label


class ModelSet:
    """Models and comparisons of a core (the attributes are set by `LearningCore.__init__`)."""

    models: dict[str, ModelState]
    comparisons: dict[Pair, ModelComparison]
    _compared: list[ModelComparison]
    _join: EventTimeJoin
    _outcomes: deque[tuple[Label, Any]]

    def set_comparisons(self, pairs: ComparePairs) -> None:
        """Keep exactly the comparisons ``pairs`` (or ``"all"``): those already kept go on with
        their state (as restored from a checkpoint), new ones start empty, others are dropped.
        Raises `ModelSpecError` for a pair that is not two models of one comparable kind."""
        kinds = {name: state.kind for name, state in self.models.items()}
        wanted = check_pairs(pairs, kinds)
        kept = {
            pair: self.comparisons.get(pair) or ModelComparison.fresh(*pair, kinds[pair[0]])
            for pair in wanted
        }
        self.comparisons = kept
        self._index_comparisons()

    def _index_comparisons(self) -> None:
        """Point each comparison at its models' places in the per-feature prediction lists."""
        position = {name: i for i, name in enumerate(self.models)}
        for comparison in self.comparisons.values():
            comparison.a = position[comparison.champion]
            comparison.b = position[comparison.challenger]
        self._compared = list(self.comparisons.values())

    def add_models(self, specs: Sequence[ModelSpec]) -> None:
        """Add fresh models to a core that is already learning (a restored one, typically).

        They come after the others and start at the current position: they predict from the
        next feature on, and learn the labels of features already pending too (those labels
        are not scored for them, nor compared: their stored prediction is `UNSEEN`). The
        existing models, their state and their predictions are untouched."""
        for spec in specs:
            if spec.name in self.models:
                raise ModelSpecError(f"model {spec.name!r} is already learning")
        added = [ModelState.from_spec(spec) for spec in specs]
        if added:
            for state in added:
                self.models[state.spec.name] = state
            size = len(self.models)
            for pending in self._join.pending():
                predictions = pending.predictions
                if predictions is not None and len(predictions) < size:
                    predictions.extend([UNSEEN] * (size - len(predictions)))
            for _y, predictions in self._outcomes:
                if len(predictions) < size:
                    predictions.extend([UNSEEN] * (size - len(predictions)))
        self._index_comparisons()

    def remove_models(self, names: Sequence[str]) -> None:
        """Drop the models ``names`` from a learning core (one handed over to another learner).

        The others are untouched: their state, their stored predictions (each pending feature
        keeps one per model, by position, and loses the removed models' entries) and their
        comparisons; comparisons involving a removed model are dropped."""
        gone = [i for i, name in enumerate(self.models) if name in set(names)]
        if not gone:
            return
        for name in names:
            self.models.pop(name, None)
        seen: set[int] = set()  # a prediction list may be both pending and an outcome
        lists = [p.predictions for p in self._join.pending()]
        lists += [predictions for _y, predictions in self._outcomes]
        for predictions in lists:
            if predictions is None or id(predictions) in seen:
                continue
            seen.add(id(predictions))
            for i in reversed(gone):
                if i < len(predictions):
                    del predictions[i]
        self.comparisons = {
            pair: c for pair, c in self.comparisons.items() if set(pair).isdisjoint(names)
        }
        self._index_comparisons()

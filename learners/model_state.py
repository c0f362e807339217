"""One model of the learning core: the estimator, its metrics, and how it predicts for them.

`ModelState` is what a snapshot writes per model (its own signed blob, what serving loads) and
what `learners.core.LearningCore` calls per event: `ModelState.predict` at feature time (with
``predict_proba_one`` only when a metric needs probabilities, ``predict_one`` only when one
needs labels; an anomaly detector scores), `ModelState.learn` at label time (the metrics
score the stored prediction, then a supervised model learns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from river import base, metrics

import learners.river_compat  # noqa: F401  (registers iterative pickling of deep River trees)
from learners.linear_learning import LinearLearning, compile_learning
from learners.specs import ModelKind, ModelSpec, RiverModel, model_kind
from learners.tree_learning import TreeLearning, compile_tree_learning
from schemas.events import Label

Prediction = tuple[Any, Any]
"""What a model said about one feature event: (label or score, probabilities)."""

FAILED: Prediction = (None, None)
"""The stored prediction of a model that raised on the features: not scored at label time."""

UNSEEN: Prediction = cast("Prediction", tuple([None, None]))  # equal to FAILED, not the same
"""The stored prediction of a model added to the stream after the features were processed
(`LearningCore.add_models`): it learns the label, which is not scored for it."""


_LABELS = [False]
"""`ModelState._uses_proba` of one metric that scores labels (Accuracy, the default's)."""


class LabelTypeError(TypeError):
    """A label that the model cannot learn (its type differs from the labels it learns)."""


@dataclass(eq=False)
class ModelState:
    """One named model, its metrics and how it predicts for them."""

    spec: ModelSpec
    model: RiverModel
    metrics: list[metrics.base.Metric]
    kind: ModelKind
    samples_learned: int = 0
    _uses_proba: list[bool] = field(default_factory=list, repr=False)
    _supervised: bool = field(default=True, repr=False)
    label_type: type | None = None
    """A classifier's label type, fixed by the first label it learns (bool, int or str)."""
    _calls: RiverModel | LinearLearning | TreeLearning | None = field(default=None, repr=False)
    """What a classifier or regressor predicts and learns with: a linear pipeline's one-pass
    form on the model's own state (`learners.linear_learning`), a Hoeffding tree's steps with
    its leaves' Gaussians in C (`learners.tree_learning`), else the model; found at the first
    call, and never pickled."""
    _reads_only: bool = field(default=False, repr=False)
    """Whether ``_calls`` predicts without changing the features it gets (a linear pipeline's
    one pass): they are then not copied first."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_calls", None)
        state.pop("_reads_only", None)
        return state

    def _supervised_calls(self) -> RiverModel | LinearLearning | TreeLearning:
        compiled = compile_learning(self.model) or compile_tree_learning(self.model)
        self._calls = calls = self.model if compiled is None else compiled
        self._reads_only = isinstance(compiled, LinearLearning)
        return calls

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelState:
        """A fresh model with fresh metrics."""
        model = spec.build()
        # RiverModel: the calls of every kind; this model's kind is fixed here (model_kind).
        state = cls(spec, cast(RiverModel, model), spec.build_metrics(model), model_kind(model))
        state._supervised = bool(model._supervised)  # a pipeline computes it on every access
        # A classifier's metrics are classification metrics (build_metrics checks works_with),
        # which say whether they need labels or probabilities; base.Metric does not.
        state._uses_proba = [
            state.kind == "classifier"
            and not cast(metrics.base.ClassificationMetric, metric).requires_labels
            for metric in state.metrics
        ]
        return state

    @property
    def supervised(self) -> bool:
        """Whether the model learns from labels (else from features alone, at feature time)."""
        return self._supervised

    def predict(self, x: dict[str, Any]) -> Prediction:
        """Predict what the metrics need for ``x``; unsupervised models then learn ``x``.

        May raise whatever the model raises: `LearningCore` catches and counts it."""
        calls = self._calls
        if calls is not None:  # a classifier or a regressor, after its first call
            uses = self._uses_proba
            if uses == _LABELS:  # the common case: one metric of labels
                return calls.predict_one(x if self._reads_only else dict(x)), None
        model = self.model
        if self.kind == "anomaly":
            if not self.metrics:  # nothing will be scored: only learn
                if not self._supervised:
                    model.learn_one(x)
                    self.samples_learned += 1
                return None, None
            score = model.score_one(dict(x))
            if isinstance(model, base.AnomalyFilter):
                score = model.classify(score)
            if not self._supervised:
                model.learn_one(x)
                self.samples_learned += 1
            return score, score
        if calls is None:
            calls = self._supervised_calls()
        uses = self._uses_proba
        y_pred = calls.predict_one(dict(x)) if not all(uses) else None
        y_proba = calls.predict_proba_one(dict(x)) if True in uses else None
        return y_pred, y_proba

    def learn(self, x: dict[str, Any], y: Label, prediction: Prediction) -> None:
        """Score the stored ``prediction`` against ``y``, then learn ``(x, y)`` if supervised.

        A label of the wrong type raises `LabelTypeError` before anything changes: a classifier
        learns labels of one type (the first it sees), a regressor numbers. Mixing ``"yes"``
        into boolean labels would break a tree for every later prediction."""
        kind = type(y)
        if kind is not self.label_type:
            self._check_label(y)
        for metric, use_proba in zip(self.metrics, self._uses_proba, strict=True):
            y_pred = prediction[1] if use_proba else prediction[0]
            if y_pred is not None and y_pred != {}:
                metric.update(y_true=y, y_pred=y_pred)
        if self._supervised:
            calls = self._calls
            if calls is None:
                calls = self._supervised_calls()
            calls.learn_one(x, y)
            self.samples_learned += 1

    def _check_label(self, y: Label) -> None:
        kind = type(y)
        if self.kind == "regressor":
            if kind is str:
                raise LabelTypeError(f"label {y!r} is a {kind.__name__}: a regressor needs numbers")
        elif self.kind == "classifier":
            if self.label_type is None:
                if kind is float and not float(y).is_integer():
                    raise LabelTypeError(f"label {y!r} is a float: a classifier needs classes")
                self.label_type = kind
            else:
                raise LabelTypeError(
                    f"label {y!r} is a {kind.__name__}: this model learns "
                    f"{self.label_type.__name__} labels"
                )

    def metric_values(self) -> dict[str, float]:
        """Current value of every metric, by class name."""
        return {type(metric).__name__: metric.get() for metric in self.metrics}

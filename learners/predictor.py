"""A model as served: one immutable object per loaded snapshot version.

Swapping versions replaces the whole `ServedModel`, so a request that took a reference to one
uses the same estimator, version and metadata from start to end.

>>> from river import linear_model
>>> served = ServedModel.build("lr", linear_model.LogisticRegression(), version=1, kind="classifier")
>>> served.predict({"x": 1.0})
(False, {False: 0.5, True: 0.5})
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from river import base, compose

from learners.linear import CompiledLinear, LinearPredict, compile_linear_parts
from learners.specs import model_kind
from learners.trees import TreePredict, compile_tree
from schemas.errors import ModelSpecError
from schemas.events import without_missing
from schemas.records import SnapshotMeta

KINDS = ("classifier", "regressor", "anomaly")


class NonFiniteAnswer(ValueError):
    """The model answered NaN or infinity (features such as 1e308 overflow it): a 422."""


def _check_finite(proba: dict[Any, float]) -> None:
    # One C-level sum: finite iff every probability is (they are bounded, so no overflow).
    if proba and not math.isfinite(sum(proba.values())):
        shown = {k: float(v) for k, v in proba.items()}
        raise NonFiniteAnswer(f"the model's probabilities are not finite ({shown})")


def _first_argmax(proba: dict[Any, float]) -> Any:
    """River's ``Classifier.predict_one``: the first most probable class (None when empty),
    without a Python call per class for the commonest two (≈ 0.2 µs less a prediction).

    >>> _first_argmax({False: 0.5, True: 0.5}), _first_argmax({"a": 0.2, "b": 0.7, "c": 0.1})
    (False, 'b')
    """
    if len(proba) == 2:
        a, b = proba
        return b if proba[b] > proba[a] else a
    return max(proba, key=proba.__getitem__) if proba else None


def _binary_answer(proba: dict[Any, float]) -> tuple[bool, dict[Any, float]] | None:
    """A compiled linear classifier's ``(prediction, probabilities)`` from its
    ``{False: 1 - p, True: p}``, or None when ``p`` is not finite (then ``1 - p`` is not
    either): the first argmax is ``p > 1 - p`` (False at a tie, as River's ``predict_one``).

    >>> _binary_answer({False: 0.5, True: 0.5}), _binary_answer({False: 0.25, True: 0.75})
    ((False, {False: 0.5, True: 0.5}), (True, {False: 0.25, True: 0.75}))
    >>> _binary_answer({False: float("nan"), True: float("nan")}) is None
    True
    """
    p = proba[True]
    return (p > proba[False], proba) if p - p == 0 else None


# What a model may raise when the features do not suit it (a string where it needs a number,
# an overflow...): the client's input is at fault, so this is a 422, not a 500.
MODEL_INPUT_ERRORS = (TypeError, ValueError, KeyError, ArithmeticError)


class _ReadOnlyDefaults(defaultdict[Any, Any]):
    """A served model's ``defaultdict``: a missing key reads as the default, and is not added.

    River's transformers keep statistics in defaultdicts (`StandardScaler.means` and ``vars``,
    `MinMaxScaler.min` and ``max``...), and *reading* an unknown feature inserts it: every
    request with made-up feature names would grow the served model's memory without bound.
    A served model never learns, so reads need not store anything.
    """

    def __missing__(self, key: Any) -> Any:
        factory = self.default_factory
        if factory is None:
            raise KeyError(key)
        return factory()


_WALK_LIMIT = 2_000_000  # objects visited at most (a large forest is well below)


def read_only_defaults(estimator: Any) -> int:
    """Swap, in place, every ``defaultdict`` attribute of River objects reachable from
    ``estimator`` for a `_ReadOnlyDefaults`; returns how many were swapped. Done once per
    loaded version, off the request path.

    >>> from river import preprocessing
    >>> scaler = preprocessing.StandardScaler()
    >>> scaler.learn_one({"x": 1.0})
    >>> read_only_defaults(scaler) > 0
    True
    >>> _ = scaler.transform_one({"unknown": 2.0}); sorted(scaler.means)
    ['x']
    """
    swapped, seen = 0, set[int]()
    stack: list[Any] = [estimator]
    while stack and len(seen) < _WALK_LIMIT:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            stack.extend(v for v in obj.values() if _walkable(v))
            continue
        if isinstance(obj, list | tuple):
            stack.extend(v for v in obj if _walkable(v))
            continue
        attributes = getattr(obj, "__dict__", None)
        if attributes is None:
            continue
        for name, value in list(attributes.items()):
            if type(value) is defaultdict:
                frozen = _ReadOnlyDefaults(value.default_factory, value)
                attributes[name] = frozen
                swapped += 1
                stack.extend(v for v in frozen.values() if _walkable(v))
            elif _walkable(value):
                stack.append(value)
    return swapped


def _walkable(value: Any) -> bool:
    if isinstance(value, dict | list | tuple):
        return True
    module = type(value).__module__
    return module.startswith("river") and hasattr(value, "__dict__")


def estimator_of(obj: Any) -> Any:
    """The River estimator inside a snapshot: the object itself, or a learner state's ``.model``."""
    if hasattr(obj, "model") and hasattr(obj, "kind") and not hasattr(obj, "predict_one"):
        return obj.model
    return obj


def _final_step(estimator: Any) -> Any:
    while isinstance(estimator, compose.Pipeline):
        estimator = list(estimator.steps.values())[-1]
    return estimator


def predicts_argmax(estimator: Any) -> bool:
    """Whether ``predict_one`` is River's default, the argmax of ``predict_proba_one``: then
    one ``predict_proba_one`` call gives both (half the cost), with identical results."""
    if not isinstance(estimator, compose.Pipeline) and not isinstance(estimator, base.Classifier):
        return False
    if isinstance(estimator, compose.Pipeline) and type(estimator).predict_one is not (
        compose.Pipeline.predict_one
    ):
        return False
    return type(_final_step(estimator)).predict_one is base.Classifier.predict_one


def kind_of(estimator: Any, declared: str | None = None) -> str:
    """The declared kind when valid, else the one `learners.specs.model_kind` finds."""
    if declared in KINDS:
        return declared
    try:
        return model_kind(estimator)
    except ModelSpecError as exc:
        raise ValueError(f"cannot serve {type(estimator).__name__}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    version: int
    kind: str
    estimator: Any
    meta: SnapshotMeta | None = None
    loaded_at: float = field(default_factory=time.time)
    argmax: bool = False
    live: bool = False
    """A live update continuing ``version`` (`stream.store.live`): ``meta`` holds its samples."""
    linear: LinearPredict | None = None
    """The estimator's own answer in one pass, for linear pipelines (`learners.linear`)."""
    linear_parts: CompiledLinear | None = None
    """``linear`` with its halves, for `predict_sum`."""
    tree: TreePredict | None = None
    """A Hoeffding tree's or forest's answer with the request-independent work done at load
    (`learners.trees`)."""

    @classmethod
    def build(
        cls,
        name: str,
        obj: Any,
        *,
        version: int,
        kind: str | None = None,
        meta: SnapshotMeta | None = None,
        live: bool = False,
    ) -> ServedModel:
        estimator = estimator_of(obj)
        kind = kind_of(estimator, kind)
        read_only_defaults(estimator)  # requests must not grow the served model
        argmax = kind == "classifier" and predicts_argmax(estimator)
        parts = compile_linear_parts(estimator) if argmax or kind == "regressor" else None
        linear = None if parts is None else parts.predict
        tree = compile_tree(estimator) if (argmax or kind == "regressor") and not linear else None
        return cls(
            name, version, kind, estimator, meta, argmax=argmax, live=live, linear=linear,
            linear_parts=parts, tree=tree,
        )  # fmt: skip

    @property
    def samples_learned(self) -> int | None:
        """Samples the served state has learned: with ``version``, names the state exactly."""
        meta = self.meta
        return None if meta is None else meta.samples_learned

    def predict(
        self, x: dict[str, Any], *, complete: bool = False
    ) -> tuple[Any, dict[Any, float] | None]:
        """``(prediction, probabilities)``: the estimator's own ``predict_one`` /
        ``predict_proba_one`` for classifiers, ``predict_one`` for regressors and ``score_one``
        (as the prediction) for anomaly detectors. A ``null`` feature is a missing one
        (``complete``: the caller knows ``x`` holds none); an answer that is not finite raises
        `NonFiniteAnswer` (the features are at fault). A linear pipeline answers through its
        compiled form (`learners.linear`: the same numbers, in a third of the time), a
        Hoeffding tree through its precomputed leaves (`learners.trees`)."""
        est = self.estimator
        if not complete:
            x = without_missing(x)
        if self.argmax:
            linear = self.linear
            if linear is None:
                tree = self.tree
                proba = est.predict_proba_one(x) if tree is None else tree(x)
            else:
                proba = linear(x)
                answer = _binary_answer(proba)
                if answer is not None:
                    return answer
            _check_finite(proba)
            return _first_argmax(proba), proba
        if self.kind == "classifier":
            proba = est.predict_proba_one(x)
            _check_finite(proba)
            return est.predict_one(x), proba
        if self.kind == "regressor":
            fast = self.linear or self.tree
            y = est.predict_one(x) if fast is None else fast(x)
        else:
            y = est.score_one(x)
        if isinstance(y, float) and not math.isfinite(y):
            raise NonFiniteAnswer(f"the model's answer is not finite ({y}) for these features")
        return y, None

    def predict_sum(self, acc: float) -> tuple[Any, dict[Any, float] | None] | None:
        """What `predict` answers for features whose linear sum (``linear_parts.params``'s,
        added by the caller) is ``acc``, or None when that answer is not finite (`predict`
        then says why). Only for a model with ``linear_parts``."""
        parts = self.linear_parts
        assert parts is not None, "predict_sum needs a compiled linear model"
        answer = parts.answer(acc)
        if self.argmax:
            return _binary_answer(answer)
        return (answer, None) if answer - answer == 0 else None

    def info(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        meta = self.meta
        return {
            "model": self.name,
            "version": self.version,
            "kind": self.kind,
            "spec": meta.spec if meta else None,
            "created_at": meta.created_at if meta else None,
            "age_seconds": round(now - meta.created_at, 3) if meta else None,
            "loaded_at": self.loaded_at,
            "samples_learned": meta.samples_learned if meta else None,
            "live": self.live,
            "metrics": meta.metrics if meta else {},
            "size": meta.size if meta else None,
            "sha256": meta.sha256 if meta else None,
            "river_version": meta.river_version if meta else None,
        }

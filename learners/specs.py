"""Model specifications: which River estimator a model name stands for, and how it is scored.

A spec string is either a built-in preset (see `PRESETS`) or a user factory written
``package.module:function``: a function taking no argument and returning a fresh River
estimator. A `ModelSpec` ties a model name to a spec string and the names of the
`river.metrics` classes that score it; `parse_model_option` reads the ``NAME=SPEC`` form
used on the command line.

Examples
--------
>>> spec = parse_model_option("champion=logreg")
>>> spec.name, spec.spec, spec.metric_names
('champion', 'logreg', ())
>>> list(spec.build().steps)
['StandardScaler', 'LogisticRegression']
>>> [type(m).__name__ for m in spec.build_metrics()]
['Accuracy']
>>> model_kind(ModelSpec("h", "halfspace").build())
'anomaly'
>>> ModelSpec("x", "logreg", ("MAE",)).build_metrics()
Traceback (most recent call last):
...
schemas.errors.ModelSpecError: metric 'MAE' does not work with model 'x' (logreg, a classifier)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from river import anomaly, base, forest, linear_model, metrics, preprocessing, tree

import learners.river_compat  # noqa: F401  (registers iterative pickling of deep River trees)
from schemas.errors import ModelSpecError
from schemas.names import MODEL_NAME_RULE, is_model_name

ModelKind = Literal["classifier", "regressor", "anomaly"]


class RiverModel(Protocol):
    """The calls made on a model, each only for the kinds (`ModelKind`) that have it.

    River's ``base.Estimator`` declares none of them: each kind's base class adds its own
    (``base.Classifier``: ``predict_one``, ``predict_proba_one``, ``learn_one(x, y)``;
    ``base.Regressor``: ``predict_one``, ``learn_one(x, y)``; ``anomaly.base.AnomalyDetector``:
    ``score_one``, ``learn_one(x)``), while a ``compose.Pipeline`` has all of them whatever its
    last step, so no River class narrows a pipeline. This is their union: a built estimator is
    cast to it once (`learners.core.ModelState.from_spec`), and callers call only what the
    model's kind has, which `model_kind` decides when the model is built.
    """

    def predict_one(self, x: dict[str, Any], /) -> Any: ...
    def predict_proba_one(self, x: dict[str, Any], /) -> dict[Any, float]: ...
    def score_one(self, x: dict[str, Any], /) -> float: ...
    def learn_one(self, x: dict[str, Any], y: Any = ..., /) -> None: ...


PRESETS: dict[str, Callable[[], base.Estimator]] = {
    "logreg": lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
    "linreg": lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
    "hoeffding": lambda: tree.HoeffdingTreeClassifier(),
    "hoeffding-reg": lambda: tree.HoeffdingTreeRegressor(),
    "arf": lambda: forest.ARFClassifier(seed=42),
    "halfspace": lambda: preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=42),
}
"""Built-in presets: spec string → factory of a fresh estimator."""

DEFAULT_METRICS: dict[ModelKind, tuple[str, ...]] = {
    "classifier": ("Accuracy",),
    "regressor": ("MAE",),
    "anomaly": (),
}
"""Metrics used when a spec names none."""

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def model_kind(estimator: Any) -> ModelKind:
    """Say whether ``estimator`` is a classifier, a regressor or an anomaly detector.

    Pipelines answer for their last step.

    >>> from river import linear_model, preprocessing
    >>> model_kind(preprocessing.StandardScaler() | linear_model.LinearRegression())
    'regressor'
    >>> model_kind(preprocessing.StandardScaler())
    Traceback (most recent call last):
    ...
    schemas.errors.ModelSpecError: StandardScaler is not a classifier, regressor or anomaly detector
    """
    if isinstance(estimator, base.AnomalyDetector | base.AnomalyFilter):
        return "anomaly"
    if isinstance(estimator, base.Classifier):
        return "classifier"
    if isinstance(estimator, base.Regressor):
        return "regressor"
    raise ModelSpecError(
        f"{type(estimator).__name__} is not a classifier, regressor or anomaly detector"
    )


def build_estimator(spec: str) -> base.Estimator:
    """Build a fresh estimator from a preset name or a ``package.module:function`` factory.

    >>> type(build_estimator("hoeffding")).__name__
    'HoeffdingTreeClassifier'
    >>> type(build_estimator("river.linear_model:LinearRegression")).__name__
    'LinearRegression'
    >>> build_estimator("lgoreg")
    Traceback (most recent call last):
    ...
    schemas.errors.ModelSpecError: unknown model spec 'lgoreg': use a preset (logreg, linreg, hoeffding, hoeffding-reg, arf, halfspace) or package.module:function
    >>> build_estimator("os:system")
    Traceback (most recent call last):
    ...
    schemas.errors.ModelSpecError: model spec 'os:system': calling os.system() failed: TypeError: system() missing required argument 'command' (pos 1)
    """
    if spec in PRESETS:
        return PRESETS[spec]()
    if not _FACTORY.match(spec):
        raise ModelSpecError(
            f"unknown model spec {spec!r}: use a preset ({', '.join(PRESETS)}) "
            "or package.module:function"
        )
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(f"model spec {spec!r}: cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ModelSpecError(
            f"model spec {spec!r}: {module_name} has no callable {function_name!r}"
        )
    try:
        estimator = factory()
    except Exception as exc:  # a factory that needs arguments, or fails: one line naming it
        raise ModelSpecError(
            f"model spec {spec!r}: calling {module_name}.{function_name}() failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(estimator, base.Estimator):
        raise ModelSpecError(
            f"model spec {spec!r} returned {type(estimator).__name__}, not a River estimator"
        )
    model_kind(estimator)
    return estimator


def build_metric(name: str) -> metrics.base.Metric:
    """Instantiate the `river.metrics` class called ``name`` with its default parameters.

    >>> build_metric("ROCAUC").requires_labels
    False
    >>> build_metric("Accurcy")
    Traceback (most recent call last):
    ...
    schemas.errors.ModelSpecError: unknown metric 'Accurcy': not a class of river.metrics
    """
    cls = getattr(metrics, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, metrics.base.Metric)) or issubclass(
        cls, metrics.base.Metrics | metrics.base.ClusteringMetric
    ):
        raise ModelSpecError(f"unknown metric {name!r}: not a class of river.metrics")
    try:
        metric = cls()
    except TypeError as exc:
        raise ModelSpecError(f"metric {name!r} cannot be built without parameters") from exc
    try:
        metric.get()
    except NotImplementedError:
        raise ModelSpecError(f"metric {name!r} has no single value to report") from None
    return metric


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A named model: its spec string and the names of the metrics that score it.

    Parameters
    ----------
    name
        Identifier of the model (`schemas.names`: letters, digits, ``_ . -``; at most 128).
    spec
        A key of `PRESETS` or ``package.module:function``.
    metric_names
        Class names from `river.metrics`; empty means `DEFAULT_METRICS` for the model's kind.

    Examples
    --------
    >>> spec = ModelSpec("reg", "linreg", ("MAE", "RMSE"))
    >>> [repr(m) for m in spec.build_metrics()]
    ['MAE: 0.', 'RMSE: 0.']
    >>> spec.build() is spec.build()
    False
    """

    name: str
    spec: str
    metric_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not is_model_name(self.name):
            raise ModelSpecError(f"invalid model name {self.name!r}: use {MODEL_NAME_RULE}")
        if len(set(self.metric_names)) != len(self.metric_names):
            raise ModelSpecError(f"model {self.name!r}: a metric is named twice")

    def build(self) -> base.Estimator:
        """A fresh, untrained estimator."""
        return build_estimator(self.spec)

    def build_metrics(self, model: base.Estimator | None = None) -> list[metrics.base.Metric]:
        """Fresh metrics, checked to work with ``model`` (built from the spec when omitted)."""
        model = self.build() if model is None else model
        kind = model_kind(model)
        built = []
        for name in self.metric_names or DEFAULT_METRICS[kind]:
            metric = build_metric(name)
            if not metric.works_with(model):
                raise ModelSpecError(
                    f"metric {name!r} does not work with model {self.name!r} "
                    f"({self.spec}, {'an' if kind == 'anomaly' else 'a'} {kind}"
                    f"{' detector' if kind == 'anomaly' else ''})"
                )
            built.append(metric)
        return built


def parse_model_option(option: str, metric_names: Sequence[str] = ()) -> ModelSpec:
    """Read ``NAME=SPEC`` (or a bare ``SPEC``, named after itself) and check that it builds.

    >>> parse_model_option("challenger=hoeffding", ["Accuracy", "ROCAUC"])
    ModelSpec(name='challenger', spec='hoeffding', metric_names=('Accuracy', 'ROCAUC'))
    >>> parse_model_option("linreg")
    ModelSpec(name='linreg', spec='linreg', metric_names=())
    >>> parse_model_option("a=")
    Traceback (most recent call last):
    ...
    schemas.errors.ModelSpecError: model option 'a=' has an empty name or spec; expected NAME=SPEC
    """
    name, sep, spec = option.strip().partition("=")
    if not sep:
        name = spec = name
    name, spec = name.strip(), spec.strip()
    if not name or not spec:
        raise ModelSpecError(
            f"model option {option!r} has an empty name or spec; expected NAME=SPEC"
        )
    if not sep and not is_model_name(name):
        name = spec.rpartition(":")[2]
    parsed = ModelSpec(name, spec, tuple(metric_names))
    parsed.build_metrics()
    return parsed

"""A served linear pipeline's prediction in one pass, equal to River's to the bit.

River answers ``StandardScaler() | LogisticRegression()`` (the ``logreg`` spec) and
``StandardScaler() | LinearRegression()`` (``linreg``) in three steps: the scaler builds a new
dict of scaled features, ``(x - mean) / var ** 0.5`` (0.0 where the variance is 0 or unknown);
the weights' dot product with that dict (`river.utils.VectorDict.dot`, which adds
``weight * value`` in the order of the dict, from 0.0); then the loss's mean function of the dot
product plus the intercept (the sigmoid of `optim.losses.Log`, the identity of ``Squared``).
About 6.5 µs for 30 features, most of it the dict and the calls between the steps.

`compile_linear` reads a fitted pipeline once (per served version, off the request path) and
returns a function doing the same arithmetic in the same order without the intermediate dict
(about 2.5 µs; its sum runs in C when `learners/_linear_pass.c` is built, and a served
`lr` of 30 features then answers in 1.7 µs as a graph member). Why its answers are River's,
float for float:

- each scaled value is the same expression on the same numbers: ``(xi - mean) / std`` with
  ``std = var ** 0.5`` computed once instead of per request (``**`` is deterministic);
- a feature whose variance is 0 (or that the scaler never saw) scales to 0.0, and adds
  ``weight * 0.0 = ±0.0`` to the sum: adding a zero changes no sum that starts at +0.0 (such a
  sum is never -0.0: IEEE 754 gives -0.0 only for two negative zeros), so those features are
  skipped. That holds for finite weights only: a state with a non-finite number is not compiled;
- the terms are added in the order of the request's features, as ``VectorDict.dot`` does
  (`tests/learners/test_linear.py` checks both against River's own code, bit for bit);
- the mean function is River's own: its sigmoid (or the identity) called directly when the
  loss keeps River's, else the loss object's method.

And at compile time it must answer two probes exactly as River does, else River serves.

Anything else (another scaler setting, a windowed scaler, a subclass, a negative
variance, a state over `MAX_FEATURES`) gives ``None``: the model is served by River itself.
The pipeline's learn-during-predict mode (`compose.learn_during_predict`) is not honoured: a
served model never learns.

>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> for i in range(50):
...     model.learn_one({"a": i % 7, "b": i % 3}, i % 7 > 3)
>>> fast = compile_linear(model)
>>> x = {"a": 5, "b": 1.5, "never seen": "text"}
>>> fast(x) == model.predict_proba_one(x)
True
>>> compile_linear(preprocessing.MinMaxScaler() | linear_model.LogisticRegression()) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

from river import compose, linear_model, optim, preprocessing, utils

dot_standardized_in_c: Callable[[dict[str, Any], dict[Any, Any]], float | None] | None
try:  # the sum in C (learners/_linear_pass.c), built by pip install when it can be
    from learners._linear_pass import dot_standardized as dot_standardized_in_c
except ImportError:  # without a C compiler at install (tests require it: here and in CI)
    dot_standardized_in_c = None

MAX_FEATURES = 100_000
"""A larger state is served by River: the compiled copy would double the model's memory."""

LinearPredict = Callable[[dict[str, Any]], Any]
"""Features → what River's ``predict_proba_one`` (a classifier) or ``predict_one`` answers."""


class CompiledLinear(NamedTuple):
    """A compiled pipeline: ``predict``, and the two halves it is made of, for a caller that
    adds the sum itself (`serving/_v2_body.c` reads it from a request's bytes): ``params``,
    feature → ``(mean, std, weight)`` of the features whose variance is not 0, the sum being
    ``weight * ((x - mean) / std)`` added in the features' order from 0.0; and ``answer``, the
    sum → what ``predict`` answers."""

    predict: LinearPredict
    params: dict[Any, tuple[Any, float, float]]
    answer: Callable[[float], Any]


_MODELS = (linear_model.LogisticRegression, linear_model.LinearRegression)


def compile_linear(estimator: Any) -> LinearPredict | None:
    """The one-pass prediction of ``estimator`` when it is a supported linear pipeline (see
    the module docstring), else ``None``. The function reads a copy of the fitted state: it
    answers for the state at the time of the call (a served version never changes).

    Before it is returned it answers two probes (every known feature, in two orders) as River
    does, to the bit, or it is not used: a River release that computed otherwise, or renamed
    what is read here, falls back to River's own code instead of answering differently."""
    compiled = compile_linear_parts(estimator)
    return None if compiled is None else compiled.predict


def compile_linear_parts(estimator: Any) -> CompiledLinear | None:
    """`compile_linear`'s prediction with its halves (`CompiledLinear`), or ``None``."""
    try:
        compiled = _compiled(estimator)
        if compiled is None or not _agrees(compiled.predict, estimator):
            return None
    except Exception:  # River's internals moved: serve with River itself
        return None
    return compiled


def linear_steps(estimator: Any) -> tuple[preprocessing.StandardScaler, Any] | None:
    """``(scaler, linear model)`` of a pipeline of exactly a `preprocessing.StandardScaler`
    (dividing by the deviation, no window) then a `linear_model.LogisticRegression` or
    `linear_model.LinearRegression`, the pipelines compiled here and in
    `learners.linear_learning`; else None (subclasses included)."""
    if type(estimator) is not compose.Pipeline or len(estimator.steps) != 2:
        return None
    scaler, model = estimator.steps.values()
    if type(scaler) is not preprocessing.StandardScaler or type(model) not in _MODELS:
        return None
    if not scaler.with_std or getattr(scaler, "window_size", None) is not None:
        return None
    return scaler, model


def _compiled(estimator: Any) -> CompiledLinear | None:
    steps = linear_steps(estimator)
    if steps is None:
        return None
    scaler, model = steps
    weights = model._weights.to_dict()
    params = _scaled_weights(scaler.means, scaler.vars, weights)
    intercept = model.intercept
    if params is None or not _finite(intercept):
        return None
    get = params.get
    mean_func = mean_function(model.loss)
    in_c = dot_standardized_in_c  # the sum in C (learners/_linear_pass.c) when it can

    if type(model) is linear_model.LinearRegression:

        def answer(acc: float) -> Any:
            return mean_func(acc + intercept)

    else:

        def answer(acc: float) -> Any:
            p = mean_func(acc + intercept)
            return {False: 1.0 - p, True: p}

    def predict(x: dict[str, Any]) -> Any:
        acc = None if in_c is None else in_c(x, params)
        return answer(_sum(x, get) if acc is None else acc)

    return CompiledLinear(predict, params, answer)


def _sum(x: dict[str, Any], get: Callable[[Any], Any]) -> float:
    """The dot product of the weights with the scaled features ``x``, in ``x``'s order, from
    0.0 (``get``: a feature's ``(mean, std, weight)``, or None)."""
    acc = 0.0
    for k, xi in x.items():
        p = get(k)
        if p is not None:
            acc += p[2] * ((xi - p[0]) / p[1])
    return acc


def mean_function(loss: Any) -> Callable[[float], Any]:
    """The loss's mean function of a float, as River's predictions call it: the sigmoid of
    `optim.losses.BinaryLoss` and the identity of ``RegressionLoss`` directly, when the loss
    keeps them (each checks first for a numpy array, which a float is not)."""
    mean_func = type(loss).mean_func
    if mean_func is optim.losses.BinaryLoss.mean_func:
        return utils.math.sigmoid
    if mean_func is optim.losses.RegressionLoss.mean_func:
        return float.__pos__  # the identity of a float: acc + intercept is one
    return cast("Callable[[float], Any]", loss.mean_func)


def _agrees(predict: LinearPredict, estimator: Any) -> bool:
    """Whether ``predict`` answers two probes as ``estimator`` does (``repr`` of the answers):
    every feature the scaler knows, half a standard deviation off its mean, in its order and
    reversed (known features only: River's reads of an unknown one would add it to the state
    of an estimator that is not read-only)."""
    scaler, model = estimator.steps.values()
    means, variances = scaler.means, scaler.vars
    probe = {k: means.get(k, 0.0) + 0.5 * v**0.5 for k, v in variances.items() if v > 0}
    river = (
        estimator.predict_one
        if type(model) is linear_model.LinearRegression
        else estimator.predict_proba_one
    )
    return all(repr(predict(x)) == repr(river(x)) for x in (probe, dict(reversed(probe.items()))))


def _scaled_weights(
    means: Mapping[Any, Any], variances: Mapping[Any, Any], weights: Mapping[Any, Any]
) -> dict[Any, tuple[Any, float, float]] | None:
    """Feature → ``(mean, std, weight)`` for the features whose variance is not 0; ``None``
    when the state cannot be compiled exactly (non-finite or negative numbers, too large)."""
    if len(variances) > MAX_FEATURES or len(weights) > MAX_FEATURES:
        return None
    if not all(_finite(w) for w in weights.values()):
        return None
    params = {}
    for k, var in variances.items():
        if not _finite(var) or var < 0:
            return None
        if var:
            mean = means.get(k, 0.0)
            if not _finite(mean):
                return None
            params[k] = (mean, var**0.5, weights.get(k, 0.0))
    return params


def _finite(value: Any) -> bool:
    return type(value) in (float, int) and math.isfinite(value)

"""The learner's linear pipelines: learning and predicting without the pipeline's layers, on
River's own state, equal to River to the bit.

River learns a sample of ``StandardScaler() | LogisticRegression()`` (the ``logreg`` spec; and
``linreg``) in layers: the pipeline's plan, the scaler's ``learn_one`` (Welford's update, a
dozen dict reads and writes per feature), its ``transform_one`` (a second pass building a new
dict), then the linear model's ``learn_one``. The scaler's part is half of the ≈ 10 µs a sample
of Agrawal's 9 features costs. `compile_learning` returns a `LinearLearning` whose ``learn_one``
updates the scaler and scales each feature in one pass, with River's expressions in River's
order on River's dicts, then hands the scaled features to the linear model's own ``learn_one``;
its predictions scale each feature as ``transform_one`` does and add its term to the dot
product as ``VectorDict.dot`` does, in the same pass. Both passes run in C when the extension
is built and the sample is of the kinds it takes (``learners/_linear_pass.c``: floats and ints,
no NaN, names of str), with the same operations; the Python loops answer the rest. With plain
SGD (no penalty, zeros for new weights, constant rates, River's ``Log`` or ``Squared`` loss), a
whole ``learn_one`` is one C call (``sgd_learn``): the scaler's pass, the weights' dot product,
the loss's gradient and its clamp, the intercept's step and the weights' steps, River's
statements in River's order, written only once every number is known (else the steps in Python
learn the sample). The state stays River's objects: a snapshot pickles them as River's own loop
would have left them (the weights' `VectorDict` is made again once around a dict this module
holds, since River's does not give its own away; it pickles to the same bytes).

Why the state is River's, number for number:

- per feature, River's scaler adds 1 to ``counts[i]``, reads the old mean, adds
  ``(xi - old) / counts[i]`` to ``means[i]``, then adds
  ``((xi - old) * (xi - means[i]) - vars[i]) / counts[i]`` to ``vars[i]``. The one pass
  evaluates the same expressions on the same values and reads and writes the same entries in
  the same order (a `Counter`'s missing count reads 0 and is not stored; a `defaultdict`'s
  missing mean or variance is stored at 0.0 when read), so a value River cannot use (a string,
  an int too large for a float) raises the same exception at the same point with the same
  entries written;
- a feature's scaled value depends on its own statistics alone, which no other feature of the
  sample changes, so scaling it right after its update gives what ``transform_one`` gives after
  the whole update (``vars[i]`` read, then ``means[i]`` only when the variance is not 0);
- predicting reads the statistics with the same lookups as ``transform_one`` (which store an
  unseen feature's variance at 0.0, as River's do), then adds ``weight * scaled`` in the order
  of the features, from 0.0, a feature without a weight weighing 0.0 (an infinite or NaN
  value then makes the sum NaN), as ``VectorDict.dot`` (River's Rust) does; then the
  intercept and the loss's mean function, as ``_raw_dot_one`` and the predictions do, a
  classifier's label being the class of the larger probability, the first (False) on a tie,
  as ``max`` over River's dict picks it. A term that is not a float (numpy's, complex) leaves
  the answer to River, whose dot converts or refuses it.

Only the exact types are compiled (`compose.Pipeline` of a `preprocessing.StandardScaler` with
``with_std`` and no window, then a `linear_model.LogisticRegression` or `LinearRegression`),
and River's learn-during-predict mode (`compose.learn_during_predict`) hands every call back to
River. Before it is used, two copies of the pipeline learn the same probe samples, one River's
way and one this way, and must be left in the same state (pickled) and answer alike; else
`compile_learning` gives None and River learns (a River release that updates otherwise).

>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> river = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> fast = compile_learning(model)
>>> for i in range(50):
...     x, y = {"a": i % 7, "b": i % 3}, i % 7 > 3
...     fast.learn_one(x, y)
...     river.learn_one(x, y)
>>> fast.predict_proba_one({"a": 5}) == river.predict_proba_one({"a": 5})
True
>>> model["LogisticRegression"].weights == river["LogisticRegression"].weights
True
>>> compile_learning(preprocessing.MinMaxScaler() | linear_model.LogisticRegression()) is None
True
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

from river import compose, linear_model, optim, preprocessing, utils

from learners.linear import linear_steps, mean_function

scale_learn_in_c: Callable[[dict[str, Any], Any, Any, Any], dict[str, Any] | None] | None
dot_scaled_in_c: Callable[[dict[str, Any], Any, Any, dict[Any, Any]], float | None] | None
sgd_learn_in_c: Callable[..., float | None] | None
try:  # the scaler's pass in C (learners/_linear_pass.c), built by pip install when it can be
    from learners._linear_pass import dot_scaled as dot_scaled_in_c
    from learners._linear_pass import scale_learn as scale_learn_in_c
    from learners._linear_pass import sgd_learn as sgd_learn_in_c
except ImportError:  # without a C compiler at install (tests require it: here and in CI)
    dot_scaled_in_c = scale_learn_in_c = sgd_learn_in_c = None

_LOSS_KINDS: dict[type, int] = {optim.losses.Log: 1, optim.losses.Squared: 2}
"""The losses whose gradient `sgd_learn_in_c` computes as River does (its ``loss_kind``)."""

_PROBES: tuple[tuple[dict[str, Any], Any], ...] = (
    ({"riverstream probe a": 1.5, "riverstream probe b": -2}, 1),
    ({"riverstream probe b": 0.25, "riverstream probe a": 3.0, "riverstream probe c": 7}, 0),
    ({"riverstream probe a": -1.25, "riverstream probe c": 2.5}, 1),
)
"""Samples the two copies learn at compile time (new features, then known ones in another
order); labels 1/0 are a class to a classifier and a number to a regressor."""
_QUERIES: tuple[dict[str, Any], ...] = (
    {"riverstream probe a": 1e6},  # scores far past the sigmoid's clamp
    {"riverstream probe a": -1e6},
)
"""Features the two copies answer after learning the probes (and `_spreads`)."""


def scale_learn_in_python(
    x: dict[str, Any], counts: Any, means: Any, variances: Any
) -> dict[str, Any]:
    """River's ``StandardScaler.learn_one(x)`` then ``transform_one(x)``, in one pass: the
    scaled features (the C pass, ``learners/_linear_pass.c``, does the same when it can)."""
    scaled = {}
    for i, xi in x.items():
        n = counts[i] + 1
        counts[i] = n
        old = means[i]
        mean = means[i] = old + (xi - old) / n
        var = variances[i]
        var = variances[i] = var + ((xi - old) * (xi - mean) - var) / n
        scaled[i] = (xi - mean) / var**0.5 if var else 0.0
    return scaled


class LinearLearning:
    """``learn_one``, ``predict_one`` and ``predict_proba_one`` of a linear pipeline, in one
    pass over the features (see the module docstring); built by `compile_learning`."""

    def __init__(self, estimator: compose.Pipeline) -> None:
        self.estimator = estimator
        scaler, model = estimator.steps.values()
        self.scaler: preprocessing.StandardScaler = scaler
        self.model: Any = model
        self._loss: Any = None  # the loss whose mean function `_mean` is (read each time:
        self._mean: Any = None  # River's `mutate` may change it)
        self._weights: Any = None  # the model's weights (a `VectorDict`) wrapping…
        self._weights_data: dict[Any, Any] = {}  # …this dict, which the C pass writes

    def _weights_dict(self) -> dict[Any, Any]:
        """The dict the model's weights keep their values in. River's `VectorDict` does not
        give its own away, so the first call (and the first after the weights were replaced:
        a copy, a mutation) wraps a copy in a new `VectorDict` of the same kind, which pickles
        to the same bytes."""
        weights = self.model._weights
        if weights is not self._weights:
            data = weights.to_dict()
            self.model._weights = self._weights = utils.VectorDict(data)
            self._weights_data = data
        return self._weights_data

    def learn_one(self, x: dict[str, Any], y: Any) -> None:
        """What ``estimator.learn_one(x, y)`` does."""
        if compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:
            self.estimator.learn_one(x, y)
            return
        scaler, model = self.scaler, self.model
        counts, means, variances = scaler.counts, scaler.means, scaler.vars
        optimizer = model.optimizer
        kind = _LOSS_KINDS.get(type(model.loss))
        rate, intercept_rate = optimizer.lr, model.intercept_lr
        if (
            kind is not None
            and sgd_learn_in_c is not None
            and type(optimizer) is optim.SGD
            and model.l1 == 0
            and not model.l2
            and type(model.initializer) is optim.initializers.Zeros
            # constant rates: River reads them midway (a scheduler may raise there)
            and type(rate) is optim.schedulers.Constant
            and type(intercept_rate) is optim.schedulers.Constant
        ):
            # The whole sample in one C pass (River's statements, see `sgd_learn` in
            # learners/_linear_pass.c); None: nothing written, and the steps below learn it.
            intercept = sgd_learn_in_c(
                x, counts, means, variances, self._weights_dict(), model.intercept, y, kind,
                model.loss, model.clip_gradient, rate.learning_rate, intercept_rate.learning_rate,
            )  # fmt: skip
            if intercept is not None:
                model.intercept = intercept
                optimizer.n_iterations += 1
                return
        scaled = None if scale_learn_in_c is None else scale_learn_in_c(x, counts, means, variances)
        if scaled is None:
            scaled = scale_learn_in_python(x, counts, means, variances)
        # Another optimizer or an L1 penalty (read each time: River's `mutate` may change
        # them): the linear model's own learn_one learns the scaled features.
        if type(optimizer) is not optim.SGD or model.l1 != 0:
            model.learn_one(scaled, y)
            return
        # GLM.learn_one with plain SGD, statement for statement, on River's own objects: the
        # weights seen through the same masked view, the loss's own gradient, clamped as
        # utils.math.clamp does, the intercept's step, then SGD's step and count.
        weights: utils.VectorDict[Any, float] = utils.VectorDict(
            model._weights, model.initializer, scaled
        )
        gradient = model.loss.gradient(y_true=y, y_pred=weights.dot(scaled) + model.intercept)
        gradient *= 1.0  # the sample weight
        clip = model.clip_gradient
        gradient = float(max(min(gradient, clip), -clip))
        step = utils.VectorDict.from_scaled(scaled, gradient)
        if model.l2:
            step.iadd_scaled(weights, model.l2)
        model.intercept -= model.intercept_lr.get(optimizer.n_iterations) * gradient
        weights.isub_scaled(step, optimizer.lr.get(optimizer.n_iterations))
        optimizer.n_iterations += 1

    def _raw_dot(self, x: dict[str, Any]) -> float | None:
        """``model._raw_dot_one(scaler.transform_one(x))`` in one pass, with the transform's
        reads (see the module docstring); None when a term is not a float (a numpy or complex
        value, which River's dot converts or refuses): River's own methods then answer, their
        reads finding what this pass stored, in the same order. The C pass
        (``learners/_linear_pass.c``) sums first when it can."""
        scaler, model = self.scaler, self.model
        means, variances = scaler.means, scaler.vars
        weights = self._weights_dict()
        acc = None if dot_scaled_in_c is None else dot_scaled_in_c(x, means, variances, weights)
        if acc is None:
            weight = weights.get
            acc = 0.0
            for i, xi in x.items():
                var = variances[i]
                term = weight(i, 0.0) * ((xi - means[i]) / var**0.5 if var else 0.0)
                if term.__class__ is not float:
                    return None
                acc += term
        total: float = acc + model.intercept
        return total

    def _mean_of(self, raw: float) -> Any:
        """The loss's mean function of ``raw``, as ``loss.mean_func`` gives it."""
        loss = self.model.loss
        if loss is not self._loss:
            self._loss, self._mean = loss, mean_function(loss)
        return self._mean(raw)

    def predict_one(self, x: dict[str, Any]) -> Any:
        """What ``estimator.predict_one(x)`` answers."""
        if compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:
            return self.estimator.predict_one(x)
        raw = self._raw_dot(x)
        if raw is None:
            return self.estimator.predict_one(x)
        y = self._mean_of(raw)
        if type(self.model) is linear_model.LogisticRegression:
            # max({False: 1.0 - y, True: y}, key=...): a key, False on a tie
            return True if y > 1.0 - y else False  # noqa: SIM210
        return y

    def predict_proba_one(self, x: dict[str, Any]) -> Any:
        """What ``estimator.predict_proba_one(x)`` answers (a classifier's)."""
        if compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:
            return self.estimator.predict_proba_one(x)
        if type(self.model) is not linear_model.LogisticRegression:
            return self.estimator.predict_proba_one(x)  # a regressor's: River's own answer
        raw = self._raw_dot(x)
        if raw is None:
            return self.estimator.predict_proba_one(x)
        p = self._mean_of(raw)
        return {False: 1.0 - p, True: p}


def compile_learning(estimator: Any) -> LinearLearning | None:
    """A `LinearLearning` of ``estimator`` when it is a supported linear pipeline that learns the
    probe samples exactly as River does (on copies), else None: River's own methods serve."""
    if linear_steps(estimator) is None:
        return None
    try:
        if not _learns_alike(estimator):
            return None
    except Exception:  # River's internals moved: River learns
        return None
    return LinearLearning(estimator)


def _learns_alike(estimator: compose.Pipeline) -> bool:
    """Whether a copy learning the probes through `LinearLearning` ends in the state of a copy
    learning them through River, answering alike on the way."""
    river, ours = copy.deepcopy(estimator), copy.deepcopy(estimator)
    fast = LinearLearning(ours)
    classifier = type(fast.model) is linear_model.LogisticRegression
    for x, y in _PROBES:
        label = bool(y) if classifier else float(y)
        if repr(fast.predict_one(x)) != repr(river.predict_one(x)):
            return False
        if classifier and repr(fast.predict_proba_one(x)) != repr(river.predict_proba_one(x)):
            return False
        fast.learn_one(dict(x), label)
        river.learn_one(dict(x), label)
        if _state(ours) != _state(river):
            return False
    if not all(_answers_alike(fast, river, x, classifier) for x in (*_QUERIES, *_spreads(fast))):
        return False
    # a tie (p = 0.5: no intercept, an unseen feature scaled to 0.0): the label River picks
    fast.model.intercept = river.steps[next(reversed(river.steps))].intercept = 0.0
    tie = {"riverstream probe unseen": 1.0}
    return _answers_alike(fast, river, tie, classifier) and _state(ours) == _state(river)


def _spreads(fast: LinearLearning) -> list[dict[str, Any]]:
    """Every feature the scaler knows, in the order opposite to its own (and the weights'),
    each 0.01 to 100 deviations off its mean, four ways: a River whose dot product added its
    terms in another order would answer otherwise in at least one of them for most states (a
    classifier's probabilities told the two orders apart for 30 of 40 trained states tried;
    where the score is far from 0 the sigmoid hides a last bit)."""
    means, variances = fast.scaler.means, fast.scaler.vars
    known = list(variances)[::-1]
    return [
        {
            f: means[f] + (i % 7 - 3.1) * 10.0 ** ((i * k) % 5 - 2) * (variances[f] ** 0.5 or 1.0)
            for i, f in enumerate(known)
        }
        for k in (1, 2, 3, 4)
    ]


def _answers_alike(
    fast: LinearLearning, river: compose.Pipeline, x: dict[str, Any], classifier: bool
) -> bool:
    if repr(fast.predict_one(dict(x))) != repr(river.predict_one(dict(x))):
        return False
    return not classifier or repr(fast.predict_proba_one(dict(x))) == repr(
        river.predict_proba_one(dict(x))
    )


def _state(estimator: compose.Pipeline) -> bytes:
    """The learned state of a pipeline's steps (not the pipeline's own caches)."""
    return pickle.dumps(list(estimator.steps.values()), protocol=pickle.HIGHEST_PROTOCOL)

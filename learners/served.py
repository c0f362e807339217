"""Scoring what the API served against the labels (pure; the learning core calls it).

A feature event logged by the API carries the answer it served (`schemas.events.Served`). When
its label is joined, the core scores that answer with the served target's first metric, per
target and version (``riverstream_served_metric``): the quality production really got.

A serving graph's logged answer names the graph (and its version) as the target, and carries
what each of its shadow branches answered (``shadows``, by the branch's path). Each shadow is
scored the same way, under the target ``GRAPH@PATH`` (`shadow_target`) and the graph's version,
and compared with the primary answer on the labels both answered: a `ModelComparison` of the
pair ``(GRAPH@vN, GRAPH@vN@PATH)`` for graph version N (`shadow_pair`; the primary as
champion), an anytime-valid paired comparison as between models (`learners.compare`), kept in
the core (checkpointed, exactly once) and written with the snapshots beside the models'
comparisons (``riverstream models compare``).

One comparison per graph version: another version may serve other models on either side (a
promotion by `stream.registry.challenger` swaps primary and shadow), so evidence of two
versions is never pooled. Checkpoints written before kept one unversioned pair
``(GRAPH, GRAPH@PATH)`` over all versions: it is dropped from the core at the graph's next
shadow answer (its last record stays readable in Redis, with the snapshot that wrote it).

Examples
--------
>>> from river import metrics
>>> from schemas.events import Served, ShadowAnswer
>>> served = Served("fraud", 3, True, None, {"lr": 7}, {"root.shadow.shadows[0]": ShadowAnswer(False)})
>>> scores, pairs = {}, {}
>>> score_shadows(served, True, metrics.Accuracy, "classifier", scores, pairs)
>>> scores
{('fraud@root.shadow.shadows[0]', 3): Accuracy: 0.00%}
>>> pairs[("fraud@v3", "fraud@v3@root.shadow.shadows[0]")].stats.loss_b
1.0
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from learners.comparisons import ModelComparison, Pair
from schemas.events import Label, Served

SHADOW_MARK = "@"


class Scorer(Protocol):
    """What scoring needs of a model of the core (`learners.core.ModelState`)."""

    @property
    def kind(self) -> str: ...

    @property
    def metrics(self) -> Sequence[Any]: ...


def shadow_target(graph: str, branch: str) -> str:
    """The target name a graph's shadow branch is scored under.

    >>> shadow_target("fraud", "root.shadow.shadows[1]")
    'fraud@root.shadow.shadows[1]'
    """
    return f"{graph}{SHADOW_MARK}{branch}"


def shadow_pair(graph: str, version: int, branch: str) -> Pair:
    """The comparison of a graph's primary answer with a shadow branch's, at one graph version.

    >>> shadow_pair("fraud", 3, "root.shadow.shadows[1]")
    ('fraud@v3', 'fraud@v3@root.shadow.shadows[1]')
    """
    primary = f"{graph}{SHADOW_MARK}v{version}"
    return primary, f"{primary}{SHADOW_MARK}{branch}"


def scoring_model(models: Mapping[str, Scorer], served: Served) -> Scorer | None:
    """The model whose first metric scores ``served``: the served model itself, or for a
    graph the first model it used that the core runs; None if none has a metric."""
    state = models.get(served.model)
    if state is None and served.versions:
        state = next((models[m] for m in served.versions if m in models), None)
    return state if state is not None and state.metrics else None


def json_label(key: str) -> Any:
    """A class label read back from a JSON object key: ``"true"``/``"false"`` are booleans."""
    return {"true": True, "false": False}.get(key, key)


def _int_label(key: str) -> Any:
    """An integer class label read back from a JSON object key (``"1"``: 1), else the key."""
    try:
        return int(key)
    except ValueError:
        return key


def _probabilities(proba: dict[str, float] | None, y: Label) -> dict[Any, float] | None:
    """The answer's probabilities keyed by class labels of ``y``'s type: JSON keys are
    strings, ``"true"``/``"false"`` for boolean labels and ``"0"``/``"1"`` for integer ones."""
    if proba and isinstance(y, bool):
        return {json_label(k): v for k, v in proba.items()}
    if proba and isinstance(y, int):
        return {_int_label(k): v for k, v in proba.items()}
    return proba


def update_metric(metric: Any, y: Label, prediction: Any, proba: dict[str, float] | None) -> None:
    """Update a served-answer metric with one answer (skipped when it has nothing the metric
    uses, or cannot be scored)."""
    uses_labels = getattr(metric, "requires_labels", True)  # regression metrics: values
    y_pred = prediction if uses_labels else _probabilities(proba, y)
    if y_pred is None or y_pred == {}:
        return
    with contextlib.suppress(Exception):  # a served answer that cannot be scored is skipped
        metric.update(y, y_pred)


def score_shadows(
    served: Served,
    y: Label,
    metric_type: Callable[[], Any],
    kind: str,
    scores: dict[tuple[str, int], Any],
    comparisons: dict[Pair, ModelComparison],
) -> None:
    """Score each shadow answer of ``served`` against ``y`` into ``scores`` (a ``metric_type``
    per shadow target and graph version) and compare it with the primary answer in
    ``comparisons``, per graph version (classifiers and regressors; see the module)."""
    if not served.shadows:
        return
    primary = (served.prediction, _probabilities(served.probabilities, y))
    for branch, answer in served.shadows.items():
        target = shadow_target(served.model, branch)
        key = (target, served.version)
        metric = scores.get(key)
        if metric is None:
            metric = scores[key] = metric_type()
        update_metric(metric, y, answer.prediction, answer.probabilities)
        if kind not in ("classifier", "regressor"):
            continue
        comparisons.pop((served.model, target), None)  # unversioned, of older checkpoints
        pair = shadow_pair(served.model, served.version, branch)
        comparison = comparisons.get(pair)
        if comparison is None:
            comparison = comparisons[pair] = ModelComparison.fresh(*pair, kind)
            comparison.a, comparison.b = 0, 1
        shadow = (answer.prediction, _probabilities(answer.probabilities, y))
        comparison.update(y, [primary, shadow])

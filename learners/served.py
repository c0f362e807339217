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

**Bounded by version.** Versions come every 10 000 labels or 30 s by default: a learner that
runs for weeks sees thousands, and every metric and comparison kept is pickled into each
checkpoint and exported as Prometheus series. So only the latest `VERSIONS_KEPT` versions of
each target (a model, a graph, a graph's shadow), and the latest `VERSIONS_KEPT` graph versions
of each shadow pair, are kept (`admit`): a new version drops its target's oldest by version
number, and an answer of a version older than all those kept is not scored (its label joined
after those of `VERSIONS_KEPT` newer versions: a straggler, or the answers after a rollback
with ``--resume skip`` to a version further back; ``--resume replay`` restores the core of the
target, whose latest versions are the target's). What is dropped is never scored again, so no
metric starts over from zero under an old version. The last record of a dropped comparison
stays readable in Redis.

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
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from learners.comparisons import ModelComparison, Pair
from schemas.events import Label, Served

SHADOW_MARK = "@"

VERSIONS_KEPT = 32
"""Versions kept per target, and graph versions per shadow pair (see the module): the latest
by version number. Worth a served metric are the version served now and those a rollback
would go to, and a rollback target is usually recent. The window moves with the labels
joined, not with the clock: however late labels come, only those spread over more than 32
versions of one target are left out. 32 keeps that, and bounds what a long-running learner
pickles into each checkpoint and exports as ``riverstream_served_metric`` series."""

_Key = TypeVar("_Key", bound=Hashable)


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


def pair_version(pair: Pair) -> tuple[str, str, int] | None:
    """``(graph, branch, graph version)`` of a shadow pair (`shadow_pair`); None for another
    pair (the unversioned one of older checkpoints). Names hold no ``@`` (`schemas.names`).

    >>> pair_version(shadow_pair("fraud", 3, "root.shadow.shadows[1]"))
    ('fraud', 'root.shadow.shadows[1]', 3)
    >>> pair_version(("fraud", "fraud@root.shadow.shadows[1]")) is None
    True
    """
    primary, challenger = pair
    graph, mark, version = primary.rpartition(f"{SHADOW_MARK}v")
    if not mark or not version.isdigit() or not challenger.startswith(primary + SHADOW_MARK):
        return None
    return graph, challenger[len(primary) + 1 :], int(version)


def admit(
    kept: dict[_Key, Any], version: int, same: Iterable[tuple[_Key, int]],
    limit: int = VERSIONS_KEPT,
) -> bool:  # fmt: skip
    """Make room in ``kept`` for a new ``version`` of a target whose kept keys and versions
    are ``same``: drop its oldest versions so that at most ``limit`` remain with the new one,
    and say True; False (nothing dropped) when ``limit`` kept versions are newer, so the new
    one would be the one dropped.

    >>> kept = {("lr", v): None for v in (3, 5, 9)}
    >>> admit(kept, 1, [(k, k[1]) for k in kept], limit=3)
    False
    >>> admit(kept, 7, [(k, k[1]) for k in kept], limit=3), sorted(kept)
    (True, [('lr', 5), ('lr', 9)])
    """
    ordered = sorted(same, key=lambda item: item[1])
    if sum(1 for _, v in ordered if v > version) >= limit:
        return False
    for old, _ in ordered[: max(0, len(ordered) - limit + 1)]:
        del kept[old]
    return True


def _versions_of(
    scores: Mapping[tuple[str, int], Any], target: str
) -> list[tuple[tuple[str, int], int]]:
    return [(key, key[1]) for key in scores if key[0] == target]


def _versions_of_pair(
    comparisons: Mapping[Pair, Any], graph: str, branch: str
) -> list[tuple[Pair, int]]:
    found = []
    for pair in comparisons:
        parsed = pair_version(pair)
        if parsed is not None and parsed[:2] == (graph, branch):
            found.append((pair, parsed[2]))
    return found


def admit_score(scores: dict[tuple[str, int], Any], key: tuple[str, int]) -> bool:
    """Whether a served metric for ``key`` (target, version), not yet kept, may be kept;
    making room for it (`admit`)."""
    return admit(scores, key[1], _versions_of(scores, key[0]))


def keep_latest(
    scores: dict[tuple[str, int], Any],
    comparisons: dict[Pair, Any],
    limit: int = VERSIONS_KEPT,
) -> None:
    """Keep the latest ``limit`` versions of each target in ``scores`` and graph versions of
    each shadow pair in ``comparisons``, dropping the others: a checkpoint written before the
    bound (see the module) is brought to what a learner with the bound would hold.

    >>> scores = {("lr", v): None for v in range(1, 6)} | {("g", 1): None}
    >>> keep_latest(scores, {}, limit=2)
    >>> sorted(scores)
    [('g', 1), ('lr', 4), ('lr', 5)]
    """
    by_target: dict[str, list[tuple[tuple[str, int], int]]] = {}
    for key in scores:
        by_target.setdefault(key[0], []).append((key, key[1]))
    by_pair: dict[tuple[str, str], list[tuple[Pair, int]]] = {}
    for pair in comparisons:
        parsed = pair_version(pair)
        if parsed is not None:
            by_pair.setdefault(parsed[:2], []).append((pair, parsed[2]))
    _trim(scores, by_target.values(), limit)
    _trim(comparisons, by_pair.values(), limit)


def _trim(kept: dict[_Key, Any], groups: Iterable[list[tuple[_Key, int]]], limit: int) -> None:
    """Drop from ``kept`` all but the latest ``limit`` keys of each group of (key, version)."""
    for same in groups:
        for key, _ in sorted(same, key=lambda item: item[1])[: max(0, len(same) - limit)]:
            del kept[key]


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
    ``comparisons``, per graph version (classifiers and regressors; see the module). Each
    keeps the latest `VERSIONS_KEPT` versions (`admit`): a shadow answer of an older version is
    not scored."""
    if not served.shadows:
        return
    primary = (served.prediction, _probabilities(served.probabilities, y))
    for branch, answer in served.shadows.items():
        target = shadow_target(served.model, branch)
        key = (target, served.version)
        metric = scores.get(key)
        if metric is None and admit_score(scores, key):
            metric = scores[key] = metric_type()
        if metric is not None:
            update_metric(metric, y, answer.prediction, answer.probabilities)
        if kind not in ("classifier", "regressor"):
            continue
        comparisons.pop((served.model, target), None)  # unversioned, of older checkpoints
        pair = shadow_pair(served.model, served.version, branch)
        comparison = comparisons.get(pair)
        if comparison is None:
            same = _versions_of_pair(comparisons, served.model, branch)
            if not admit(comparisons, served.version, same):
                continue
            comparison = comparisons[pair] = ModelComparison.fresh(*pair, kind)
            comparison.a, comparison.b = 0, 1
        shadow = (answer.prediction, _probabilities(answer.probabilities, y))
        comparison.update(y, [primary, shadow])

"""Champion/challenger comparisons kept by the learning core, one per ordered pair of models.

A `ModelComparison` follows two models of one `learners.core.LearningCore` over the labels
that **both** scored: at label time it reads the predictions the two models stored when the
features arrived (the same ones their progressive metrics use), turns each into a loss and
feeds the pair to a `learners.compare.PairedComparison` (an anytime-valid confidence
sequence: checked after every label without inflating false alarms; see that module for
the method and why). A label is skipped when either model has no usable prediction for it:
the model raised on the features (``FAILED``), it was added to the stream after the features
arrived (``UNSEEN``), or its prediction is missing or not a number.

Losses:

* **classifiers**: the 0/1 error of the predicted class (``predict_one``; the most probable
  class of ``predict_proba_one`` when the model's metrics only asked for probabilities). The
  confidence sequence is the nonasymptotic betting one (losses in [0, 1]).
* **regressors**: the absolute error ``|y - y_hat|``. Absolute errors have no known bound, so
  the *asymptotic* confidence sequence (``bound=None``) is used, and its decision waits for
  `REGRESSION_MIN_SAMPLES` labels (its coverage only holds asymptotically).

The difference is ``loss(champion) - loss(challenger)``: positive means the challenger is
better. Anomaly detectors are not compared (they have no label to be right or wrong about).

The comparison is part of the core, so it is checkpointed with the models and restored with
them: after a crash it continues exactly where the checkpoint left it (exactly once, like the
models). `ModelComparison.record` is its JSON-ready form for Redis (`stream.store.comparisons`),
from which the operator's commands and the promotion policy rebuild it without River.

Examples
--------
>>> parse_pair("tree:adaptive")
('tree', 'adaptive')
>>> parse_compare_options(["a:b", "b:c"]), parse_compare_options(["all"])
([('a', 'b'), ('b', 'c')], 'all')
>>> cmp = ModelComparison.fresh("tree", "adaptive", "classifier")
>>> cmp.a, cmp.b = 0, 1
>>> for y, a, b in [(True, True, True), (True, False, True), (False, None, False)]:
...     cmp.update(y, [(a, None), (b, None)])
>>> cmp.stats.n, cmp.stats.loss_a, cmp.stats.loss_b  # the third label: the champion had none
(2, 0.5, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from learners.compare import Kind, PairedComparison
from schemas.errors import ModelSpecError
from schemas.names import MODEL_NAME_RULE, is_model_name

Pair = tuple[str, str]
"""``(champion, challenger)``: two model names."""

ComparePairs = Sequence[Pair] | Literal["all"]
"""Which comparisons a core keeps: explicit pairs, or ``"all"`` (see `all_pairs`)."""

REGRESSION_MIN_SAMPLES = 300
"""Labels before a regression comparison decides (its confidence sequence is asymptotic)."""

ALPHA = 0.05
"""Probability that a comparison ever declares a false winner, however often it is read."""

RECORD_FORMAT = 1

_KINDS: dict[str, Kind] = {"classifier": "classification", "regressor": "regression"}


class ComparisonRecord(TypedDict):
    """A comparison as stored in Redis (JSON): who, how, and the statistic's whole state."""

    format: int
    champion: str
    challenger: str
    kind: Kind
    loss: str
    min_samples: int
    state: dict[str, float | int | str | None]


def parse_pair(option: str) -> Pair:
    """``CHAMPION:CHALLENGER`` → ``(champion, challenger)``.

    >>> parse_pair("a:a")
    Traceback (most recent call last):
    ...
    schemas.errors.ModelSpecError: --compare a:a: a model cannot be its own challenger
    """
    champion, sep, challenger = option.strip().partition(":")
    champion, challenger = champion.strip(), challenger.strip()
    if not sep or not champion or not challenger:
        raise ModelSpecError(f"--compare {option!r}: expected CHAMPION:CHALLENGER (model names)")
    for name in (champion, challenger):
        if not is_model_name(name):
            raise ModelSpecError(
                f"--compare {option}: invalid model name {name!r}: use {MODEL_NAME_RULE}"
            )
    if champion == challenger:
        raise ModelSpecError(f"--compare {option}: a model cannot be its own challenger")
    return champion, challenger


def parse_compare_options(options: Sequence[str]) -> list[Pair] | Literal["all"]:
    """``--compare`` options (or the comma-separated ``RIVERSTREAM_COMPARE``): pairs, or
    ``"all"`` alone. Duplicates are dropped, first occurrence kept."""
    items = [item.strip() for option in options for item in option.split(",") if item.strip()]
    if "all" in items:
        if len(items) > 1:
            raise ModelSpecError("--compare all compares every pair: give no other --compare")
        return "all"
    pairs: list[Pair] = []
    for item in items:
        pair = parse_pair(item)
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def all_pairs(kinds: Mapping[str, str]) -> list[Pair]:
    """Every pair of models of one comparable kind, the earlier model (in the order given) as
    the champion; ``kinds`` maps model names to their kind. (The mirror pair ``(b, a)`` holds
    the same information, negated: it is not kept twice.)

    >>> all_pairs({"a": "classifier", "x": "anomaly", "b": "classifier", "c": "regressor"})
    [('a', 'b')]
    """
    names = [name for name, kind in kinds.items() if kind in _KINDS]
    return [
        (first, second)
        for i, first in enumerate(names)
        for second in names[i + 1 :]
        if kinds[first] == kinds[second]
    ]


def check_pairs(pairs: ComparePairs, kinds: Mapping[str, str]) -> list[Pair]:
    """Resolve ``"all"`` and check that each pair names two models of one comparable kind.

    >>> check_pairs([("a", "r")], {"a": "classifier", "r": "regressor"})
    Traceback (most recent call last):
    ...
    schemas.errors.ModelSpecError: --compare a:r: a is a classifier and r a regressor; only models of one kind compare
    """
    if pairs == "all":
        return all_pairs(kinds)
    checked: list[Pair] = []
    for champion, challenger in pairs:
        where = f"--compare {champion}:{challenger}"
        for name in (champion, challenger):
            if name not in kinds:
                raise ModelSpecError(
                    f"{where}: no model named {name!r}; models are {sorted(kinds)}"
                )
        a, b = kinds[champion], kinds[challenger]
        if a not in _KINDS:
            raise ModelSpecError(f"{where}: {champion} is an anomaly detector: nothing to compare")
        if b not in _KINDS:
            raise ModelSpecError(
                f"{where}: {challenger} is an anomaly detector: nothing to compare"
            )
        if a != b:
            raise ModelSpecError(
                f"{where}: {champion} is a {a} and {challenger} a {b}; only models of one kind "
                "compare"
            )
        if champion == challenger:
            raise ModelSpecError(f"{where}: a model cannot be its own challenger")
        if (champion, challenger) not in checked:
            checked.append((champion, challenger))
    return checked


def predicted_label(prediction: tuple[Any, Any]) -> Any:
    """The class a classifier's stored prediction says: ``predict_one``'s, else the most
    probable class of ``predict_proba_one`` (ties: the first, as River's ``predict_one``),
    else None.

    >>> predicted_label((None, {"no": 0.3, "yes": 0.7})), predicted_label((None, {}))
    ('yes', None)
    """
    label, proba = prediction
    if label is not None:
        return label
    if proba:
        return max(proba, key=proba.__getitem__)
    return None


@dataclass(slots=True)
class ModelComparison:
    """The paired comparison of ``champion`` with ``challenger`` inside a core.

    ``a`` and ``b`` are the positions of the two models in the core's model order (the order
    of the per-feature prediction lists); the core sets them (`LearningCore.set_comparisons`).
    """

    champion: str
    challenger: str
    kind: Kind
    stats: PairedComparison
    min_samples: int
    a: int = -1
    b: int = -1

    @classmethod
    def fresh(cls, champion: str, challenger: str, model_kind: str) -> ModelComparison:
        """A new comparison of two models of ``model_kind`` (classifier or regressor)."""
        kind = _KINDS[model_kind]
        if kind == "classification":
            return cls(champion, challenger, kind, PairedComparison(ALPHA, kind), 0)
        stats = PairedComparison(ALPHA, kind, bound=None)
        return cls(champion, challenger, kind, stats, REGRESSION_MIN_SAMPLES)

    @property
    def loss(self) -> str:
        """How a prediction's loss is counted: ``0/1`` or ``absolute``."""
        return "0/1" if self.kind == "classification" else "absolute"

    def update(self, y: Any, predictions: Sequence[tuple[Any, Any]]) -> None:
        """One joined label ``y``, with every model's stored prediction (in the core's order)."""
        first, second = predictions[self.a], predictions[self.b]
        if self.kind == "classification":
            label_a, label_b = predicted_label(first), predicted_label(second)
            if label_a is None or label_b is None:
                return
            self.stats.update(0.0 if label_a == y else 1.0, 0.0 if label_b == y else 1.0)
            return
        if first[0] is None or second[0] is None:
            return
        try:
            target = float(y)
            error_a, error_b = abs(target - float(first[0])), abs(target - float(second[0]))
        except (TypeError, ValueError, ArithmeticError):  # not numbers, or past floats
            return
        if math.isfinite(error_a) and math.isfinite(error_b):
            self.stats.update(error_a, error_b)

    def record(self) -> ComparisonRecord:
        """The JSON-ready record (`from_record` rebuilds the statistic exactly)."""
        return ComparisonRecord(
            format=RECORD_FORMAT,
            champion=self.champion,
            challenger=self.challenger,
            kind=self.kind,
            loss=self.loss,
            min_samples=self.min_samples,
            state=self.stats.to_dict(),
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ModelComparison:
        """The comparison stored as ``record`` (`ValueError` if it is not one).

        >>> cmp = ModelComparison.fresh("a", "b", "regressor")
        >>> cmp.stats.update(2.0, 1.0)
        >>> again = ModelComparison.from_record(cmp.record())
        >>> (again.champion, again.kind, again.min_samples, again.stats.n)
        ('a', 'regression', 300, 1)
        """
        if record.get("format") != RECORD_FORMAT:
            raise ValueError(f"unknown comparison record format {record.get('format')!r}")
        stats = PairedComparison.from_dict(dict(record["state"]))
        return cls(
            str(record["champion"]),
            str(record["challenger"]),
            stats.kind,
            stats,
            int(record["min_samples"]),
        )

"""What a serving graph works with, per request: the models it calls (`Predicts`, found through
a `ModelLookup`), the per-request `Context`, the answers (`Outcome` of a node, `GraphAnswer` of
the graph, `ShadowResult` of a shadow), the errors a request may meet, and the sticky hashing
of splits. The vocabulary that `learners.graph` (the compiled graph) and `learners.graph_eval`
(the node compilers) share; pure, no I/O.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from schemas.errors import RiverstreamError

DRAW = random.Random().random
"""The default uniform draw of shadow sampling: a generator of its own, which leaves the
`random` module's shared state alone (test tools such as Hypothesis watch it)."""

# --- what the graph calls -----------------------------------------------------------------


Answered = tuple[Any, dict[Any, float] | None]
"""What `Predicts.predict` returns: ``(prediction, probabilities)``."""


class Predicts(Protocol):
    """A model as served (`learners.predictor.ServedModel` has this shape): ``predict`` gives
    ``(prediction, probabilities)``: probabilities for a classifier, ``None`` otherwise, and for
    an anomaly detector the prediction is its score."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def kind(self) -> str: ...  # "classifier" | "regressor" | "anomaly"
    def predict(self, x: dict[str, Any], *, complete: bool = False) -> Answered: ...


class ModelLookup(Protocol):
    """Where a graph finds its models. ``get`` gives the model served under a name, or ``None``;
    ``metric`` its live progressive metric for ``weights: by_metric``, where higher is better:
    a caller tracking a loss (MAE, log loss) passes a transformed value, ``1 / (1 + loss)``
    say; ``weights`` the members' normalised weights, `metric_weights` of the lookup (which a
    lookup that never changes may remember)."""

    def get(self, name: str) -> Predicts | None: ...
    def metric(self, name: str) -> float | None: ...
    def weights(self, names: tuple[str, ...]) -> list[float]: ...


def metric_weights(models: ModelLookup, names: Sequence[str]) -> list[float]:
    """The normalised ``by_metric`` weights of the models ``names`` (higher is better): a
    ``None``, negative or non-finite metric weighs 0; when none is positive, all weigh the same.

    >>> metric_weights(StaticModels({}, {"a": 3.0, "b": float("nan"), "c": 1.0}), "abc")
    [0.75, 0.0, 0.25]
    """
    weights = []
    total = 0.0
    for name in names:
        m = models.metric(name)
        w = float(m) if m is not None and m > 0 and math.isfinite(m) else 0.0
        weights.append(w)
        total += w
    if total <= 0:
        return [1.0 / len(names)] * len(names)
    return [w / total for w in weights]


@dataclass(frozen=True, slots=True)
class StaticModels:
    """A `ModelLookup` over fixed mappings: name → model and name → metric."""

    models: Mapping[str, Predicts]
    metrics: Mapping[str, float] = field(default_factory=dict)

    def get(self, name: str) -> Predicts | None:
        return self.models.get(name)

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)

    def weights(self, names: tuple[str, ...]) -> list[float]:
        return metric_weights(self, names)


class MemberUnavailable(RiverstreamError):
    """A model the graph needs is not loaded (HTTP 503): ``name``, and where (``path``)."""

    def __init__(self, name: str, path: str | None = None) -> None:
        super().__init__(name, path)
        self.name = name
        self.path = path

    def __str__(self) -> str:
        return f'model "{self.name}" is not loaded' + (f" ({self.path})" if self.path else "")


class GraphInputError(RiverstreamError):
    """The request cannot be evaluated by this graph (HTTP 422): a split has neither its
    sticky feature nor a request id to hash."""


# --- what a graph answers -----------------------------------------------------------------


class Outcome(NamedTuple):
    """A node's answer, inside an evaluation (the `GraphAnswer` fields a node decides)."""

    prediction: Any
    probabilities: dict[Any, float] | None
    kind: str
    decided_by: str
    decision: str | None = None
    reason: str | None = None


class Context:
    """One evaluation's bookkeeping: the models pinned so far, the choices, the shadows."""

    __slots__ = (
        "complete", "draw", "given", "models", "path", "request_id", "shadows", "top", "used",
    )  # fmt: skip

    def __init__(
        self,
        models: ModelLookup,
        request_id: str | None,
        top: dict[str, Any],
        complete: bool = False,
        draw: Callable[[], float] | None = None,
        given: Mapping[str, Answered] | None = None,
    ) -> None:
        self.complete = complete  # the features hold no null (checked by the caller)
        # every model's answer, worked out by the caller (`learners.graph_eval.models_alone`)
        self.given = given
        self.draw = draw or DRAW  # uniform in [0, 1): shadow sampling of a request without id
        self.models = models
        self.request_id = request_id
        self.top = top  # the request's own features (a shadow seeing them need not keep a copy)
        self.used: dict[str, Predicts] = {}
        self.path: list[str] = []
        self.shadows: list[PendingShadow] = []

    def answer(self, out: Outcome) -> GraphAnswer:
        versions = {name: model.version for name, model in self.used.items()}
        return GraphAnswer(
            out.prediction, out.probabilities, out.kind, versions, tuple(self.path),
            out.decided_by, out.decision, out.reason, tuple(self.shadows),
        )  # fmt: skip


Runner = Callable[[dict[str, Any], Context], Outcome]
"""A compiled node: ``runner(features, context) -> Outcome``."""


@dataclass(frozen=True, slots=True)
class PendingShadow:
    """A shadow selected for this request, for `run_shadows`: its node's ``path``, its compiled
    ``runner``, the features it saw when they are not the request's own (inside a sequence),
    and ``primary``: what its shadow node's primary predicted (the graph's answer may differ:
    a rule above it, an ensemble around it), which its prediction is compared with."""

    path: str
    runner: Runner
    inputs: dict[str, Any] | None
    request_id: str | None
    primary: Any = None


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ≈ 2 µs more per answer
class GraphAnswer:
    """A graph's answer to one request (read-only by convention).

    ``versions``: every model used, name → version. ``path``: the choices made, in order
    (``root.switch.cases[0]``, ``root.split.branches[1]``, a matching ``...rules[2]``).
    ``decided_by``: the path of the node (or rule) whose answer this is; ``decision`` and
    ``reason``: the matching rule's, when a rule decided. ``shadows``: for `run_shadows`.
    """

    prediction: Any
    probabilities: dict[Any, float] | None
    kind: str
    versions: dict[str, int]
    path: tuple[str, ...]
    decided_by: str
    decision: str | None = None
    reason: str | None = None
    shadows: tuple[PendingShadow, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Every field but the pending shadows, ready for JSON."""
        return {
            "prediction": self.prediction,
            "probabilities": self.probabilities,
            "kind": self.kind,
            "versions": self.versions,
            "path": list(self.path),
            "decided_by": self.decided_by,
            "decision": self.decision,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """One shadow's evaluation: its ``answer`` or the ``error`` it raised (never re-raised),
    its duration, and whether its prediction ``agrees`` with its shadow node's primary's."""

    path: str
    answer: GraphAnswer | None
    error: Exception | None
    seconds: float
    agrees: bool | None


# --- helpers shared with the node compilers -----------------------------------------------

_UNIT = 2.0**-53


def sticky_hasher(salt: str) -> Callable[[object], float]:
    """``unit(key)``: BLAKE2b (8 bytes) of ``salt``, a NUL and ``str(key)`` in UTF-8, its top 53
    bits as a float in [0, 1). A float that is a whole number is hashed as the int it equals
    (``17.0`` as ``"17"``): one user keeps one branch whether the value came as a JSON integer
    or as an ``FP64`` tensor. Booleans stay ``"True"``/``"False"``, not ``1``/``0``."""
    prefix = hashlib.blake2b(salt.encode() + b"\x00", digest_size=8)

    def unit(key: object) -> float:
        if isinstance(key, float) and key.is_integer():
            key = int(key)
        h = prefix.copy()
        h.update(str(key).encode())
        return (int.from_bytes(h.digest(), "big") >> 11) * _UNIT

    return unit


def sticky_unit(salt: str, key: object) -> float:
    """Where ``key`` falls in [0, 1) for a split or shadow salted ``salt`` (by default the
    node's path): a split takes the branch whose cumulative weight share first exceeds it.

    >>> sticky_unit("root.split", "user-1") == sticky_unit("root.split", "user-1")
    True
    >>> round(sticky_unit("root.split", "user-1"), 6), round(sticky_unit("root.split", 42), 6)
    (0.147538, 0.952907)
    >>> sticky_unit("s", 42.0) == sticky_unit("s", 42) == sticky_unit("s", "42")
    True
    """
    return sticky_hasher(salt)(key)


def positive_probability(probabilities: Mapping[Any, float] | None, prediction: Any) -> Any:
    """What a classifier feeds the next step of a sequence: the probability of ``True`` (or of
    1 for 0/1 labels), else its prediction.

    >>> positive_probability({False: 0.25, True: 0.75}, True)
    0.75
    >>> positive_probability({0: 0.9}, 0), positive_probability({"a": 0.6, "b": 0.4}, "a")
    (0.0, 'a')
    """
    if probabilities:
        if any(type(k) is bool for k in probabilities):
            return probabilities.get(True, 0.0)
        if all(type(k) is int and k in (0, 1) for k in probabilities):
            return probabilities.get(1, 0.0)
    return prediction

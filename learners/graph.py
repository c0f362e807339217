"""Evaluating serving graphs: several models answering one request, as a `GraphSpec` says.

`compile_graph` turns a `schemas.graphs.GraphSpec` into a `CompiledGraph` once (the node
compilers are in `learners.graph_eval`, the conditions' in `learners.conditions`, what they
share in `learners.graph_context`): closures with
conditions compiled, weights normalised and hash salts prepared, so that evaluating adds a few
microseconds to the model calls. `evaluate` takes a spec (compiled on first use and remembered)
or a compiled graph.

Models are found through a `ModelLookup` at evaluation time, as `Predicts` objects (the shape of
the served models). Each model is looked up once per request, so a request uses one version of
it throughout; the `GraphAnswer` says which (``versions``). A model the lookup does not have
raises `MemberUnavailable` (HTTP 503); a request a split cannot route raises `GraphInputError`
(HTTP 422); what a model raises on features it cannot use propagates unchanged.

Shadows are not run by `evaluate`: the answer lists them (``shadows``) and `run_shadows`, called
once the response is on its way, evaluates them and captures whatever they raise.

Splits and shadow sampling are sticky: `sticky_unit` maps a key (``str`` of a request id or of
a feature's value, a whole float as its int) to [0, 1) with BLAKE2b salted by the node's path
(or a split's ``salt``): the same in every process and run, and reproducible by another service.
A split salted by its path reshuffles about half its users when the path changes (wrapped in a
rules node, moved into a switch): give it an explicit ``salt`` to keep them. A shadow whose
request has no id is sampled by a random draw (`CompiledGraph`'s ``draw``).

>>> from dataclasses import dataclass
>>> from schemas.graph_parser import parse_graph
>>> @dataclass
... class Constant:
...     name: str
...     version: int
...     value: float
...     kind: str = "regressor"
...     def predict(self, x): return self.value, None
>>> models = StaticModels({"a": Constant("a", 3, 1.0), "b": Constant("b", 7, 2.0)})
>>> spec = parse_graph({"name": "g", "root": {"switch": {
...     "cases": [{"when": {"feature": "big", "eq": True}, "then": "b"}],
...     "default": {"ensemble": {"members": ["a", "b"], "combine": "weighted", "weights": [3, 1]}},
... }}})
>>> answer = evaluate(spec, {"big": False}, models=models)
>>> answer.prediction, answer.versions, answer.path, answer.decided_by
(1.25, {'a': 3, 'b': 7}, ('root.switch.default',), 'root.switch.default.ensemble')
>>> evaluate(spec, {"big": True}, models=models).as_dict()
{'prediction': 2.0, 'probabilities': None, 'kind': 'regressor', 'versions': {'b': 7}, 'path': ['root.switch.cases[0]'], 'decided_by': 'root.switch.cases[0].then', 'decision': None, 'reason': None}
>>> evaluate(spec, {}, models=StaticModels({}))
Traceback (most recent call last):
...
learners.graph_context.MemberUnavailable: model "a" is not loaded (root.switch.default.ensemble.members[0])
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from learners.graph_context import (
    DRAW,
    Answered,
    Context,
    GraphAnswer,
    GraphInputError,
    MemberUnavailable,
    ModelLookup,
    Outcome,
    PendingShadow,
    Predicts,
    Runner,
    ShadowResult,
    StaticModels,
    metric_weights,
    positive_probability,
    sticky_hasher,
    sticky_unit,
)
from learners.graph_eval import compile_node, models_alone
from schemas.graphs import GraphSpec

__all__ = [
    "Answered",
    "CompiledGraph",
    "Context",
    "GraphAnswer",
    "GraphInputError",
    "MemberUnavailable",
    "ModelLookup",
    "Outcome",
    "PendingShadow",
    "Predicts",
    "Runner",
    "ShadowResult",
    "StaticModels",
    "compile_graph",
    "evaluate",
    "metric_weights",
    "positive_probability",
    "run_shadows",
    "sticky_hasher",
    "sticky_unit",
]

# --- evaluation ---------------------------------------------------------------------------


class CompiledGraph:
    """A `GraphSpec` turned into closures, ready for many requests; thread-safe (per-request
    state lives in a `Context`)."""

    __slots__ = ("_draw", "_run", "models_alone", "spec")

    def __init__(self, spec: GraphSpec, *, draw: Callable[[], float] = DRAW) -> None:
        """``draw``: uniform draws in [0, 1) for the shadow sampling of requests without an id
        (``random.Random(seed).random`` for a reproducible sample)."""
        self.spec = spec
        self._draw = draw
        self._run = compile_node(spec.root, "root")
        self.models_alone = models_alone(spec.root)
        """The models, when they alone read the features (see `outcome`'s ``given``)."""

    def evaluate(
        self,
        x: dict[str, Any],
        *,
        models: ModelLookup,
        request_id: str | None = None,
        complete: bool = False,
    ) -> GraphAnswer:
        """The graph's answer to features ``x`` (never modified); see `evaluate`. ``complete``:
        the caller knows ``x`` holds no ``null`` (the members skip that filter)."""
        out, context = self.outcome(x, models=models, request_id=request_id, complete=complete)
        return context.answer(out)

    def outcome(
        self,
        x: dict[str, Any],
        *,
        models: ModelLookup,
        request_id: str | None = None,
        complete: bool = False,
        given: Mapping[str, Answered] | None = None,
    ) -> tuple[Outcome, Context]:
        """What `evaluate` answers, before it becomes a `GraphAnswer`: the root's `Outcome` and
        the evaluation's `Context` (the models used, the path, the shadows), for a caller that
        writes the answer's fields itself (`serving.graph_service`); ``context.answer(outcome)``
        is `evaluate`'s answer. ``complete`` as in `evaluate`. ``given``: for a graph whose
        models alone read the features (``models_alone``), what each of those models answers to
        ``x``, worked out by the caller from the request as it came (``x`` may then be empty):
        `models`' ``get(name).predict(x)`` of every name, exactly."""
        context = Context(models, request_id, x, complete, self._draw, given)
        return self._run(x, context), context

    def given_outcome(
        self, models: ModelLookup, given: Mapping[str, Answered]
    ) -> tuple[Outcome, Context]:
        """`outcome` of a graph whose models alone read the features (``models_alone``), from
        what each one answers (``given``) to a request without id: the features are never read.
        The commonest evaluation, its arguments by position (keywords cost a call ≈ 0.3 µs)."""
        context = Context(models, None, _NO_FEATURES, True, self._draw, given)
        return self._run(_NO_FEATURES, context), context


_NO_FEATURES: dict[str, Any] = {}
"""The features of `CompiledGraph.given_outcome`'s evaluation: never read, never written."""


_COMPILED: dict[int, tuple[GraphSpec, CompiledGraph]] = {}
_COMPILED_MAX = 64


def compile_graph(spec: GraphSpec) -> CompiledGraph:
    """The `CompiledGraph` of ``spec``; the last few are remembered (by identity)."""
    hit = _COMPILED.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    compiled = CompiledGraph(spec)
    if len(_COMPILED) >= _COMPILED_MAX:
        with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # a racing eviction
            del _COMPILED[next(iter(_COMPILED))]
    _COMPILED[id(spec)] = (spec, compiled)
    return compiled


def evaluate(
    graph: GraphSpec | CompiledGraph,
    x: dict[str, Any],
    *,
    models: ModelLookup,
    request_id: str | None = None,
) -> GraphAnswer:
    """Evaluate ``graph`` on features ``x``; ``request_id`` keys the splits that lack their
    feature and the shadow sampling. Raises `MemberUnavailable`, `GraphInputError`,
    `schemas.graph_errors.GraphError` (an ensemble mixing classifiers with regressors) or what
    a model raises on ``x``."""
    compiled = graph if isinstance(graph, CompiledGraph) else compile_graph(graph)
    return compiled.evaluate(x, models=models, request_id=request_id)


def run_shadows(answer: GraphAnswer, x: dict[str, Any], models: ModelLookup) -> list[ShadowResult]:
    """Evaluate the shadows ``answer`` lists, in order, on the request's features ``x`` (or on
    what the shadow saw, inside a sequence). A shadow that raises gives a result with its
    ``error``: nothing is raised. Shadows nested in a shadow are listed in its answer, not run."""
    results = []
    for pending in answer.shadows:
        inputs = x if pending.inputs is None else pending.inputs
        start = time.perf_counter()
        agrees: bool | None
        try:
            context = Context(models, pending.request_id, inputs)
            shadow: GraphAnswer | None = context.answer(pending.runner(inputs, context))
            agrees = bool(shadow is not None and shadow.prediction == pending.primary)
            error = None
        except Exception as exc:  # a shadow never fails its caller
            shadow, agrees, error = None, None, exc
        elapsed = time.perf_counter() - start
        results.append(ShadowResult(pending.path, shadow, error, elapsed, agrees))
    return results

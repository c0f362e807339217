"""Graph targets: a request's or a scoring run's ``target`` may name a serving graph.

The asynchronous worker and ``riverstream score`` answer for a graph as ``POST
/v1/graphs/{name}/predict`` does, through the same pure evaluation (`learners.graph`): one
compiled graph version, its members looked up once per request in one view of the served
models (`stream.store.graph_follower.ServedModels`, ``by_metric`` weights included). For the
same graph version and member versions the answer holds the same fields and values as the HTTP
answer, plus the request's ``id`` and ``target`` (the graph's name; ``graph`` in HTTP):

``{"id", "target", "graph_version", "versions", "prediction", "probabilities", "kind", "path",
"decided_by", "decision", "reason"}``

``versions`` names every model used with its version, ``path`` the choices made (switch
cases, split branches, the rule that matched) and ``decided_by`` the node or rule whose answer
this is. The request's id keys sticky splits, as the HTTP ``id`` does, so a split always routes.
Shadows are not run here: they exist to compare candidates on live traffic, and their results
are the API's metrics.

What cannot be answered raises a `SchemaError` whose ``reason`` names why, as for a model:

- ``target_unavailable``: a member the evaluation reached is not loaded (HTTP 503), or the
  members' answers cannot be combined (a classifier and a regressor in one ensemble: 503);
- ``graph_input``: a split found neither its feature nor an id (HTTP 422; not with an id);
- ``model_input``: a member raised on the features (HTTP 422); ``not_finite``: a member
  answered NaN or infinity.

A model and a graph may share a name: the model answers (as in ``/v2``, models first).

>>> from river import linear_model
>>> from learners.graph import CompiledGraph, StaticModels
>>> from learners.predictor import ServedModel
>>> from schemas.graph_parser import parse_graph
>>> lr = ServedModel.build("lr", linear_model.LogisticRegression(), version=4)
>>> spec = parse_graph({"name": "g", "root": {"rules": {"over": "lr", "rules": [
...     {"when": {"feature": "x", "gt": 10}, "then": {"decision": "review"}}]}}})
>>> graph = ServedGraphVersion("g", 7, CompiledGraph(spec))
>>> graph_answer_body(graph, StaticModels({"lr": lr}), "a", {"x": 2})
{'id': 'a', 'target': 'g', 'graph_version': 7, 'versions': {'lr': 4}, 'prediction': False, 'probabilities': {False: 0.5, True: 0.5}, 'kind': 'classifier', 'path': [], 'decided_by': 'root.rules.over', 'decision': None, 'reason': None}
>>> graph_answer_body(graph, StaticModels({}), "a", {"x": 2})
Traceback (most recent call last):
...
schemas.errors.SchemaError: target_unavailable at target: graph 'g' v7: model "lr" is not loaded (root.rules.over)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from learners.graph import (
    CompiledGraph,
    GraphAnswer,
    GraphInputError,
    MemberUnavailable,
    ModelLookup,
)
from learners.predictor import MODEL_INPUT_ERRORS, NonFiniteAnswer, ServedModel
from schemas.errors import RiverstreamError, SchemaError
from schemas.graph_errors import GraphError
from schemas.graph_parser import parse_graph
from schemas.graphs import ShadowNode, walk
from stream.store.graph_follower import ServedModels

if TYPE_CHECKING:
    from stream.store.graphs import GraphStore
    from stream.store.snapshots import SnapshotStore


class GraphVersion(Protocol):
    """A loaded graph version (`stream.store.graph_follower.ServedGraph` has this shape)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def compiled(self) -> CompiledGraph: ...


class Shadows(Protocol):
    """Where the shadows of a graph answer go, to run off the answer path: the API's
    `serving.shadows.ShadowRunner` with its metrics (``riverstream_shadow_*``), wired by the
    CLI (`stream.cli.predict`), so shadows outside the API run and count as they do in it."""

    def run_later(
        self, graph: str, answer: GraphAnswer, features: dict[str, Any], models: ServedModels
    ) -> None:
        """Queue ``answer.shadows``, evaluated on ``features`` with ``models``; never raises."""
        ...


@dataclass(frozen=True, slots=True)
class ServedGraphVersion:
    """A graph version loaded for one scoring run (or a test): name, version, compiled form."""

    name: str
    version: int
    compiled: CompiledGraph


def graph_answer_body(
    graph: GraphVersion,
    models: ModelLookup,
    row_id: str,
    features: dict[str, Any],
    shadows: Callable[[GraphAnswer], None] | None = None,
) -> dict[str, Any]:
    """The answer of ``graph`` to one request (see the module), or a `SchemaError`; an answer
    with shadows is handed to ``shadows`` (once the answer is known good)."""
    name, version = graph.name, graph.version
    try:
        answer = graph.compiled.evaluate(features, models=models, request_id=row_id)
    except MemberUnavailable as exc:
        raise SchemaError(
            "target_unavailable", "target", f"graph {name!r} v{version}: {exc}"
        ) from None
    except GraphInputError as exc:
        raise SchemaError("graph_input", "features", str(exc)) from None
    except GraphError as exc:
        raise SchemaError(
            "target_unavailable", "target", f"graph {name!r} v{version} cannot answer: {exc}"
        ) from None
    except NonFiniteAnswer as exc:
        raise SchemaError("not_finite", "prediction", str(exc)) from None
    except MODEL_INPUT_ERRORS as exc:
        raise SchemaError(
            "model_input",
            "features",
            f"a model cannot use these features: {type(exc).__name__}: {exc}",
        ) from None
    prediction = answer.prediction
    if type(prediction) is float and not math.isfinite(prediction):
        raise SchemaError("not_finite", "prediction", f"the graph answered {prediction}")
    if shadows is not None and answer.shadows:
        shadows(answer)
    return {
        "id": row_id,
        "target": name,
        "graph_version": version,
        "versions": answer.versions,
        "prediction": prediction,
        "probabilities": answer.probabilities,
        "kind": answer.kind,
        "path": list(answer.path),
        "decided_by": answer.decided_by,
        "decision": answer.decision,
        "reason": answer.reason,
    }


@dataclass(frozen=True, slots=True)
class GraphTarget:
    """A graph version with its members loaded, for a whole scoring run: every row sees the
    same member versions. ``versions``: the members loaded (a member with no version in Redis
    is absent, and the rows that reach it are reported ``target_unavailable``)."""

    graph: ServedGraphVersion
    models: ServedModels
    versions: dict[str, int]
    shadows: Shadows | None = None
    """Where the answers' shadows run (None: they are not run)."""

    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def version(self) -> int:
        return self.graph.version

    @property
    def has_shadows(self) -> bool:
        """Whether the graph has a shadow node (its shadows run on this process's runner)."""
        return any(isinstance(node, ShadowNode) for node in walk(self.graph.compiled.spec.root))

    def body(self, row_id: str, features: dict[str, Any]) -> dict[str, Any]:
        shadows = self.shadows
        if shadows is None:
            return graph_answer_body(self.graph, self.models, row_id, features)
        name, models = self.graph.name, self.models
        return graph_answer_body(
            self.graph, models, row_id, features,
            lambda answer: shadows.run_later(name, answer, features, models),
        )  # fmt: skip


def load_graph_target(
    store: SnapshotStore,
    graphs: GraphStore,
    name: str,
    version: int | None = None,
    *,
    metric: str | None = None,
    shadows: Shadows | None = None,
) -> GraphTarget:
    """Graph ``name`` at ``version`` (default: the promoted one), its members at the versions
    served now, verified and loaded once; ``metric`` weighs ``by_metric`` ensembles as the API
    does (``RIVERSTREAM_SERVE_GRAPH_METRIC``)."""
    if version is None:
        version = graphs.promoted(name)
        if version is None:
            raise RiverstreamError(f"graph {name!r} is not served (no version to score with)")
    elif version not in graphs.versions(name):
        raise RiverstreamError(f"graph {name!r} has no version {version}")
    try:
        spec = parse_graph(graphs.document(name, version))
        compiled = CompiledGraph(spec)
    except GraphError as exc:
        raise RiverstreamError(f"graph {name!r} v{version} is invalid: {exc}") from None
    loaded: dict[str, ServedModel] = {}
    for member in spec.model_names():
        served = store.serving_version(member)
        if served is None:
            continue
        obj, meta = store.load_model(member, served)
        loaded[member] = ServedModel.build(member, obj, version=served, kind=meta.kind, meta=meta)
    members: Mapping[str, ServedModel] = loaded
    return GraphTarget(
        ServedGraphVersion(name, version, compiled),
        ServedModels(members, metric),
        {member: m.version for member, m in loaded.items()},
        shadows,
    )

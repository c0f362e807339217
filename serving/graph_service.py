"""The graph service of one API process: the graphs followed live, the models they use, and
the answer (status, body, shadows) to a graph predict request (`serving.graphs` serves it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from learners.graph import (
    Answered,
    Context,
    GraphAnswer,
    GraphInputError,
    MemberUnavailable,
    Outcome,
)
from learners.predictor import MODEL_INPUT_ERRORS
from schemas.graph_errors import GraphError
from serving.asgi import JSON_OPTIONS, json_default
from serving.graph_bodies import graph_body, load_graph_body, numeric_graph_body
from serving.inputs import (
    InputError,
    InputLimits,
    finite_features,
    linear_sum,
    problem,
    read_features,
)
from serving.shadows import GraphMetrics, ShadowJob, ShadowRunner
from stream.store.graph_follower import (
    GraphFollower,
    Params,
    ServedGraph,
    ServedModels,
)
from stream.store.graphs import GraphStore

if TYPE_CHECKING:
    from learners.predictor import ServedModel
    from schemas.settings import Settings
    from serving.telemetry import ServingMetrics
    from stream.store.follower import SnapshotFollower
    from stream.store.snapshots import SnapshotStore

GRAPH_PREDICT_ROUTE = "/v1/graphs/{name}/predict"

Observe = Callable[[str, str, int, float], None]


class GraphService:
    """Graph evaluation for one API process: the graph follower, the model lookup, shadows."""

    def __init__(
        self,
        settings: Settings,
        store: SnapshotStore,
        models: SnapshotFollower,
        metrics: ServingMetrics,
        *,
        limits: InputLimits,
        max_body_bytes: int,
        observe: Observe | None = None,
    ) -> None:
        self.metrics = GraphMetrics.for_registry(metrics.registry)
        self.follower = GraphFollower(
            GraphStore(store.client, store.keys.prefix),
            self.metrics,
            poll_seconds=settings.serve_poll_seconds,
        )
        self.models = models
        self.metric = settings.serve_graph_metric or None
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.max_id_length = settings.max_id_length
        self.start_wait_seconds = settings.serve_start_wait_seconds
        self.observe: Observe = observe if observe is not None else metrics.observe_request
        self.shadows = ShadowRunner(self.metrics)
        self._weights: dict[tuple[str, int], float | None] = {}  # by_metric, per model version
        self._view: tuple[Mapping[str, ServedModel], ServedModels] | None = None
        self._read_plans: dict[str, _ReadPlan] = {}  # by graph (`answer_read`)

    def start(self) -> None:
        self.follower.start()

    def stop(self) -> None:
        self.follower.stop()
        self.shadows.stop()

    def lookup(self) -> ServedModels:
        """The models as served now, for one request (or one batch): one view per mapping the
        follower serves (it swaps in a new mapping, never edits one)."""
        return self._current_view()[1]

    def _current_view(self) -> tuple[Mapping[str, ServedModel], ServedModels]:
        """The mapping the follower serves now and `lookup`'s view of it."""
        served = self.models.served
        view = self._view
        if view is None or view[0] is not served:
            view = self._view = (served, ServedModels(served, self.metric, self._weights))
            self._read_plans.clear()  # they hold the last view's models
        return view

    def evaluate(
        self, name: str, x: dict[str, Any], request_id: str | None = None
    ) -> tuple[ServedGraph, GraphAnswer, ServedModels] | None:
        """Graph ``name``'s answer to ``x`` (None: not served), for other protocols. Raises as
        `learners.graph.evaluate` does; the caller runs ``answer.shadows`` (`run_later`)."""
        graph = self.follower.get(name)
        if graph is None:
            return None
        models = self.lookup()
        return graph, graph.compiled.evaluate(x, models=models, request_id=request_id), models

    def run_later(self, job: ShadowJob | None) -> None:
        """Queue the shadows of a request whose response is on its way."""
        if job is not None:
            self.shadows.submit(job)

    def answer(self, name: str, raw: bytes | None) -> tuple[int, dict[str, Any], ShadowJob | None]:
        """Status, body and shadows of a graph predict request (``raw`` None: too large): a
        logged one's (`serving.feedback`), whose body names an id, which `answer_read` leaves."""
        return self.answer_general(name, raw, time.perf_counter())

    def answer_read(
        self, name: str, raw: bytes | None, started: float
    ) -> tuple[int, bytes | dict[str, Any], None] | None:
        """What `answer_general` answers to the commonest body, ``{"features": {name: number,
        ...}}``, sent to a graph whose models alone read the features (``models_alone``) and
        are all compiled linear ones: each one's answer worked out from the sum read from the
        bytes in C (`serving.inputs.linear_sum`, the same numbers as the general reading's),
        the features never built; a 200's body comes as its JSON, the fields naming the state
        rendered once per graph version and view (`_ReadPlan`). None for anything else (a
        body naming an ``"id"`` or a ``"log"`` too), which `answer_general` then reads.
        ``started``: when the request came (its duration is observed from then)."""
        graph = self.follower.get(name)
        if graph is None or raw is None or graph.compiled.models_alone is None:
            return None
        plan = self._read_plans.get(name)
        if plan is None or plan.graph is not graph or plan.served is not self.models.served:
            plan = self._read_plan(name, graph)
        if plan.members is None:
            return None
        limits = self.limits
        given = {}
        for member, model, params in plan.members:
            acc = linear_sum(raw, params, limits)
            if acc is None or (answered := model.predict_sum(acc)) is None:
                return None
            given[member] = answered
        content: bytes | dict[str, Any]
        try:
            out, ctx = graph.compiled.given_outcome(plan.models, given)
            answer = {"prediction": out.prediction, "probabilities": out.probabilities}
            said = orjson.dumps(answer, default=json_default, option=JSON_OPTIONS)
            content = plan.head + said[1:-1] + _outcome_tail(out, ctx, plan.tails)
            status = 200
        except Exception as exc:  # as in `answer_general`
            status, content = self._failure(name, exc)
        self.observe(GRAPH_PREDICT_ROUTE, name, status, time.perf_counter() - started)
        return status, content, None  # no shadows: a shadow reads the features

    def _read_plan(self, name: str, graph: ServedGraph) -> _ReadPlan:
        """`answer_read`'s plan for ``graph`` over the models served now, kept for the next
        request while both are served."""
        served, models = self._current_view()
        names = graph.compiled.models_alone
        linear = None if names is None else models.linear(names)
        members, head = None, b""
        if names is not None and linear is not None:
            members = tuple(
                (member, model, params)
                for member, (model, params) in zip(names, linear.members, strict=True)
            )
            fields = {
                "graph": name, "graph_version": graph.version, "versions": linear.versions,
                "samples_learned": linear.samples_learned,  # every member: `models_alone`
            }  # fmt: skip
            head = orjson.dumps(fields, default=json_default, option=JSON_OPTIONS)[:-1] + b","
        plan = self._read_plans[name] = _ReadPlan(graph, served, models, members, head, {})
        return plan

    def answer_general(
        self, name: str, raw: bytes | None, started: float
    ) -> tuple[int, dict[str, Any], ShadowJob | None]:
        """`answer` to any body: read, checked, then evaluated (``started`` as in
        `answer_read`)."""
        graph = self.follower.get(name)
        if graph is None:
            self.observe(GRAPH_PREDICT_ROUTE, "none", 404, time.perf_counter() - started)
            return 404, _unknown(name), None
        try:
            if raw is None:
                raise _TooLarge
            parsed: Features | None = read_features(raw, self.limits)  # the commonest body
            ids: RequestIds = None
            complete = parsed is not None  # numbers only, no null: nothing to filter
            if parsed is None:
                body = load_graph_body(raw)
                fast = numeric_graph_body(body, self.limits, self.max_id_length)
                parsed, ids = fast or graph_body(body, self.limits, self.max_id_length)
                complete = fast is not None
            models = self.lookup()
            content, job = self._evaluate(name, graph, models, parsed, ids, complete)
            status = 200
        except Exception as exc:  # the known ones become a status, the others are raised
            (status, content), job = self._failure(name, exc), None
        self.observe(GRAPH_PREDICT_ROUTE, name, status, time.perf_counter() - started)
        return status, content, job

    def answer_rows(
        self, name: str, rows: list[dict[str, Any]], request_id: str | None = None
    ) -> tuple[int, dict[str, Any], ShadowJob | None]:
        """`answer` of the batch ``{"instances": rows, "ids": [request_id, ...]}`` (the answer
        has ``predictions``) without its JSON: for the OIP v2 route, whose rows are parsed
        already and which counts its requests itself. Rows of finite numbers alone skip the
        checks and the filtering of nulls."""
        graph = self.follower.get(name)
        if graph is None:
            return 404, _unknown(name), None
        limits = self.limits
        try:
            models = self.lookup()
            if len(rows) <= limits.max_instances and all(
                finite_features(x, limits) is not None for x in rows
            ):
                each: RequestIds = [request_id] * len(rows)
                content, job = self._evaluate(name, graph, models, rows, each, True)
            else:
                body: dict[str, Any] = {"instances": rows}
                if request_id is not None:
                    body["ids"] = [request_id] * len(rows)
                parsed, ids = graph_body(body, limits, self.max_id_length)
                content, job = self._evaluate(name, graph, models, parsed, ids, False)
            return 200, content, job
        except Exception as exc:  # as in `answer`
            status, content = self._failure(name, exc)
            return status, content, None

    def _evaluate(
        self,
        name: str,
        graph: ServedGraph,
        models: ServedModels,
        parsed: Features,
        ids: RequestIds,
        complete: bool,
        given: dict[str, Answered] | None = None,
    ) -> tuple[dict[str, Any], ShadowJob | None]:
        """The answer's body and shadows for checked ``(features, id)`` or ``(instances,
        ids)``; ``complete``: they hold numbers only; ``given``: the models' answers, read from
        the bytes (`answer_read`). Raises what the evaluation raises."""
        run = graph.compiled.outcome
        job = None
        if isinstance(parsed, dict):
            assert not isinstance(ids, list)
            out, ctx = run(parsed, models=models, request_id=ids, complete=complete, given=given)
            content = _fields(out, ctx, models, {"graph": name, "graph_version": graph.version})
            if ctx.shadows:
                job = ShadowJob(name, ((ctx.answer(out), parsed),), models)
            return content, job
        assert isinstance(ids, list)
        outcomes = [
            run(x, models=models, request_id=i, complete=complete)
            for x, i in zip(parsed, ids, strict=True)
        ]
        content = {
            "graph": name, "graph_version": graph.version,
            "predictions": [_fields(out, ctx, models, {}) for out, ctx in outcomes],
        }  # fmt: skip
        shadowed = tuple(
            (ctx.answer(out), x)
            for (out, ctx), x in zip(outcomes, parsed, strict=True)
            if ctx.shadows
        )
        if shadowed:
            job = ShadowJob(name, shadowed, models)
        return content, job

    def _failure(self, name: str, exc: Exception) -> tuple[int, dict[str, Any]]:
        """The status and body of a request that raised ``exc``; re-raised when unexpected."""
        if isinstance(exc, _TooLarge):
            return 413, {"detail": f"body larger than {self.max_body_bytes} bytes"}
        if isinstance(exc, InputError):
            return 422, {"detail": exc.detail}
        if isinstance(exc, GraphInputError):
            return 422, {"detail": [problem([], str(exc), "graph_input")]}
        if isinstance(exc, MemberUnavailable):
            return 503, {"detail": f"graph {name!r}: {exc}"}
        if isinstance(exc, GraphError):  # the members' answers do not fit the graph (kinds mixed)
            return 503, {"detail": f"graph {name!r} cannot answer: {exc}"}
        if isinstance(exc, MODEL_INPUT_ERRORS):
            msg = f"a model cannot use these features: {type(exc).__name__}: {exc}"
            return 422, {"detail": [problem([], msg, "model_input")]}
        raise exc


def _unknown(name: str) -> dict[str, Any]:
    return {"detail": f"graph {name!r} is unknown"}


Features = dict[str, Any] | list[dict[str, Any]]
"""One request's features, or a batch's instances."""
RequestIds = str | None | list[str | None]
"""Its id, or one per instance."""


class _TooLarge(Exception):
    pass


class _ReadPlan(NamedTuple):
    """What `GraphService.answer_read` needs of a graph and the models served with it."""

    graph: ServedGraph
    served: Mapping[str, ServedModel]
    """The models' mapping it was made over (`SnapshotFollower.served`: swapped, never edited)."""
    models: ServedModels
    members: tuple[tuple[str, ServedModel, Params], ...] | None
    """Each model's name, model and linear ``params``; None: the graph is not read so."""
    head: bytes
    """The JSON of the answer up to the outcome's fields: graph, version, the members' state."""
    tails: dict[tuple[Any, ...], bytes]
    """The JSON of the answer after its prediction and probabilities, by outcome
    (`_outcome_tail`)."""


def _fields(
    out: Outcome, ctx: Context, models: ServedModels, into: dict[str, Any]
) -> dict[str, Any]:
    """``into`` with the answer's fields (`learners.graph.GraphAnswer`'s, written from the
    evaluation's outcome) after what it holds; ``versions`` and ``samples_learned`` are the
    `named_state` of the members the context used (``models``' own: the view it evaluated
    with, `ServedModels.state`). Written one by one, a third cheaper than merging a second
    dict; the answers read from the bytes (`GraphService.answer_read`, `_outcome_tail`) have
    these fields in this order, and are tested equal to these answers, byte for byte."""
    versions, learned = models.state(tuple(ctx.used))
    into["versions"] = versions
    into["samples_learned"] = learned
    into["prediction"] = out.prediction
    into["probabilities"] = out.probabilities
    into["kind"] = out.kind
    into["path"] = ctx.path
    into["decided_by"] = out.decided_by
    into["decision"] = out.decision
    into["reason"] = out.reason
    return into


_TAILS_KEPT = 64
"""Tails a `_ReadPlan` keeps: a graph's outcomes are few (one per rule and branch it can end
in); past that many, a tail is rendered each time."""


def _outcome_tail(out: Outcome, ctx: Context, tails: dict[tuple[Any, ...], bytes]) -> bytes:
    """The JSON of an answer's fields after its prediction and probabilities, in their order
    (`_fields`'), from ``,`` to the closing brace: the kind, the path, the deciding node, the
    decision and its reason. They name where the evaluation ended, not what was predicted, so
    the few each graph gives are rendered once and kept in ``tails`` (a `_ReadPlan`'s).

    >>> tails = {}
    >>> out = Outcome(True, {True: 0.9, False: 0.1}, "classifier", "r[0]", "block")
    >>> ctx = Context(None, None, {})  # type: ignore[arg-type]
    >>> ctx.path.append("r[0]")
    >>> _outcome_tail(out, ctx, tails)
    b',"kind":"classifier","path":["r[0]"],"decided_by":"r[0]","decision":"block","reason":null}'
    >>> list(tails.values()) == [_outcome_tail(out._replace(prediction=False), ctx, tails)]
    True
    """
    path = ctx.path
    key = out[2:] + tuple(path) if path else out[2:]  # kind, decided_by, decision, reason
    tail = tails.get(key)
    if tail is None:
        fields = {
            "kind": out.kind, "path": path, "decided_by": out.decided_by,
            "decision": out.decision, "reason": out.reason,
        }  # fmt: skip
        tail = b"," + orjson.dumps(fields, default=json_default, option=JSON_OPTIONS)[1:]
        if len(tails) < _TAILS_KEPT:
            tails[key] = tail
    return tail

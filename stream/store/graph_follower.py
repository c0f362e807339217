"""Following serving graphs in the background of an API process, as models are followed.

`GraphFollower` runs one daemon thread beside the `stream.store.follower.SnapshotFollower`. At
start it reads every graph's promoted version (`stream.store.graphs.GraphStore`), then waits on
the snapshot channel for graph notifications (`Notification` of kind ``graph``); each makes it
re-read that graph's pointer, and every ``poll_seconds`` it re-reads all of them anyway, so a lost
message costs one poll interval (the loop of `stream.store.following.Follower`, shared with
the models' follower). A graph that is no longer in ``P:graphs`` (deleted) stops being
served.

Loading a version (fetch the document, `schemas.graph_parser.parse_graph`, `learners.graph.CompiledGraph`)
happens on this thread, never on a request, and the swap is one reference assignment of a new
dict: a request sees the old or the new `ServedGraph`, never a mix. A document that does not
parse or compile is refused: logged, counted, remembered (versions are immutable) and the
previous version keeps serving; so is one whose reading fails otherwise (``load_failed``: a
JSON document nested too deep, say), as a snapshot that does not load is, rather than
failing every sync of every graph. A promoted pointer that does not parse is that graph's problem
alone (``errors`` in `GraphFollower.status`; its last version keeps serving): the other graphs
are followed as usual. If Redis is unreachable the last graphs keep serving.

Members are not resolved here: a graph is evaluated against the models the `SnapshotFollower`
serves at that moment, through `ServedModels`, a `learners.graph.ModelLookup` over one mapping of
served models, so that a request (a whole batch) uses one version of each model throughout.

``weights: by_metric``
    The weight of a member is its served snapshot's progressive metric (`SnapshotMeta.metrics`,
    what the learner measured on the labels, as `river.evaluate.progressive_val_score` would):
    the metric named by ``metric`` (``RIVERSTREAM_SERVE_GRAPH_METRIC``) or, unset, the model's
    first metric by name (snapshot metadata keeps metrics by name, not in the order of the
    learner's ``--metric`` options: set the variable when a model tracks several). Higher must
    be better, so a metric whose River class says smaller is better (a
    loss or an error: MAE, LogLoss...) counts as ``1 / (1 + value)``; a metric River does not
    know counts as it is. A model without that metric, or with a non-finite or negative value,
    weighs 0, and when every member weighs 0 they weigh the same (`learners.graph.metric_weights`).

Nothing here imports River at module level (the operator's commands import `stream.store`); the
metric directions are looked up in `river.metrics` on first use.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from learners.graph import CompiledGraph, Predicts, metric_weights
from schemas.errors import SnapshotError
from schemas.graph_errors import GraphError
from schemas.graph_parser import parse_graph
from schemas.graphs import GraphSpec
from stream.store.following import Follower
from stream.store.graphs import GraphStore
from stream.store.snapshots import RedisUnavailableError, Subscription

if TYPE_CHECKING:
    from learners.predictor import ServedModel

Params = dict[Any, Any]
"""A compiled linear model's ``params`` (`learners.linear.CompiledLinear`)."""

log = logging.getLogger(__name__)


# -- the models a graph evaluates against ---------------------------------------------------
@functools.lru_cache(maxsize=256)
def higher_is_better(metric: str) -> bool:
    """Whether a higher value of the `river.metrics` class ``metric`` is better (True for a
    name River does not know, or a class that needs arguments).

    >>> higher_is_better("Accuracy"), higher_is_better("MAE"), higher_is_better("NotAMetric")
    (True, False, True)
    """
    from river import metrics as river_metrics

    cls = getattr(river_metrics, metric, None) if metric.isidentifier() else None
    try:
        return bool(cls().bigger_is_better)  # type: ignore[misc]
    except Exception:
        return True


def metric_weight(metrics: Mapping[str, float], metric: str | None = None) -> float | None:
    """The ``by_metric`` weight of a model whose snapshot measured ``metrics`` (see the module).

    >>> metric_weight({"MAE": 3.0, "Accuracy": 0.8}), metric_weight({"Accuracy": 0.8, "MAE": 3.0}, "MAE")
    (0.8, 0.25)
    >>> metric_weight({}), metric_weight({"Accuracy": float("nan")}), metric_weight({"R2": -0.5})
    (None, None, None)
    """
    name = metric if metric else min(metrics, default=None)
    value = None if name is None else metrics.get(name)
    if value is None or not math.isfinite(value) or value < 0:
        return None
    assert name is not None
    return float(value) if higher_is_better(name) else 1.0 / (1.0 + value)


class ServedModels:
    """A `learners.graph.ModelLookup` over one mapping of served models (a request's view of
    `SnapshotFollower.served`, taken once: the follower swaps in a new mapping, never edits it).

    ``weights``, a dict shared by the requests of a process, remembers each model version's
    ``by_metric`` weight (a version's metadata never changes); it is emptied past
    `WEIGHTS_CACHE` entries. A live update is weighed afresh: it keeps the version it continues
    while its metrics change. The normalised weights of an ensemble's members are remembered
    by the view itself, as are which graphs' models are all compiled linear ones (`linear`)
    and the state the members of an answer name (`state`): its models never change.
    """

    __slots__ = ("_linear", "_metric", "_models", "_normalised", "_state", "_weights", "get")

    def __init__(
        self,
        models: Mapping[str, ServedModel],
        metric: str | None = None,
        weights: dict[tuple[str, int], float | None] | None = None,
    ) -> None:
        self._models = models
        self.get: Callable[[str], ServedModel | None] = models.get
        """The model served under a name, or None (the mapping's own ``get``: no call more)."""
        self._metric = metric
        self._weights = {} if weights is None else weights
        self._normalised: dict[tuple[str, ...], list[float]] = {}
        self._linear: dict[tuple[str, ...], LinearMembers | None] = {}
        self._state: dict[tuple[str, ...], tuple[dict[str, int], dict[str, int | None]]] = {}

    def metric(self, name: str) -> float | None:
        model = self._models.get(name)
        if model is None or model.meta is None:
            return None
        if model.live:  # same version, other metrics: never cached
            return metric_weight(model.meta.metrics, self._metric)
        key = (name, model.version)
        try:
            return self._weights[key]
        except KeyError:
            pass
        weight = metric_weight(model.meta.metrics, self._metric)
        if len(self._weights) >= WEIGHTS_CACHE:
            self._weights.clear()  # a long-lived process: old versions' weights go
        self._weights[key] = weight
        return weight

    def weights(self, names: tuple[str, ...]) -> list[float]:
        try:
            return self._normalised[names]
        except KeyError:
            weights = self._normalised[names] = metric_weights(self, names)
            return weights

    def state(self, names: tuple[str, ...]) -> tuple[dict[str, int], dict[str, int | None]]:
        """`named_state` of this view's models ``names`` (each one served), remembered: the
        same two dicts for every answer of the view, to read, never to change."""
        try:
            return self._state[names]
        except KeyError:
            models = self._models
            state = self._state[names] = named_state((name, models[name]) for name in names)
            return state

    def linear(self, names: tuple[str, ...]) -> LinearMembers | None:
        """The models ``names`` with the ``params`` of their compiled linear halves
        (`ServedModel.linear_parts`) and the state they name, when every one is served and has
        one; else None."""
        try:
            return self._linear[names]
        except KeyError:
            found: list[tuple[ServedModel, Params]] = []
            for name in names:
                model = self._models.get(name)
                if model is None or model.linear_parts is None:
                    self._linear[names] = None
                    return None
                found.append((model, model.linear_parts.params))
            versions, learned = self.state(names)
            linear = self._linear[names] = LinearMembers(tuple(found), versions, learned)
            return linear


def named_state(
    members: Iterable[tuple[str, Predicts]],
) -> tuple[dict[str, int], dict[str, int | None]]:
    """What a graph's answer says of the members it used, ``(name, model)`` in the order it
    used them: ``versions`` and ``samples_learned`` by name, which name their state exactly (a
    live update keeps the version it continues: `stream.store.live`); None for a model that
    does not say what it learned."""
    versions, learned = {}, {}
    for name, model in members:
        versions[name] = model.version
        learned[name] = getattr(model, "samples_learned", None)
    return versions, learned


class LinearMembers(NamedTuple):
    """`ServedModels.linear`'s answer: what a graph of these models alone needs of them, once
    per view. ``versions`` and ``samples_learned`` (name → value) are shared by every answer
    of the view: read them, never change them."""

    members: tuple[tuple[ServedModel, Params], ...]
    versions: dict[str, int]
    samples_learned: dict[str, int | None]


WEIGHTS_CACHE = 4096


# -- the graphs ------------------------------------------------------------------------------
class GraphFollowerMetrics(Protocol):
    def graph_swapped(self, graph: str, version: int) -> None: ...

    def graph_refused(self, graph: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ServedGraph:
    """One loaded graph version: its document, its spec and its compiled form."""

    name: str
    version: int
    spec: GraphSpec
    compiled: CompiledGraph
    document: dict[str, Any]
    loaded_at: float

    def info(self) -> dict[str, Any]:
        return {
            "graph": self.name,
            "version": self.version,
            "description": self.spec.description,
            "models": list(self.spec.model_names()),
            "loaded_at": self.loaded_at,
            "document": self.document,
        }


class GraphFollower(Follower):
    """Serving graphs of one process (see the module)."""

    thread_name = "graph-follower"
    serving_what = "graphs"

    def __init__(
        self,
        graphs: GraphStore,
        metrics: GraphFollowerMetrics | None = None,
        *,
        poll_seconds: float = 1.0,
    ) -> None:
        super().__init__(poll_seconds)
        self.graphs = graphs
        self.metrics = metrics
        self._served: Mapping[str, ServedGraph] = {}
        self._refused: dict[tuple[str, int], str] = {}

    # -- what requests read ------------------------------------------------------------------
    def get(self, name: str) -> ServedGraph | None:
        return self._served.get(name)

    @property
    def served(self) -> Mapping[str, ServedGraph]:
        return self._served

    def status(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "graphs": {name: g.version for name, g in sorted(self._served.items())},
            "redis": self.redis_status(now),
            "refused": [
                {"graph": g, "version": v, "reason": r} for (g, v), r in list(self._refused.items())
            ],
            "errors": [{"graph": g, "error": e} for g, e in sorted(self.problems().items())],
        }

    # -- lifecycle ---------------------------------------------------------------------------

    # -- syncing -----------------------------------------------------------------------------
    def _subscribe(self) -> Subscription:
        return self.graphs.subscribe()

    def _sync(self) -> None:
        """Check every graph's pointer once; drop the deleted ones."""
        names = self.graphs.names()
        self._forget_problems(set(names).__contains__)
        for name in names:
            self._refresh_one(name)
        gone = set(self._served) - set(names)
        if gone:
            self._served = {n: g for n, g in self._served.items() if n not in gone}
            log.info("graphs no longer served: %s", ", ".join(sorted(gone)))

    def refresh(self, name: str) -> None:
        """Serve ``name``'s promoted version if it is not the one served (nor refused); stop
        serving it when it has none."""
        version = self.graphs.promoted(name)
        current = self._served.get(name)
        if version is None:
            if current is not None:
                self._served = {n: g for n, g in self._served.items() if n != name}
                log.info("graph %s is no longer served", name)
            return
        if (current is not None and current.version == version) or (name, version) in self._refused:
            return
        try:
            document = self.graphs.document(name, version)
            spec = parse_graph(document)
            if spec.name != name:
                raise GraphError("name", f"the document is named {spec.name!r}, not {name!r}")
            compiled = CompiledGraph(spec)
        except RedisUnavailableError:
            raise
        except SnapshotError as exc:  # deleted meanwhile: the next look settles it
            log.warning("graph %s v%d unreadable: %s", name, version, exc)
            return
        except GraphError as exc:
            self._refuse(name, version, "invalid", str(exc))
            return
        except Exception as exc:  # a document that breaks the reading (JSON nested too deep)
            self._refuse(name, version, "load_failed", f"{type(exc).__name__}: {exc}")
            return
        served = ServedGraph(name, version, spec, compiled, document, time.time())
        self._served = {**self._served, name: served}  # the swap
        if self.metrics is not None:
            self.metrics.graph_swapped(name, version)
        log.info("serving graph %s v%d", name, version)

    def _refuse(self, name: str, version: int, reason: str, error: str) -> None:
        """Remember a version that cannot be served (versions are immutable: not retried)."""
        self._refused[(name, version)] = error
        if self.metrics is not None:
            self.metrics.graph_refused(name, reason)
        log.error("refused graph %s v%d: %s", name, version, error)

"""The graph registry: apply a serving graph as a new version, roll it back, delete it, and the
history of who moved it and why.

Keys (all in `stream.store.keys.RedisKeys`, under the models' prefix ``P``)::

    P:graphs                   set of graph names
    P:graph:NAME:versions      sorted set of versions (numbers from the models' P:version:seq)
    P:graph:NAME:v:V           the normalised document (`schemas.graphs.graph_to_dict`), JSON
    P:graph:NAME:promoted      the version every API process serves
    P:graph:NAME:history       JSON `HistoryEntry` lines: apply, rollback, delete, challenger

Every change runs in `RegistryBase._atomic` (WATCH, read and validate, MULTI, write, EXEC,
retried on conflict), so the pointer, the history line and the notification of one operation
commit together or not at all, and a refused operation changes nothing. The notification is a
`Notification` of kind ``graph`` on the snapshot channel; readers that only know models drop it.

Rules:

- ``apply`` parses the document with the store's model set as the known models (watched, so a
  model set changing meanwhile makes it check again): a graph naming a missing model is refused
  with the path of the node and the name (``root.ensemble.members[1]: unknown model "tre" (did
  you mean "tree"?)``). A document equal to the promoted one is not a new version (``changed``
  False): applying twice is harmless.
- ``rollback`` serves an earlier version: by default the one promoted before the current one
  (`stream.registry.policy.promotion_stack` of the history). The target must still fit the
  models: a version naming a model that is gone is refused like an ``apply``.
- ``delete`` removes the graph's versions and pointer (serving stops answering it: 404); its
  history is kept, with the deletion, so ``history`` still tells what happened, and a graph
  applied again under the name continues it.

Graph documents are plain JSON interpreted by our code (no pickles, no ``eval``): they are not
signed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from schemas.errors import RegistryError, SnapshotError
from schemas.graph_parser import parse_graph
from schemas.graphs import GraphSpec, graph_to_dict
from schemas.records import HistoryEntry
from stream.registry.base import HISTORY_LIMIT, RegistryBase, _newest_below, registry_error
from stream.registry.policy import _user, rollback_target
from stream.store.graphs import GraphStore
from stream.store.keys import Notification, RedisKeys

__all__ = ["Applied", "GraphRegistry", "GraphVersionInfo", "normalised"]


def normalised(spec: GraphSpec) -> str:
    """The stored text of a graph: its normalised document as compact JSON (key order kept).

    >>> normalised(parse_graph({"name": "g", "root": {"ensemble": {"members": ["a", "b"]}}}))
    '{"name":"g","root":{"ensemble":{"members":["a","b"],"combine":"mean"}}}'
    """
    return json.dumps(graph_to_dict(spec), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Applied:
    """What `GraphRegistry.apply` or `rollback` did: ``name`` now serves ``version`` (it served
    ``previous`` before); ``changed`` is False when nothing moved."""

    name: str
    version: int
    previous: int | None
    changed: bool
    models: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "models": list(self.models)}


@dataclass(frozen=True, slots=True)
class GraphVersionInfo:
    """One stored version of a graph, with its document and the models it names."""

    name: str
    version: int
    promoted: bool
    document: dict[str, Any]
    models: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.name,
            "version": self.version,
            "promoted": self.promoted,
            "models": list(self.models),
            "document": self.document,
        }


class GraphRegistry(RegistryBase):
    """Versions, pointer and history of the serving graphs under ``prefix`` (see the module).

    It needs no signing key (graph documents are data, not pickles): it only uses the base's
    transactions and history entries, never the snapshot store.
    """

    def __init__(self, client: redis.Redis, prefix: str, *, by: str | None = None) -> None:
        # RegistryBase.__init__ wants a SnapshotStore (and its key) for the models' operations,
        # none of which a graph uses: set what the transactions and history entries read.
        self.client = client
        self.keys = RedisKeys(prefix)
        self.by = by or _user()
        self.graphs = GraphStore(client, prefix)

    # -- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        names: list[str] = self._read_graphs("graph names", self.graphs.names)
        return names

    def versions(self, name: str) -> list[GraphVersionInfo]:
        """Every stored version of ``name``, oldest first (`RegistryError` if unknown)."""

        def read() -> list[GraphVersionInfo]:
            self._require_graph(self.client, name)
            promoted = self.graphs.promoted(name)
            versions = self.graphs.versions(name)
            raws = self.client.mget([self.keys.graph_doc(name, v) for v in versions])
            out = []
            for v, raw in zip(versions, raws, strict=True):
                if raw is not None:
                    doc = json.loads(raw)
                    models = parse_graph(doc).model_names()
                    out.append(GraphVersionInfo(name, v, v == promoted, doc, models))
            return out

        infos: list[GraphVersionInfo] = self._read_graphs(f"versions of graph {name}", read)
        return infos

    def show(self, name: str, version: int | None = None) -> GraphVersionInfo:
        """Version ``version`` of ``name`` (default: the promoted one)."""
        infos = self.versions(name)
        if version is None:
            match = [i for i in infos if i.promoted]
        else:
            match = [i for i in infos if i.version == version]
        if not match:
            have = [i.version for i in infos]
            raise RegistryError(f"graph {name} has no version {version}; versions are {have}")
        return match[0]

    def history(self, name: str) -> list[HistoryEntry]:
        """Every recorded change of ``name``, oldest first (kept after a delete)."""

        def read() -> list[HistoryEntry]:
            raws = self.client.lrange(self.keys.graph_history(name), 0, -1)
            if not raws:
                self._require_graph(self.client, name)
            return [HistoryEntry.from_json(raw) for raw in raws]

        entries: list[HistoryEntry] = self._read(f"history of graph {name}", read)
        return entries

    # -- writing ---------------------------------------------------------------------------
    def apply(
        self,
        document: Mapping[str, Any],
        reason: str = "",
        *,
        action: str = "apply",
        detail: Mapping[str, Any] | None = None,
    ) -> Applied:
        """Store ``document`` as a new version of its graph and serve it (see the module).

        ``action`` and ``detail`` go into the history entry (``challenger``: a promotion by the
        champion/challenger policy, `stream.registry.challenger`, with its evidence). Raises `schemas.graph_errors.GraphError` (the document is invalid, or names a model
        that the store does not have) or `RegistryError`; either way nothing was written.
        """
        spec = parse_graph(document)  # the structure first: no Redis needed to refuse it
        name, models, text = spec.name, spec.model_names(), normalised(spec)

        def body(r: Any) -> Any:
            parse_graph(document, known_models=self._models(r))
            promoted = _int(r.get(self.keys.graph_promoted(name)))
            if promoted is not None:
                current = r.get(self.keys.graph_doc(name, promoted))
                if current is not None and _text(current) == text:
                    return Applied(name, promoted, promoted, False, models), None
            version = int(r.incr(self.keys.seq))  # a conflict retry skips a number: harmless
            extra = {"models": [*models], **(detail or {})}
            entry = self._entry(action, promoted, version, reason, detail=extra)

            def write(p: Any) -> None:
                p.set(self.keys.graph_doc(name, version), text)
                p.zadd(self.keys.graph_versions(name), {str(version): version})
                p.sadd(self.keys.graphs, name)
                p.set(self.keys.graph_promoted(name), version)
                self._record_graph(p, name, entry)
                self._notify(p, name, version)

            return Applied(name, version, promoted, True, models), write

        applied: Applied = self._atomic_graphs(f"apply graph {name}", self._watch_graph(name), body)
        return applied

    def rollback(self, name: str, to: int | None = None, *, reason: str) -> Applied:
        """Serve version ``to`` of ``name`` again (default: the one promoted before)."""
        if not reason.strip():
            raise RegistryError("a rollback needs a reason")

        def body(r: Any) -> Any:
            self._require_graph(r, name)
            promoted = _int(r.get(self.keys.graph_promoted(name)))
            target = to if to is not None else self._previous_graph(r, name, promoted)
            if target is None:
                raise RegistryError(f"graph {name}: no earlier version; give --to VERSION")
            if target == promoted:
                raise RegistryError(f"graph {name} already serves v{target}")
            raw = r.get(self.keys.graph_doc(name, target))
            if raw is None:
                have = [int(v) for v in r.zrange(self.keys.graph_versions(name), 0, -1)]
                raise RegistryError(f"graph {name} has no version {target}; versions are {have}")
            spec = parse_graph(json.loads(raw), known_models=self._models(r))
            entry = self._entry("rollback", promoted, target, reason)

            def write(p: Any) -> None:
                p.set(self.keys.graph_promoted(name), target)
                self._record_graph(p, name, entry)
                self._notify(p, name, target)

            return Applied(name, target, promoted, True, spec.model_names()), write

        done: Applied = self._atomic_graphs(f"rollback graph {name}", self._watch_graph(name), body)
        return done

    def delete(self, name: str, reason: str = "") -> int | None:
        """Stop serving ``name`` and remove its versions; returns the version it served."""

        def body(r: Any) -> Any:
            self._require_graph(r, name)
            promoted = _int(r.get(self.keys.graph_promoted(name)))
            versions = [int(v) for v in r.zrange(self.keys.graph_versions(name), 0, -1)]
            entry = self._entry("delete", promoted, None, reason, detail={"versions": versions})

            def write(p: Any) -> None:
                p.srem(self.keys.graphs, name)
                p.delete(
                    self.keys.graph_promoted(name),
                    self.keys.graph_versions(name),
                    *(self.keys.graph_doc(name, v) for v in versions),
                )
                self._record_graph(p, name, entry)
                self._notify(p, name, 0)

            return promoted, write

        served: int | None = self._atomic_graphs(
            f"delete graph {name}", self._watch_graph(name), body
        )
        return served

    # -- helpers ---------------------------------------------------------------------------
    def _watch_graph(self, name: str) -> list[str]:
        return [
            self.keys.graphs,
            self.keys.graph_promoted(name),
            self.keys.graph_versions(name),
            self.keys.graph_history(name),
            self.keys.models,
        ]

    def _models(self, r: Any) -> set[str]:
        return {_text(m) for m in r.smembers(self.keys.models)}

    def _require_graph(self, r: Any, name: str) -> None:
        if not r.sismember(self.keys.graphs, name):
            known = sorted(_text(g) for g in r.smembers(self.keys.graphs))
            raise RegistryError(f"unknown graph {name!r}; graphs are {known}")

    def _record_graph(self, pipe: Any, name: str, entry: str) -> None:
        pipe.rpush(self.keys.graph_history(name), entry)
        pipe.ltrim(self.keys.graph_history(name), -HISTORY_LIMIT, -1)

    def _notify(self, pipe: Any, name: str, version: int) -> None:
        pipe.publish(self.keys.channel, Notification(name, version, "graph").to_json())

    def _previous_graph(self, r: Any, name: str, promoted: int | None) -> int | None:
        """The version promoted before ``promoted``: the promotion stack of the history since
        the last delete (an apply counts as a promotion), else the next older version."""
        entries: list[HistoryEntry] = []
        for raw in r.lrange(self.keys.graph_history(name), 0, -1):
            entry = HistoryEntry.from_json(raw)
            if entry.action == "delete":
                entries = []
            elif entry.action in ("apply", "challenger", "rollback"):
                action = "rollback" if entry.action == "rollback" else "promote"
                entries.append(dataclasses.replace(entry, action=action))
        return rollback_target(entries, promoted, _newest_below(r, self.keys.graph_versions(name)))

    def _atomic_graphs(self, what: str, watch: list[str], body: Any) -> Any:
        try:
            return self._atomic(what, watch, body)
        except SnapshotError as exc:  # a read through the GraphStore inside the transaction
            raise registry_error(f"{what}: {exc}", exc) from exc

    def _read_graphs(self, what: str, fn: Any) -> Any:
        try:
            return self._read(what, fn)
        except SnapshotError as exc:
            raise registry_error(f"{what}: {exc}", exc) from exc


def _int(raw: bytes | str | None) -> int | None:
    return None if raw is None else int(raw)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw

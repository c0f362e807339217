"""Reading serving graphs from Redis: names, versions, the promoted pointer, documents.

A graph version is an immutable JSON document (the normalised form, `schemas.graphs.graph_to_dict`
of what `parse_graph` accepted) under ``P:graph:NAME:v:V``; serving follows
``P:graph:NAME:promoted``. The layout is in `stream.store.keys`; everything that writes (apply,
rollback, delete, the history) is in `stream.registry.graphs`.

Like `stream.store.snapshots`, this is an adapter: a ``redis`` error becomes a `SnapshotError`
where it enters (`RedisUnavailableError` when Redis cannot be reached), so that a follower treats
both stores alike. Nothing here imports River: the operator's commands read graphs quickly.

A name in the graphs' index (``P:graphs``) that is not UTF-8 (written by something else: the
registry writes valid names only) is that entry's problem alone: `GraphStore.names` lists it
as an `UnreadableName` (its bytes escaped, ``\\xff``, never a valid graph name), and reading
anything of it raises a ``ValueError`` saying why. A follower records that as the name's
problem (``errors`` in its status, as for a promoted pointer that does not parse) and follows
the other graphs; it failed the whole sync before.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from schemas.errors import SnapshotError
from schemas.graph_parser import parse_graph
from schemas.graphs import GraphSpec
from stream.store.keys import RedisKeys
from stream.store.snapshots import Subscription, UnreadableModelName, wrapped


def _int(raw: bytes | str | None) -> int | None:
    return None if raw is None else int(raw)


class UnreadableName(UnreadableModelName):
    """A name of the graphs' index that is not UTF-8, as text (its bytes escaped); ``raw`` is
    the stored name. No graph can be read under it (`GraphStore` raises ``ValueError``).

    >>> name = UnreadableName.of(b"fr\\xffaud")
    >>> name, name.raw, name == "fr\\\\xffaud"
    ('fr\\\\xffaud', b'fr\\xffaud', True)
    >>> str(name.problem("P:graphs"))
    "the graph name b'fr\\\\xffaud' in P:graphs is not UTF-8: it is skipped"
    """

    names = "graph"


class GraphStore:
    """Serving graphs under ``prefix``; ``client`` may decode responses or not."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.keys = RedisKeys(prefix)

    def names(self) -> list[str]:
        """Every graph that exists (applied and not deleted), sorted; a name that is not
        UTF-8 is an `UnreadableName` (see the module)."""
        with wrapped("graph names"):
            raw = self.client.smembers(self.keys.graphs)
        return sorted(_text(n) for n in raw)

    def _readable(self, name: str) -> None:
        if isinstance(name, UnreadableName):
            raise name.problem(self.keys.graphs)

    def versions(self, name: str) -> list[int]:
        """The versions of ``name`` kept, oldest first (empty for an unknown graph)."""
        self._readable(name)
        with wrapped(f"versions of graph {name}"):
            raw: list[Any] = self.client.zrange(self.keys.graph_versions(name), 0, -1)
        return [int(v) for v in raw]

    def promoted(self, name: str) -> int | None:
        """The version serving follows, or None when the graph is not served."""
        self._readable(name)
        with wrapped(f"promoted version of graph {name}"):
            return _int(self.client.get(self.keys.graph_promoted(name)))

    def document(self, name: str, version: int) -> dict[str, Any]:
        """The stored document of ``name`` v``version`` (`SnapshotError` when there is none)."""
        self._readable(name)
        with wrapped(f"graph {name} v{version}"):
            raw = self.client.get(self.keys.graph_doc(name, version))
        if raw is None:
            raise SnapshotError(f"no graph {name} v{version}")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise SnapshotError(f"graph {name} v{version} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise SnapshotError(f"graph {name} v{version} is not a JSON object")
        return doc

    def spec(self, name: str, version: int) -> GraphSpec:
        """The parsed document (`schemas.graph_errors.GraphError` if it no longer parses)."""
        return parse_graph(self.document(name, version))

    def served(self, name: str) -> tuple[int, dict[str, Any]] | None:
        """``(version, document)`` that serving follows, or None (not served, or deleted while
        reading)."""
        version = self.promoted(name)
        if version is None:
            return None
        try:
            return version, self.document(name, version)
        except SnapshotError:
            if self.promoted(name) is None:  # deleted between the two reads
                return None
            raise

    def subscribe(self) -> Subscription:
        """The graphs' notifications on the shared channel (close it, or use ``with``)."""
        return Subscription(self.client, self.keys.channel, graphs=True)


def _text(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return UnreadableName.of(raw)

"""The Redis layout, in one place: every key, the served-version rule, the notification
format and chunking. Pure functions of their arguments (no connection here).

Key layout under a prefix ``P``::

    P:version:seq                          INCR counter handing out versions (shared by models)
    P:models                               set of model names
    P:model:NAME:versions                  sorted set, member = score = version
    P:model:NAME:latest                    newest version written (only moves forward)
    P:model:NAME:promoted                  version to serve, owned by the registry (optional)
    P:model:NAME:pin                       optional: serving stays here while learning goes on
    P:model:NAME:history                   list of JSON `HistoryEntry`, oldest first
    P:model:NAME:policy                    JSON `Policy` (absent: ``always``)
    P:model:NAME:retention                 optional: versions kept by automatic retention
    P:model:NAME:v:VERSION:meta            `SnapshotMeta` as JSON
    P:model:NAME:v:VERSION:chunk:I         I-th slice of the signed blob (I = 0 .. chunks-1)
    P:model:NAME:live                      hash {meta, blob}: the live update between versions
                                           (`stream.store.live`), overwritten by the learner
    P:checkpoint:latest                    newest checkpoint version (only moves forward)
    P:checkpoint:VERSION:meta              `CheckpointMeta` as JSON
    P:checkpoint:VERSION:chunk:I           I-th slice of the signed learner checkpoint
    P:learner:commands                     list of JSON `RollbackCommand` for the learner
    P:learners                             set of learner names that claimed models
    P:learner:NAME:checkpoint:latest       the checkpoint pointer of learner NAME
    P:learner:NAME:commands                the command list of learner NAME
    P:learner:NAME:epoch                   hash {epoch, started_at, host, pid}: the process of
                                           learner NAME that started last (its fencing token,
                                           `stream.registry.owners.claim`); every learner name
                                           has one, ``default`` too
    P:model:NAME:owner                     the learner that learns the model (absent: ``default``
                                           if the model exists; `stream.registry.owners`)
    P:model:NAME:handover                  JSON: the latest handover of the model (from, to,
                                           version), read by the new owner when it starts
    P:model:NAME:trace                     stream: the learning curve, entry id = label count
                                           (`stream.store.trace`), capped (MAXLEN ~)
    P:model:NAME:trace:lineage             JSON: the rollback lineage of the trace's points
    P:lookup:seq                           counter numbering batch prediction tables (a
                                           script: past the served and existing tables)
    P:model:NAME:lookup                    JSON `LookupTable` of the table served (TTL)
    P:model:NAME:lookup:TABLE              hash: id → stored answer JSON (TTL)
    P:graph:NAME:lookup                    the same for graph NAME's served lookup table
    P:graph:NAME:lookup:TABLE              (`score GRAPH ... --into redis`)
    P:snapshots                            pub/sub channel: {"model": NAME, "version": V}, and
                                           {"graph": NAME, "version": V} for graphs
    P:snapshots:live                       pub/sub channel of live updates: {"model": NAME,
                                           "version": V, "live": true} (V: the version continued)
    P:graphs                               set of serving-graph names
    P:graph:NAME:versions                  sorted set, member = score = version (from version:seq)
    P:graph:NAME:v:VERSION                 the graph's normalised document, JSON (immutable)
    P:graph:NAME:promoted                  version served (absent: the graph is not served)
    P:graph:NAME:history                   list of JSON `HistoryEntry`, oldest first
    P:comparisons                          set of "CHAMPION:CHALLENGER" pairs compared
    P:comparison:CHAMPION:CHALLENGER       JSON: the latest comparison written by the learner
    P:challenger:graphs                    set of graphs with a champion/challenger policy
    P:graph:NAME:challenger                JSON: the graph's champion/challenger policy
    P:registry:op:ID                       what a registry operation did, written by its
                                           transaction (ten minutes' TTL): after a lost EXEC reply,
                                           whether it was applied (`stream.registry.base`)

Learner groups: each learner process has a name (``default`` unless `learn --learner` says
otherwise) and learns the models it owns. The learner ``default`` keeps the historical keys
``P:checkpoint:latest`` and ``P:learner:commands`` (a stream learned before learner groups goes
on as it was); any other learner NAME has its own ``P:learner:NAME:…`` pointer and command list.
Checkpoint versions come from the shared counter, so ``P:checkpoint:VERSION:…`` never collide.
`RedisKeys.learner` says whose ``checkpoint_latest`` and ``commands`` a key map names.

Graphs (`stream.store.graphs`, `stream.registry.graphs`) share the version counter and the
channel with models; a graph's notification has no ``model`` field, so a reader that only knows
models (`Notification.from_json` without ``graphs``, or a reader written before graphs) drops it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

DEFAULT_LEARNER = "default"
"""The learner of a `riverstream learn` without ``--learner`` (and of streams learned before
learner groups existed)."""


def owner_of(raw: bytes | None) -> str:
    """The learner named by a model's owner key as read (``default`` when none claimed it).

    >>> owner_of(None), owner_of(b"b")
    ('default', 'b')
    """
    return DEFAULT_LEARNER if raw is None else raw.decode()


def served_version(pin: int | None, promoted: int | None, latest: int | None) -> int | None:
    """The serving rule: the pin if set, else the promoted version, else the latest.

    >>> served_version(None, 3, 5), served_version(2, 3, 5), served_version(None, None, 5)
    (3, 2, 5)
    """
    return next((v for v in (pin, promoted, latest) if v is not None), None)


def chunk_count(size: int, chunk_bytes: int) -> int:
    """Chunks a blob of ``size`` bytes takes (at least one, even when empty).

    >>> chunk_count(0, 10), chunk_count(10, 10), chunk_count(11, 10)
    (1, 1, 2)
    """
    return max(1, -(-size // chunk_bytes))


def chunks(blob: bytes, chunk_bytes: int) -> Iterator[memoryview]:
    """The slices of ``blob`` stored under consecutive chunk keys (views, not copies)."""
    view = memoryview(blob)
    for i in range(chunk_count(len(blob), chunk_bytes)):
        yield view[i * chunk_bytes : (i + 1) * chunk_bytes]


@dataclass(frozen=True)
class Notification:
    """One message of the snapshot channel: ``model`` has a new ``version`` to consider.

    ``kind`` is ``"graph"`` when ``model`` names a serving graph whose promoted pointer moved
    (``version`` 0: the graph was deleted); its message carries the name under ``graph``
    instead of ``model``, which is how readers that only know models ignore it. ``"live"``: a
    live update of ``model`` continuing ``version`` (`stream.store.live`), on its own channel.
    """

    model: str
    version: int
    kind: Literal["model", "graph", "live"] = "model"

    def to_json(self) -> str:
        """The message published on the channel.

        >>> Notification("lr", 3).to_json()
        '{"model": "lr", "version": 3}'
        >>> Notification("fraud", 9, "graph").to_json()
        '{"graph": "fraud", "version": 9}'
        >>> Notification("lr", 3, "live").to_json()
        '{"model": "lr", "version": 3, "live": true}'
        """
        if self.kind == "live":
            return json.dumps({"model": self.model, "version": self.version, "live": True})
        return json.dumps({self.kind: self.model, "version": self.version})

    @classmethod
    def from_json(cls, raw: bytes | str, *, graphs: bool = False) -> Notification | None:
        """The notification in ``raw``, or None when it is malformed. A graph's message is None
        too unless ``graphs``: readers of models need not know that graphs exist.

        >>> Notification.from_json('{"graph": "fraud", "version": 9}') is None
        True
        >>> Notification.from_json(b'{"graph": "fraud", "version": 9}', graphs=True)
        Notification(model='fraud', version=9, kind='graph')
        """
        try:
            data = json.loads(raw)
            if "model" not in data and "graph" in data:
                return cls(str(data["graph"]), int(data["version"]), "graph") if graphs else None
            kind: Literal["model", "live"] = "live" if data.get("live") is True else "model"
            return cls(str(data["model"]), int(data["version"]), kind)
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True)
class RedisKeys:
    """Every Redis key riverstream uses, as a pure function of the prefix (the map above).

    >>> k = RedisKeys("rs")
    >>> k.chunk("lr", 7, 0), k.latest("lr"), k.checkpoint_meta(7), k.channel
    ('rs:model:lr:v:7:chunk:0', 'rs:model:lr:latest', 'rs:checkpoint:7:meta', 'rs:snapshots')
    >>> k.pin("lr"), k.history("lr"), k.commands
    ('rs:model:lr:pin', 'rs:model:lr:history', 'rs:learner:commands')
    >>> k.graphs, k.graph_doc("fraud", 12), k.graph_promoted("fraud")
    ('rs:graphs', 'rs:graph:fraud:v:12', 'rs:graph:fraud:promoted')
    """

    prefix: str
    learner: str = DEFAULT_LEARNER
    """Whose checkpoint pointer and command list `checkpoint_latest` and `commands` name."""

    @property
    def seq(self) -> str:
        return f"{self.prefix}:version:seq"

    @property
    def models(self) -> str:
        return f"{self.prefix}:models"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:snapshots"

    def versions(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:versions"

    def latest(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:latest"

    def promoted(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:promoted"

    def pin(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:pin"

    def meta(self, model: str, version: int) -> str:
        return f"{self.prefix}:model:{model}:v:{version}:meta"

    def chunk(self, model: str, version: int, i: int) -> str:
        return f"{self.prefix}:model:{model}:v:{version}:chunk:{i}"

    def live(self, model: str) -> str:
        """The live update of ``model`` and the channel announcing live updates.

        >>> RedisKeys("rs").live("lr"), RedisKeys("rs").live_channel
        ('rs:model:lr:live', 'rs:snapshots:live')
        """
        return f"{self.prefix}:model:{model}:live"

    @property
    def live_channel(self) -> str:
        return f"{self.prefix}:snapshots:live"

    @property
    def checkpoint_latest(self) -> str:
        return self.learner_checkpoint_latest(self.learner)

    def learner_checkpoint_latest(self, learner: str) -> str:
        """The checkpoint pointer of ``learner`` (the historical key for ``default``).

        >>> k = RedisKeys("rs")
        >>> k.learner_checkpoint_latest("default"), k.learner_checkpoint_latest("b")
        ('rs:checkpoint:latest', 'rs:learner:b:checkpoint:latest')
        >>> RedisKeys("rs", "b").checkpoint_latest, RedisKeys("rs", "b").commands
        ('rs:learner:b:checkpoint:latest', 'rs:learner:b:commands')
        """
        if learner == DEFAULT_LEARNER:
            return f"{self.prefix}:checkpoint:latest"
        return f"{self.prefix}:learner:{learner}:checkpoint:latest"

    def learner_commands(self, learner: str) -> str:
        """The command list of ``learner`` (the historical key for ``default``)."""
        if learner == DEFAULT_LEARNER:
            return f"{self.prefix}:learner:commands"
        return f"{self.prefix}:learner:{learner}:commands"

    def learner_epoch(self, learner: str) -> str:
        """The fencing token of ``learner``'s processes: the one that started last holds it.

        >>> RedisKeys("rs").learner_epoch("default"), RedisKeys("rs", "b").epoch
        ('rs:learner:default:epoch', 'rs:learner:b:epoch')
        """
        return f"{self.prefix}:learner:{learner}:epoch"

    @property
    def epoch(self) -> str:
        return self.learner_epoch(self.learner)

    @property
    def learners(self) -> str:
        return f"{self.prefix}:learners"

    def owner(self, model: str) -> str:
        """The learner that owns ``model``.

        >>> RedisKeys("rs").owner("lr"), RedisKeys("rs").learners
        ('rs:model:lr:owner', 'rs:learners')
        """
        return f"{self.prefix}:model:{model}:owner"

    def handover(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:handover"

    def checkpoint_meta(self, version: int) -> str:
        return f"{self.prefix}:checkpoint:{version}:meta"

    def checkpoint_chunk(self, version: int, i: int) -> str:
        return f"{self.prefix}:checkpoint:{version}:chunk:{i}"

    def history(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:history"

    def policy(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:policy"

    def operation(self, op: str) -> str:
        return f"{self.prefix}:registry:op:{op}"

    def retention(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:retention"

    @property
    def commands(self) -> str:
        return self.learner_commands(self.learner)

    def trace(self, model: str) -> str:
        """The learning curve of ``model`` (a stream) and the lineage of its points.

        >>> RedisKeys("rs").trace("lr"), RedisKeys("rs").trace_lineage("lr")
        ('rs:model:lr:trace', 'rs:model:lr:trace:lineage')
        """
        return f"{self.prefix}:model:{model}:trace"

    def trace_lineage(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:trace:lineage"

    @property
    def lookup_seq(self) -> str:
        return f"{self.prefix}:lookup:seq"

    def lookup(self, model: str) -> str:
        """The pointer to ``model``'s served lookup table.

        >>> RedisKeys("rs").lookup("lr"), RedisKeys("rs").lookup_table("lr", 3)
        ('rs:model:lr:lookup', 'rs:model:lr:lookup:3')
        """
        return f"{self.prefix}:model:{model}:lookup"

    def lookup_table(self, model: str, table: int) -> str:
        return f"{self.prefix}:model:{model}:lookup:{table}"

    def graph_lookup(self, graph: str) -> str:
        """The pointer to graph ``graph``'s served lookup table.

        >>> RedisKeys("rs").graph_lookup("fraud"), RedisKeys("rs").graph_lookup_table("fraud", 3)
        ('rs:graph:fraud:lookup', 'rs:graph:fraud:lookup:3')
        """
        return f"{self.prefix}:graph:{graph}:lookup"

    def graph_lookup_table(self, graph: str, table: int) -> str:
        return f"{self.prefix}:graph:{graph}:lookup:{table}"

    # -- serving graphs (the document of a version is immutable; see the module) --
    @property
    def graphs(self) -> str:
        return f"{self.prefix}:graphs"

    def graph_versions(self, graph: str) -> str:
        return f"{self.prefix}:graph:{graph}:versions"

    def graph_doc(self, graph: str, version: int) -> str:
        return f"{self.prefix}:graph:{graph}:v:{version}"

    def graph_promoted(self, graph: str) -> str:
        return f"{self.prefix}:graph:{graph}:promoted"

    def graph_history(self, graph: str) -> str:
        return f"{self.prefix}:graph:{graph}:history"

    # -- champion/challenger comparisons and their promotion policies --
    @property
    def comparisons(self) -> str:
        return f"{self.prefix}:comparisons"

    def comparison(self, champion: str, challenger: str) -> str:
        """The latest comparison of a pair (model names hold no ``:``).

        >>> RedisKeys("rs").comparison("tree", "hat"), RedisKeys("rs").challenger_policy("g")
        ('rs:comparison:tree:hat', 'rs:graph:g:challenger')
        """
        return f"{self.prefix}:comparison:{champion}:{challenger}"

    @property
    def challenger_graphs(self) -> str:
        return f"{self.prefix}:challenger:graphs"

    def challenger_policy(self, graph: str) -> str:
        return f"{self.prefix}:graph:{graph}:challenger"

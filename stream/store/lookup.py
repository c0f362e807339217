"""Batch prediction tables in Redis: answers computed ahead by ``riverstream score --into
redis``, looked up by id (``GET /v1/models/{name}/predictions/{id}``, and for a graph target
``GET /v1/graphs/{name}/predictions/{id}``).

A table is one Redis hash, id → the stored answer (JSON bytes, as `score` writes them to a
file), numbered by a shared counter (``P:lookup:seq``). A model's new table is numbered after
every table of it, served or not, even when the counter was lost (evicted, deleted) while
tables and pointers remain: one script gives max(counter, the served table, the model's tables
in Redis) + 1, past any table that exists, sets the counter to it and claims the table
(`LookupTables.writer`); else a run numbered at or below the served table would be refused at
publish, or write its rows into a table in use. A `LookupTable` record beside it says
which table a model serves, which model versions computed it, when, how many rows it holds and
its time to live. The table is written first, under a temporary expiry, and becomes visible
only when it is complete: one MULTI/EXEC sets its final TTL and moves the pointer, so a reader
sees the old table or the new one, never a half-written one. The table it replaces expires
after a short grace (a reader that has just read the old pointer still finds its row); a run
that dies half-way leaves a table nobody points to, which expires by itself. The pointer is
WATCHed while it is read and moved: of two runs publishing at once, each replaced table
expires, and a table never replaces one with a higher number (a run that started later and
finished first): it is dropped instead (`TableWriter.publish`).

A graph's tables (``graph=True`` in the methods below) live under the graph's own keys
(``P:graph:NAME:lookup``), so a model and a graph of the same name never share a table; their
record also names the graph version that computed them (``graph_version``).

Keys are in `stream.store.keys.RedisKeys`. Every Redis error is a `SnapshotError` (unreachable:
`RedisUnavailableError`), as in the snapshot store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from schemas.errors import SnapshotError
from stream.store.keys import RedisKeys
from stream.store.snapshots import wrapped

WRITING_TTL_SECONDS = 86_400
"""Expiry of a table while it is written (a crashed run's table goes away by itself)."""
REPLACED_GRACE_SECONDS = 60
"""How long a replaced table stays readable after the pointer moved."""
CLAIM = b""
"""The field that claims a table from its numbering (ids are never empty) until it is
published: a table being written exists from the start, so no other run gets its number."""

# `LookupTables.writer` in one step: KEYS[1] the counter, KEYS[2] the model's (graph's) pointer;
# ARGV[1] its table keys without the number, ARGV[2] the highest table number found among
# them ('': not looked, then a lost counter returns false: look first), ARGV[3] the claim
# field, ARGV[4] its expiry. Returns the table number, the counter set to it.
_NUMBER = """
local seq = redis.call('GET', KEYS[1])
if not seq and ARGV[2] == '' then return false end
local n = 0
if seq then
  n = tonumber(seq)
  if not n then return redis.error_reply('lookup counter ' .. KEYS[1] .. ' is not a number') end
end
local raw = redis.call('GET', KEYS[2])
if raw then
  local ok, record = pcall(cjson.decode, raw)
  if ok and type(record) == 'table' and tonumber(record['table']) then
    n = math.max(n, tonumber(record['table']))
  end
end
n = math.max(n, tonumber(ARGV[2]) or 0) + 1
while redis.call('EXISTS', ARGV[1] .. n) == 1 do n = n + 1 end
redis.call('SET', KEYS[1], n)
redis.call('HSET', ARGV[1] .. n, ARGV[3], '')
redis.call('EXPIRE', ARGV[1] .. n, ARGV[4])
return n
"""


@dataclass(frozen=True)
class LookupTable:
    """The pointer record of a served table."""

    model: str
    table: int
    versions: dict[str, int]
    computed_at: float
    rows: int
    ttl_seconds: int
    graph_version: int | None = None
    """For a graph's table: the graph version that computed it (``model`` is the graph)."""

    def to_json(self) -> bytes:
        data = asdict(self)
        if self.graph_version is None:
            del data["graph_version"]  # a model's record, as it always was
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> LookupTable:
        try:
            data = json.loads(raw)
            return cls(
                str(data["model"]), int(data["table"]),
                {str(k): int(v) for k, v in data["versions"].items()},
                float(data["computed_at"]), int(data["rows"]), int(data["ttl_seconds"]),
                None if data.get("graph_version") is None else int(data["graph_version"]),
            )  # fmt: skip
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SnapshotError(f"unreadable lookup table record: {exc!r}") from None


class TableWriter:
    """Writes one table in batches of HSETs; `publish` makes it the served one."""

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        model: str,
        table: int,
        *,
        batch: int,
        graph: bool = False,
    ) -> None:
        self.client = client
        self.keys = keys
        self.model = model
        self.table = table
        self.graph = graph
        self.key = _table_key(keys, model, table, graph)
        self.batch = batch
        self.rows = 0
        self._pending: dict[str, bytes] = {}

    def add(self, row_id: str, answer: bytes) -> None:
        """Store ``answer`` under ``row_id`` (a later row with the same id replaces it)."""
        self._pending[row_id] = answer
        if len(self._pending) >= self.batch:
            self._write()

    def _write(self) -> None:
        if not self._pending:
            return
        with wrapped(f"write lookup table {self.key}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(self.key, mapping=self._pending)  # type: ignore[arg-type]
            pipe.expire(self.key, WRITING_TTL_SECONDS)
            pipe.execute()
        self._pending = {}

    def publish(
        self,
        versions: Mapping[str, int],
        computed_at: float,
        ttl: int,
        *,
        graph_version: int | None = None,
    ) -> LookupTable:
        """Make the table the served one (``ttl`` seconds to live; 0: no expiry).

        The pointer is watched from the moment it is read to the transaction that moves it (a
        concurrent publish makes this one read it again), so the table replaced is always the
        one that was served, and it expires. A table numbered after this one served meanwhile
        (a run that started later and finished first) is newer: it stays, this table is
        deleted, and `SnapshotError` says so."""
        if ttl < 0:
            raise SnapshotError(f"lookup table ttl {ttl}: give seconds >= 0 (0: no expiry)")
        self._write()
        pointer = _pointer_key(self.keys, self.model, self.graph)
        with wrapped(f"publish lookup table {self.key}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(self.key, CLAIM)  # complete: its rows alone
            pipe.hlen(self.key)
            rows = int(pipe.execute()[1])
            record = LookupTable(
                self.model, self.table, dict(versions), computed_at, rows, ttl, graph_version
            )

            newer: list[LookupTable] = []  # a newer table served: nothing moved

            def move(pipe: redis.client.Pipeline) -> None:
                newer.clear()  # run again when the pointer moved meanwhile
                previous = pipe.get(pointer)
                served = None if previous is None else LookupTable.from_json(previous)
                pipe.multi()
                if served is not None and served.table > self.table:
                    pipe.delete(self.key)  # never served, and never will be
                    newer.append(served)
                    return
                if ttl > 0:
                    pipe.expire(self.key, ttl)
                    pipe.set(pointer, record.to_json(), ex=ttl)
                else:
                    pipe.persist(self.key)
                    pipe.set(pointer, record.to_json())
                if served is not None and served.table != self.table:
                    old = _table_key(self.keys, self.model, served.table, self.graph)
                    pipe.expire(old, REPLACED_GRACE_SECONDS)

            self.client.transaction(move, pointer)
        if newer:
            raise SnapshotError(
                f"lookup table {newer[0].table} of {self.model!r}, from a run started after this "
                f"one (table {self.table}), is served already: it stays, table {self.table} "
                f"is dropped"
            )
        return record

    def discard(self) -> None:
        """Delete the table (never published: a run that scored no row)."""
        self._pending = {}
        with wrapped(f"delete lookup table {self.key}"):
            self.client.delete(self.key)


class LookupTables:
    """Reading and writing the lookup tables of one Redis prefix."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        if client.get_encoder().decode_responses:
            raise SnapshotError("the redis client must be created with decode_responses=False")
        self.client = client
        self.keys = keys

    def writer(self, model: str, *, batch: int = 1000, graph: bool = False) -> TableWriter:
        """A new, numbered table for ``model`` (a graph's with ``graph``), not served until
        `TableWriter.publish`; claimed from now on (`CLAIM`).

        Its number is above every one given before, the served table's and those of
        ``model``'s tables in Redis, even when the counter was lost: that loss is seen in the
        script that numbers, which then has ``model``'s table keys looked up first (a SCAN,
        once) and takes the highest."""
        prefix = _table_key(self.keys, model, 0, graph).removesuffix("0")
        keys = [self.keys.lookup_seq, _pointer_key(self.keys, model, graph)]
        number = self.client.register_script(_NUMBER)
        with wrapped("number a lookup table"):
            found = number(keys=keys, args=[prefix, "", CLAIM, WRITING_TTL_SECONDS])
            if found is None:  # no counter (lost, or the first table): look at the tables
                highest = max(_numbers(self.client, prefix), default=0)
                found = number(keys=keys, args=[prefix, highest, CLAIM, WRITING_TTL_SECONDS])
        table = int(cast(int, found))
        return TableWriter(self.client, self.keys, model, table, batch=batch, graph=graph)

    def current(self, model: str, *, graph: bool = False) -> LookupTable | None:
        """The table ``model`` (a graph with ``graph``) serves, if any (expired: none)."""
        with wrapped(f"read lookup pointer of {model}"):
            raw = self.client.get(_pointer_key(self.keys, model, graph))
        return None if raw is None else LookupTable.from_json(raw)

    def get(
        self, model: str, row_id: str, *, graph: bool = False
    ) -> tuple[LookupTable, bytes] | None:
        """The served table and the stored answer for ``row_id``, or None when absent."""
        table = self.current(model, graph=graph)
        if table is None:
            return None
        with wrapped(f"read lookup table of {model}"):
            raw = self.client.hget(_table_key(self.keys, model, table.table, graph), row_id)
        return None if raw is None else (table, cast(bytes, raw))

    def answer(self, model: str, row_id: str, *, graph: bool = False) -> dict[str, Any] | None:
        """The stored answer for ``row_id`` with the table's ``table`` and ``computed_at``."""
        found = self.get(model, row_id, graph=graph)
        if found is None:
            return None
        table, raw = found
        body: dict[str, Any] = json.loads(raw)
        body["table"] = table.table
        body["computed_at"] = table.computed_at
        return body

    def ttl(self, model: str, *, graph: bool = False) -> float | None:
        """Seconds before ``model``'s served table expires (None: no table or no expiry)."""
        with wrapped(f"read lookup ttl of {model}"):
            left = self.client.pttl(_pointer_key(self.keys, model, graph))
        return None if left is None or int(left) < 0 else int(left) / 1000


def _numbers(client: redis.Redis, prefix: str) -> list[int]:
    """The numbers of the tables whose keys are ``prefix`` and a number."""
    pattern = "".join(f"\\{c}" if c in "\\*?[]^" else c for c in prefix) + "*"
    found = []
    for key in client.scan_iter(match=pattern, count=1000):
        tail = cast(bytes, key)[len(prefix.encode()) :]
        if tail.isdigit():
            found.append(int(tail))
    return found


def _pointer_key(keys: RedisKeys, name: str, graph: bool) -> str:
    return keys.graph_lookup(name) if graph else keys.lookup(name)


def _table_key(keys: RedisKeys, name: str, table: int, graph: bool) -> str:
    return keys.graph_lookup_table(name, table) if graph else keys.lookup_table(name, table)

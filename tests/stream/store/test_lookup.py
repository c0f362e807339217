"""Publishing lookup tables (stream/store/lookup.py) when two `score` runs finish together, on
the real Redis: every table replaced expires, and a table never replaces one numbered after it
(a run that started later and finished first); and numbering tables when the counter was lost
while tables and pointers remain."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from schemas.errors import SnapshotError
from stream.store.keys import RedisKeys
from stream.store.lookup import (
    REPLACED_GRACE_SECONDS,
    WRITING_TTL_SECONDS,
    LookupTables,
    TableWriter,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def keys() -> RedisKeys:
    return RedisKeys(f"test-{uuid.uuid4().hex[:12]}")


class BeforeTransaction(redis.Connection):
    """A connection that runs `hook` (once) just before it sends its first MULTI: another
    client's commands land exactly between a publish reading the pointer and its transaction.
    Every command still goes to the real Redis."""

    hook: Callable[[], object] | None = None

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        parts = command if isinstance(command, list) else [command]
        hook = BeforeTransaction.hook
        if hook is not None and any(b"MULTI" in bytes(p) for p in parts):
            BeforeTransaction.hook = None
            hook()
        super().send_packed_command(command, check_health)


@pytest.fixture
def hooked(redis_url: str) -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=BeforeTransaction)
    client = redis.Redis(connection_pool=pool)
    yield client
    BeforeTransaction.hook = None
    client.close()
    pool.disconnect()


def filled(tables: LookupTables, rows: dict[str, bytes], *, graph: bool = False) -> TableWriter:
    writer = tables.writer("m", graph=graph)
    for row_id, answer in rows.items():
        writer.add(row_id, answer)
    return writer


def test_two_runs_publishing_at_once_each_expire_the_table_they_replace(
    client: redis.Redis, hooked: redis.Redis, keys: RedisKeys
) -> None:
    """Served: table 1. Run B (table 2) publishes while run A (table 3) is between reading the
    pointer and moving it. Before, A replaced table 1 again (read before B moved it), and B's
    table, with no expiry, was never replaced nor expired."""
    tables = LookupTables(client, keys)
    first = filled(tables, {"x": b'"first"'})
    first.publish({"m": 1}, 1.0, 0)
    run_b = filled(tables, {"x": b'"b"'})
    run_a = filled(LookupTables(hooked, keys), {"x": b'"a"'})
    assert first.table < run_b.table < run_a.table
    BeforeTransaction.hook = lambda: run_b.publish({"m": 1}, 2.0, 0)
    run_a.publish({"m": 1}, 3.0, 0)
    assert BeforeTransaction.hook is None  # B did publish in A's window
    current = tables.current("m")
    assert current is not None and current.table == run_a.table
    assert tables.get("m", "x") == (current, b'"a"')
    for replaced in (first, run_b):
        assert 0 < client.ttl(replaced.key) <= REPLACED_GRACE_SECONDS, replaced.table
    assert client.ttl(run_a.key) == -1  # ttl 0: no expiry


def test_a_run_that_started_earlier_and_finished_later_keeps_the_newer_table(
    client: redis.Redis, keys: RedisKeys
) -> None:
    tables = LookupTables(client, keys)
    earlier = filled(tables, {"x": b'"earlier"'})
    later = filled(tables, {"x": b'"later"'})
    later.publish({"m": 2}, 2.0, 100)
    with pytest.raises(SnapshotError, match=rf"table {later.table} .* is served already"):
        earlier.publish({"m": 1}, 1.0, 100)
    current = tables.current("m")
    assert current is not None and current.table == later.table and current.versions == {"m": 2}
    assert tables.get("m", "x") == (current, b'"later"')
    assert 0 < client.ttl(later.key) <= 100
    assert not client.exists(earlier.key)  # never served: dropped, not left to expire in a day


@pytest.mark.parametrize("graph", [False, True], ids=["model", "graph"])
def test_a_lost_counter_numbers_the_next_table_after_the_served_one(
    client: redis.Redis, keys: RedisKeys, graph: bool
) -> None:
    """The counter is evicted (or deleted) while table 3 is served: the next run's table is
    numbered 4, replaces table 3 as a whole, and the counter goes on from there. Before, the
    counter started again at 1: that table was refused at publish ("from a run started after
    this one"), its answers never served."""
    tables = LookupTables(client, keys)
    tables.writer("other")
    tables.writer("other", graph=True)  # numbers are shared by every table
    served = filled(tables, {"x": b'"old"', "y": b'"old"'}, graph=graph)
    served.publish({"m": 1}, 1.0, 0)
    assert served.table == 3
    client.delete(keys.lookup_seq)
    new = filled(tables, {"x": b'"new"'}, graph=graph)
    assert new.table == 4
    assert int(client.get(keys.lookup_seq) or 0) == 4
    with pytest.raises(SnapshotError, match="ttl -1"):
        new.publish({"m": 2}, 2.0, -1)
    record = new.publish({"m": 2}, 2.0, 0)
    assert record.rows == 1  # its rows alone: the claim is gone
    current = tables.current("m", graph=graph)
    assert current == record and current.table == 4
    assert tables.get("m", "x", graph=graph) == (current, b'"new"')
    assert tables.get("m", "y", graph=graph) is None  # replaced as a whole
    assert 0 < client.ttl(served.key) <= REPLACED_GRACE_SECONDS
    assert client.hgetall(new.key) == {b"x": b'"new"'}
    assert tables.writer("m", graph=graph).table == 5


def test_a_lost_counter_never_gives_a_table_being_written_its_number(
    client: redis.Redis, keys: RedisKeys
) -> None:
    """Table 1 is served, run A has table 3 (2 went to another model, whose table is gone) and
    has written nothing yet, and the counter is lost: run B, started after A, gets table 4,
    above A's (found among the model's tables, though neither counter nor pointer knows it),
    not the free 2 below it nor A's 3. B publishes first; A, finishing later, is refused: B's
    table stays. Before, B got table 1, the served one, and wrote its rows into it."""
    tables = LookupTables(client, keys)
    served = filled(tables, {"x": b'"served"', "y": b'"served"'})
    served.publish({"m": 1}, 1.0, 100)
    client.delete(tables.writer("other").key)  # 2: a number no table holds now
    run_a = tables.writer("m")
    assert (served.table, run_a.table) == (1, 3)
    client.delete(keys.lookup_seq)
    run_b = filled(tables, {"x": b'"b"'})
    assert run_b.table == 4
    assert 0 < client.ttl(run_a.key) <= WRITING_TTL_SECONDS  # claimed from the start
    run_a.add("x", b'"a"')
    run_b.publish({"m": 1}, 3.0, 100)
    with pytest.raises(SnapshotError, match=r"table 4 .* is served already"):
        run_a.publish({"m": 1}, 2.0, 100)
    current = tables.current("m")
    assert current is not None and current.table == 4 and current.rows == 1
    assert tables.get("m", "x") == (current, b'"b"')
    assert client.hgetall(served.key) == {b"x": b'"served"', b"y": b'"served"'}  # untouched


def test_a_table_never_published_is_discarded(client: redis.Redis, keys: RedisKeys) -> None:
    """A run that scored no row discards its table (claimed when numbered): no key is left."""
    tables = LookupTables(client, keys)
    writer = tables.writer("m")
    assert client.exists(writer.key)
    writer.discard()
    assert not client.exists(writer.key)
    assert tables.current("m") is None

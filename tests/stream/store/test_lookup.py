"""Publishing lookup tables (stream/store/lookup.py) when two `score` runs finish together, on
the real Redis: every table replaced expires, and a table never replaces one numbered after it
(a run that started later and finished first)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from schemas.errors import SnapshotError
from stream.store.keys import RedisKeys
from stream.store.lookup import REPLACED_GRACE_SECONDS, LookupTables, TableWriter

pytestmark = pytest.mark.integration


@pytest.fixture
def keys() -> RedisKeys:
    return RedisKeys(f"test-{uuid.uuid4().hex[:12]}")


class BeforeTransaction(redis.Connection):
    """A connection that runs `hook` (once) just before it sends its first MULTI: another
    client's commands land exactly between a publish reading the pointer and its transaction.
    Every command still goes to the real Redis."""

    hook: Callable[[], None] | None = None

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


def filled(tables: LookupTables, rows: dict[str, bytes]) -> TableWriter:
    writer = tables.writer("m")
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

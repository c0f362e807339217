"""The registry's transactions: a step's reads batched on the watching connection, and how few
round trips the steps after every snapshot take (real Redis; the client's sends are counted)."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis
import redis.connection

from stream.registry import base
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotMeta, SnapshotStore
from tests.support.registry import write_version


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], int]]:
    """Round trips to Redis from now on: every packet a client sends waits for its replies
    before the next is sent (redis-py's synchronous client), so sends count round trips."""
    sent = collections.Counter[str]()
    send = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent["n"] += 1
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)

    def since_last() -> int:
        n = sent["n"]
        sent.clear()
        return n

    yield since_last


def _meta(store: SnapshotStore, version: int) -> SnapshotMeta:
    return SnapshotMeta.from_json(cast(bytes, store.client.get(store.keys.meta("m", version))))


def test_the_steps_after_a_snapshot_take_few_round_trips(
    store: SnapshotStore, registry: Registry, key: bytes, round_trips: Callable[[], int]
) -> None:
    # Before batching: 9 for the promotion, 13 for retention with nothing to prune, 17 pruning.
    for _ in range(3):
        version = write_version(store, key)
        metrics = _meta(store, version).metrics
        round_trips()
        assert registry.auto_promote("m", version, metrics) is True
        assert round_trips() == 3  # WATCH, the reads, MULTI/EXEC
        assert registry.retention("m", default_keep=3) == []
        # the learners and models, WATCH, the reads, UNWATCH (a history shorter than its tail
        # is read whole in the reads)
        assert round_trips() == 4
    version = write_version(store, key)
    registry.auto_promote("m", version, _meta(store, version).metrics)
    round_trips()
    assert registry.retention("m", default_keep=3) == [1]
    assert round_trips() == 5  # ... and the doomed version's metas, then MULTI/EXEC
    assert store.versions("m") == [2, 3, 4]

    # Another learner owns the model: its command list is read (and watched) on its own.
    version = write_version(store, key)
    store.client.set(store.keys.owner("m"), "b")
    metrics = _meta(store, version).metrics
    round_trips()
    assert registry.auto_promote("m", version, metrics) is True
    assert round_trips() == 4


def test_a_rollback_queued_for_another_owner_still_stops_auto_promotion(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1, _v2 = write_version(store, key), write_version(store, key)
    store.client.set(store.keys.owner("m"), "b")
    registry.rollback("m", to=v1, reason="bad")
    assert store.client.llen(store.keys.learner_commands("b")) == 1
    store.client.delete(store.keys.owner("m"))  # written as the default learner's
    v3 = write_version(store, key)
    store.client.set(store.keys.owner("m"), "b")
    assert registry.auto_promote("m", v3, {"Accuracy": 1.0}) is False
    assert registry.serving_version("m") == v1
    assert v1 in registry.protected("m")


def test_the_standing_read_agrees_with_the_step_by_step_reads(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    def check() -> None:
        standing, _ = registry._standing(registry.client, "m", full=True)
        assert standing.previous == registry._previous(registry.client, "m")
        pin, promoted, latest = registry._pointers(registry.client, "m")
        assert (standing.pin, standing.promoted, standing.latest) == (pin, promoted, latest)
        assert standing.versions == store.versions("m")
        assert standing.policy == registry.policy("m")

    vs = [write_version(store, key) for _ in range(6)]
    check()  # no history: the version before the latest
    registry.promote("m", vs[1], "")
    check()
    registry.promote("m", vs[3], "")
    registry.promote("m", vs[4], "")
    check()
    registry.rollback("m", to=vs[3], reason="bad")
    check()
    registry.pin("m", vs[0])
    registry.set_policy("m", "guarded", margin=0.1)
    check()
    assert registry.protected("m") == {vs[0], vs[1], vs[3], vs[5]}


def test_a_connection_lost_while_a_transaction_reads_is_tried_again(
    store: SnapshotStore, registry: Registry, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As redis-py does for a command sent alone while watching: the batch's lost connection
    is a WatchError, and `_atomic` tries again on a new connection (a failover's)."""
    version = write_version(store, key)
    batch = base.batch
    outcomes: list[str] = []

    def losing(r: Any, *commands: Any) -> list[Any]:
        if getattr(r, "watching", False) and not outcomes:  # kill the watching connection
            r.connection.send_command("CLIENT", "ID")
            client_id = r.connection.read_response()
            with redis.Redis(connection_pool=r.connection_pool) as killer:
                assert killer.client_kill_filter(_id=client_id) == 1
        try:
            replies = batch(r, *commands)
        except Exception as exc:
            outcomes.append(type(exc).__name__)
            raise
        outcomes.append("ok")
        return replies

    monkeypatch.setattr(base, "batch", losing)
    assert registry.auto_promote("m", version, {"Accuracy": 0.5}) is True
    assert outcomes[0] == "ConnectionError" and outcomes[-1] == "ok", outcomes
    assert registry.serving_version("m") == version

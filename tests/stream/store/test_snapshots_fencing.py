"""A learner's epoch hash lost or gone back (`stream.store.snapshots.FENCE_LUA`), on the real
Redis: two processes of one learner name never both write.

Before, a claim made after the hash was lost counted from 0 again (an epoch no higher than the
older process's), and a hash holding an older epoch than a process's own let it through: after
a failover that lost the newest claim, the older process and the newest both wrote versions and
acknowledged commands.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, cast

import pytest
from river import linear_model

from learners.serialization import dump_signed
from schemas.records import RollbackCommand
from stream.registry.owners import claim
from stream.store.commands import CommandQueue
from stream.store.live import LiveMeta, LiveStore
from stream.store.snapshots import FENCE_FIELDS, FencedError, SnapshotStore

MODEL = "m"


def _process(store: SnapshotStore) -> SnapshotStore:
    """A learner process of ``store``'s learner: its own store, holding a new epoch."""
    process = store.using(store.client)
    process.epoch = claim(store.client, store.keys, store.keys.learner, [MODEL])
    return process


def _snapshot(kit: Any, store: SnapshotStore) -> int:
    return int(kit.publish(store, MODEL, kit.state(linear_model.LogisticRegression(), "classifier"),
                           "classifier"))  # fmt: skip


def _held(store: SnapshotStore) -> int:
    return int(cast(bytes, store.client.hget(store.keys.epoch, "epoch")))


def test_a_claim_after_the_hash_was_lost_outranks_the_process_started_before(
    kit: Any, store: SnapshotStore
) -> None:
    older = _process(store)
    _snapshot(kit, older)
    store.client.delete(store.keys.epoch)  # evicted, deleted by hand, a fresh replica
    newer = _process(store)
    assert newer.epoch is not None and older.epoch is not None
    assert newer.epoch > older.epoch

    with pytest.raises(FencedError, match="another process of learner"):
        _snapshot(kit, older)
    assert _snapshot(kit, newer) == 3  # the older process's second write took no version


def _ack(store: SnapshotStore, process: SnapshotStore) -> None:
    command = RollbackCommand(uuid.uuid4().hex, MODEL, "rollback", 1, "skip", [], 0.0)
    store.client.rpush(store.keys.commands, command.to_json())
    queue = CommandQueue(store.client, store.keys.prefix, store.keys.learner, epoch=process.epoch)
    queue.peek()
    queue.ack(1)


def _live(kit: Any, store: SnapshotStore, process: SnapshotStore) -> None:
    version = int(cast(bytes, store.client.get(store.keys.latest(MODEL))))
    blob = dump_signed(kit.state(linear_model.LogisticRegression(), "classifier"), kit.KEY)
    meta = LiveMeta.describe(
        MODEL, version, blob, kind="classifier", spec="x", samples_learned=1, metrics={}
    )
    assert LiveStore(process).write(MODEL, version, blob, meta)


WRITES: dict[str, Callable[[Any, SnapshotStore, SnapshotStore], Any]] = {
    "snapshot": lambda kit, store, process: _snapshot(kit, process),
    "command acknowledged": lambda kit, store, process: _ack(store, process),
    "live update": _live,
}


@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize("lost", ["deleted", "gone back"])
def test_the_newest_process_puts_its_epoch_back_and_the_older_stops(
    kit: Any, store: SnapshotStore, write: str, lost: str
) -> None:
    """A failover to a replica that missed the newest claim leaves the older epoch (or none):
    the newest process's next write of any kind puts its own back, with its host and pid, and
    from then on the older process is fenced."""
    older = _process(store)
    _snapshot(kit, older)
    before: dict[Any, Any] = store.client.hgetall(store.keys.epoch)
    newer = _process(store)
    assert newer.epoch is not None
    if lost == "deleted":
        store.client.delete(store.keys.epoch)
    else:
        store.client.hset(store.keys.epoch, mapping=before)  # what the replica had

    WRITES[write](kit, store, newer)

    assert _held(store) == newer.epoch
    fields = store.client.hmget(store.keys.epoch, *FENCE_FIELDS)
    assert fields[2] is not None and fields[3] == str(newer.process[1]).encode()
    with pytest.raises(FencedError, match="another process of learner"):
        _snapshot(kit, older)
    with pytest.raises(FencedError):
        _ack(store, older)
    _snapshot(kit, newer)  # the newest goes on


def test_an_epoch_hash_holding_the_newest_epoch_is_not_rewritten(
    kit: Any, store: SnapshotStore
) -> None:
    """Only a lost epoch is put back: the newest process's writes leave its claim's fields
    (the start's time) as they are, and an older process never writes its own over a newer."""
    older = _process(store)
    newer = _process(store)
    claimed = store.client.hgetall(store.keys.epoch)
    _snapshot(kit, newer)
    _ack(store, newer)
    with pytest.raises(FencedError):
        _snapshot(kit, older)
    assert store.client.hgetall(store.keys.epoch) == claimed

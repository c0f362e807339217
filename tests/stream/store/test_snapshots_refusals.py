"""A Redis that refuses writes for a while (out of memory, a read-only replica, failing to
persist, running a long script) is unavailable to the store, as an unreachable one is: the
learner rides it out as an outage (`stream.learner.outage`) instead of stopping. Real refusals
of a private redis-server (`tests.support.outage.refusing`); once it accepts writes again, the
same write succeeds."""

from __future__ import annotations

from typing import Any, cast

import pytest
import redis

from learners.serialization import dump_signed
from schemas.errors import SnapshotError
from stream.store.snapshots import RedisUnavailableError, SnapshotMeta, SnapshotStore
from stream.store.trace import TracePoint, TraceWrite
from tests.support.outage import REFUSALS, PrivateRedis, private_redis, refusing

pytestmark = pytest.mark.integration
__all__ = ["private_redis"]  # a fixture

KEY = b"test-key"


def _write(store: SnapshotStore, version: int, trace: TraceWrite | None = None) -> None:
    blob = dump_signed({"weights": version}, KEY)
    meta = SnapshotMeta.describe(
        "lr", blob, kind="classifier", spec="logreg", samples_learned=version,
        metrics={"Accuracy": 0.5}, offsets={"features:0": version},
    )  # fmt: skip
    checkpoint = dump_signed({}, KEY)
    store.write(version, {"lr": (blob, meta)}, checkpoint, {"features:0": version}, trace)


@pytest.mark.parametrize("code", REFUSALS)
def test_a_refused_write_is_redis_unavailable(private_redis: PrivateRedis, code: str) -> None:
    store = SnapshotStore(redis.Redis(port=private_redis.port), "refusals", KEY)
    version = store.next_version()
    with refusing(private_redis, code):
        with pytest.raises(RedisUnavailableError, match="redis unavailable"):
            store.next_version()
        with pytest.raises(RedisUnavailableError, match="redis unavailable"):
            _write(store, version)
    assert store.latest_version("lr") is None  # nothing was written
    _write(store, version)
    assert store.latest_version("lr") == version


def test_an_error_that_does_not_pass_is_not(private_redis: PrivateRedis) -> None:
    client = redis.Redis(port=private_redis.port)
    store = SnapshotStore(client, "refusals", KEY)
    client.rpush(store.keys.seq, "not a number")  # WRONGTYPE: retrying cannot help
    with pytest.raises(SnapshotError) as raised:
        store.next_version()
    assert not isinstance(raised.value, RedisUnavailableError)


def test_a_connection_lost_while_the_write_watches_is_redis_unavailable(
    private_redis: PrivateRedis,
) -> None:
    """A connection lost at EXEC (a reset, or a failover's "the previous master is now a
    slave"), which redis-py raises as a `redis.WatchError` since the transaction watched its
    owners: the store says Redis is unavailable, not that the write failed for good; nothing
    was written, and the same write succeeds on a new connection."""
    store = SnapshotStore(redis.Redis(port=private_redis.port), "refusals", KEY)
    admin = redis.Redis(port=private_redis.port)
    version = store.next_version()
    notify = store._notify  # queued last, right before EXEC

    def then_lost(pipe: Any, models: Any, version: int) -> Any:
        admin.client_kill_filter(_type="normal", skipme=True)  # the watching connection too
        return notify(pipe, models, version)

    store._notify = then_lost  # type: ignore[method-assign]
    with pytest.raises(RedisUnavailableError, match="redis unavailable"):
        _write(store, version)
    del store._notify
    assert store.latest_version("lr") is None
    _write(store, version)
    assert store.latest_version("lr") == version


@pytest.mark.parametrize(
    ("key_of", "wrong"),
    [
        (lambda keys: keys.models, "string"),  # the models set
        (lambda keys: keys.versions("lr"), "list"),  # the model's versions (a sorted set)
        (lambda keys: keys.latest("lr"), "hash"),  # its latest pointer (a string)
        (lambda keys: keys.checkpoint_latest, "set"),  # the checkpoint's (a string)
        (lambda keys: keys.trace("lr"), "string"),  # its learning curve (a stream)
        (lambda keys: keys.trace_lineage("lr"), "list"),  # the curve's lineage (a string)
    ],
)
def test_a_key_of_the_wrong_type_fails_the_write_before_anything_is_written(
    private_redis: PrivateRedis, key_of: Any, wrong: str
) -> None:
    """Redis has no rollback: a command of the visibility transaction refused at EXEC by a key
    of the wrong type would leave the others applied (part of a version visible). The write
    checks those keys' types first, names the key, and writes nothing: no chunk, no meta, no
    pointer; once the key is gone, the same write succeeds."""
    client = redis.Redis(port=private_redis.port)
    store = SnapshotStore(client, "wrongtype", KEY)

    def curve(labels: int) -> TraceWrite:
        point = TracePoint(labels, 1.0, 2.0, labels, {"Accuracy": 0.5})
        return TraceWrite(labels, [(0, "epoch")], {"lr": [point]}, 1000)

    _write(store, store.next_version(), curve(10))
    key = key_of(store.keys)
    before = {
        k: client.dump(k)
        for k in cast(list[bytes], client.keys("wrongtype:*"))
        if k.decode() != key
    }
    client.delete(key)
    {"string": lambda: client.set(key, "x"), "list": lambda: client.rpush(key, "x"),
     "hash": lambda: client.hset(key, "x", "1"), "set": lambda: client.sadd(key, "x")}[wrong]()  # fmt: skip
    version = store.next_version()
    with pytest.raises(SnapshotError) as raised:
        _write(store, version, curve(20))
    after = {
        k: client.dump(k)
        for k in cast(list[bytes], client.keys("wrongtype:*"))
        if k.decode() != key
    }
    assert after.keys() - before.keys() <= {store.keys.seq.encode()}
    assert {k: v for k, v in after.items() if k.decode() != store.keys.seq} == {
        k: v for k, v in before.items() if k.decode() != store.keys.seq
    }  # nothing of the version written: the rest of the prefix as it was
    assert f"key {key} holds a {wrong}, not a" in str(raised.value)
    assert not isinstance(raised.value, RedisUnavailableError)  # retrying cannot help
    client.delete(key)
    _write(store, version, curve(20))
    assert store.latest_version("lr") == version


@pytest.mark.parametrize("what", ["pointer", "lineage"])
def test_a_value_that_cannot_be_read_does_not_fail_the_write(
    private_redis: PrivateRedis, what: str
) -> None:
    """A key of the right type holding what the transaction cannot read (a pointer that is no
    number, a lineage that is no list of ``[start, epoch]``) counts as none: the write
    succeeds whole, where its script would fail at EXEC with the others applied."""
    client = redis.Redis(port=private_redis.port)
    store = SnapshotStore(client, "unreadable", KEY)
    point = TracePoint(10, 1.0, 2.0, 10, {"Accuracy": 0.5})
    _write(store, store.next_version(), TraceWrite(10, [(0, "epoch")], {"lr": [point]}, 1000))
    if what == "pointer":
        client.set(store.keys.latest("lr"), "not a number")
    else:
        client.set(store.keys.trace_lineage("lr"), "[1, 2]")
    version = store.next_version()
    point = TracePoint(20, 1.0, 2.0, 20, {"Accuracy": 0.5})
    _write(store, version, TraceWrite(20, [(0, "epoch")], {"lr": [point]}, 1000))
    assert client.get(store.keys.latest("lr")) == str(version).encode()
    assert store.latest_version("lr") == version

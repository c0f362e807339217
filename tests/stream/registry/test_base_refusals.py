"""A registry operation that Redis refuses for a while (out of memory, a read-only replica
during a failover) fails with `RegistryUnavailableError`, the registry's form of the store's
`RedisUnavailableError` (one rule: `stream.store.snapshots.transient`): the learner's steps after
a snapshot ride it out as an outage. Other failures stay a plain `RegistryError`. Real refusals
of a private redis-server (`tests.support.outage.refusing`)."""

from __future__ import annotations

import pytest
import redis

from learners.serialization import dump_signed
from schemas.errors import RegistryError
from stream.checkpoint.protocol import failure_of
from stream.registry.base import RegistryUnavailableError
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotMeta, SnapshotStore
from tests.support.outage import PrivateRedis, private_redis, refusing

pytestmark = pytest.mark.integration
__all__ = ["private_redis"]  # a fixture

KEY = b"test-key"


def _store(server: PrivateRedis) -> SnapshotStore:
    store = SnapshotStore(redis.Redis(port=server.port), "refusals", KEY)
    blob = dump_signed({"weights": 1}, KEY)
    meta = SnapshotMeta.describe(
        "lr", blob, kind="classifier", spec="logreg", samples_learned=1,
        metrics={"Accuracy": 0.5}, offsets={"features:0": 1},
    )  # fmt: skip
    store.write(store.next_version(), {"lr": (blob, meta)}, dump_signed({}, KEY), {})
    return store


@pytest.mark.parametrize("code", ["OOM", "READONLY"])
def test_a_refused_operation_is_registry_unavailable(
    private_redis: PrivateRedis, code: str
) -> None:
    registry = Registry(_store(private_redis), by="test")
    with refusing(private_redis, code):
        with pytest.raises(RegistryUnavailableError, match="pin lr v1") as raised:
            registry.pin("lr", 1)
        assert failure_of(raised.value) == "unavailable"  # a snapshot's steps: an outage
    registry.pin("lr", 1)
    assert registry.serving_version("lr") == 1


def test_other_failures_stay_registry_errors(private_redis: PrivateRedis) -> None:
    store = _store(private_redis)
    store.client.set(store.keys.models, "not a set")  # WRONGTYPE: retrying cannot help
    with pytest.raises(RegistryError) as raised:
        Registry(store, by="test").pin("lr", 1)
    assert not isinstance(raised.value, RegistryUnavailableError)
    assert failure_of(raised.value) == "error"

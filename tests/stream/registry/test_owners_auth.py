"""The registry and Redis refusing the process's credentials, against a real redis-server with
``requirepass``: a learner's claim at its start fails as a configuration error naming the
settings (`stream.store.snapshots.RedisAuthError`), and a registry operation says which settings
to look at, as an error a running learner rides out (`RegistryUnavailableError`)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from schemas.errors import ConfigError
from schemas.settings import Settings
from stream.registry.base import RegistryUnavailableError
from stream.registry.owners import claim
from stream.registry.registry import Registry
from stream.store.connect import redis_client
from stream.store.keys import RedisKeys
from stream.store.snapshots import SnapshotStore
from tests.support.outage import PrivateRedis, locked_redis

pytestmark = pytest.mark.integration
__all__ = ["locked_redis"]  # fixtures


def test_a_learner_whose_credentials_redis_refuses_does_not_start(
    locked_redis: PrivateRedis,
) -> None:
    keys = RedisKeys("auth-test", "default")
    wrong = redis_client(Settings(redis_url=locked_redis.url, redis_password=SecretStr("wrong")))
    with pytest.raises(ConfigError) as raised:
        claim(wrong, keys, "default", ["lr"])
    message = str(raised.value)
    assert message.startswith("claiming models ['lr'] for learner 'default': Redis refused")
    assert "RIVERSTREAM_REDIS_PASSWORD" in message and "not an outage" in message
    assert locked_redis.password is not None
    right = redis_client(
        Settings(redis_url=locked_redis.url, redis_password=SecretStr(locked_redis.password))
    )
    epoch = claim(right, keys, "default", ["lr"])
    assert right.hget(keys.epoch, "epoch") == str(epoch).encode()


def test_a_registry_operation_refused_names_the_settings(locked_redis: PrivateRedis) -> None:
    wrong = redis_client(Settings(redis_url=locked_redis.url, redis_password=SecretStr("wrong")))
    registry = Registry(SnapshotStore(wrong, "auth-test", b"key"))
    with pytest.raises(RegistryUnavailableError) as raised:
        registry.owners()
    message = str(raised.value)
    assert "invalid username-password pair" in message
    assert "RIVERSTREAM_REDIS_PASSWORD" in message and "RIVERSTREAM_REDIS_USERNAME" in message

"""The registry and Redis's ACL, against a real redis-server with an ACL user whose keys are
another prefix's: a learner's claim at its start fails as a configuration error
(`stream.store.snapshots.RedisAuthError`) quoting Redis's ``NOPERM`` and naming the settings to
fix (it was a `RegistryError` with Redis's words only), and a registry operation says so too,
as an error a running learner rides out (`RegistryUnavailableError`)."""

from __future__ import annotations

import pytest
import redis
from pydantic import SecretStr

from schemas.errors import ConfigError
from schemas.settings import Settings
from stream.registry.base import RegistryUnavailableError
from stream.registry.owners import claim
from stream.registry.registry import Registry
from stream.store.connect import redis_client
from stream.store.keys import RedisKeys
from stream.store.snapshots import SnapshotStore
from tests.support.outage import ACL_USER, PrivateRedis, documented_acl, private_redis

pytestmark = pytest.mark.integration
__all__ = ["private_redis"]  # fixtures

PREFIX = "acl-test"
SETTINGS = ("RIVERSTREAM_REDIS_USERNAME", "RIVERSTREAM_REDIS_PREFIX")
KEYS_DENIED = "this user has no permissions to access one of the keys used as arguments"


def client_of(server: PrivateRedis, keys: str) -> tuple[redis.Redis, str]:
    """A client of ``server``'s as an ACL user with the README's rule but the keys ``keys``,
    and its password."""
    rules = [keys if r.startswith("~") else r for r in documented_acl(PREFIX)]
    password = server.add_user(ACL_USER, rules)
    settings = Settings(
        redis_url=server.url, redis_username=ACL_USER, redis_password=SecretStr(password)
    )
    return redis_client(settings), password


def test_a_learner_whose_acl_user_may_not_use_its_keys_does_not_start(
    private_redis: PrivateRedis,
) -> None:
    keys = RedisKeys(PREFIX, "default")
    elsewhere, password = client_of(private_redis, "~elsewhere:*")
    with pytest.raises(ConfigError) as raised:
        claim(elsewhere, keys, "default", ["lr"])
    message = str(raised.value)
    assert message.startswith("claiming models ['lr'] for learner 'default': Redis's ACL")
    assert KEYS_DENIED in message and "not an outage" in message, message
    assert all(name in message for name in SETTINGS) and password not in message
    allowed, _ = client_of(private_redis, f"~{PREFIX}:*")
    epoch = claim(allowed, keys, "default", ["lr"])  # the README's rule: its keys, TIME
    assert allowed.hget(keys.epoch, "epoch") == str(epoch).encode()


def test_a_registry_operation_denied_names_the_settings(private_redis: PrivateRedis) -> None:
    elsewhere, _ = client_of(private_redis, "~elsewhere:*")
    registry = Registry(SnapshotStore(elsewhere, PREFIX, b"key"))
    with pytest.raises(RegistryUnavailableError) as raised:
        registry.owners()
    message = str(raised.value)
    assert KEYS_DENIED in message and all(name in message for name in SETTINGS), message

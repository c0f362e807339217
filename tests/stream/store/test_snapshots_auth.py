"""Redis refusing a process's credentials, against a real redis-server with ``requirepass``: a
configuration error naming the settings (`stream.store.snapshots.RedisAuthError`), never taken
for an outage, though ridden out like one by a running process; the API's follower reports it as
``auth`` where an unreachable Redis is an ``outage``."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from schemas.errors import ConfigError
from schemas.settings import Settings
from stream.store.connect import redis_client
from stream.store.follower import SnapshotFollower
from stream.store.snapshots import RedisUnavailableError, SnapshotStore, transient
from tests.support.outage import PrivateRedis, locked_redis
from tests.support.serving import KEY, FollowerRecorder

pytestmark = pytest.mark.integration
__all__ = ["locked_redis"]  # fixtures

SETTINGS = ("RIVERSTREAM_REDIS_PASSWORD", "RIVERSTREAM_REDIS_URL", "RIVERSTREAM_REDIS_USERNAME")


def store_of(server: PrivateRedis, password: str | None, prefix: str) -> SnapshotStore:
    """A store of ``server``'s, whose client is given ``password`` as the settings give it."""
    settings = Settings(
        redis_url=server.url,
        redis_password=None if password is None else SecretStr(password),
    )
    return SnapshotStore(redis_client(settings, socket_timeout=5), prefix, KEY)


@pytest.mark.parametrize("password", ["wrong", None], ids=["WRONGPASS", "NOAUTH"])
def test_refused_credentials_are_a_configuration_error_naming_the_settings(
    locked_redis: PrivateRedis, prefix: str, password: str | None
) -> None:
    store = store_of(locked_redis, password, prefix)
    with pytest.raises(ConfigError) as raised:
        store.next_version()
    message = str(raised.value)
    assert "refused this process's credentials" in message and "not an outage" in message
    assert all(name in message for name in SETTINGS), message
    assert locked_redis.password is not None
    assert locked_redis.password not in message  # the settings are named, never the secret
    # A running process rides it out as it rides out an outage (nothing is lost) ...
    assert isinstance(raised.value, RedisUnavailableError)
    # ... but it never passes by itself: it is no outage.
    assert isinstance(raised.value.__cause__, redis.AuthenticationError)
    assert not transient(raised.value.__cause__)

    right = store_of(locked_redis, locked_redis.password, prefix)
    assert right.next_version() == 1


def test_the_follower_says_auth_for_refused_credentials_and_outage_for_a_redis_away(
    locked_redis: PrivateRedis, prefix: str, tmp_path: Path
) -> None:
    refused = SnapshotFollower(store_of(locked_redis, "wrong", prefix), FollowerRecorder())
    refused.start()
    try:
        assert refused.first_sync.wait(10)
        status = refused.status()["redis"]
        assert (status["reachable"], status["reason"]) == (False, "auth"), status
        assert refused.credentials_refused is not None
        assert "RIVERSTREAM_REDIS_PASSWORD" in str(refused.unsynced_reason())
    finally:
        refused.stop()

    away = PrivateRedis(tmp_path / "away")  # a port nothing listens on
    outage = SnapshotFollower(store_of(away, locked_redis.password, prefix), FollowerRecorder())
    outage.start()
    try:
        assert outage.first_sync.wait(10)
        status = outage.status()["redis"]
        assert (status["reachable"], status["reason"]) == (False, "outage"), status
        assert outage.credentials_refused is None
    finally:
        outage.stop()

    fine = SnapshotFollower(
        store_of(locked_redis, locked_redis.password, prefix), FollowerRecorder()
    )
    fine.sync()
    assert fine.status()["redis"]["reason"] is None and fine.credentials_refused is None

"""The API, the learner and Redis's ACL, against a real redis-server with an ACL user: the rule
the README documents lets a learner snapshot and an API serve (no command of theirs denied);
an API whose user may not touch its keys or its channels stops at its start with a
configuration error (`stream.store.snapshots.RedisAuthError`) that quotes Redis's ``NOPERM``
and names the settings to fix. Before, it started and waited for Redis as for an outage
(``/readyz`` ``reason`` ``outage``), the same warning at every poll."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.errors import ConfigError
from schemas.events import FeatureEvent
from schemas.settings import Settings
from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.learner.runtime import build_learner, snapshot_store
from tests.support.outage import ACL_USER, PrivateRedis, documented_acl, private_redis
from tests.support.pipeline import fast, publish, run_to_end
from tests.support.serving import serve_in_thread
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
__all__ = ["private_redis"]  # fixtures


def test_the_documented_acl_lets_a_learner_snapshot_and_an_api_serve(
    settings: Settings, private_redis: PrivateRedis
) -> None:
    password = private_redis.add_user(ACL_USER, documented_acl(settings.redis_prefix))
    s = fast(
        settings, redis_url=private_redis.url, redis_username=ACL_USER,
        redis_password=SecretStr(password), snapshot_every_labels=100,
        snapshot_every_seconds=0.2, redis_outage_seconds=5.0,
    )  # fmt: skip
    events = list(dataset_events("Phishing", label_delay=5, limit=300))
    publish(s, events)
    run_to_end(build_learner(s, [ModelSpec("lr", "logreg")]))
    latest = snapshot_store(s).latest_version("lr")
    assert latest is not None

    app = create_app(s, metrics=ServingMetrics(CollectorRegistry()))
    features = next(e.features for e in events if isinstance(e, FeatureEvent))
    with serve_in_thread(app) as api:
        wait_until(lambda: api.get("/readyz").status_code == 200, 20, "the API ready")
        answer = api.post("/v1/models/lr/predict", json={"features": features})
        assert answer.status_code == 200 and answer.json()["version"] == latest, answer.text
        assert api.get("/readyz").json()["redis"]["reason"] is None
    admin = private_redis.admin()
    assert admin.acl_log() == []  # no command, key or channel of theirs was denied
    admin.close()


@pytest.mark.parametrize(
    ("other", "denied"),
    [("~", "no permissions to access one of the keys"),
     ("&", "no permissions to access one of the channels")],
    ids=["keys-of-another-prefix", "channels-of-another-prefix"],
)  # fmt: skip
def test_an_api_whose_acl_user_lacks_a_permission_does_not_start(
    private_redis: PrivateRedis, other: str, denied: str
) -> None:
    prefix = "acl-api"
    rules = [f"{other}elsewhere:*" if r.startswith(other) else r for r in documented_acl(prefix)]
    password = private_redis.add_user(ACL_USER, rules)
    settings = Settings(
        redis_url=private_redis.url, redis_prefix=prefix, redis_username=ACL_USER,
        redis_password=SecretStr(password), snapshot_key=SecretStr("k"), serve_poll_seconds=0.2,
    )  # fmt: skip
    app = create_app(settings, metrics=ServingMetrics(CollectorRegistry()))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ConfigError) as raised:
        asyncio.run(start())
    message = str(raised.value)
    assert "Redis's ACL denies this process's user" in message and denied in message, message
    assert "RIVERSTREAM_REDIS_USERNAME" in message and "RIVERSTREAM_REDIS_PREFIX" in message
    assert password not in message

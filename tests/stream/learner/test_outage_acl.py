"""The learner and Redis's ACL, against a real redis-server with an ACL user: no outage but a
configuration error, as refused credentials are (`test_outage_auth`). A learner whose user may
not use its keys stops at its start; one whose user may not ``PUBLISH`` (only a snapshot does)
learns on while its snapshots wait, reports it as ``auth`` with an error quoting Redis's
``NOPERM`` and naming the settings, and gives up after ``RIVERSTREAM_REDIS_OUTAGE_SECONDS`` in
the same words. Before, it logged a traceback per snapshot and stopped with "the final
snapshot could not be written"."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.errors import ConfigError
from schemas.settings import Settings
from stream.learner.outage import RedisOutageError
from stream.learner.runtime import build_learner
from tests.support.outage import ACL_USER, PrivateRedis, documented_acl, private_redis
from tests.support.pipeline import fast, publish, run_to_end

pytestmark = pytest.mark.integration
__all__ = ["private_redis"]  # fixtures

SPECS = [ModelSpec("lr", "logreg")]
DENIED = "Redis's ACL denies this process's user"
SETTINGS = ("RIVERSTREAM_REDIS_USERNAME", "RIVERSTREAM_REDIS_PREFIX")


def as_user(settings: Settings, server: PrivateRedis, rules: list[str]) -> Settings:
    """``settings`` with ``server`` for Redis, as an ACL user with ``rules``."""
    password = server.add_user(ACL_USER, rules)
    return fast(
        settings, redis_url=server.url, redis_username=ACL_USER,
        redis_password=SecretStr(password), snapshot_every_labels=100,
        snapshot_every_seconds=0.2, redis_outage_seconds=1.0,
    )  # fmt: skip


def test_a_learner_whose_acl_user_may_not_use_its_keys_does_not_start(
    settings: Settings, private_redis: PrivateRedis
) -> None:
    rules = [
        "~elsewhere:*" if r.startswith("~") else r for r in documented_acl(settings.redis_prefix)
    ]
    s = as_user(settings, private_redis, rules)
    with pytest.raises(ConfigError) as raised:
        build_learner(s, SPECS)
    message = str(raised.value)
    assert DENIED in message and "no permissions to access one of the keys" in message, message
    assert all(name in message for name in SETTINGS)
    assert s.redis_password is not None
    assert s.redis_password.get_secret_value() not in message


def test_a_learner_whose_acl_user_may_not_publish_reports_it_and_gives_up_in_its_words(
    settings: Settings, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    rules = [r for r in documented_acl(settings.redis_prefix) if r != "+publish"]
    s = as_user(settings, private_redis, rules)
    publish(s, list(dataset_events("Phishing", label_delay=5, limit=300)))
    learner = build_learner(s, SPECS)  # the claim needs no PUBLISH: it starts
    with (
        caplog.at_level(logging.WARNING, logger="riverstream.learner"),
        pytest.raises(RedisOutageError) as raised,
    ):
        run_to_end(learner)  # its snapshots wait; the final one gives up after the limit
    message = str(raised.value)
    assert message.startswith(DENIED), message
    assert "no permissions to run the 'publish' command" in message
    assert "RIVERSTREAM_REDIS_OUTAGE_SECONDS" in message
    assert all(name in message for name in SETTINGS)
    assert learner.outage.count >= 1 and learner.outage.reason == "auth"
    reported = [r for r in caplog.records if DENIED in r.getMessage()]
    assert reported and reported[0].levelno == logging.ERROR, caplog.text
    assert "'publish'" in reported[0].getMessage()

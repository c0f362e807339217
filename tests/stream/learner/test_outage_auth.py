"""The learner and Redis refusing its credentials, against a real redis-server with
``requirepass``: no outage but a configuration error. A learner started with a wrong password
stops at once, naming the settings; a password changed under a running learner is ridden out
like an outage (learning goes on, nothing is lost, the snapshots wait) but reported as what it
is (``reason`` ``auth``, an error naming the settings), and its end is reported too."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
from pydantic import SecretStr

from learners.datasets import dataset_events
from schemas.settings import Settings
from stream.dev.services import free_port
from stream.learner.outage import Outage
from stream.learner.runtime import snapshot_store
from stream.store.connect import redis_client
from tests.support.cluster import learned
from tests.support.outage import (
    PrivateRedis,
    change_password,
    checkpoint_version,
    learner_gauges,
    locked_redis,
)
from tests.support.pipeline import fast, final_model, publish, spawn_cli
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
__all__ = ["locked_redis"]  # fixtures

N, DELAY, SEED = 2_000, 50, 5
LEARN = ["learn", "--model", "lr=logreg", "--metric", "Accuracy"]
REFUSED = "Redis refused this process's credentials"


def test_the_outage_says_auth_when_redis_refuses_the_credentials(
    locked_redis: PrivateRedis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The retry's PING (the learning thread's probe) is refused: ``reason`` ``auth``, an error
    naming the settings; a Redis away is an ``outage``, a warning, as before."""
    now = [0.0]
    wrong = Settings(redis_url=locked_redis.url, redis_password=SecretStr("wrong"))
    refused = Outage(60, lambda: now[0], probe=redis_client(wrong, socket_timeout=0.5))
    away = Settings(redis_url=PrivateRedis(tmp_path).url)  # a port nothing listens on
    unreachable = Outage(60, lambda: now[0], probe=redis_client(away, socket_timeout=0.5))
    with caplog.at_level(logging.WARNING, logger="riverstream.learner"):
        for outage in (refused, unreachable):
            outage.failed("live update", ConnectionError("Connection closed by server."))
            now[0] += 1.0
            assert not outage.due()  # its PING is refused
    assert (refused.up, refused.reason) == (False, "auth")
    assert (unreachable.up, unreachable.reason) == (False, "outage")
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    auth = [(level, m) for level, m in said if REFUSED in m]
    assert len(auth) == 1 and auth[0][0] == logging.ERROR, said
    assert "ping" in auth[0][1] and "RIVERSTREAM_REDIS_PASSWORD" in auth[0][1]
    assert "wrong" not in auth[0][1].replace("wrong number", "")


def test_a_learner_whose_credentials_redis_refuses_stops_at_its_start(
    settings: Settings, locked_redis: PrivateRedis, tmp_path: Path
) -> None:
    s = fast(settings, redis_url=locked_redis.url, redis_password=SecretStr("not-the-password"))
    log = tmp_path / "learner.log"
    learner = spawn_cli(s, LEARN, log)
    try:
        code = learner.wait(timeout=60)
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait(timeout=10)
    text = log.read_text()
    assert code != 0, text
    assert REFUSED in text and "RIVERSTREAM_REDIS_PASSWORD" in text, text
    assert "not-the-password" not in text


@pytest.mark.slow
def test_a_password_changed_under_a_running_learner_is_ridden_out_and_reported_as_auth(
    settings: Settings, locked_redis: PrivateRedis, tmp_path: Path
) -> None:
    metrics_port = free_port()
    password = str(locked_redis.password)
    s = fast(
        settings, redis_url=locked_redis.url, redis_password=SecretStr(password),
        learner_metrics_port=metrics_port, snapshot_every_labels=500, snapshot_every_seconds=0.5,
        redis_outage_seconds=120,
    )  # fmt: skip
    events = list(dataset_events("synth.Agrawal", label_delay=DELAY, limit=N, seed=SEED))
    half = len(events) // 2
    store = snapshot_store(s)
    log = tmp_path / "learner.log"
    publish(s, events[:half])
    learner = spawn_cli(s, LEARN, log)
    try:
        wait_until(lambda: learned(metrics_port) >= N // 2 - 2 * DELAY, 60, "half", log=log)
        wait_until(lambda: checkpoint_version(store) > 0, 30, "a snapshot", log=log)

        change_password(locked_redis, "rotated")  # the learner still has the old one
        publish(s, events[half:])
        wait_until(lambda: REFUSED in log.read_text(), 30, "the refusal reported", log=log)
        wait_until(lambda: learner_gauges(metrics_port).get("riverstream_redis_up") == 0, 30)
        wait_until(lambda: learned(metrics_port) >= N, 60, "learning to go on", log=log)
        assert learner.poll() is None, log.read_text()[-3000:]
        during = checkpoint_version(snapshot_store(s.model_copy(
            update={"redis_password": SecretStr("rotated")})))  # fmt: skip

        change_password(locked_redis, password)  # rotated back: the learner's works again
        wait_until(lambda: learner_gauges(metrics_port).get("riverstream_redis_up") == 1, 30)
        wait_until(lambda: checkpoint_version(store) > during, 30, "a snapshot after", log=log)
        os.kill(learner.pid, signal.SIGTERM)  # final snapshot, exit 0
        assert learner.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait(timeout=10)
    text = log.read_text()
    # the learner's report (a writer thread's traceback may name the refusal before it)
    refusals = [line for line in text.splitlines() if REFUSED in line and line.startswith("ERROR")]
    assert refusals and "RIVERSTREAM_REDIS_PASSWORD" in refusals[0], text[-3000:]
    assert "Redis accepts this process's credentials again" in text
    assert final_model(s, "lr").samples_learned == N  # nothing lost

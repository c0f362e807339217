"""The API and Redis refusing its credentials, against a real redis-server with ``requirepass``:
an API started with a wrong password stops at once, naming the settings (it waited forever
before, looking like a Redis outage); a password changed under a running API is ridden out (the
models loaded keep answering) and reported as ``auth``, not as an outage."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from river import linear_model

from serving.app import create_app
from serving.runner import settings_environment
from serving.telemetry import ServingMetrics
from stream.store.snapshots import SnapshotStore
from tests.support.outage import PrivateRedis, change_password, locked_redis
from tests.support.serving import ROOT

pytestmark = pytest.mark.integration
__all__ = ["locked_redis"]  # fixtures


def test_an_api_whose_credentials_redis_refuses_does_not_start(
    kit, locked_redis: PrivateRedis, prefix: str, tmp_path: Path
) -> None:
    settings = kit.make_settings(locked_redis.url, prefix, redis_password="not-the-password")
    log = tmp_path / "api.log"
    port = str(kit.free_port())
    with log.open("wb") as out:
        api = subprocess.Popen(
            [sys.executable, "-m", "stream", "serve", "--port", port, "--workers", "1"],
            cwd=ROOT, env={**os.environ, **settings_environment(settings)}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        code = api.wait(timeout=60)
    finally:
        if api.poll() is None:
            api.kill()
            api.wait()
    text = log.read_text()
    assert code != 0, text
    assert "Redis refused this process's credentials" in text, text
    assert "RIVERSTREAM_REDIS_PASSWORD" in text and "not-the-password" not in text, text


def test_a_password_changed_under_a_running_api_is_reported_as_auth(
    kit, locked_redis: PrivateRedis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = locked_redis.admin()
    v1 = kit.publish(SnapshotStore(admin, prefix, kit.KEY), "m", linear_model.LogisticRegression(),
                     "classifier")  # fmt: skip
    password = locked_redis.password
    settings = kit.make_settings(
        locked_redis.url, prefix, redis_password=password, serve_poll_seconds=0.1
    )
    app = create_app(settings, metrics=ServingMetrics(CollectorRegistry()))
    with caplog.at_level(logging.WARNING), kit.serve_in_thread(app) as api:
        kit.wait_until(lambda: api.get("/readyz").status_code == 200)
        change_password(locked_redis, "rotated")
        status = kit.wait_until(lambda: _when(api, lambda s: s["redis"]["reason"] == "auth"))
        assert status["stale"] and status["ready"] and not status["redis"]["reachable"]
        assert "RIVERSTREAM_REDIS_PASSWORD" in status["redis"]["error"]
        answer = api.post("/v1/models/m/predict", json={"features": {"x": 1.0}})
        assert answer.status_code == 200 and answer.json()["version"] == v1
        refused = [r for r in caplog.records if "credentials" in r.getMessage()]
        assert refused and refused[0].levelno == logging.ERROR, caplog.text

        change_password(locked_redis, str(password))  # rotated back: it reads Redis again
        status = kit.wait_until(lambda: _when(api, lambda s: s["redis"]["reachable"]))
        assert status["redis"]["reason"] is None
    admin.close()


def _when(api: httpx.Client, check) -> dict | None:
    status = api.get("/readyz").json()
    return status if check(status) else None

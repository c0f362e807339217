"""The API and Redis refusing its credentials, against a real redis-server with ``requirepass``:
an API started with a wrong password stops at once, naming the settings, and exits non-zero,
with one worker or several (it waited forever before, looking like a Redis outage; with several
workers, uvicorn's supervisor then stopped and `riverstream serve` exited 0, a clean stop to a
process manager); a password changed under a running API is ridden out (the models loaded keep
answering) and reported as ``auth``, not as an outage. An API that stops at its start leaves no
registration with the local Prometheus (its alert would say that an API is down where none ran)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from river import linear_model

from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.store.snapshots import SnapshotStore
from tests.support.outage import PrivateRedis, change_password, locked_redis
from tests.support.scraping import as_if_services_up, registrations

pytestmark = pytest.mark.integration
__all__ = ["locked_redis"]  # fixtures


@pytest.mark.parametrize(
    ("workers", "reuse_port"), [(1, True), (2, True), (2, False)],
    ids=["one-worker", "workers-socket-each", "workers-shared-socket"],
)  # fmt: skip
def test_an_api_whose_credentials_redis_refuses_does_not_start(
    kit, locked_redis: PrivateRedis, prefix: str, tmp_path: Path, workers: int, reuse_port: bool
) -> None:
    settings = kit.make_settings(
        locked_redis.url, prefix, redis_password="not-the-password", serve_reuse_port=reuse_port,
        state_dir=tmp_path / "state",
    )  # fmt: skip
    targets = as_if_services_up(settings.state_dir)
    log = tmp_path / "api.err"
    code = kit.serve_until_exit(settings, workers, log)
    text = log.read_text()  # stderr
    assert code != 0, text
    assert "Redis refused this process's credentials" in text, text
    assert "RIVERSTREAM_REDIS_PASSWORD" in text and "not-the-password" not in text, text
    if workers > 1:
        assert "the API stopped: " in text.splitlines()[-1], text
    # it never served: the followers' errors do not say they serve the last models
    assert "no models served yet" in text and "serving the last" not in text, text
    assert registrations(targets) == {}


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
        assert "serving the last" in refused[0].getMessage()  # models or graphs, which came first

        change_password(locked_redis, str(password))  # rotated back: it reads Redis again
        status = kit.wait_until(lambda: _when(api, lambda s: s["redis"]["reachable"]))
        assert status["redis"]["reason"] is None
    admin.close()


def _when(api: httpx.Client, check) -> dict | None:
    status = api.get("/readyz").json()
    return status if check(status) else None

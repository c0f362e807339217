"""The prediction worker and Redis refusing its credentials: the real `riverstream predict-worker`
against the real Kafka and a real redis-server with ``requirepass``. A worker started with a wrong
password stops at once, naming the settings, and exits non-zero, also when Redis was away at its
start and comes back refusing them (it waited for ever, saying why); a password changed under a
running worker is ridden out: it answers on with the model it holds, logs the refusal as an
error, and follows new versions again once Redis accepts its password."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from schemas.settings import Settings
from stream.store.snapshots import SnapshotStore
from tests.stream.predict.test_worker import Reader, answered_ids, produce, serving, stop
from tests.support.outage import PrivateRedis, change_password, locked_redis
from tests.support.pipeline import spawn_cli
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
__all__ = ["locked_redis"]  # fixtures

REFUSED = "Redis refused this process's credentials"
WRONG = "not-the-password"


def with_redis(settings: Settings, server: PrivateRedis, password: str) -> Settings:
    return settings.model_copy(
        update={"redis_url": server.url, "redis_password": SecretStr(password)}
    )


def exit_status(worker: subprocess.Popen[bytes], log: Path) -> int:
    """The worker's exit status, once it has exited by itself (within 60 s)."""
    wait_until(lambda: worker.poll() is not None, 60, "the worker to exit", log=log)
    return int(worker.wait())


def assert_refused(code: int, log: Path) -> None:
    text = log.read_text()
    assert code != 0, text
    assert REFUSED in text and "RIVERSTREAM_REDIS_PASSWORD" in text, text
    assert WRONG not in text, text


def test_a_worker_whose_credentials_redis_refuses_does_not_start(
    locked_redis: PrivateRedis, predict_settings: Settings, tmp_path: Path
) -> None:
    settings = with_redis(predict_settings, locked_redis, WRONG)
    log = tmp_path / "w.log"
    worker = spawn_cli(settings, ["predict-worker"], log)
    try:
        code = exit_status(worker, log)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert_refused(code, log)


def test_a_worker_waiting_for_redis_stops_when_it_refuses_the_credentials(
    predict_settings: Settings, tmp_path: Path
) -> None:
    """Redis away at the worker's start (it waits for a first look, saying why), then up and
    refusing the worker's password: that is no outage to wait out."""
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(tmp_path / "redis", password=f"pw-{uuid.uuid4().hex}")  # not started
    settings = with_redis(predict_settings, server, WRONG)
    settings = settings.model_copy(update={"serve_start_wait_seconds": 0.5})
    log = tmp_path / "w.log"
    worker = spawn_cli(settings, ["predict-worker", "--report-every", "0.2"], log)
    try:
        waiting = "waiting for a first look at Redis"
        wait_until(lambda: log.exists() and waiting in log.read_text(), 60, waiting, log=log)
        assert worker.poll() is None, log.read_text()
        server.start()
        code = exit_status(worker, log)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        server.stop()
    assert_refused(code, log)


def test_a_password_changed_under_a_running_worker_is_ridden_out(
    kit: Any, locked_redis: PrivateRedis, predict_settings: Settings, tmp_path: Path
) -> None:
    password = str(locked_redis.password)
    settings = with_redis(predict_settings, locked_redis, password)
    key = settings.require_snapshot_key()
    reg, _, inputs = kit.trained_models()["reg"]
    admin = locked_redis.admin()
    v1 = kit.publish(SnapshotStore(admin, settings.redis_prefix, key), "reg", reg, "regressor",
                     key=key)  # fmt: skip
    admin.close()

    def request(name: str) -> None:
        body = {"id": name, "target": "reg", "features": inputs[0]}
        produce(settings, [(name.encode(), orjson.dumps(body), [])])

    request("r1")
    log = tmp_path / "w.log"
    answers = Reader(settings, settings.topic_predictions)
    worker = spawn_cli(settings, ["predict-worker", "--report-every", "0.2"], log)
    try:
        answers.until(lambda ms: "r1" in answered_ids(ms) or worker.poll() is not None, 60)
        change_password(locked_redis, "rotated")
        wait_until(lambda: REFUSED in log.read_text(), 30, "the refusal in the log", log=log)
        request("r2")
        answered = answers.until(lambda ms: "r2" in answered_ids(ms), 60)
        assert worker.poll() is None, log.read_text()[-3000:]
        r2 = [orjson.loads(m.value()) for m in answered if m.key() == b"r2"]
        assert r2[0]["versions"] == {"reg": v1}, "answered with the model it holds"
        refused = [line for line in log.read_text().splitlines() if REFUSED in line]
        assert refused[0].startswith("ERROR "), refused

        change_password(locked_redis, password)  # rotated back: it reads Redis again
        admin = locked_redis.admin()
        v2 = kit.publish(SnapshotStore(admin, settings.redis_prefix, key), "reg", reg,
                         "regressor", key=key)  # fmt: skip
        admin.close()
        wait_until(lambda: serving(log).get("reg") == v2, 60, "the new version", log=log)
        assert stop(worker) == 0
    finally:
        answers.close()
        if worker.poll() is None:
            worker.kill()
            worker.wait()

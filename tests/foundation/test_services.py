"""`riverstream services`: idempotent, stops by pid, recovers from a killed broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from schemas.settings import Settings
from stream.dev.services import ServiceManager, pid_alive, wait_until
from stream.kafka.client import broker_ready, create_topics


def test_kafka_lifecycle_is_idempotent_and_recovers_from_kill(tmp_path: Path) -> None:
    manager = ServiceManager(Settings(state_dir=tmp_path))
    first = manager.up(("kafka",))["kafka"]
    try:
        again = manager.up(("kafka",))["kafka"]
        assert again.pid == first.pid  # called twice: nothing new started
        assert broker_ready(first.address)

        os.kill(first.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(first.pid), 10, "broker to die")
        assert "kafka" not in manager.running()  # stale pid cleaned up

        restarted = manager.up(("kafka",))["kafka"]
        assert restarted.pid != first.pid
        assert create_topics(restarted.address, {"after-crash": 1}) == ["after-crash"]
    finally:
        assert manager.down(("kafka",), purge=True) == ["kafka"]
    assert manager.down(("kafka",)) == []  # twice: nothing to stop
    assert not (tmp_path / "kafka").exists()


def test_status_json_reports_addresses(services, services_state: Path) -> None:
    state = next(services_state.glob("services-state*"))
    result = subprocess.run(
        [sys.executable, "-m", "stream", "services", "status", "--json"],
        env={**os.environ, "RIVERSTREAM_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        check=True,
    )
    status = json.loads(result.stdout)
    assert status["kafka_bootstrap_servers"] == services.kafka_bootstrap_servers
    assert status["redis_url"] == services.redis_url
    assert status["prometheus_url"] == services.prometheus_url
    assert all(status["services"][name]["pid"] > 0 for name in ("kafka", "redis", "prometheus"))


def test_redis_keeps_data_across_restart(tmp_path: Path) -> None:
    import redis

    manager = ServiceManager(Settings(state_dir=tmp_path))
    try:
        url = manager.up(("redis",))["redis"].url
        client = redis.Redis.from_url(url)
        client.set("snapshot", b"kept")
        client.close()
        manager.down(("redis",))  # SIGTERM: redis writes its AOF before exiting
        url = manager.up(("redis",))["redis"].url
        client = redis.Redis.from_url(url)
        assert client.get("snapshot") == b"kept"
        client.close()
    finally:
        manager.down(("redis",), purge=True)


def test_prometheus_answers(services) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{services.prometheus_url}/api/v1/query?query=up") as resp:
        assert json.loads(resp.read())["status"] == "success"


def test_kafka_formats_with_a_cluster_id_beginning_with_a_dash(tmp_path: Path, monkeypatch) -> None:
    """Base64 ids begin with "-" one time in 64; the format tool must not read one as an option."""
    import base64

    import stream.dev.services

    dashed = base64.urlsafe_b64encode(b"\xf8" + os.urandom(15)).decode().rstrip("=")
    assert dashed.startswith("-")
    monkeypatch.setattr(stream.dev.services, "_kafka_cluster_id", lambda: dashed)
    manager = ServiceManager(Settings(state_dir=tmp_path))
    try:
        record = manager.up(("kafka",))["kafka"]
        assert broker_ready(record.address)
        meta = (tmp_path / "kafka" / "data" / "meta.properties").read_text()
        assert f"cluster.id={dashed}" in meta
    finally:
        manager.down(("kafka",), purge=True)

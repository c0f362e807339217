"""`riverstream services`: idempotent, stops by pid, recovers from a killed broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

from schemas.errors import ServiceError
from schemas.settings import Settings
from stream.dev.ports import PORTS_FILE
from stream.dev.services import ServiceManager, ServiceRecord, free_port, pid_alive, wait_until
from stream.kafka.client import EventProducer, broker_ready, create_topics, read_all

PORT_NAMES = {"kafka": ("broker", "controller"), "redis": ("redis",)}


def own_ports(state: Path, *services: str) -> None:
    """Record free ports for ``services`` before their first start, instead of the preferred
    9092 and 6379: another test run on this machine could take those while ours are stopped,
    and `up` would then rightly refuse to start."""
    for name in services:
        (state / name).mkdir(parents=True)
        ports = {port: free_port() for port in PORT_NAMES[name]}
        (state / name / PORTS_FILE).write_text(json.dumps(ports))


def test_kafka_lifecycle_is_idempotent_and_recovers_from_kill(tmp_path: Path) -> None:
    own_ports(tmp_path, "kafka")
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

    own_ports(tmp_path, "redis")
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

    import stream.dev.kafka_node

    dashed = base64.urlsafe_b64encode(b"\xf8" + os.urandom(15)).decode().rstrip("=")
    assert dashed.startswith("-")
    monkeypatch.setattr(stream.dev.kafka_node, "_kafka_cluster_id", lambda: dashed)
    manager = ServiceManager(Settings(state_dir=tmp_path))
    try:
        record = manager.up(("kafka",))["kafka"]
        assert broker_ready(record.address)
        meta = (tmp_path / "kafka" / "data" / "meta.properties").read_text()
        assert f"cluster.id={dashed}" in meta
    finally:
        manager.down(("kafka",), purge=True)


def _binds_without_reuse(port: int) -> bool:
    """Whether a plain bind (no SO_REUSEADDR, the old free-port check) gets ``port``."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.integration
def test_crashed_services_restart_in_place_with_their_data(tmp_path: Path) -> None:
    """kill -9 of the broker and of Redis with clients connected, then `up`: same ports, same
    data (the topic, its events, the Redis key), Kafka's data directory not formatted again."""
    import redis

    own_ports(tmp_path, "kafka", "redis")
    manager = ServiceManager(Settings(state_dir=tmp_path))
    producer: EventProducer | None = None
    client: redis.Redis | None = None
    try:
        first = manager.up(("kafka", "redis"))
        kafka, store = first["kafka"], first["redis"]
        meta = (tmp_path / "kafka" / "data" / "meta.properties").read_text()
        ports = (tmp_path / "kafka" / "ports.json").read_text()
        assert create_topics(kafka.address, {"kept": 2}) == ["kept"]
        producer = EventProducer(kafka.address)
        for i in range(100):
            producer.send("kept", str(i).encode(), f'{{"n": {i}}}'.encode())
        producer.flush()
        assert producer.sent == 100
        client = redis.Redis.from_url(store.url)
        client.set("kept", b"yes")

        for record in (kafka, store):  # clients still connected
            os.kill(record.pid, signal.SIGKILL)
        for record in (kafka, store):

            def dead(r: ServiceRecord = record) -> bool:
                return not pid_alive(r.pid)

            wait_until(dead, 10, f"{record.name} to die")
        # The dead servers' sockets linger (FIN_WAIT/TIME_WAIT): a check without SO_REUSEADDR
        # would see the ports as taken, which is what moved the services before.
        for record in (kafka, store):
            port = int(record.address.rsplit(":", 1)[1])
            assert not _binds_without_reuse(port), f"{record.name}: the crash left no socket"

        again = manager.up(("kafka", "redis"))
        assert again["kafka"].pid != kafka.pid and again["redis"].pid != store.pid
        assert again["kafka"].address == kafka.address
        assert again["redis"].url == store.url
        assert (tmp_path / "kafka" / "ports.json").read_text() == ports
        assert (tmp_path / "kafka" / "data" / "meta.properties").read_text() == meta
        records = read_all(kafka.address, ["kept"], timeout=60)
        assert sorted(int(cast(bytes, r.key)) for r in records) == list(range(100))
        assert client.get("kept") == b"yes"  # the same client reconnects to the same port
    finally:
        if producer is not None:
            producer.close()
        if client is not None:
            client.close()
        manager.down(("kafka", "redis"), purge=True)


@pytest.mark.integration
def test_a_port_held_by_another_program_is_named(tmp_path: Path) -> None:
    """A recorded port that another program listens on: `up` fails naming the port and the
    program, instead of moving the service."""
    import socket

    own_ports(tmp_path, "redis")
    manager = ServiceManager(Settings(state_dir=tmp_path))
    try:
        port = int(manager.up(("redis",))["redis"].address.rsplit(":", 1)[1])
        manager.down(("redis",))
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(ServiceError) as raised:
                manager.up(("redis",))
        message = str(raised.value)
        assert f"port {port}" in message and f"pid {os.getpid()}" in message, message
        assert "python" in message, message
        assert "redis" not in manager.running()
    finally:
        manager.down(("redis",), purge=True)

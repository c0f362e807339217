"""Across hosts: riverstream on three machines made of network namespaces, losing a broker and
the Redis primary mid-stream.

The hosts are `stream.dev.netns.Network` namespaces on a bridge, each with its own private
address (10.77.K.11-13) and its own loopback; every server binds its host's address only, and
the test (the producer, the HTTP clients) talks to them from the root namespace over the bridge:

- host 1: Kafka node 1, the Redis primary, Sentinel 1, learner ``a`` (``lr``), API replica 1
- host 2: Kafka node 2, the Redis replica, Sentinel 2, learner ``b`` (``tree``)
- host 3: Kafka node 3, Sentinel 3, API replica 2

(`stream.dev.secure.SecureKafkaCluster`, a `stream.dev.cluster.KafkaCluster`, and
`stream.dev.redis_ha.RedisHA`, given a host per node.) Kafka runs as a real cluster must: its
only listener for clients and brokers is SASL_SSL (certificates made by the test for the hosts'
addresses, SCRAM-SHA-512 users), and Redis and its Sentinels speak TLS only (replication too)
and let in one ACL user: every client of the test and of riverstream connects with TLS and a
password (`stream.kafka.security`, `stream.store.connect`). With Sentinels, ``REDIS_URL`` only
says TLS (rediss://) and the database.
A third of the stream is published, the learners and APIs start; the rest is published at a
steady rate (acks=all, idempotent) while Kafka node 3 and then the Redis primary are killed with
-9. Then: the Sentinels have promoted the replica; nothing the producer had acknowledged is lost
or doubled (each topic holds exactly the events published); both learners went on, and each
final model equals River's ``progressive_val_score`` on the whole stream; neither API ever
answered a 5xx (or failed to answer), and both serve the final version of both models. The
network, the namespaces and every process are removed even when the test fails (fixtures, by
pid). Measured: 3 min 13 s, 1 min of it starting the network, Kafka and Redis (2 CPUs, load
average 11-18 from other work; 2 min 46 s without TLS at load 7-10).
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from learners.datasets import dataset_events
from schemas.errors import KafkaAdapterError
from schemas.settings import Settings
from stream.dev.netns import Network, remove_stale
from stream.dev.processes import Host, pid_alive
from stream.dev.redis_ha import RedisHA
from stream.dev.secure import Certificates, SecureKafkaCluster, make_certificates
from stream.dev.services import free_port
from stream.kafka.client import create_topics
from stream.kafka.publish import Publisher, PublishReport
from stream.kafka.security import kafka_security
from stream.learner.runtime import snapshot_store
from tests.support.cluster import (
    SteadyClient,
    assert_equal_to_river,
    messages,
    stop_all,
    wait_learned,
)
from tests.support.pipeline import fast, publish, spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATASET, LIMIT, DELAY, SEED = "synth.Agrawal", 6_000, 100, 13
LEARNERS = {"a": ("lr", "logreg"), "b": ("tree", "hoeffding")}


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    remove_stale()  # what a run killed before its own cleanup left behind
    network = Network(3)
    try:
        yield network.up()
    finally:
        network.down()


@pytest.fixture
def certificates(hosts: list[Host], tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs", [h.address for h in hosts])


@pytest.fixture
def kafka(
    hosts: list[Host], certificates: Certificates, tmp_path: Path
) -> Iterator[SecureKafkaCluster]:
    base = Settings()
    cluster = SecureKafkaCluster(tmp_path / "kafka", base.cache_dir.expanduser(),
                                 base.kafka_version, certificates, {"app": uuid.uuid4().hex},
                                 hosts=hosts)  # fmt: skip
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.stop(graceful=False)  # its data goes with tmp_path


@pytest.fixture
def redis_ha(hosts: list[Host], certificates: Certificates, tmp_path: Path) -> Iterator[RedisHA]:
    roles = {"primary": hosts[0], "replica": hosts[1], "sentinel-1": hosts[0],
             "sentinel-2": hosts[1], "sentinel-3": hosts[2]}  # fmt: skip
    ha = RedisHA(tmp_path / "redis", hosts=roles, tls=certificates,
                 user=("app", uuid.uuid4().hex))  # fmt: skip
    try:
        ha.up()
        yield ha
    finally:
        ha.stop(graceful=False)


def answer(url: str) -> tuple[int, int | None]:
    """Status and version of one prediction at ``url`` (0 when there is no answer)."""
    body = {"features": {"salary": 50_000.0, "age": 40, "elevel": 2}}
    try:
        response = httpx.post(url, json=body, timeout=5)
    except httpx.HTTPError:
        return 0, None
    version = response.json().get("version") if response.status_code == 200 else None
    return response.status_code, version


def test_three_hosts_lose_a_broker_and_the_redis_primary(
    hosts: list[Host], kafka: SecureKafkaCluster, redis_ha: RedisHA, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:10]
    metrics_port, api_port = free_port(), free_port()  # the same on every host
    s = fast(
        Settings(
            kafka_bootstrap_servers=kafka.bootstrap, kafka_security_protocol="SASL_SSL",
            kafka_sasl_username="app", kafka_sasl_password=SecretStr(kafka.users["app"]),
            kafka_ssl_cafile=kafka.certificates.ca, redis_url=redis_ha.url("primary"),
            redis_username="app", redis_password=SecretStr((redis_ha.user or ("", ""))[1]),
            redis_ssl_cafile=kafka.certificates.ca, redis_sentinels=redis_ha.sentinels,
            state_dir=tmp_path / "state", topic_features=f"t{tag}.features",
            topic_labels=f"t{tag}.labels", topic_dlq=f"t{tag}.dlq", redis_prefix=f"test:{tag}",
            snapshot_key=SecretStr(f"key-{tag}"), partitions=3,
        ),
        learner_metrics_port=metrics_port, snapshot_every_labels=1_000,
        snapshot_every_seconds=0.5, redis_outage_seconds=120, redis_wait_replicas=1,
        watermark_idle_grace=15.0,  # no idle release while the stream comes in
    )  # fmt: skip
    events = list(dataset_events(DATASET, label_delay=DELAY, limit=LIMIT, seed=SEED))
    first, rest = events[: len(events) // 3], events[len(events) // 3 :]
    # A cold TLS cluster on a loaded machine may answer its first requests after the client's
    # 10 s (seen at load 20): the topics are created once it answers in time.
    wait_until(lambda: _topics_created(s), 180, "the topics to be created")
    report = publish(s, first)
    assert report.failed == 0 and report.sent == len(first)
    # every partition of the topics is on the three hosts' brokers
    assert {len(p) for p in kafka_replicas(s)} == {3}

    learner_hosts = {"a": hosts[0], "b": hosts[1]}
    api_hosts = [hosts[0], hosts[2]]
    procs = []
    for name, (model, spec) in LEARNERS.items():
        host = learner_hosts[name]
        args = ["learn", "--learner", name, "--model", f"{model}={spec}", "--metric", "Accuracy"]
        on_host = s.model_copy(update={"metrics_host": host.address})
        procs.append(spawn_cli(on_host, args, tmp_path / f"learner-{name}.log", host.prefix))
    learners = dict(zip(LEARNERS, procs, strict=True))
    api_settings = s.model_copy(update={"redis_read_url": "replica"})
    for i, host in enumerate(api_hosts, start=1):
        args = ["serve", "--host", host.address, "--port", str(api_port), "--workers", "1"]
        procs.append(spawn_cli(api_settings, args, tmp_path / f"api-{i}.log", host.prefix))
    apis = [f"http://{h.address}:{api_port}/v1/models" for h in api_hosts]
    clients = [SteadyClient(f"{apis[0]}/lr/predict"), SteadyClient(f"{apis[1]}/tree/predict")]
    store = snapshot_store(s)  # through the Sentinels, from the root namespace
    try:
        for url in apis:
            for model in ("lr", "tree"):

                def serves(u: str = f"{url}/{model}/predict") -> bool:
                    return answer(u)[0] == 200

                wait_until(
                    serves,
                    120,
                    f"{url} to serve {model}",
                    log=tmp_path / "api-1.log",
                )
        for client in clients:
            client.start()
        sent = [0]
        reports: list[PublishReport] = []

        def produce() -> None:
            publisher = Publisher(s)
            try:
                progress = lambda n: sent.__setitem__(0, sent[0] + n)  # noqa: E731
                reports.append(publisher.publish_events(rest, rate=1_000, progress=progress))
            finally:
                publisher.close()

        producer = threading.Thread(target=produce)
        producer.start()
        wait_until(lambda: sent[0] >= len(rest) // 4, 60, "the stream to be under way")
        broker = kafka.node(3)
        assert broker is not None
        os.kill(broker.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(broker.pid), 10, "the broker to die")
        wait_until(lambda: sent[0] >= len(rest) // 2, 60, "half the rest to be sent")
        before = {model: store.latest_version(model) or 0 for model, _ in LEARNERS.values()}
        primary = redis_ha.processes.records()["primary"]
        os.kill(primary.pid, signal.SIGKILL)
        assert sent[0] < len(rest), "the kills came after the stream, not during it"
        wait_until(
            lambda: redis_ha.primary() == redis_ha.address("replica"),
            60,
            "the replica's promotion",
            detail=redis_ha.primary,
        )
        producer.join(timeout=300)
        [second] = reports
        assert second.failed == 0 and second.sent == len(rest), second.errors
        for name, (model, _spec) in LEARNERS.items():
            address, log = learner_hosts[name].address, tmp_path / f"learner-{name}.log"
            wait_learned(
                metrics_port, LIMIT, 180, f"{model} to learn the whole stream", log, model, address
            )

            def newer(m: str = model) -> bool:
                return (store.latest_version(m) or 0) > before[m]

            wait_until(
                newer,
                60,
                f"a version of {model} after the failover",
                log=log,
            )
        for name, proc in learners.items():
            log = tmp_path / f"learner-{name}.log"
            assert proc.poll() is None, log.read_text()[-3000:]
            os.kill(proc.pid, signal.SIGTERM)  # the final snapshot, then exit 0
            assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        final = {model: store.latest_version(model) for model, _ in LEARNERS.values()}
        for url in apis:
            for model, version in final.items():

                def serves_version(
                    u: str = f"{url}/{model}/predict", v: int | None = version
                ) -> bool:
                    return answer(u) == (200, v)

                wait_until(
                    serves_version,
                    60,
                    f"{url} to serve {model} v{version}",
                )
    finally:
        for client in clients:
            client.stop()
        stop_all(procs)

    for client in clients:
        assert client.statuses[200] > 0, client.url
        assert client.failures() == {}, (client.url, client.statuses)
    for name in LEARNERS:  # each learner did see the primary go
        assert "Redis unreachable" in (tmp_path / f"learner-{name}.log").read_text(), name
    for topic in (s.topic_features, s.topic_labels):
        assert messages(kafka.bootstrap, topic, kafka_security(s)) == LIMIT, topic
    for model, spec in LEARNERS.values():
        assert_equal_to_river(s, DATASET, LIMIT, DELAY, SEED, spec, model)


def _topics_created(s: Settings) -> bool:
    try:
        create_topics(s.kafka_bootstrap_servers or "", s.topics(), security=kafka_security(s))
    except KafkaAdapterError:
        return False
    return True


def kafka_replicas(s: Settings) -> list[list[int]]:
    """The replicas of every partition of the feature and label topics."""
    from confluent_kafka.admin import AdminClient

    assert s.kafka_bootstrap_servers is not None
    conf: dict[str, str | int | float | bool] = {
        "bootstrap.servers": s.kafka_bootstrap_servers,
        **kafka_security(s).librdkafka(),
    }
    meta = AdminClient(conf).list_topics(timeout=10)
    topics = (meta.topics[t] for t in (s.topic_features, s.topic_labels))
    return [list(p.replicas) for t in topics for p in t.partitions.values()]

"""The prediction worker's /metrics, scraped from a running `riverstream predict-worker` against
the real Kafka and Redis: requests, answers by target, dead letters by reason, latency, versions
answered with, consumer lag, and the shadows of a graph target run off the answer path and
counted with the API's shadow metrics (agreements checked against the models themselves)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from river import datasets, linear_model, preprocessing, tree

from schemas.settings import Settings
from stream.dev.services import free_port
from stream.kafka.client import create_topics, partitions_for
from stream.predict.metrics import WorkerMetrics, serve_metrics
from stream.registry.graphs import GraphRegistry
from stream.store.snapshots import SnapshotStore
from tests.support.pipeline import spawn_cli

SHADOWED = {"name": "shadowed", "root": {"shadow": {"primary": "lr", "shadows": ["tree"]}}}
SHADOW = "root.shadow.shadows[0]"


@pytest.fixture
def wsettings(predict_settings: Settings) -> Settings:
    return predict_settings.model_copy(update={"predict_metrics_port": free_port()})


def trained() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A logistic regression and a Hoeffding tree on 300 Phishing events, 60 unseen inputs."""
    data = list(datasets.Phishing())
    models: dict[str, Any] = {
        "lr": preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "tree": tree.HoeffdingTreeClassifier(grace_period=40),
    }
    for x, y in data[:300]:
        for model in models.values():
            model.learn_one(x, y)
    return models, [x for x, _ in data[300:360]]


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``(sample name, labels) → value`` of the worker's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_the_lag_of_a_revoked_partition_is_no_longer_exported() -> None:
    m = WorkerMetrics(CollectorRegistry())
    m.set_lag({("req", 0): 5, ("req", 1): 0})
    m.set_lag({("req", 1): 2})  # partition 0 moved to another worker
    lags = [line for line in generate_latest(m.registry).decode().splitlines()
            if line.startswith("riverstream_predict_consumer_lag{")]  # fmt: skip
    assert lags == ['riverstream_predict_consumer_lag{partition="1",topic="req"} 2.0']


def test_a_taken_port_leaves_the_worker_without_metrics_not_stopped() -> None:
    registry = CollectorRegistry()
    port = free_port()
    first = serve_metrics(registry, port, "127.0.0.1")
    assert first is not None
    try:
        assert serve_metrics(CollectorRegistry(), port, "127.0.0.1") is None  # logged
        assert serve_metrics(registry, 0, "127.0.0.1") is None  # 0: off
    finally:
        first[0].shutdown()
        first[0].server_close()


@pytest.mark.integration
def test_a_running_worker_exports_its_metrics_and_runs_graph_shadows(
    kit: Any, store: SnapshotStore, wsettings: Settings, tmp_path: Path
) -> None:
    settings = wsettings
    models, inputs = trained()
    key = settings.require_snapshot_key()
    versions = {n: kit.publish(store, n, m, "classifier", key=key) for n, m in models.items()}
    graph_version = GraphRegistry(store.client, store.keys.prefix, by="test").apply(SHADOWED)
    requests = [{"id": f"g{i}", "target": "shadowed", "features": x} for i, x in enumerate(inputs)]
    requests += [{"id": f"m{i}", "target": "lr", "features": x} for i, x in enumerate(inputs[:20])]
    raws = [orjson.dumps(r) for r in requests]
    raws += [b"{not json", orjson.dumps({"id": "u", "target": "nothing", "features": {}})]
    assert settings.kafka_bootstrap_servers
    create_topics(settings.kafka_bootstrap_servers, settings.topics())
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "acks": "all"})
    for i, raw in enumerate(raws):
        producer.produce(settings.topic_requests, raw, f"k{i}".encode())
    assert producer.flush(30) == 0

    port = settings.predict_metrics_port
    log = tmp_path / "w.log"
    worker = spawn_cli(settings, ["predict-worker", "--report-every", "0.5"], log)
    try:
        # the shadow (tree) agrees with the primary (lr) exactly where the models do
        lr, shadow = models["lr"], models["tree"]
        agreeing = sum(lr.predict_one(x) == shadow.predict_one(x) for x in inputs)
        assert 0 < agreeing < 60  # both outcomes happen: the count is not trivially right
        shadow_labels = {"graph": "shadowed", "shadow": SHADOW}

        def exported(s: dict[Any, float]) -> dict[str, float | None]:
            """Every value this test expects, from one scrape: threads count a batch one metric
            after another, so all of them are waited for, not only the first."""
            return {
                "up": value(s, "riverstream_predict_up"),
                "requests": value(s, "riverstream_predict_requests_total"),
                "answers shadowed": value(s, "riverstream_predict_answers_total", model="shadowed"),
                "answers lr": value(s, "riverstream_predict_answers_total", model="lr"),
                "bad_json": value(s, "riverstream_predict_dead_letters_total", reason="bad_json"),
                "unknown_target": value(
                    s, "riverstream_predict_dead_letters_total", reason="unknown_target"
                ),
                "latency count": value(s, "riverstream_predict_latency_seconds_count"),
                "latency +Inf": value(s, "riverstream_predict_latency_seconds_bucket", le="+Inf"),
                "batch retries": value(s, "riverstream_predict_batch_retries_total"),
                "lr version": value(s, "riverstream_predict_model_version", model="lr"),
                "tree version": value(s, "riverstream_predict_model_version", model="tree"),
                "graph version": value(s, "riverstream_predict_graph_version", graph="shadowed"),
                "shadow runs": value(s, "riverstream_shadow_runs_total", **shadow_labels),
                "shadow agreements": value(
                    s, "riverstream_shadow_agreements_total", **shadow_labels
                ),
                "shadow durations": value(
                    s, "riverstream_shadow_duration_seconds_count", **shadow_labels
                ),
                "shadow error series": len(
                    [k for k in s if k[0] == "riverstream_shadow_errors_total"]
                ),
            }

        expected = {
            "up": 1, "requests": len(raws), "answers shadowed": 60, "answers lr": 20,
            "bad_json": 1, "unknown_target": 1, "latency count": 80, "latency +Inf": 80,
            "batch retries": 0, "lr version": versions["lr"], "tree version": versions["tree"],
            "graph version": graph_version.version, "shadow runs": 60,
            "shadow agreements": agreeing, "shadow durations": 60, "shadow error series": 0,
        }  # fmt: skip
        last: list[dict[Any, float]] = [{}]

        def settled() -> dict[Any, float] | None:
            try:
                last[0] = scrape(port)
            except httpx.HTTPError:  # not listening yet
                return None
            return last[0] if exported(last[0]) == expected else None

        samples = kit.wait_until(
            settled, timeout=90, interval=0.2, what="the expected metrics",
            detail=lambda: exported(last[0]), log=log,
        )  # fmt: skip
        assert exported(samples) == expected
        # every request partition is assigned and nothing waits (measured once a second)
        partitions = partitions_for(settings.kafka_bootstrap_servers, settings.topic_requests)
        lag = kit.wait_until(lambda: _lags(port, settings.topic_requests, len(partitions)), 30)
        assert lag == dict.fromkeys(sorted(map(str, partitions)), 0.0)
        # the answers themselves carry no trace of the shadow: the primary answered
        answers = _read(settings, settings.topic_predictions, 80)
        for body in answers:
            if body["target"] == "shadowed":
                assert body["decided_by"] == "root.shadow.primary" and body["versions"] == {
                    "lr": versions["lr"]
                }, body
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)


def _lags(port: int, topic: str, partitions: int) -> dict[str, float] | None:
    samples = scrape(port)
    lags = {dict(labels)["partition"]: v for (name, labels), v in samples.items()
            if name == "riverstream_predict_consumer_lag" and dict(labels)["topic"] == topic}  # fmt: skip
    return (
        dict(sorted(lags.items())) if len(lags) == partitions and not any(lags.values()) else None
    )


def _read(settings: Settings, topic: str, count: int) -> list[dict[str, Any]]:
    assert settings.kafka_bootstrap_servers
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "rs-test-reader",
         "enable.auto.commit": False}
    )  # fmt: skip
    parts = partitions_for(settings.kafka_bootstrap_servers, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < count:
            assert time.monotonic() < deadline, f"{len(out)} of {count} on {topic}"
            out += [
                orjson.loads(cast(bytes, m.value()))
                for m in consumer.consume(1000, 0.2)
                if not m.error()
            ]
    finally:
        consumer.close()
    return out

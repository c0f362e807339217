"""The prediction worker rides out a broker outage: kill -9 of the (test's own) broker while
requests stream in and the worker answers them, restart in place three seconds later. The
worker never exits; every request the broker acknowledged is answered after the recovery (at
least once: duplicates are allowed and equal), with the model version it names."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from learners.predictor import ServedModel
from schemas.settings import Settings
from stream.dev.services import ServiceManager, free_port, pid_alive
from stream.kafka.client import create_topics, partitions_for
from stream.store.snapshots import open_store
from tests.support.outage import private_kafka
from tests.support.pipeline import spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_kafka"]  # a fixture

N, RATE = 2000, 100  # requests, produced at RATE a second (20 s): the outage falls mid-stream


def answers_counted(port: int) -> float:
    """``riverstream_predict_answers_total`` of the worker (0 while it cannot be scraped)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "riverstream_predict_answers_total"
    )


class PacedProducer(threading.Thread):
    """Produces N requests at RATE a second (acks=all, retried by the client through the
    outage); records which ids the broker acknowledged and which failed for good."""

    def __init__(self, settings: Settings, inputs: list[dict[str, Any]]) -> None:
        super().__init__(name="paced-requests", daemon=True)
        assert settings.kafka_bootstrap_servers
        self.topic = settings.topic_requests
        self.producer = Producer(
            {"bootstrap.servers": settings.kafka_bootstrap_servers, "acks": "all",
             "enable.idempotence": True, "message.timeout.ms": 120_000}
        )  # fmt: skip
        self.inputs = inputs
        self.acknowledged: set[str] = set()
        self.failed: list[str] = []
        self.produced = 0

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        key = (msg.key() or b"").decode()
        if err is None:
            self.acknowledged.add(key)
        else:
            self.failed.append(f"{key}: {err}")

    def run(self) -> None:
        start = time.monotonic()
        for i in range(N):
            while time.monotonic() < start + i / RATE:  # pacing the offered load
                self.producer.poll(0.005)
            request: dict[str, Any] = {
                "id": f"r{i}",
                "target": "lr",
                "features": self.inputs[i % len(self.inputs)],
            }
            self.producer.produce(
                self.topic, orjson.dumps(request), request["id"].encode(),
                on_delivery=self._delivered,
            )  # fmt: skip
            self.produced += 1
        assert self.producer.flush(150) == 0


def test_the_worker_answers_every_request_across_a_broker_restart(
    kit: Any, settings: Settings, private_kafka: tuple[ServiceManager, str], tmp_path: Path
) -> None:
    manager, bootstrap = private_kafka
    s = settings.model_copy(
        update={"kafka_bootstrap_servers": bootstrap, "predict_metrics_port": free_port(),
                "predict_group": f"{settings.redis_prefix}.predict"}
    )  # fmt: skip
    store = open_store(s)
    trained = kit.trained_models()
    clf, _, inputs = trained["clf"]
    version = kit.publish(store, "lr", clf, "classifier", key=s.require_snapshot_key())
    create_topics(bootstrap, s.topics())
    served = ServedModel.build("lr", clf, version=version, kind="classifier")
    port, log = s.predict_metrics_port, tmp_path / "worker.log"
    producer = PacedProducer(s, inputs)
    worker = spawn_cli(s, ["predict-worker", "--report-every", "1"], log)
    try:
        warm_up = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        warm_up.produce(s.topic_requests, orjson.dumps(
            {"id": "w", "target": "lr", "features": inputs[0]}), b"w")  # fmt: skip
        assert warm_up.flush(30) == 0
        wait_until(lambda: answers_counted(port) >= 1, 90, "the worker to answer")
        producer.start()
        wait_until(lambda: answers_counted(port) > N // 4, 90, "a quarter of the requests answered")
        broker = manager.running()["kafka"]
        os.kill(broker.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(broker.pid), 10, "the broker to die")
        down = time.monotonic()
        wait_until(lambda: time.monotonic() - down >= 3, 10, "three seconds without a broker")
        assert worker.poll() is None, log.read_text()[-3000:]
        answered_during_outage = answers_counted(port)
        assert answered_during_outage < N // 2, "the outage must fall mid-stream"
        assert manager.up(("kafka",))["kafka"].address == bootstrap  # in place
        producer.join(timeout=180)
        assert not producer.is_alive() and not producer.failed, producer.failed[:5]
        assert producer.acknowledged == {f"r{i}" for i in range(N)}
        answers = read_answers(s, {"w", *producer.acknowledged}, timeout=120)
        assert worker.poll() is None, log.read_text()[-3000:]  # it never exited
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        store.client.close()
    # every acknowledged request answered, duplicates (at least once) equal, answers right
    assert set(answers) == {"w", *producer.acknowledged}
    for request_id, bodies in answers.items():
        i = int(request_id[1:]) if request_id != "w" else 0
        prediction, proba = served.predict(inputs[i % len(inputs)])
        assert proba is not None
        for body in bodies:
            assert body["versions"] == {"lr": version}
            assert body["prediction"] == prediction
            assert body["probabilities"] == {str(k).lower(): v for k, v in proba.items()}


def read_answers(
    settings: Settings, ids: set[str], timeout: float
) -> dict[str, list[dict[str, Any]]]:
    """Every answer on the prediction topic, by id, once every id in ``ids`` has one."""
    assert settings.kafka_bootstrap_servers
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "rs-test-reader",
         "enable.auto.commit": False}
    )  # fmt: skip
    topic = settings.topic_predictions
    parts = partitions_for(settings.kafka_bootstrap_servers, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: dict[str, list[dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout
    try:
        while not ids <= out.keys():
            missing = len(ids - out.keys())
            assert time.monotonic() < deadline, f"{missing} of {len(ids)} requests not answered"
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    body = orjson.loads(cast(bytes, m.value()))
                    out.setdefault(body["id"], []).append(body)
    finally:
        consumer.close()
    return out


STOP_SECONDS = 3.0  # the stopping worker's grace for its last answers (the default is 10)


def test_a_worker_stopped_during_an_outage_exits_within_its_grace_and_loses_nothing(
    kit: Any, settings: Settings, private_kafka: tuple[ServiceManager, str], tmp_path: Path
) -> None:
    """SIGTERM while the broker is down: the worker waits for its last answers at most
    ``RIVERSTREAM_PREDICT_STOP_SECONDS``, commits nothing it was not acknowledged and exits 0
    (it used to wait in a flush for the producer's message timeout, 5 minutes). Once the broker
    is back, another worker of the group answers every request the first one had not
    committed: nothing is lost."""
    manager, bootstrap = private_kafka
    s = settings.model_copy(
        update={"kafka_bootstrap_servers": bootstrap, "predict_metrics_port": free_port(),
                "predict_group": f"{settings.redis_prefix}.predict",
                "predict_stop_seconds": STOP_SECONDS}
    )  # fmt: skip
    store = open_store(s)
    clf, _, inputs = kit.trained_models()["clf"]
    version = kit.publish(store, "lr", clf, "classifier", key=s.require_snapshot_key())
    create_topics(bootstrap, s.topics())
    served = ServedModel.build("lr", clf, version=version, kind="classifier")
    port = s.predict_metrics_port
    second = None
    producer = PacedProducer(s, inputs)
    first = spawn_cli(s, ["predict-worker"], tmp_path / "first.log")
    try:
        producer.start()
        wait_until(lambda: answers_counted(port) > N // 10, 90, "a tenth of the requests answered")
        broker = manager.running()["kafka"]
        os.kill(broker.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(broker.pid), 10, "the broker to die")
        # answers pile up unacknowledged in the worker while requests keep coming from the
        # producer's queue (the broker died between fetches: what was fetched is answered)
        first.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        code = first.wait(timeout=STOP_SECONDS + 30)
        took = time.monotonic() - stopped
        assert code == 0, (tmp_path / "first.log").read_text()[-3000:]
        assert took < STOP_SECONDS + 15, f"the worker took {took:.1f} s to stop"
        assert manager.up(("kafka",))["kafka"].address == bootstrap  # in place
        s2 = s.model_copy(update={"predict_metrics_port": free_port()})
        second = spawn_cli(s2, ["predict-worker"], tmp_path / "second.log")
        producer.join(timeout=180)
        assert not producer.is_alive() and not producer.failed, producer.failed[:5]
        answers = read_answers(s, producer.acknowledged, timeout=120)
    finally:
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
        store.client.close()
    assert producer.acknowledged == {f"r{i}" for i in range(N)}
    assert set(answers) >= producer.acknowledged
    for request_id, bodies in answers.items():
        prediction, proba = served.predict(inputs[int(request_id[1:]) % len(inputs)])
        assert proba is not None
        for body in bodies:
            assert body["versions"] == {"lr": version}
            assert body["prediction"] == prediction
            assert body["probabilities"] == {str(k).lower(): v for k, v in proba.items()}

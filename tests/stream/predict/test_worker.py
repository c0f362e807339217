"""Asynchronous predictions through Kafka, end to end: `riverstream predict-worker` processes
against the real Kafka and Redis, requests written by a plain Kafka producer, answers compared
with the API's for the same model versions."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, cast

import jsonschema
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from river import linear_model, preprocessing

from learners.predictor import ServedModel
from schemas.settings import Settings
from serving.app import create_app
from stream.kafka.client import create_topics, partitions_for
from stream.store.snapshots import SnapshotStore, open_store
from tests.support.outage import PrivateRedis
from tests.support.pipeline import spawn_cli

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas" / "jsonschema"
ANSWER_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((SCHEMAS / "prediction_answer.json").read_text())
)
REQUEST_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((SCHEMAS / "prediction_request.json").read_text())
)


@pytest.fixture
def models(kit: Any, store: SnapshotStore, predict_settings: Settings) -> dict[str, Any]:
    """A classifier (stored as a learner state) and a regressor, published to Redis."""
    key = predict_settings.require_snapshot_key()
    trained = kit.trained_models()
    clf, _, clf_inputs = trained["clf"]
    reg, _, reg_inputs = trained["reg"]
    kit.publish(store, "clf", kit.state(clf, "classifier"), "classifier", key=key)
    kit.publish(store, "reg", reg, "regressor", key=key)
    return {"clf": clf_inputs, "reg": reg_inputs}


def produce(
    settings: Settings, messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Write ``(key, value, headers)`` requests with a plain producer, acknowledged."""
    assert settings.kafka_bootstrap_servers
    create_topics(settings.kafka_bootstrap_servers, settings.topics())
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "acks": "all",
         "message.max.bytes": 1_048_576}  # a request as large as the broker takes
    )  # fmt: skip
    for key, value, headers in messages:
        producer.produce(
            settings.topic_requests,
            value,
            key,
            headers=cast("list[tuple[str, str | bytes | None]]", headers),
        )
        producer.poll(0)
    assert producer.flush(30) == 0


def requests_for(inputs: dict[str, list[dict[str, Any]]], n: int) -> list[dict[str, Any]]:
    names = sorted(inputs)
    out = []
    for i in range(n):
        name = names[i % len(names)]
        features = inputs[name][i % len(inputs[name])]
        out.append({"id": f"r{i}", "target": name, "features": features})
    return out


class Reader:
    """Everything written to a topic, read from the beginning as it arrives."""

    def __init__(self, settings: Settings, topic: str) -> None:
        assert settings.kafka_bootstrap_servers
        self.consumer = Consumer(
            {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "rs-test-reader",
             "enable.auto.commit": False}
        )  # fmt: skip
        parts = partitions_for(settings.kafka_bootstrap_servers, topic)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        self.messages: list[Any] = []

    def until(self, done: Any, timeout: float) -> list[Any]:
        """Read until ``done(messages)`` holds, or fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.messages)} messages after {timeout} s")
            for m in self.consumer.consume(1000, 0.2):
                assert m.error() is None, m.error()
                self.messages.append(m)
        return self.messages

    def close(self) -> None:
        self.consumer.close()


def answered_ids(messages: list[Any]) -> set[str]:
    return {orjson.loads(m.value())["id"] for m in messages}


def stop(proc: Any) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return int(proc.wait(timeout=30))


def test_every_request_is_answered_as_the_api_answers(
    kit: Any, models: dict[str, Any], predict_settings: Settings, tmp_path: Path
) -> None:
    settings = predict_settings
    requests = requests_for(models, 200)
    messages = []
    for i, r in enumerate(requests):
        REQUEST_SCHEMA.validate(r)
        headers = [("x-trace", f"t{i}".encode()), ("other", b"not copied")] if i % 2 else []
        messages.append((r["id"].encode(), orjson.dumps(r), headers))
    produced_at = time.time()
    produce(settings, messages)
    reader = Reader(settings, settings.topic_predictions)
    worker = spawn_cli(settings, ["predict-worker", "--report-every", "0.5"], tmp_path / "w.log")
    try:
        answers = reader.until(lambda ms: len(answered_ids(ms)) == len(requests), 60)
        assert stop(worker) == 0, (tmp_path / "w.log").read_text()
    finally:
        reader.close()
        if worker.poll() is None:
            worker.kill()
    by_id = {}
    for m in answers:
        body = orjson.loads(m.value())
        ANSWER_SCHEMA.validate(body)
        assert m.key() == body["id"].encode()
        i = int(body["id"][1:])
        assert dict(m.headers() or []) == ({"x-trace": f"t{i}".encode()} if i % 2 else {})
        assert produced_at - 5 <= body["requested_at"] <= body["answered_at"] <= time.time()
        by_id[body["id"]] = body
    with kit.serve_in_thread(create_app(settings)) as api:
        kit.wait_until(lambda: api.get("/readyz").status_code == 200)
        for r in requests:
            v1 = api.post(f"/v1/models/{r['target']}/predict", json={"features": r["features"]})
            assert v1.status_code == 200
            expected = v1.json()
            got = by_id[r["id"]]
            assert got["target"] == r["target"] == got["decided_by"]
            assert got["versions"] == {r["target"]: expected["version"]}
            assert got["prediction"] == expected["prediction"]
            assert got["probabilities"] == expected["probabilities"]
    assert {b["target"] for b in by_id.values()} == {"clf", "reg"}
    assert len({b["prediction"] for b in by_id.values() if b["target"] == "clf"}) == 2
    # the worker stopped cleanly and committed what it answered: the group is at the log end
    assert committed_lag(settings) == 0


def committed_lag(settings: Settings) -> int:
    assert settings.kafka_bootstrap_servers
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": settings.predict_group}
    )
    try:
        parts = partitions_for(settings.kafka_bootstrap_servers, settings.topic_requests)
        tps = [TopicPartition(settings.topic_requests, p) for p in parts]
        committed = consumer.committed(tps, timeout=10)
        lag = 0
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def test_bad_requests_reach_the_dead_letter_topic_and_the_worker_goes_on(
    models: dict[str, Any], predict_settings: Settings, tmp_path: Path
) -> None:
    settings = predict_settings
    x = models["reg"][0]

    def request(rid: str, **fields: Any) -> bytes:
        return orjson.dumps({"id": rid, **fields})

    bad: dict[str, tuple[bytes, str]] = {
        "b-json": (b'{"id": "b-json", "target": "reg", "features": {', "bad_json"),
        "b-missing": (request("b-missing", features=x), "schema"),
        "b-unknown": (request("b-unknown", target="nope", features=x), "unknown_target"),
        "b-name": (request("b-name", target="a/b", features=x), "bad_target"),
        "b-input": (
            request("b-input", target="reg", features={**x, "ordinal_date": "soon"}),
            "model_input",
        ),
        "b-inf": (
            b'{"id": "b-inf", "target": "reg", "features": {"ordinal_date": 1e999}}',
            "not_finite",
        ),
        "b-overflow": (
            request("b-overflow", target="reg", features=dict.fromkeys(x, 1e308)),
            "not_finite",
        ),
        # under the worker's size limit, but too large to be written whole as a dead letter
        # (the producer's message.max.bytes): sent without its value (`MAX_DEAD_LETTER_BYTES`)
        "b-large": (
            b'{"id": "b-large", "target": "reg", "features": {' + b" " * 999_900,
            "bad_json",
        ),
    }
    good = requests_for(models, 6)
    messages = []
    for i, (key, (value, _)) in enumerate(bad.items()):
        messages.append((key.encode(), value, [("x-trace", key.encode())]))
        r = good[i % len(good)]
        messages.append((r["id"].encode(), orjson.dumps(r), []))
    produce(settings, messages)
    dlq = Reader(settings, settings.topic_dlq)
    answers = Reader(settings, settings.topic_predictions)
    worker = spawn_cli(settings, ["predict-worker"], tmp_path / "w.log")
    try:
        dead = dlq.until(lambda ms: len(ms) >= len(bad), 60)
        answered = answers.until(lambda ms: answered_ids(ms) >= {r["id"] for r in good}, 30)
        assert worker.poll() is None, "a bad request stopped the worker"
        assert stop(worker) == 0
    finally:
        dlq.close()
        answers.close()
        if worker.poll() is None:
            worker.kill()
    assert len(dead) == len(bad)
    assert not answered_ids(answered) & set(bad)
    for m in dead:
        key = m.key().decode()
        headers = dict(m.headers())
        value, reason = bad[key]
        if key == "b-large":  # where it is, not what
            assert m.value() in (b"", None)
            assert headers["rs.value_bytes"] == str(len(value)).encode()
            assert int(headers["rs.offset"]) >= 0
        else:
            assert m.value() == value, "the dead letter holds the original bytes"
        assert headers["rs.reason"].decode() == reason, (key, headers)
        assert headers["rs.error"]
        assert headers["rs.topic"].decode() == settings.topic_requests
        assert headers["x-trace"] == key.encode()


def test_a_worker_killed_mid_stream_loses_no_request(
    kit: Any, models: dict[str, Any], predict_settings: Settings, tmp_path: Path
) -> None:
    """Two workers share the partitions; one is killed -9 once it has answered some requests,
    while requests keep flowing. Every id is answered (by the survivor once the group moves the
    partitions); an id answered twice has identical answers but for ``answered_at``."""
    settings = predict_settings
    assert settings.kafka_bootstrap_servers
    create_topics(settings.kafka_bootstrap_servers, settings.topics())
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    args = ["predict-worker", "--session-timeout", "6", "--report-every", "0.1"]
    reader = Reader(settings, settings.topic_predictions)
    requests = requests_for(models, 3000)
    messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = [
        (r["id"].encode(), orjson.dumps(r), []) for r in requests
    ]
    producing = threading.Thread(target=produce_paced, args=(settings, messages, 500.0))
    workers = [spawn_cli(settings, args, log) for log in logs]
    try:
        # both workers own partitions before requests flow
        kit.wait_until(lambda: all(assigned(log) for log in logs), timeout=60, interval=0.1)
        producing.start()
        kit.wait_until(lambda: answered_by(logs[0]) > 0, timeout=30, interval=0.02)
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait(timeout=10)
        killed_at = len(reader.until(lambda ms: True, 1))
        producing.join(timeout=60)
        assert not producing.is_alive()
        want = {r["id"] for r in requests}
        answers = reader.until(lambda ms: answered_ids(ms) >= want, 90)
        assert workers[1].poll() is None
        assert stop(workers[1]) == 0
    finally:
        reader.close()
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert killed_at < len(requests), "the kill came after every request was answered"
    seen: dict[str, dict[str, Any]] = {}
    for m in answers:
        body = orjson.loads(m.value())
        body.pop("answered_at")
        if body["id"] in seen:
            assert body == seen[body["id"]], "a duplicate answer differs"
        seen[body["id"]] = body
    assert set(seen) == {r["id"] for r in requests}


def produce_paced(
    settings: Settings, messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]], rate: float
) -> None:
    """`produce` at about ``rate`` messages per second, in slices of 50."""
    started = time.monotonic()
    for start in range(0, len(messages), 50):
        produce(settings, messages[start : start + 50])
        ahead = (start + 50) / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)  # pacing the load, not synchronisation


def status_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def assigned(log: Path) -> bool:
    lines = status_lines(log)
    return bool(lines) and lines[-1]["assigned"] > 0


def answered_by(log: Path) -> int:
    return max((line["answered"] for line in status_lines(log)), default=0)


def test_the_worker_follows_new_versions_live(
    kit: Any, models: dict[str, Any], store: SnapshotStore, predict_settings: Settings,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A version published while the worker runs answers the requests that follow, with its
    own predictions, without a restart."""
    settings = predict_settings
    log = tmp_path / "w.log"
    create(settings)
    reader = Reader(settings, settings.topic_predictions)
    inputs = models["clf"]
    worker = spawn_cli(settings, ["predict-worker", "--report-every", "0.1"], log)
    try:
        first = [{"id": f"a{i}", "target": "clf", "features": x} for i, x in enumerate(inputs)]
        produce(settings, [(r["id"].encode(), orjson.dumps(r), []) for r in first])
        before = reader.until(lambda ms: answered_ids(ms) >= {r["id"] for r in first}, 60)
        old = {orjson.loads(m.value())["versions"]["clf"] for m in before}
        newer = preprocessing.StandardScaler() | linear_model.LogisticRegression(l2=1.0)
        for x in inputs[:5]:
            newer.learn_one(x, True)
        version = kit.publish(
            store, "clf", newer, "classifier", key=settings.require_snapshot_key()
        )
        kit.wait_until(lambda: serving(log).get("clf") == version, timeout=30, interval=0.05)
        then = [{"id": f"b{i}", "target": "clf", "features": x} for i, x in enumerate(inputs)]
        produce(settings, [(r["id"].encode(), orjson.dumps(r), []) for r in then])
        after = reader.until(lambda ms: answered_ids(ms) >= {r["id"] for r in then}, 60)
        assert stop(worker) == 0
    finally:
        reader.close()
        if worker.poll() is None:
            worker.kill()
    assert len(old) == 1 and version not in old
    loaded, _meta = store.load_model("clf", version)
    expected = ServedModel.build("clf", loaded, version=version, kind="classifier")
    by_id = {orjson.loads(m.value())["id"]: orjson.loads(m.value()) for m in after}
    for r in then:
        body = by_id[r["id"]]
        prediction, proba = expected.predict(r["features"])
        assert proba is not None
        assert body["versions"] == {"clf": version}
        assert body["prediction"] == prediction
        assert body["probabilities"] == {str(k).lower(): v for k, v in proba.items()}


def create(settings: Settings) -> None:
    assert settings.kafka_bootstrap_servers
    create_topics(settings.kafka_bootstrap_servers, settings.topics())


def serving(log: Path) -> dict[str, int]:
    lines = status_lines(log)
    return dict(lines[-1]["serving"]) if lines else {}


def test_a_worker_started_while_redis_is_away_waits_for_it_instead_of_dead_lettering(
    kit: Any, predict_settings: Settings, tmp_path: Path
) -> None:
    """Before its first look at Redis a worker knows no model: a request it took then would be
    an unknown target, dead-lettered (and committed) although its model exists. It joins the
    group only once its followers have read Redis; the request waits in Kafka meanwhile."""
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(tmp_path / "redis")  # not started yet: connections are refused
    settings = predict_settings.model_copy(
        update={"redis_url": server.url, "serve_start_wait_seconds": 0.5}
    )
    reg, _, inputs = kit.trained_models()["reg"]
    request = {"id": "r-start", "target": "reg", "features": inputs[0]}
    produce(settings, [(b"r-start", orjson.dumps(request), [])])
    log = tmp_path / "w.log"
    dlq = Reader(settings, settings.topic_dlq)
    answers = Reader(settings, settings.topic_predictions)
    worker = spawn_cli(settings, ["predict-worker"], log)
    try:
        waiting = "waiting for a first look at Redis"
        dlq.until(lambda ms: bool(ms) or (log.exists() and waiting in log.read_text()), 60)
        assert not dlq.messages, "a request taken before Redis was read was dead-lettered"
        server.start()
        store = open_store(settings)
        kit.publish(store, "reg", reg, "regressor", key=settings.require_snapshot_key())
        store.client.close()
        answered = answers.until(lambda ms: "r-start" in answered_ids(ms), 60)
        assert orjson.loads(answered[0].value())["versions"] == {"reg": 1}
        assert worker.poll() is None
        assert stop(worker) == 0
    finally:
        dlq.close()
        answers.close()
        if worker.poll() is None:
            worker.kill()
        server.stop()
    assert not dlq.messages

"""Graph targets for the asynchronous worker and batch scoring, end to end on the real Kafka and
Redis: a request's (or a scoring run's) target names a serving graph, and the answer equals
``POST /v1/graphs/{name}/predict`` for the same graph and member versions; a member that is not
loaded is a dead letter (``target_unavailable``) or a reported row; `score GRAPH --into redis`
is served by ``GET /v1/graphs/{name}/predictions/{id}``.

The graph mixes what decides an answer: a sticky split keyed by the request id, a ``by_metric``
weighted ensemble (weights from the snapshots' metrics) and rules on the output and a feature,
so that equal answers mean the same branches, weights and rules were taken."""

from __future__ import annotations

import csv
import functools
import json
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from river import datasets, linear_model, naive_bayes, preprocessing, tree

from schemas.settings import Settings
from serving.app import create_app
from stream.kafka.client import create_topics, partitions_for
from stream.registry.graphs import GraphRegistry
from stream.store.snapshots import SnapshotStore
from tests.support.cluster import stop_all
from tests.support.pipeline import spawn_cli

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas" / "jsonschema"
ANSWER_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((SCHEMAS / "prediction_answer.json").read_text())
)
METRICS = {"lr": {"Accuracy": 0.9}, "tree": {"Accuracy": 0.6}, "nb": {"Accuracy": 0.8}}
FRAUD: dict[str, Any] = {
    "name": "fraud",
    "root": {
        "rules": {
            "over": {
                "split": {
                    "branches": [
                        {
                            "weight": 2,
                            "node": {
                                "ensemble": {
                                    "members": ["lr", "tree"],
                                    "combine": "weighted",
                                    "weights": "by_metric",
                                }
                            },
                        },
                        {"weight": 1, "node": "nb"},
                    ]
                }
            },
            "rules": [
                {
                    "when": {"output": "proba.True", "ge": 0.95},
                    "then": {"decision": "block", "reason": "very likely"},
                },
                {"when": {"feature": "long_url", "eq": 1}, "then": {"decision": "review"}},
            ],
        }
    },
}
BROKEN: dict[str, Any] = {"name": "broken", "root": {"ensemble": {"members": ["lr", "gone"]}}}
# answer fields that /v1/graphs answers too (it says "graph" for "target" and has no id)
SHARED = ("graph_version", "versions", "prediction", "probabilities", "kind", "path",
          "decided_by", "decision", "reason")  # fmt: skip


@functools.lru_cache(maxsize=1)
def river_models() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """name → classifier trained on 300 Phishing events, and 60 unseen inputs."""
    data = list(datasets.Phishing())
    train, unseen = data[:300], [x for x, _ in data[300:360]]
    models: dict[str, Any] = {
        "lr": preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "tree": tree.HoeffdingTreeClassifier(grace_period=40),
        "nb": naive_bayes.GaussianNB(),
        "gone": linear_model.LogisticRegression(),
    }
    for x, y in train:
        for model in models.values():
            model.learn_one(x, y)
    return models, unseen


@pytest.fixture
def graphs(kit: Any, store: SnapshotStore, predict_settings: Settings) -> dict[str, int]:
    """The models published, ``fraud`` and ``broken`` applied, then ``broken``'s member
    ``gone`` removed from Redis: graph name → version."""
    models, _ = river_models()
    key = predict_settings.require_snapshot_key()
    for name, model in models.items():
        kit.publish(store, name, model, "classifier", key=key, metrics=METRICS.get(name))
    registry = GraphRegistry(store.client, store.keys.prefix, by="test")
    versions = {doc["name"]: registry.apply(doc).version for doc in (FRAUD, BROKEN)}
    store.client.srem(store.keys.models, "gone")
    for k in store.client.scan_iter(f"{store.keys.prefix}:model:gone:*"):
        store.client.delete(k)
    return versions


def v1_graph_answers(
    kit: Any, settings: Settings, graph: str, requests: list[tuple[str, dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """``POST /v1/graphs/{graph}/predict`` for each ``(id, features)``, by id."""
    out = {}
    with kit.serve_in_thread(create_app(settings)) as api:
        kit.wait_until(lambda: api.get("/readyz").status_code == 200)
        kit.wait_until(lambda: api.get(f"/v1/graphs/{graph}").status_code == 200)
        for rid, x in requests:
            response = api.post(f"/v1/graphs/{graph}/predict", json={"features": x, "id": rid})
            assert response.status_code == 200, response.text
            out[rid] = response.json()
    return out


def assert_answers_equal_v1(
    answers: dict[str, dict[str, Any]], v1: dict[str, dict[str, Any]], graph: str
) -> None:
    assert set(answers) == set(v1)
    for rid, body in answers.items():
        expected = v1[rid]
        assert body["id"] == rid and body["target"] == expected["graph"] == graph
        assert {k: body[k] for k in SHARED} == {k: expected[k] for k in SHARED}, rid
    # the answers went through every part of the graph: both split branches, the weighted
    # ensemble, a rule decision and the over node's own answer
    deciders = Counter(body["decided_by"] for body in answers.values())
    assert "root.rules.over.split.branches[0].node.ensemble" in deciders, deciders
    assert "root.rules.over.split.branches[1].node" in deciders, deciders
    assert any(body["decision"] is not None for body in answers.values())
    assert {frozenset(b["versions"]) for b in answers.values()} == {
        frozenset({"lr", "tree"}), frozenset({"nb"}),
    }  # fmt: skip


# -- asynchronous --------------------------------------------------------------------------------
def produce(settings: Settings, requests: list[dict[str, Any]]) -> None:
    assert settings.kafka_bootstrap_servers
    create_topics(settings.kafka_bootstrap_servers, settings.topics())
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "acks": "all"})
    for r in requests:
        producer.produce(settings.topic_requests, orjson.dumps(r), r["id"].encode())
    assert producer.flush(30) == 0


def read_until(settings: Settings, topic: str, count: int, timeout: float) -> list[Any]:
    """The first ``count`` messages of ``topic`` (fails after ``timeout`` seconds)."""
    assert settings.kafka_bootstrap_servers
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "rs-test-reader",
         "enable.auto.commit": False}
    )  # fmt: skip
    parts = partitions_for(settings.kafka_bootstrap_servers, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(messages)} of {count} messages on {topic}")
            for m in consumer.consume(1000, 0.2):
                assert m.error() is None, m.error()
                messages.append(m)
    finally:
        consumer.close()
    return messages


def run_worker(
    settings: Settings, args: list[str], requests: list[dict[str, Any]], answers: int,
    dead: int, log: Path,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:  # fmt: skip
    """Produce ``requests``, run a worker until it has given ``answers`` answers and ``dead``
    dead letters, stop it (SIGTERM): answers by id, dead letters' reasons by key."""
    produce(settings, requests)
    worker = spawn_cli(settings, ["predict-worker", *args], log)
    try:
        got = read_until(settings, settings.topic_predictions, answers, 60)
        letters = read_until(settings, settings.topic_dlq, dead, 30) if dead else []
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
    by_id = {}
    for m in got:
        body = orjson.loads(m.value())
        ANSWER_SCHEMA.validate(body)
        assert m.key() == body["id"].encode()
        assert body["requested_at"] <= body["answered_at"]
        by_id[body["id"]] = body
    reasons = {m.key().decode(): dict(m.headers())["rs.reason"].decode() for m in letters}
    return by_id, reasons


def test_the_worker_answers_a_graph_as_v1_graphs_and_dead_letters_a_missing_member(
    kit: Any, graphs: dict[str, int], predict_settings: Settings, tmp_path: Path
) -> None:
    _, inputs = river_models()
    requests: list[dict[str, Any]] = [
        {"id": f"g{i}", "target": "fraud", "features": x} for i, x in enumerate(inputs)
    ]
    bad = [
        {"id": "b-member", "target": "broken", "features": inputs[0]},
        {"id": "b-unknown", "target": "nothing", "features": inputs[0]},
    ]
    model = {"id": "m0", "target": "lr", "features": inputs[0]}  # models answer beside graphs
    answers, reasons = run_worker(
        predict_settings, ["--report-every", "0.2"], [*requests, *bad, model], len(requests) + 1, 2,
        tmp_path / "w.log",
    )  # fmt: skip
    assert reasons == {"b-member": "target_unavailable", "b-unknown": "unknown_target"}
    lr = answers.pop("m0")
    assert lr["versions"] == {"lr": lr["versions"]["lr"]} and lr["decided_by"] == "lr"
    assert "graph_version" not in lr and "path" not in lr  # a model's answer is as it was
    v1 = v1_graph_answers(
        kit, predict_settings, "fraud", [(r["id"], r["features"]) for r in requests]
    )
    assert {b["graph_version"] for b in answers.values()} == {graphs["fraud"]}
    assert_answers_equal_v1(answers, v1, "fraud")
    # the worker said which graphs it served
    status = [json.loads(line) for line in (tmp_path / "w.log").read_text().splitlines()
              if line.startswith("{")]  # fmt: skip
    assert status and status[-1]["graphs"] == graphs


def test_a_worker_for_one_graph_loads_its_members_and_answers_nothing_else(
    graphs: dict[str, int], predict_settings: Settings, tmp_path: Path
) -> None:
    """``--target fraud``: fraud's members are loaded although no target names them; a model
    that is not a target is ``unknown_target``."""
    _, inputs = river_models()
    requests = [{"id": f"g{i}", "target": "fraud", "features": x} for i, x in enumerate(inputs)]
    other = {"id": "m0", "target": "lr", "features": inputs[0]}
    answers, reasons = run_worker(
        predict_settings,
        ["--target", "fraud"],
        [other, *requests],
        len(requests),
        1,
        tmp_path / "w.log",
    )
    assert reasons == {"m0": "unknown_target"}
    assert set(answers) == {r["id"] for r in requests}
    assert {k for b in answers.values() for k in b["versions"]} == {"lr", "tree", "nb"}


# -- batch -----------------------------------------------------------------------------------------
def score(settings: Settings, args: list[str], log: Path) -> tuple[int, dict[str, Any], str]:
    proc = spawn_cli(settings, ["score", *args], log)
    try:
        code = proc.wait(timeout=120)
    finally:
        stop_all([proc])  # still running when the wait timed out
    text = log.read_text()
    log.unlink()
    reports = [json.loads(line) for line in text.splitlines() if line.startswith('{"target"')]
    assert reports, text
    return code, reports[-1], text


def write_events(path: Path, inputs: list[dict[str, Any]], prefix: str = "e") -> list[str]:
    ids = [f"{prefix}/{i}" for i in range(len(inputs))]
    rows = [orjson.dumps({"id": rid, "time": i, "features": x})
            for i, (rid, x) in enumerate(zip(ids, inputs, strict=True))]  # fmt: skip
    path.write_bytes(b"\n".join(rows) + b"\n")
    return ids


def test_score_a_graph_equals_v1_graphs_pins_its_version_and_fills_a_lookup_table(
    kit: Any,
    graphs: dict[str, int],
    store: SnapshotStore,
    predict_settings: Settings,
    tmp_path: Path,
) -> None:
    settings = predict_settings
    _, inputs = river_models()
    source = tmp_path / "in.jsonl"
    ids = write_events(source, inputs)
    out = tmp_path / "out.jsonl"
    args = ["fraud", str(source), "--out", str(out), "--into", "redis", "--ttl", "100"]
    code, report, text = score(settings, args, tmp_path / "log")
    assert code == 0, text
    members = {m: store.serving_version(m) for m in ("lr", "tree", "nb")}
    assert report["graph_version"] == graphs["fraud"] and report["versions"] == members
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["id"] for r in rows] == ids
    answers = {r["id"]: r for r in rows}
    v1 = v1_graph_answers(kit, settings, "fraud", list(zip(ids, inputs, strict=True)))
    assert_answers_equal_v1(answers, v1, "fraud")

    # the lookup table is the graph's, served by GET /v1/graphs/{name}/predictions/{id}
    table = report["lookup_table"]
    assert table["rows"] == len(ids)
    assert 0 < store.client.pttl(store.keys.graph_lookup("fraud")) <= 100_000
    with kit.serve_in_thread(create_app(settings)) as api:
        for row in rows:
            response = api.get(f"/v1/graphs/fraud/predictions/{row['id']}")  # ids hold a '/'
            assert response.status_code == 200
            assert response.json() == {
                **row, "table": table["table"], "computed_at": table["computed_at"],
            }  # fmt: skip
        assert api.get("/v1/graphs/fraud/predictions/nope").status_code == 404
        assert api.get("/v1/graphs/broken/predictions/e/0").status_code == 404
        assert api.get("/v1/models/fraud/predictions/e/0").status_code == 404  # not a model's
        assert api.get("/v1/models/lr/predictions/e/0").status_code == 404

    # a newer graph version is served; --version pins the old one, byte for byte (the members
    # have not moved), and an unpinned run uses the new one
    registry = GraphRegistry(store.client, store.keys.prefix, by="test")
    newer = registry.apply({"name": "fraud", "root": "nb"}).version
    pinned = tmp_path / "pinned.jsonl"
    pin = ["fraud", str(source), "--version", str(graphs["fraud"]), "--out", str(pinned)]
    code, report, text = score(settings, pin, tmp_path / "log")
    assert code == 0 and report["graph_version"] == graphs["fraud"], text
    assert pinned.read_bytes() == out.read_bytes()
    # answered in worker processes (score --workers): the same bytes
    parallel = tmp_path / "parallel.jsonl"
    code, report, text = score(
        settings, [*pin[:-1], str(parallel), "--workers", "2"], tmp_path / "log"
    )
    assert code == 0 and report["workers"] == 2, text
    assert parallel.read_bytes() == out.read_bytes()
    as_csv = tmp_path / "new.csv"
    code, report, text = score(settings, ["fraud", str(source), "--out", str(as_csv)],
                               tmp_path / "log")  # fmt: skip
    assert code == 0 and report["graph_version"] == newer, text
    assert report["versions"] == {"nb": members["nb"]}
    with as_csv.open(newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert [c["id"] for c in cells] == ids
    first = cells[0]
    assert first["target"] == "fraud" and first["graph_version"] == str(newer)
    assert first["decided_by"] == "root" and first["kind"] == "classifier"
    assert json.loads(first["path"]) == [] and json.loads(first["decision"]) is None
    assert json.loads(first["versions"]) == {"nb": members["nb"]}
    assert json.loads(first["probabilities"]).keys() == {"false", "true"}


def test_score_reports_the_rows_a_missing_member_cannot_answer(
    graphs: dict[str, int], predict_settings: Settings, tmp_path: Path
) -> None:
    _, inputs = river_models()
    source = tmp_path / "in.jsonl"
    write_events(source, inputs[:3])
    out = tmp_path / "out.jsonl"
    code, report, text = score(predict_settings, ["broken", str(source), "--out", str(out)],
                               tmp_path / "log")  # fmt: skip
    assert code == 1, text
    assert report["scored"] == 0 and report["rejected"] == 3
    assert report["graph_version"] == graphs["broken"] and "gone" not in report["versions"]
    for line in (1, 2, 3):
        assert re.search(rf"^line {line}: not scored: target_unavailable", text, re.M), text
    assert text.count('"gone"') == 3  # the message names the member (the console wraps lines)
    assert out.read_bytes() == b""


def test_score_runs_a_graphs_shadows_and_reports_them(
    graphs: dict[str, int], store: SnapshotStore, predict_settings: Settings, tmp_path: Path
) -> None:
    """A shadow node's shadows run off the answer path in `score` as in the API: the output is
    the primary's, the report counts each shadow's runs, errors and agreements (the API's
    shadow metrics), and the agreements are those of the models themselves."""
    models, inputs = river_models()
    shadowed = {
        "name": "shadowed",
        "root": {"shadow": {"primary": "lr", "shadows": ["tree", "nb"]}},
    }
    GraphRegistry(store.client, store.keys.prefix, by="test").apply(shadowed)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_events(source, inputs)
    code, report, text = score(
        predict_settings, ["shadowed", str(source), "--out", str(out)], tmp_path / "log"
    )
    assert code == 0, text
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(rows) == len(inputs) and {r["decided_by"] for r in rows} == {"root.shadow.primary"}
    agreeing = {
        path: sum(models["lr"].predict_one(x) == models[shadow].predict_one(x) for x in inputs)
        for path, shadow in (("root.shadow.shadows[0]", "tree"), ("root.shadow.shadows[1]", "nb"))
    }
    assert any(0 < n < len(inputs) for n in agreeing.values())  # not trivially all or none
    assert report["shadows"] == {
        path: {"runs": len(inputs), "agreements": n} for path, n in agreeing.items()
    }
    # its shadows run on this process's runner: no worker processes, and the reason
    log = tmp_path / "refused.log"
    proc = spawn_cli(
        predict_settings,
        ["score", "shadowed", str(source), "--out", str(tmp_path / "w.jsonl"), "--workers", "2"],
        log,
    )
    try:
        assert proc.wait(timeout=120) != 0
    finally:
        stop_all([proc])  # still running when the wait timed out
    assert "graph 'shadowed' has shadows, which run in one process" in log.read_text()
    assert not (tmp_path / "w.jsonl").exists()

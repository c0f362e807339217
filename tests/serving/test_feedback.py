"""The closed loop over HTTP on real Kafka and Redis: an application that only speaks HTTP
predicts with ids and posts the labels later; the learner learns exactly those events, and the
served metric equals a hand computation from the responses."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from river import datasets, metrics

from learners.specs import ModelSpec, build_estimator
from schemas.settings import Settings
from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.dev.ports import free_port
from stream.kafka.client import read_all
from tests.support.pipeline import fast, final_core, final_model, learn

pytestmark = pytest.mark.integration

TOKEN = "ingest-secret"
BOOT, LIVE = 100, 200


@contextlib.contextmanager
def api(kit: Any, settings: Settings) -> Iterator[httpx.Client]:
    app = create_app(settings, metrics=ServingMetrics(prometheus_registry()))
    with kit.serve_in_thread(app) as client:
        yield client


def prometheus_registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_predict_with_ids_then_labels_learns_exactly_what_was_served(
    settings: Settings, kit: Any
) -> None:
    s = fast(settings, ingest_token=TOKEN, serve_poll_seconds=0.2)
    samples = list(itertools.islice(datasets.Phishing(), BOOT + LIVE))
    specs = [ModelSpec("lr", "logreg", ("Accuracy",))]
    with api(kit, s) as client:
        # 1. The first model comes from events posted over HTTP (features, then labels).
        events = [
            {"id": f"b{i}", "time": i, "features": x} for i, (x, _) in enumerate(samples[:BOOT])
        ]
        assert client.post("/v1/features", json={"events": events}).status_code == 401
        assert client.post("/v1/features", json={"events": events},
                           headers=bearer("wrong")).status_code == 403  # fmt: skip
        response = client.post("/v1/features", json={"events": events}, headers=bearer())
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] == BOOT
        labels = [{"id": f"b{i}", "time": i, "label": y} for i, (_, y) in enumerate(samples[:BOOT])]
        assert (
            client.post("/v1/labels", json={"labels": labels}, headers=bearer()).status_code == 202
        )
        bad = client.post("/v1/labels", json={"id": "x", "time": 1, "label": [1]}, headers=bearer())
        assert bad.status_code == 422 and "label" in bad.json()["detail"]
        learn(s, specs)
        kit.wait_until(lambda: client.get("/readyz").status_code == 200)

        # 2. Predictions with ids (the features are logged as served), labels later.
        answers = []
        for i, (x, _) in enumerate(samples[BOOT:], start=BOOT):
            body = {"id": f"p{i}", "time": i, "features": x}
            assert client.post("/v1/models/lr/predict", json=body).status_code == 401
            response = client.post("/v1/models/lr/predict", json=body, headers=bearer())
            assert response.status_code == 200, response.text
            answers.append(response.json())
            plain = client.post("/v1/models/lr/predict", json={"features": x})  # no id: no log
            assert plain.status_code == 200
        for i, (_, y) in enumerate(samples[BOOT:], start=BOOT):
            label = {"id": f"p{i}", "time": i + 0.5, "label": y}
            assert client.post("/v1/labels", json=label, headers=bearer()).status_code == 202
    learn(s, specs)

    # The learner learned exactly the events that went through HTTP, in event-time order.
    expected: Any = build_estimator("logreg")
    for x, y in samples:
        expected.learn_one(x, y)
    ours = final_model(s, "lr")
    assert ours.samples_learned == BOOT + LIVE
    for x, _ in samples[::13]:
        assert ours.model.predict_proba_one(x) == expected.predict_proba_one(x)

    # The served metric, per version, equals the accuracy of the answers given.
    by_version: dict[int, metrics.Accuracy] = {}
    for answer, (_, y) in zip(answers, samples[BOOT:], strict=True):
        assert answer["id"].startswith("p")
        by_version.setdefault(answer["version"], metrics.Accuracy()).update(y, answer["prediction"])
    core = final_core(s)
    assert core.served_metric_values() == {
        ("lr", version): {"Accuracy": metric.get()} for version, metric in by_version.items()
    }

    # The predictions topic holds the record of every logged answer, with its version.
    assert s.kafka_bootstrap_servers is not None
    records = [orjson.loads(r.value) for r in read_all(s.kafka_bootstrap_servers,
                                                        [s.topic_predictions])]  # fmt: skip
    assert sorted(r["id"] for r in records) == sorted(a["id"] for a in answers)
    assert all(r["versions"] == {"lr": r_answer["version"]} for r, r_answer in
               zip(sorted(records, key=lambda r: r["id"]),
                   sorted(answers, key=lambda a: a["id"]), strict=True))  # fmt: skip


def test_no_2xx_for_an_event_kafka_did_not_store(settings: Settings, kit: Any) -> None:
    """An unreachable broker: 503 naming the cause, never a 2xx."""
    s = fast(settings, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    with api(kit, s) as client:
        response = client.post("/v1/labels", json={"id": "a", "time": 1, "label": True})
        assert response.status_code == 503, response.text
        assert "Kafka" in response.json()["detail"]

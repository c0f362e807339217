"""The API against a real Redis whose models' index holds a name that is not UTF-8 (written by
something else): the other models are served, ready and followed; the entry is reported."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from river import linear_model

from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.store.snapshots import SnapshotStore

pytestmark = pytest.mark.integration


def test_a_model_name_that_is_not_utf8_does_not_stop_the_api(
    kit, store: SnapshotStore, redis_url: str, prefix: str
) -> None:
    """Before, every sync of the models failed on it: the API started serving nothing, answered
    404 for every model and 503 on /readyz for good."""
    v1 = kit.publish(store, "m", linear_model.LogisticRegression(), "classifier")
    store.client.sadd(store.keys.models, b"\xffbad")
    metrics = ServingMetrics(CollectorRegistry())
    app = create_app(kit.make_settings(redis_url, prefix), metrics=metrics)
    with kit.serve_in_thread(app) as client:
        kit.wait_until(lambda: client.get("/readyz").status_code == 200, what="ready")
        ready = client.get("/readyz").json()
        assert ready["missing"] == [] and set(ready["models"]) == {"m"}, ready
        assert [e["model"] for e in ready["errors"]] == ["\\xffbad"], ready
        answer = client.post("/v1/models/m/predict", json={"features": {"x": 1.0}})
        assert answer.status_code == 200 and answer.json()["version"] == v1, answer.text
        # a pointer moved without a notification is still followed by polling
        v2 = kit.publish(store, "m", linear_model.LogisticRegression(), "classifier")
        kit.wait_until(lambda: client.get("/v1/models/m").json()["version"] == v2)
        store.client.set(store.keys.promoted("m"), v1)
        kit.wait_until(lambda: client.get("/v1/models/m").json()["version"] == v1)
        refused = metrics.snapshots_refused_total.labels("\\xffbad", "unreadable_name")
        assert refused._value.get() == 1

"""Live updates between versions (`stream.store.live`), served by the API against a real Redis:
a live update is served and every answer names the state (version and samples learned); a
rollback, a pin or another policy wins over it, at once and even on the same version."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from river import datasets, linear_model, preprocessing

from learners.serialization import dump_signed
from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.registry.registry import Registry
from stream.store.live import LiveMeta, LiveStore
from stream.store.snapshots import SnapshotStore

pytestmark = pytest.mark.integration

SAMPLES = list(datasets.Phishing())[:400]
INPUTS = [x for x, _ in SAMPLES[300:310]]


def trained(n: int) -> Any:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in SAMPLES[:n]:
        model.learn_one(x, y)
    return model


def write_live(store: SnapshotStore, key: bytes, model: Any, version: int, samples: int) -> bool:
    blob = dump_signed(model, key)
    meta = LiveMeta.describe(
        "m", version, blob, kind="classifier", spec="logreg", samples_learned=samples,
        metrics={"Accuracy": 0.8},
    )  # fmt: skip
    return LiveStore(store).write("m", version, blob, meta)


def state_of(client: httpx.Client) -> tuple[int, int, bool] | None:
    """(version, samples_learned, live) of the model served as m, or None."""
    response = client.get("/v1/models/m")
    if response.status_code != 200:
        return None
    info = response.json()
    return info["version"], info["samples_learned"], info["live"]


@pytest.fixture
def metrics() -> ServingMetrics:
    return ServingMetrics(CollectorRegistry())


@pytest.fixture
def serve(kit, redis_url: str, prefix: str, metrics: ServingMetrics):
    def start() -> Any:
        settings = kit.make_settings(redis_url, prefix, serve_poll_seconds=30)  # notified only
        return kit.serve_in_thread(create_app(settings, metrics=metrics))

    return start


def test_a_live_update_is_served_and_every_answer_names_the_state(
    kit, store: SnapshotStore, serve
) -> None:
    v1 = kit.publish(store, "m", trained(100), "classifier")  # samples_learned = 10 * v1
    newer = trained(300)
    with serve() as client:
        kit.wait_until(lambda: state_of(client) == (v1, 10 * v1, False))
        assert write_live(store, kit.KEY, newer, v1, 300)
        kit.wait_until(lambda: state_of(client) == (v1, 300, True))
        for x in INPUTS:
            body = client.post("/v1/models/m/predict", json={"features": x}).json()
            assert body["version"] == v1 and body["samples_learned"] == 300
            assert body["prediction"] == newer.predict_one(x)
        batch = client.post("/v1/models/m/predict", json={"instances": INPUTS}).json()
        assert batch["version"] == v1 and batch["samples_learned"] == 300
        assert [p["prediction"] for p in batch["predictions"]] == [
            newer.predict_one(x) for x in INPUTS
        ]
        tensors = [
            {"name": k, "shape": [1], "datatype": "FP64", "data": [float(v)]}
            for k, v in INPUTS[0].items()
        ]
        infer = client.post("/v2/models/m/infer", json={"inputs": tensors}).json()
        assert infer["model_version"] == str(v1)
        assert infer["parameters"] == {"samples_learned": 300, "live": True}
        ready = client.get("/readyz").json()["models"]["m"]
        assert (ready["version"], ready["samples_learned"], ready["live"]) == (v1, 300, True)
        # a new version replaces the live update, which then continues it
        v2 = kit.publish(store, "m", trained(320), "classifier")
        kit.wait_until(lambda: state_of(client) == (v2, 10 * v2, False))
        assert not write_live(store, kit.KEY, newer, v1, 330)  # v1 is no longer served
        assert write_live(store, kit.KEY, trained(340), v2, 340)
        kit.wait_until(lambda: state_of(client) == (v2, 340, True))


def test_a_pin_a_policy_or_a_rollback_wins_over_a_live_update(
    kit, store: SnapshotStore, serve
) -> None:
    v1 = kit.publish(store, "m", trained(100), "classifier")
    v2 = kit.publish(store, "m", trained(200), "classifier")
    registry = Registry(store, by="test")
    with serve() as client:
        kit.wait_until(lambda: state_of(client) == (v2, 10 * v2, False))
        assert write_live(store, kit.KEY, trained(250), v2, 250)
        kit.wait_until(lambda: state_of(client) == (v2, 250, True))

        # a pin on the very version the live update continues: the exact version is served
        registry.pin("m", v2, "hold")
        kit.wait_until(lambda: state_of(client) == (v2, 10 * v2, False))
        assert not write_live(store, kit.KEY, trained(260), v2, 260)
        registry.unpin("m", "go on")
        assert write_live(store, kit.KEY, trained(270), v2, 270)
        kit.wait_until(lambda: state_of(client) == (v2, 270, True))

        # another policy: versions only
        registry.set_policy("m", "manual")
        kit.wait_until(lambda: state_of(client) == (v2, 10 * v2, False))
        assert not write_live(store, kit.KEY, trained(280), v2, 280)
        registry.set_policy("m", "always")
        assert write_live(store, kit.KEY, trained(290), v2, 290)
        kit.wait_until(lambda: state_of(client) == (v2, 290, True))

        # a rollback: the target is served exactly, and no live update is written while the
        # learner has not acknowledged it (nor, after, on a version that is not served)
        registry.rollback("m", v1, reason="bad data")
        kit.wait_until(lambda: state_of(client) == (v1, 10 * v1, False))
        assert not write_live(store, kit.KEY, trained(300), v1, 300)
        assert not write_live(store, kit.KEY, trained(300), v2, 300)
        store.client.delete(store.keys.commands)  # as the learner acknowledges it
        assert not write_live(store, kit.KEY, trained(300), v2, 300)
        assert write_live(store, kit.KEY, trained(110), v1, 110)
        kit.wait_until(lambda: state_of(client) == (v1, 110, True))


def test_a_tampered_live_update_is_refused_and_the_version_served(
    kit, store: SnapshotStore, serve, metrics: ServingMetrics
) -> None:
    v1 = kit.publish(store, "m", trained(100), "classifier")
    refusals = metrics.snapshots_refused_total.labels("m", "bad_signature")
    with serve() as client:
        kit.wait_until(lambda: state_of(client) == (v1, 10 * v1, False))
        assert write_live(store, b"another key", trained(300), v1, 300)
        kit.wait_until(lambda: refusals._value.get() == 1)
        assert state_of(client) == (v1, 10 * v1, False)
        assert write_live(store, kit.KEY, trained(310), v1, 310)  # the next good one is served
        kit.wait_until(lambda: state_of(client) == (v1, 310, True))

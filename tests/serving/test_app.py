"""The API in-process (httpx.Client runs the lifespan, so the follower thread is real) against
a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry
from river import linear_model

from schemas.settings import Settings
from serving.app import PredictFastPath, create_app, default_store
from serving.feedback import ClosedLoop
from serving.graphs import GraphFastPath
from serving.telemetry import ServingMetrics
from stream.store.snapshots import SnapshotStore
from tests.support.serving import asgi_post, recording

pytestmark = pytest.mark.integration


def as_json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


@pytest.fixture
def metrics() -> ServingMetrics:
    return ServingMetrics(CollectorRegistry())


@pytest.fixture
def client_for(kit):
    def make(settings, metrics: ServingMetrics, **kwargs: Any):
        return kit.serve_in_thread(create_app(settings, metrics=metrics, **kwargs))

    return make


def served_version(client: httpx.Client, name: str) -> int | None:
    response = client.get(f"/v1/models/{name}")
    return response.json()["version"] if response.status_code == 200 else None


def test_predictions_equal_the_snapshot_models(
    client_for, kit, store: SnapshotStore, redis_url: str, prefix: str, metrics: ServingMetrics
) -> None:
    models = kit.trained_models()
    versions = {}
    for name, (model, kind, _) in models.items():
        obj = kit.state(model, kind) if name == "clf" else model  # both shapes are served
        versions[name] = kit.publish(store, name, obj, kind)
    with client_for(kit.make_settings(redis_url, prefix), metrics) as client:
        kit.wait_until(lambda: client.get("/readyz").status_code == 200)
        for name, (_, kind, inputs) in models.items():
            loaded, _meta = store.load_model(name, versions[name])
            model = loaded.model if name == "clf" else loaded
            expected = []
            for x in inputs:
                if kind == "classifier":
                    expected.append({"prediction": model.predict_one(x),
                                     "probabilities": as_json(model.predict_proba_one(x))})  # fmt: skip
                elif kind == "regressor":
                    expected.append({"prediction": model.predict_one(x), "probabilities": None})
                else:
                    expected.append({"prediction": model.score_one(x), "probabilities": None})
            state = {"version": versions[name], "samples_learned": 10 * versions[name]}
            for x, want in zip(inputs, expected, strict=True):
                body = client.post(f"/v1/models/{name}/predict", json={"features": x}).json()
                assert body == {"model": name, **state, **want}
            batch = client.post(f"/v1/models/{name}/predict", json={"instances": inputs})
            assert batch.status_code == 200
            assert batch.json() == {"model": name, **state, "predictions": expected}
            assert kind != "classifier" or len({e["prediction"] for e in expected}) == 2


def test_model_listing_and_metadata(
    client_for, kit, store: SnapshotStore, redis_url: str, prefix: str, metrics: ServingMetrics
) -> None:
    v1 = kit.publish(store, "a", linear_model.LogisticRegression(), "classifier")
    v2 = kit.publish(store, "b", linear_model.LinearRegression(), "regressor")
    with client_for(kit.make_settings(redis_url, prefix), metrics) as client:
        kit.wait_until(lambda: client.get("/readyz").status_code == 200)
        listing = client.get("/v1/models").json()["models"]
        assert [(m["model"], m["version"]) for m in listing] == [("a", v1), ("b", v2)]
        info = client.get("/v1/models/a").json()
        meta = store.meta("a", v1)
        assert info["version"] == v1 and info["kind"] == "classifier"
        assert info["samples_learned"] == meta.samples_learned and info["metrics"] == meta.metrics
        assert info["size"] == meta.size and info["created_at"] == meta.created_at
        assert 0 <= info["age_seconds"] < 60
        assert client.get("/v1/models/nope").status_code == 404
        assert client.get("/healthz").json() == {"status": "ok"}
        text = client.get("/metrics").text
        assert 'riverstream_model_version{model="a"}' in text
        schema = client.get("/openapi.json").json()
        op = schema["paths"]["/v1/models/{name}/predict"]["post"]
        assert set(op["requestBody"]["content"]["application/json"]["examples"]) == {
            "single",
            "batch",
        }
        assert {"200", "404", "422"} <= set(op["responses"])


def test_readiness_waits_for_configured_models(
    client_for, kit, store: SnapshotStore, redis_url: str, prefix: str, metrics: ServingMetrics
) -> None:
    settings = kit.make_settings(redis_url, prefix, serve_models="a,b")
    with client_for(settings, metrics) as client:
        ready = kit.wait_until(lambda: client.get("/readyz").json()["redis"]["reachable"])
        assert ready
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json()["missing"] == ["a", "b"]
        assert client.post("/v1/models/a/predict", json={"features": {}}).status_code == 503
        assert client.post("/v1/models/zzz/predict", json={"features": {}}).status_code == 404
        kit.publish(store, "a", linear_model.LogisticRegression(), "classifier")
        kit.publish(store, "b", linear_model.LogisticRegression(), "classifier")
        kit.publish(store, "c", linear_model.LogisticRegression(), "classifier")  # not configured

        def fresh() -> dict[str, Any] | None:
            """Ready (200), and the last full sync recent (a loaded machine may lag a poll)."""
            response = client.get("/readyz")
            body = response.json()
            return body if response.status_code == 200 and not body["stale"] else None

        body = kit.wait_until(fresh)
        assert body["ready"] and set(body["models"]) == {"a", "b"}
        assert client.post("/v1/models/c/predict", json={"features": {}}).status_code == 404


def test_follows_versions_and_refuses_tampered_snapshots(
    client_for, kit, store: SnapshotStore, redis_url: str, prefix: str, metrics: ServingMetrics
) -> None:
    v1 = kit.publish(store, "m", linear_model.LogisticRegression(), "classifier")
    # a long poll interval: the notification alone must bring new versions in
    with client_for(kit.make_settings(redis_url, prefix, serve_poll_seconds=30), metrics) as client:
        kit.wait_until(lambda: served_version(client, "m") == v1)
        bad = kit.publish(store, "m", linear_model.LogisticRegression(), "classifier", key=b"evil")
        kit.wait_until(
            lambda: metrics.snapshots_refused_total.labels("m", "bad_signature")._value.get()
        )
        assert served_version(client, "m") == v1
        answer = client.post("/v1/models/m/predict", json={"features": {"x": 1}})
        assert answer.status_code == 200 and answer.json()["version"] == v1
        refused = client.get("/readyz").json()["refused"]
        assert refused == [{"model": "m", "version": bad, "reason": "bad_signature"}]
        v3 = kit.publish(store, "m", linear_model.LogisticRegression(), "classifier")
        kit.wait_until(lambda: served_version(client, "m") == v3)
        # counted just after the swap, by the follower's thread
        kit.wait_until(lambda: metrics.model_swaps_total.labels("m")._value.get() == 2)


def test_polling_catches_missed_notifications(
    client_for, kit, store: SnapshotStore, redis_url: str, prefix: str, metrics: ServingMetrics
) -> None:
    v1 = kit.publish(store, "m", linear_model.LogisticRegression(), "classifier")
    with client_for(
        kit.make_settings(redis_url, prefix, serve_poll_seconds=0.1), metrics
    ) as client:
        kit.wait_until(lambda: served_version(client, "m") == v1)
        # a version made visible without its PUBLISH (as after a crash between steps 2 and 3),
        # its blobs before its pointer as a snapshot is written (a poll seeing the pointer first
        # would refuse the version for good)
        store.client.set(store.keys.meta("m", 999), store.meta("m", v1).to_json())
        for i in range(store.meta("m", v1).chunks):
            store.client.copy(store.keys.chunk("m", v1, i), store.keys.chunk("m", 999, i))
        store.client.set(store.keys.latest("m"), 999)
        kit.wait_until(lambda: served_version(client, "m") == 999)
        # and the registry's promoted pointer wins over latest
        store.client.set(store.keys.promoted("m"), v1)
        kit.wait_until(lambda: served_version(client, "m") == v1)


def test_redis_down_keeps_serving_the_last_good_model(
    client_for, kit, tmp_path, prefix: str
) -> None:
    proc, url = kit.start_redis(tmp_path)
    try:
        client = redis.Redis.from_url(url)
        store = SnapshotStore(client, prefix, kit.KEY)
        v1 = kit.publish(store, "m", linear_model.LogisticRegression(), "classifier")
        client.close()
        metrics = ServingMetrics(CollectorRegistry())
        with client_for(kit.make_settings(url, prefix, serve_poll_seconds=0.1), metrics) as api:
            kit.wait_until(lambda: api.get("/readyz").status_code == 200)
            kit.stop_process(proc)
            status = kit.wait_until(
                lambda: (lambda s: s if not s["redis"]["reachable"] else None)(
                    api.get("/readyz").json()
                )
            )
            assert status["stale"] and status["ready"] and status["redis"]["error"]
            answer = api.post("/v1/models/m/predict", json={"features": {"x": 1.0}})
            assert answer.status_code == 200 and answer.json()["version"] == v1
    finally:
        kit.stop_process(proc)


@pytest.fixture
def clf_client(
    client_for, kit, store: SnapshotStore, redis_url: str, prefix: str, metrics: ServingMetrics
) -> Iterator[httpx.Client]:
    model, kind, _ = kit.trained_models(50)["clf"]
    kit.publish(store, "clf", model, kind)
    settings = kit.make_settings(redis_url, prefix, max_features=5)
    with client_for(settings, metrics, max_instances=3, max_body_bytes=10_000) as client:
        kit.wait_until(lambda: client.get("/readyz").status_code == 200)
        yield client


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        (b"{not json", ["body"], "json_invalid"),
        (b'{"features": {"x": 1e999}}', ["body"], "finite_number"),
        (b'{"features": {"x": NaN}}', ["body"], "json_invalid"),
        (b"[1, 2]", ["body"], "dict_type"),
        (b'{"features": [1, 2]}', ["body", "features"], "dict_type"),
        (b'{"features": {"x": [1]}}', ["body", "features", "x"], "feature_type"),
        (b'{"features": {"x": {"y": 1}}}', ["body", "features", "x"], "feature_type"),
        (b'{"features": {"a":1,"b":1,"c":1,"d":1,"e":1,"f":1}}', ["body", "features"], "too_long"),
        (b'{"instances": [{}, {}, {}, {}]}', ["body", "instances"], "too_long"),
        (b'{"instances": {"x": 1}}', ["body", "instances"], "list_type"),
        (b'{"instances": [{"x": 1}, 3]}', ["body", "instances", 1], "dict_type"),
        (
            b'{"instances": [{"x": true}, {"x": [3]}]}',
            ["body", "instances", 1, "x"],
            "feature_type",
        ),
        (b'{"feature": {}}', ["body", "feature"], "extra_forbidden"),
        (b"{}", ["body", "features"], "missing"),
        (b'{"features": {}, "instances": []}', ["body"], "value_error"),
        (b'{"features": {"popup_window": "text"}}', ["body"], "model_input"),
    ],
)
def test_bad_input_is_a_422_naming_the_problem(
    clf_client: httpx.Client, body: bytes, loc: list, kind: str
) -> None:
    response = clf_client.post("/v1/models/clf/predict", content=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == loc and detail[0]["type"] == kind and detail[0]["msg"]


def test_oversized_body_is_a_413(clf_client: httpx.Client) -> None:
    body = b'{"features": {"x": "' + b"a" * 20_000 + b'"}}'
    assert clf_client.post("/v1/models/clf/predict", content=body).status_code == 413


def test_a_nonfinite_answer_is_a_422_naming_it(clf_client: httpx.Client) -> None:
    """Huge features overflow the scaler into NaN probabilities: the caller gets a 422 that
    says so, never a 200 with nulls (single and batch)."""
    huge = {"https": 1e308, "popup_window": -1e308}
    for body in ({"features": huge}, {"instances": [{"https": 1.0}, huge]}):
        response = clf_client.post("/v1/models/clf/predict", json=body)
        assert response.status_code == 422, response.text
        assert "not finite" in response.json()["detail"][0]["msg"]


def test_a_null_feature_is_a_missing_one(clf_client: httpx.Client) -> None:
    with_null = clf_client.post("/v1/models/clf/predict", json={"features": {"https": None}})
    absent = clf_client.post("/v1/models/clf/predict", json={"features": {}})
    assert with_null.status_code == absent.status_code == 200, with_null.text
    assert with_null.json() == absent.json()


def test_settings_travel_to_worker_processes(kit, redis_url: str, prefix: str, monkeypatch) -> None:
    from schemas.settings import Settings
    from serving.runner import settings_environment

    settings = kit.make_settings(redis_url, prefix, serve_models="a,b", max_features=7)
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_fast_path_answers_exactly_like_the_documented_route(
    kit, store: SnapshotStore, redis_url: str, prefix: str, metrics: ServingMetrics, monkeypatch
) -> None:
    """`PredictFastPath` answers the predict route before routing; the FastAPI route (an app
    built without the fast path) must give byte-identical answers. The commonest bodies to
    the linear classifier and regressor are answered from their bytes (`serving.inputs.
    linear_sum`), and to the anomaly detector from their features read from the bytes
    (`serving.inputs.read_features`), the others by the general reading."""
    import asyncio

    import serving.inputs

    models = kit.trained_models()
    model, kind, inputs = models["clf"]
    kit.publish(store, "clf", kit.state(model, kind), kind)
    reg, reg_kind, reg_inputs = models["reg"]
    kit.publish(store, "reg", reg, reg_kind)
    det, det_kind, _ = models["det"]  # neither linear nor a tree: River's own predictions
    kit.publish(store, "det", det, det_kind)
    counted, sums = recording(serving.inputs.read_dot_in_c)
    monkeypatch.setattr(serving.inputs, "read_dot_in_c", counted)
    read_in_c, features_read = serving.inputs.read_features_in_c, []
    assert read_in_c is not None, "serving/_v2_body.c was not built: pip install -e . again"

    def reading(raw: bytes, max_features: int) -> dict[str, Any] | None:
        features = read_in_c(raw, max_features)
        features_read.append(features is not None)
        return features

    monkeypatch.setattr(serving.inputs, "read_features_in_c", reading)
    settings = kit.make_settings(redis_url, prefix)
    app = create_app(settings, metrics=metrics, max_body_bytes=4096)
    routed_app = create_app(settings, metrics=metrics, max_body_bytes=4096, fast_path=False)
    # the closed loop (tokens, logging predictions with an id) wraps them both
    assert [m.cls for m in app.user_middleware] == [ClosedLoop, PredictFastPath, GraphFastPath]
    assert [m.cls for m in routed_app.user_middleware] == [ClosedLoop]  # passes these through
    bodies = [
        orjson.dumps({"features": inputs[0]}),
        orjson.dumps({"instances": inputs[:3]}),
        b"{not json",
        orjson.dumps({"features": {"x": [1]}}),
        b'{"features": {}, "extra": 1}',
        b"x" * 5000,
        # the fast path's own shortcuts: a feature named "id" (no id to log), nulls (missing
        # features), sums that overflow, batches of numbers only and with a null
        orjson.dumps({"features": {**inputs[0], "id": 3.5}}),
        orjson.dumps({"features": dict.fromkeys(inputs[0])}),
        orjson.dumps({"features": {"a": 1e308, "b": 1e308}}),
        orjson.dumps({"instances": [inputs[0], dict.fromkeys(inputs[1])]}),
        orjson.dumps({"instances": [{**x, "flag": True} for x in inputs[:2]]}),
        # read from the bytes: any layout, integers, unknown names; else left to the rest
        b'{\n "features" : {"https": 1, "popup_window": -0.5 ,"nope": 3}\n}\n',
        orjson.dumps({"features": {k: int(v) for k, v in inputs[1].items()}}),
        b'{"features": {"https": 1, "https": -1}}',
        b'{"features": {"https": 8.98846567431158e307, "popup_window": 8.98846567431158e307}}',
    ]

    async def compare() -> None:
        async with app.router.lifespan_context(app), routed_app.router.lifespan_context(routed_app):
            for a in (app, routed_app):
                kit.wait_until(lambda a=a: a.state.follower.get("clf") is not None)
                kit.wait_until(lambda a=a: a.state.follower.get("reg") is not None)
                kit.wait_until(lambda a=a: a.state.follower.get("det") is not None)
            reg_bodies = [orjson.dumps({"features": x}) for x in reg_inputs[:3]]
            for path, sent in [
                ("/v1/models/clf/predict", bodies),
                ("/v1/models/nope/predict", bodies),
                ("/v1/models/reg/predict", reg_bodies + bodies[:6]),
                ("/v1/models/det/predict", bodies),
            ]:
                for body in sent:
                    fast = await asgi_post(app, path, body)
                    routed = await asgi_post(routed_app, path, body)
                    assert fast == routed, (path, body[:40], fast, routed)
                    assert fast[0] in (200, 404, 413, 422), (path, body[:60], fast)

    asyncio.run(compare())
    read = [s for s in sums if s is not None]
    # clf: inputs[0], with a feature named "id", the two unknown features of 1e308 (a sum of
    # 0.0), the spaced body, the integers, the known ones whose values' sum overflows (which
    # `numeric_features` leaves to the general checks), not the nulls nor the name given
    # twice; reg: its three bodies and clf's first (features it does not know add nothing)
    assert len(read) == 10, sums
    # det: the same six bodies of numbers, its features read (the name given twice is not)
    assert features_read.count(True) == 6, features_read


def test_a_worker_answers_its_first_request_with_what_redis_holds(
    client_for, kit, store: SnapshotStore, redis_url: str, prefix: str, metrics: ServingMetrics
) -> None:
    """No "unknown model" from a worker that has just started: it serves once it has synced,
    even when its first look at Redis is slow (here: 0.5 s for the first pointer read)."""
    model, kind, inputs = kit.trained_models(50)["clf"]
    version = kit.publish(store, "clf", model, kind)

    class SlowFirstRead(SnapshotStore):
        slow = True

        def serving_version(self, name: str) -> int | None:
            if SlowFirstRead.slow:
                SlowFirstRead.slow = False
                time.sleep(0.5)  # stands for a slow Redis or a large model, not a wait
            return super().serving_version(name)

    def slow_store(settings: Settings) -> SnapshotStore:
        plain = default_store(settings)
        return SlowFirstRead(plain.client, settings.redis_prefix, settings.require_snapshot_key())

    settings = kit.make_settings(redis_url, prefix)
    with client_for(settings, metrics, store_factory=slow_store) as client:
        first = client.post("/v1/models/clf/predict", json={"features": inputs[0]})
        assert first.status_code == 200, first.text
        assert first.json()["version"] == version

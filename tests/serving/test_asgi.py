"""The hot routes answered before the middleware stack (`serving.app.RiverstreamAPI.fast_paths`) give
byte-identical answers to the documented routes of an app built without them, and requests
that need the stack (a prediction with an id, a token) still reach it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from serving.app import PredictFastPath, create_app
from serving.telemetry import ServingMetrics
from stream.store.snapshots import SnapshotStore
from tests.support.serving import asgi_post

pytestmark = pytest.mark.integration


def test_v2_infer_fast_path_answers_like_the_documented_route(
    kit, store: SnapshotStore, redis_url: str, prefix: str
) -> None:
    models = kit.trained_models()
    model, kind, inputs = models["clf"]
    version = kit.publish(store, "clf", kit.state(model, kind), kind)
    settings = kit.make_settings(redis_url, prefix)
    metrics = ServingMetrics(CollectorRegistry())
    app = create_app(settings, metrics=metrics, max_body_bytes=8192)
    routed = create_app(settings, metrics=metrics, max_body_bytes=8192, fast_path=False)
    assert app.fast_paths and not routed.fast_paths
    x = inputs[0]
    per_feature = [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in x.items()]
    rows = [orjson.dumps(r).decode() for r in inputs[:3]]
    bodies = [
        {"inputs": per_feature},
        {"id": "r1", "inputs": per_feature, "outputs": [{"name": "proba_true"}]},
        {"inputs": [{**per_feature[0], "data": [1]}, *per_feature[1:]]},  # an integer
        {"inputs": [{**per_feature[0], "data": [True]}, *per_feature[1:]]},  # not a float
        {"inputs": [*per_feature, per_feature[0]]},  # twice
        {"inputs": [{**per_feature[0], "shape": [1, 1], "data": [[0.5]]}, *per_feature[1:]]},
        {"inputs": [{**per_feature[0], "parameters": {"binary_data_size": 8}}]},
        {"inputs": [{"name": "features", "shape": [3], "datatype": "BYTES", "data": rows}]},
        {"inputs": []},
        {"nope": 1},
    ]
    raws = [orjson.dumps(b) for b in bodies] + [b"{not json", b"x" * 9000]
    paths = [
        "/v2/models/clf/infer",
        f"/v2/models/clf/versions/{version}/infer",
        "/v2/models/clf/versions/999/infer",
        "/v2/models/nope/infer",
    ]

    async def compare() -> None:
        async with app.router.lifespan_context(app), routed.router.lifespan_context(routed):
            for a in (app, routed):
                kit.wait_until(lambda a=a: a.state.follower.get("clf") is not None)
            for path in paths:
                for raw in raws:
                    fast = await asgi_post(app, path, raw)
                    slow = await asgi_post(routed, path, raw)
                    assert fast == slow, (path, raw[:60], fast, slow)
            # a header the fast path must see as the route does
            gzip = [(b"content-encoding", b"gzip")]
            fast = await asgi_post(app, paths[0], raws[0], gzip)
            assert fast == await asgi_post(routed, paths[0], raws[0], gzip) and fast[0] == 400

    asyncio.run(compare())


def test_a_prediction_with_an_id_still_goes_through_the_stack(
    kit, store: SnapshotStore, redis_url: str, prefix: str
) -> None:
    """The fast path gives a body naming an "id" to the stack (where the closed loop logs it)."""
    model, kind, inputs = kit.trained_models()["clf"]
    kit.publish(store, "clf", kit.state(model, kind), kind)
    app = create_app(
        kit.make_settings(redis_url, prefix), metrics=ServingMetrics(CollectorRegistry())
    )
    seen: list[bytes] = []
    stack = app.stack

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message["body"])
        messages = [message]

        async def replay() -> Any:
            return messages.pop() if messages else await receive()

        await stack(scope, replay, send)

    models = dict(app.fast_paths)["/v1/models/"]
    assert isinstance(models, PredictFastPath)
    models.with_ids = spy

    async def run() -> None:
        async with app.router.lifespan_context(app):
            kit.wait_until(lambda: app.state.follower.get("clf") is not None)
            plain = orjson.dumps({"features": inputs[0]})
            assert (await asgi_post(app, "/v1/models/clf/predict", plain))[0] == 200
            assert seen == []
            with_id = orjson.dumps({"id": "a1", "features": inputs[0]})
            await asgi_post(app, "/v1/models/clf/predict", with_id)
            assert seen == [with_id]

    asyncio.run(run())


def test_each_fast_path_is_one_layer_under_the_app(kit, redis_url: str, prefix: str) -> None:
    """A model predict, v2 infer or graph predict request goes from the app straight to its own
    fast path (each layer costs ≈ 0.4 µs a request), the others straight to the stack."""
    app = create_app(kit.make_settings(redis_url, prefix))
    assert [p for p, _ in app.fast_paths] == ["/v1/models/", "/v2/models/", "/v1/graphs/"]
    assert isinstance(app.fast_paths[0][1], PredictFastPath)
    # what a fast path does not answer goes on to the stack: here v2's model metadata route
    metadata = asyncio.run(asgi_post(app, "/v2/models/m", b"", method="GET"))
    assert metadata == (404, b'{"error":"model \'m\' is unknown"}')
    seen: list[str] = []

    def spy(name: str) -> Any:
        async def route(scope: Any, receive: Any, send: Any) -> None:
            seen.append(f"{name} {scope['method']} {scope['path']}")
            await send({"type": "http.response.start", "status": 299, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        return route

    app.fast_paths = tuple((p, spy(p)) for p, _ in app.fast_paths)
    paths = ["/v1/models/m/predict", "/v2/models/m/infer", "/v1/graphs/g/predict", "/v1/features"]
    statuses = [asyncio.run(asgi_post(app, path, b"{}"))[0] for path in paths]
    assert statuses[:3] == [299, 299, 299] and statuses[3] != 299  # /v1/features: the stack's
    assert seen == [
        "/v1/models/ POST /v1/models/m/predict", "/v2/models/ POST /v2/models/m/infer",
        "/v1/graphs/ POST /v1/graphs/g/predict",
    ]  # fmt: skip

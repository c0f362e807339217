"""The Open Inference Protocol v2 for serving graphs (`serving.v2` over `serving.graphs`).

Graphs applied through the registry over real snapshots in the real Redis; every v2 answer is
compared with ``/v1/graphs/{name}/predict`` on the same server (which `tests/serving/test_graphs.py`
compares with River by hand). Then ``tritonclient[http]`` against the API in its own uvicorn
process.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from river import datasets, linear_model, naive_bayes, preprocessing, tree

from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.registry.graphs import GraphRegistry
from stream.store.snapshots import SnapshotStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVER = "from schemas.settings import Settings; from serving.runner import serve; serve(Settings(), workers=1)"
RULES = {
    "over": {"ensemble": {"members": ["lr", "tree", "nb"]}},
    "rules": [
        {
            "when": {"all": [{"feature": "long_url", "ge": 1}, {"feature": "ip_in_url", "eq": 1}]},
            "then": {"decision": "review", "reason": "long url with an ip"},
        },
        {
            "when": {"output": "proba.true", "ge": 0.8},
            "then": {"decision": "block", "prediction": True, "reason": "very likely"},
        },
        {"when": {"output": "proba.True", "lt": 0.2}, "then": {"decision": "allow"}},
    ],
}
SWITCH = {
    "cases": [{"when": {"feature": "https", "gt": 0.5}, "then": "lr"}],
    "default": {"ensemble": {"members": ["tree", "nb"], "combine": "vote"}},
}
SPLIT = {"branches": [{"weight": 1, "node": "lr"}, {"weight": 1, "node": "nb"}], "sticky_by": "id"}
SHADOW = {"primary": "lr", "shadows": ["tree"]}
GRAPH_OUTPUTS = ["decided_by", "decision", "reason", "path", "versions", "samples_learned"]


@functools.lru_cache(maxsize=1)
def river_models() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Three classifiers trained on 400 Phishing events, and 40 unseen inputs (one of which
    makes the first rule match)."""
    data = list(datasets.Phishing())
    models: dict[str, Any] = {
        "lr": preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "tree": tree.HoeffdingTreeClassifier(grace_period=40),
        "nb": naive_bayes.GaussianNB(),
    }
    for x, y in data[:400]:
        for model in models.values():
            model.learn_one(x, y)
    unseen = [x for x, _ in data[400:440]]
    return models, [*unseen, {**unseen[0], "long_url": 1.0, "ip_in_url": 1}]


@pytest.fixture
def graphs(kit, store: SnapshotStore) -> dict[str, int]:
    """The models published, and graphs ``fraud`` (rules over an ensemble), ``route`` (a
    switch), ``ab`` (a split sticky by request id) and ``s`` (a shadow) applied: name →
    version."""
    models, _ = river_models()
    for name, model in models.items():
        kit.publish(store, name, model, "classifier")
    registry = GraphRegistry(store.client, store.keys.prefix, by="test")
    return {
        name: registry.apply({"name": name, "root": root}).version
        for name, root in (("fraud", {"rules": RULES}), ("route", {"switch": SWITCH}),
                           ("ab", {"split": SPLIT}), ("s", {"shadow": SHADOW}))
    }  # fmt: skip


@pytest.fixture
def client(kit, graphs: dict[str, int], redis_url: str, prefix: str) -> Iterator[httpx.Client]:
    app = create_app(
        kit.make_settings(redis_url, prefix), metrics=ServingMetrics(CollectorRegistry())
    )
    with kit.serve_in_thread(app) as client:
        kit.wait_until(
            lambda: all(client.get(f"/v2/models/{g}/ready").status_code == 200 for g in graphs)
        )
        yield client


def v1_graph(client: httpx.Client, graph: str, rows: list[dict[str, Any]], **body: Any) -> Any:
    response = client.post(f"/v1/graphs/{graph}/predict", json={"instances": rows, **body})
    assert response.status_code == 200, response.text
    return response.json()


def v1_columns(answer: dict[str, Any]) -> dict[str, list[Any]]:
    """A /v1 graph batch answer as the v2 output columns."""
    rows = answer["predictions"]
    columns: dict[str, list[Any]] = {"prediction": [r["prediction"] for r in rows]}
    for label in sorted({k for r in rows for k in r["probabilities"] or {}}):
        columns[f"proba_{label}"] = [(r["probabilities"] or {}).get(label, 0.0) for r in rows]
    columns["decided_by"] = [r["decided_by"] for r in rows]
    columns["decision"] = [r["decision"] or "" for r in rows]
    columns["reason"] = [r["reason"] or "" for r in rows]
    columns["path"] = [orjson.dumps(r["path"]).decode() for r in rows]
    columns["versions"] = [orjson.dumps(r["versions"]).decode() for r in rows]
    columns["samples_learned"] = [orjson.dumps(r["samples_learned"]).decode() for r in rows]
    return columns


def json_input(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "features",
        "datatype": "BYTES",
        "shape": [len(rows)],
        "data": [orjson.dumps(x).decode() for x in rows],
    }


def test_graph_metadata_and_readiness(client: httpx.Client, graphs: dict[str, int]) -> None:
    proba = {"datatype": "FP64", "shape": [-1]}
    for name, version in graphs.items():
        meta = {
            "name": name,
            "versions": [str(version)],
            "platform": "riverstream-graph",
            "inputs": [{"name": "features", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "prediction", "datatype": "BOOL", "shape": [-1]},
                {"name": "proba_false", **proba},
                {"name": "proba_true", **proba},
                *({"name": o, "datatype": "BYTES", "shape": [-1]} for o in GRAPH_OUTPUTS),
            ],
        }
        for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/{version}"):
            response = client.get(path)
            assert (response.status_code, response.json()) == (200, meta)
            response = client.get(f"{path}/ready")
            assert (response.status_code, response.json()) == (200, {"name": name, "ready": True})
        wrong = client.get(f"/v2/models/{name}/versions/{version + 50}/ready")
        assert wrong.status_code == 404
        assert wrong.json() == {
            "error": f"version '{version + 50}' of graph {name!r} is not served (serving {version})"
        }


def test_graph_infer_gives_the_answers_of_v1(client: httpx.Client, graphs: dict[str, int]) -> None:
    _, rows = river_models()
    decisions: set[str] = set()
    for name in ("fraud", "route"):
        want = v1_graph(client, name, rows)
        columns = v1_columns(want)
        for inputs in ([json_input(rows)], [
            {"name": f, "datatype": "FP64", "shape": [len(rows), 1], "data": [[x[f]] for x in rows]}
            for f in rows[0]
        ]):  # fmt: skip
            for path in (
                f"/v2/models/{name}/infer",
                f"/v2/models/{name}/versions/{graphs[name]}/infer",
            ):
                response = client.post(path, json={"id": "r-9", "inputs": inputs})
                assert response.status_code == 200, response.text
                answer = response.json()
                assert (answer["model_name"], answer["model_version"]) == (name, str(graphs[name]))
                assert answer["id"] == "r-9"
                got = {o["name"]: o["data"] for o in answer["outputs"]}
                assert got == columns
                for versions, learned in zip(got["versions"], got["samples_learned"], strict=True):
                    state = {m: 10 * v for m, v in orjson.loads(versions).items()}  # as published
                    assert orjson.loads(learned) == state and state
                assert all(o["shape"] == [len(rows)] for o in answer["outputs"])
        decisions |= set(columns["decision"])
    assert decisions == {"", "review", "block", "allow"}  # every rule outcome, and none
    selected = client.post(
        "/v2/models/fraud/infer",
        json={
            "inputs": [json_input(rows[:3])],
            "outputs": [{"name": "decision"}, {"name": "prediction"}],
        },
    ).json()
    assert [o["name"] for o in selected["outputs"]] == ["decision", "prediction"]


def test_one_row_of_numbers_gets_the_bytes_of_the_general_answer(
    client: httpx.Client, graphs: dict[str, int]
) -> None:
    """The commonest body (one row, one FP64 tensor per feature, nothing else) is answered
    from pieces of JSON (`serving.v2_graphs.graph_row_tail`); the same row in a body that
    the general reader takes (with ``parameters``) gives the same bytes, every rule outcome
    and switch branch included."""
    _, rows = river_models()
    decisions: set[str] = set()
    for name in ("fraud", "route", "s"):
        for x in rows:
            inputs = [
                {"name": f, "shape": [1], "datatype": "FP64", "data": [float(v)]}
                for f, v in x.items()
            ]
            fast = client.post(f"/v2/models/{name}/infer", json={"inputs": inputs})
            general = client.post(
                f"/v2/models/{name}/infer", json={"inputs": inputs, "parameters": {}}
            )
            assert fast.status_code == general.status_code == 200, (fast.text, general.text)
            assert fast.content == general.content
            outputs = {o["name"]: o["data"] for o in fast.json()["outputs"]}
            assert outputs == v1_columns(v1_graph(client, name, [x]))
            decisions |= set(outputs["decision"])
    assert decisions == {"", "review", "block", "allow"}


def test_graph_output_requested_twice_is_a_400(client: httpx.Client) -> None:
    """As for a model: each repetition of a graph's output was written in full."""
    _, rows = river_models()
    body = {"inputs": [json_input(rows[:2])], "outputs": [{"name": "versions"}] * 3}
    response = client.post("/v2/models/fraud/infer", json=body)
    assert (response.status_code, response.json()) == (
        400,
        {"error": "output 'versions' is requested twice"},
    )


def test_graph_infer_is_counted_once_under_its_own_route(client: httpx.Client) -> None:
    """A v2 infer of a graph is one request of the v2 route, not also one of /v1/graphs."""
    _, rows = river_models()
    for body in ({"inputs": [json_input(rows[:2])]}, {"inputs": [
        {"name": f, "shape": [1], "datatype": "FP64", "data": [float(v)]} for f, v in rows[0].items()
    ]}):  # fmt: skip
        assert client.post("/v2/models/fraud/infer", json=body).status_code == 200
    text = client.get("/metrics").text
    assert (
        'riverstream_http_requests_total{model="fraud",route="/v2/models/{name}/infer",'
        'status="200"} 2.0'
    ) in text
    assert 'route="/v1/graphs/{name}/predict"' not in text


def test_graph_row_tail_is_the_json_of_the_general_outputs() -> None:
    """Unit: `one_row_answer` with a graph's tail equals the JSON of `graph_outputs`, for
    answers of every kind (labels, numbers, none; decisions and reasons or none; unicode)."""
    from hypothesis import given
    from hypothesis import strategies as st

    from serving.v2_graphs import graph_outputs, graph_row_tail
    from serving.v2_tensors import answer_head, one_row_answer

    labels = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-1, 1) | st.text(max_size=3)
    texts = st.none() | st.text(max_size=6)

    @given(
        prediction=labels,
        probabilities=st.none()
        | st.dictionaries(st.booleans() | st.text(max_size=2), st.floats(0, 1), max_size=3),
        decided_by=st.text(max_size=12),
        decision=texts,
        reason=texts,
        path=st.lists(st.text(max_size=8), max_size=3),
        versions=st.dictionaries(st.text(max_size=4), st.integers(0, 10**6), max_size=3),
        samples_learned=st.dictionaries(
            st.text(max_size=4), st.none() | st.integers(0, 10**9), max_size=3
        ),
    )
    def check(**answer: Any) -> None:
        fields = {"model_name": "g", "model_version": "7"}
        want = orjson.dumps(
            {**fields, "outputs": graph_outputs({"predictions": [answer]}, None)},
            option=orjson.OPT_NON_STR_KEYS,
        )
        got = one_row_answer(
            answer_head(fields), answer["prediction"], answer["probabilities"],
            graph_row_tail(answer),
        )  # fmt: skip
        assert got == want

    check()


def test_graph_request_id_keys_sticky_splits(client: httpx.Client) -> None:
    _, rows = river_models()
    rows = rows[:4]
    for request_id in ("user-1", "user-2", "user-3", "user-4"):
        want = v1_graph(client, "ab", rows, ids=[request_id] * len(rows))
        body = {"id": request_id, "inputs": [json_input(rows)]}
        answer = client.post("/v2/models/ab/infer", json=body).json()
        assert {o["name"]: o["data"] for o in answer["outputs"]} == v1_columns(want)
    response = client.post("/v2/models/ab/infer", json={"inputs": [json_input(rows)]})
    assert response.status_code == 400  # a split sticky by id, and no id: /v1's 422
    assert list(response.json()) == ["error"]
    bad = client.post("/v2/models/fraud/infer", json={"inputs": [json_input([{"x": [1]}])]})
    assert bad.status_code == 400
    assert "feature 'x' must be a number, a string, a boolean or null" in bad.json()["error"]


def test_graph_with_a_member_not_loaded_is_503(
    kit, graphs: dict[str, int], redis_url: str, prefix: str
) -> None:
    settings = kit.make_settings(redis_url, prefix, serve_models="lr,tree")  # nb is never loaded
    app = create_app(settings, metrics=ServingMetrics(CollectorRegistry()))
    _, rows = river_models()
    with kit.serve_in_thread(app) as client:
        kit.wait_until(lambda: client.get("/v2/models/fraud").status_code == 200)
        ready = client.get("/v2/models/fraud/ready")
        assert (ready.status_code, ready.json()) == (
            503,
            {"error": "graph 'fraud': model(s) ['nb'] not loaded"},
        )
        response = client.post("/v2/models/fraud/infer", json={"inputs": [json_input(rows[:1])]})
        assert response.status_code == 503
        assert list(response.json()) == ["error"] and "nb" in response.json()["error"]
        assert client.get("/v2/models/nope").status_code == 404


def test_graph_shadows_run_after_a_v2_answer(
    kit, graphs: dict[str, int], redis_url: str, prefix: str
) -> None:
    app = create_app(
        kit.make_settings(redis_url, prefix), metrics=ServingMetrics(CollectorRegistry())
    )
    _, rows = river_models()
    with kit.serve_in_thread(app) as client:
        kit.wait_until(lambda: client.get("/v2/models/s/ready").status_code == 200)
        response = client.post("/v2/models/s/infer", json={"inputs": [json_input(rows[:3])]})
        assert response.status_code == 200
        # queued once the response is sent (a background task): wait for the three runs
        runs = 'riverstream_shadow_runs_total{graph="s",shadow="root.shadow.shadows[0]"} 3.0'
        kit.wait_until(lambda: runs in client.get("/metrics").text)
        assert app.state.graphs.shadows.wait_idle(10)
        got = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert got == v1_columns(v1_graph(client, "s", rows[:3]))  # the primary's answer


@pytest.mark.slow
def test_tritonclient_on_a_graph_equals_v1(
    kit, graphs: dict[str, int], redis_url: str, prefix: str
) -> None:
    import tritonclient.http as triton  # type: ignore[import-untyped]

    port = kit.free_port()
    settings = kit.make_settings(redis_url, prefix, serve_port=port)
    _, rows = river_models()
    with kit.serve_process(settings, ready_path="/v2/models/fraud/ready") as base:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready("fraud", str(graphs["fraud"]))
            meta = client.get_model_metadata("fraud")
            assert meta["versions"] == [str(graphs["fraud"])]
            features = triton.InferInput("features", [len(rows)], "BYTES")
            encoded = np.array([orjson.dumps(x).decode() for x in rows], dtype=np.object_)
            features.set_data_from_numpy(encoded, binary_data=False)
            outputs = [
                triton.InferRequestedOutput(o["name"], binary_data=False) for o in meta["outputs"]
            ]
            result = client.infer("fraud", [features], outputs=outputs, request_id="t-1")
            with httpx.Client(base_url=base) as http:
                want = v1_columns(v1_graph(http, "fraud", rows))
            assert result.as_numpy("prediction").tolist() == want["prediction"]
            assert result.as_numpy("proba_true").tolist() == want["proba_true"]
            assert result.as_numpy("proba_false").tolist() == want["proba_false"]
            assert result.as_numpy("decision").tolist() == want["decision"]  # JSON BYTES: str
            assert result.get_response()["model_version"] == str(graphs["fraud"])
        finally:
            client.close()

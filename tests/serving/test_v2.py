"""The Open Inference Protocol v2 (`serving.v2`) against real Redis snapshots.

In process (uvicorn in a thread, the follower thread real): every endpoint, the two feature
mappings, the same numbers as ``/v1`` for the same version, and each error. Then
``tritonclient[http]``, a real third-party client, against the API in its own uvicorn process.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from river import compose, linear_model, multiclass, preprocessing

from serving.app import create_app
from serving.telemetry import ServingMetrics
from serving.v2_tensors import package_version
from stream.store.snapshots import SnapshotStore
from tests.support.serving import recording

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVER = "from schemas.settings import Settings; from serving.runner import serve; serve(Settings(), workers=1)"
PHISHING = [
    "age_of_domain", "anchor_from_other_domain", "empty_server_form_handler", "https",
    "ip_in_url", "is_popular", "long_url", "popup_window", "request_from_other_domain",
]  # fmt: skip
TRUMP = ["gallup", "ipsos", "morning_consult", "ordinal_date", "rasmussen", "you_gov"]


def mixed_model() -> tuple[Any, list[dict[str, Any]]]:
    """A multiclass model over a float, an int, a bool and a string feature (labels are
    strings), and rows to ask it about."""
    model = compose.TransformerUnion(
        compose.Select("n", "k", "b"), compose.Select("c") | preprocessing.OneHotEncoder()
    ) | multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
    rng = random.Random(7)

    def row() -> dict[str, Any]:
        return {
            "n": rng.choice([-1.5, -0.25, 0.5, 2.0]),
            "k": rng.randint(-3, 3),
            "b": rng.random() < 0.5,
            "c": rng.choice(["red", "green", "blue"]),
        }

    for _ in range(300):
        x = row()
        score = x["n"] + x["k"] + (2 if x["b"] else 0) + (1 if x["c"] == "red" else 0)
        model.learn_one(x, "low" if score < 0 else "mid" if score < 2 else "high")
    return model, [row() for _ in range(12)]


@pytest.fixture
def served(kit, store: SnapshotStore, redis_url: str, prefix: str) -> Iterator[dict[str, Any]]:
    """clf, reg, det (River datasets) and mixed, published and served in process."""
    models = kit.trained_models()
    mixed, mixed_rows = mixed_model()
    models["mixed"] = (mixed, "classifier", mixed_rows)
    versions = {name: kit.publish(store, name, m, kind) for name, (m, kind, _) in models.items()}
    metrics = ServingMetrics(CollectorRegistry())
    app = create_app(kit.make_settings(redis_url, prefix), metrics=metrics)
    with kit.serve_in_thread(app) as client:
        kit.wait_until(lambda: client.get("/v2/health/ready").status_code == 200)
        yield {"client": client, "models": models, "versions": versions}


def v1(client: httpx.Client, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post(f"/v1/models/{name}/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    return response.json()


def as_v1(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """v2 output tensors as /v1's list of ``{"prediction", "probabilities"}``."""
    by_name = {o["name"]: o for o in outputs}
    assert all(o["shape"] == [len(o["data"])] for o in outputs)
    classes = [n for n in by_name if n.startswith("proba_")]
    answers = []
    for i, prediction in enumerate(by_name["prediction"]["data"]):
        proba = {c[len("proba_") :]: by_name[c]["data"][i] for c in classes} if classes else None
        answers.append({"prediction": prediction, "probabilities": proba})
    return answers


def as_columns(predictions: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """/v1's list of ``{"prediction", "probabilities"}`` as v2 output columns."""
    columns = {"prediction": [p["prediction"] for p in predictions]}
    for label in predictions[0]["probabilities"] or {}:
        columns[f"proba_{label}"] = [p["probabilities"][label] for p in predictions]
    return columns


def per_feature(rows: list[dict[str, Any]], datatypes: dict[str, str]) -> list[dict[str, Any]]:
    """Mapping (a): one input per feature."""
    return [
        {"name": f, "datatype": dt, "shape": [len(rows)], "data": [x.get(f) for x in rows]}
        for f, dt in datatypes.items()
    ]


def json_rows(rows: list[dict[str, Any]], *, name: str = "features") -> list[dict[str, Any]]:
    """Mapping (b): one BYTES input of JSON objects."""
    tensor: dict[str, Any] = {
        "name": name,
        "datatype": "BYTES",
        "shape": [len(rows), 1],
        "data": [[orjson.dumps(x).decode()] for x in rows],
    }
    if name != "features":
        tensor["parameters"] = {"content_type": "json"}
    return [tensor]


def test_server_metadata_and_health(served: dict[str, Any]) -> None:
    client = served["client"]
    assert client.get("/v2").json() == {
        "name": "riverstream",
        "version": package_version(),
        "extensions": [],
    }
    assert package_version() != "0+unknown"
    live = client.get("/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})
    ready = client.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


def test_model_metadata_and_readiness(served: dict[str, Any]) -> None:
    client, versions = served["client"], served["versions"]
    feature = {"datatype": "FP64", "shape": [-1]}
    json_input = {"name": "features", "datatype": "BYTES", "shape": [-1]}
    expected_inputs = {
        "clf": [{"name": f, **feature} for f in PHISHING],  # StandardScaler's means
        "reg": [{"name": f, **feature} for f in TRUMP],
        "det": [json_input],  # MinMaxScaler: not told (predictions add keys to its tables)
        "mixed": [json_input],  # a TransformerUnion: not told
    }
    proba = {"datatype": "FP64", "shape": [-1]}
    expected_outputs = {
        "clf": [
            {"name": "prediction", "datatype": "BOOL", "shape": [-1]},
            {"name": "proba_false", **proba},
            {"name": "proba_true", **proba},
        ],
        "reg": [{"name": "prediction", "datatype": "FP64", "shape": [-1]}],
        "det": [{"name": "prediction", "datatype": "FP64", "shape": [-1]}],
        "mixed": [
            {"name": "prediction", "datatype": "BYTES", "shape": [-1]},
            *({"name": f"proba_{c}", **proba} for c in ("high", "low", "mid")),
        ],
    }
    for name, version in versions.items():
        meta = {
            "name": name,
            "versions": [str(version)],
            "platform": "river",
            "inputs": expected_inputs[name],
            "outputs": expected_outputs[name],
        }
        for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/{version}"):
            response = client.get(path)
            assert (response.status_code, response.json()) == (200, meta), path
            response = client.get(f"{path}/ready")
            assert (response.status_code, response.json()) == (200, {"name": name, "ready": True})


@pytest.mark.parametrize("mapping", ["per_feature", "json", "json_named"])
def test_infer_gives_the_numbers_of_v1(served: dict[str, Any], mapping: str) -> None:
    client, versions = served["client"], served["versions"]
    datatypes = {
        "clf": dict.fromkeys(PHISHING, "FP64"),
        "reg": dict.fromkeys(TRUMP, "FP64"),
        "det": dict.fromkeys(PHISHING, "FP64"),
        "mixed": {"n": "FP32", "k": "INT8", "b": "BOOL", "c": "BYTES"},
    }
    for name, (_, kind, rows) in served["models"].items():
        if mapping == "per_feature":
            inputs = per_feature(rows, datatypes[name])
            rows = [{f: x[f] for f in datatypes[name]} for x in rows]  # the order of the inputs
        else:
            inputs = json_rows(rows, name="features" if mapping == "json" else "rows")
        body = {"id": f"req-{name}", "inputs": inputs}
        for path in (
            f"/v2/models/{name}/infer",
            f"/v2/models/{name}/versions/{versions[name]}/infer",
        ):
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["model_name"] == name
            assert answer["model_version"] == str(versions[name])
            assert answer["id"] == f"req-{name}"
            want = v1(client, name, rows)
            assert want["version"] == versions[name]
            assert as_v1(answer["outputs"]) == want["predictions"]
        predictions = [p["prediction"] for p in want["predictions"]]
        datatype = {"clf": "BOOL", "reg": "FP64", "det": "FP64", "mixed": "BYTES"}[name]
        assert answer["outputs"][0]["datatype"] == datatype
        if kind == "classifier":
            assert len(set(predictions)) >= 2, predictions  # both sides of the boundary


def test_a_linear_models_commonest_body_is_answered_from_its_bytes(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row, one FP64 tensor per feature, to the linear classifier and regressor: the sum
    is read from the bytes (`serving.v2_requests.row_sum`) and the answer is, byte for byte,
    the one the row read first gives; a name given twice is left to the general reading."""
    import serving.v2_requests

    client = served["client"]
    counted, sums = recording(serving.v2_requests.read_row_dot_in_c)

    def infer(name: str, body: bytes) -> tuple[int, bytes]:
        response = client.post(f"/v2/models/{name}/infer", content=body)
        return response.status_code, response.content

    def commonest(x: dict[str, Any]) -> bytes:  # the layout the C reader reads
        tensors = [{"name": f, "shape": [1], "datatype": "FP64", "data": [v]} for f, v in x.items()]
        return orjson.dumps({"inputs": tensors})

    for name, features in (("clf", PHISHING), ("reg", TRUMP)):
        for x in served["models"][name][2][:3]:
            body = commonest({f: float(x[f]) for f in features})
            monkeypatch.setattr(serving.v2_requests, "read_row_dot_in_c", None)
            without = infer(name, body)
            monkeypatch.setattr(serving.v2_requests, "read_row_dot_in_c", counted)
            assert infer(name, body) == without and without[0] == 200, without
    assert len(sums) == 6 and None not in sums, sums
    # what the bytes cannot say: the version asked for, and the headers
    versions = served["versions"]
    for name, features in (("clf", PHISHING), ("reg", TRUMP)):
        body = commonest({f: float(served["models"][name][2][0][f]) for f in features})
        served_one = client.post(f"/v2/models/{name}/versions/{versions[name]}/infer", content=body)
        assert (served_one.status_code, served_one.content) == infer(name, body)
        other = client.post(f"/v2/models/{name}/versions/{versions[name] + 1}/infer", content=body)
        assert other.status_code == 404 and "is not served" in other.json()["error"]
        for header in ({"Content-Encoding": "gzip"}, {"Inference-Header-Content-Length": "9"}):
            refused = client.post(f"/v2/models/{name}/infer", content=body, headers=header)
            assert refused.status_code == 400, (header, refused.text)
    twice = commonest({"https": 1.0}).replace(b"}]}", b"},") + commonest({"https": 2.0})[11:]
    status, content = infer("clf", twice)
    assert sums[-1] is None and status == 400, content


def test_infer_row_shapes_outputs_and_missing_features(served: dict[str, Any]) -> None:
    client = served["client"]
    _, _, rows = served["models"]["clf"]
    rows = rows[:3]
    # [n, 1] nested per row, a null (a missing feature, as in /v1), requested outputs in order
    inputs = [
        {
            "name": f,
            "datatype": "FP64",
            "shape": [3, 1],
            "data": [[None if (f == "https" and i == 1) else x[f]] for i, x in enumerate(rows)],
        }
        for f in PHISHING
    ]
    body = {"inputs": inputs, "outputs": [{"name": "proba_true"}, {"name": "prediction"}]}
    answer = client.post("/v2/models/clf/infer", json=body).json()
    assert [o["name"] for o in answer["outputs"]] == ["proba_true", "prediction"]
    assert "id" not in answer
    every = client.post("/v2/models/clf/infer", json={"inputs": inputs, "outputs": []}).json()
    assert [o["name"] for o in every["outputs"]] == ["prediction", "proba_false", "proba_true"]
    sent = [dict(x) for x in rows]
    sent[1]["https"] = None
    want = v1(client, "clf", sent)["predictions"]
    assert answer["outputs"][0]["data"] == [p["probabilities"]["true"] for p in want]
    assert answer["outputs"][1]["data"] == [p["prediction"] for p in want]
    without = v1(client, "clf", [{k: v for k, v in rows[1].items() if k != "https"}])
    assert answer["outputs"][0]["data"][1] == without["predictions"][0]["probabilities"]["true"]


def test_infer_requests_are_counted(served: dict[str, Any]) -> None:
    client = served["client"]
    body = {"inputs": json_rows(served["models"]["reg"][2][:1])}
    assert client.post("/v2/models/reg/infer", json=body).status_code == 200
    assert client.post("/v2/models/nope/infer", json=body).status_code == 404
    text = client.get("/metrics").text
    assert (
        'riverstream_http_requests_total{model="reg",route="/v2/models/{name}/infer",'
        'status="200"} 1.0'
    ) in text
    assert 'model="none",route="/v2/models/{name}/infer",status="404"} 1.0' in text


ONE = {"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}
JSON_ONE = {"name": "features", "datatype": "BYTES", "shape": [1], "data": ['{"x": 1}']}
BAD_BODIES: list[tuple[Any, str]] = [
    (b"{not json", "invalid JSON"),
    ([], "the body must be a JSON object, not array"),
    ({"inputs": []}, "'inputs' must be a non-empty array"),
    ({"inputs": [ONE], "extra": 1}, "unknown field(s) ['extra']"),
    ({"id": 5, "inputs": [ONE]}, "'id' must be a string, not int"),
    ({"inputs": [{**ONE, "datatype": "FP128"}]}, "datatype 'FP128' is not one of"),
    ({"inputs": [{**ONE, "shape": [2]}]}, "input 'x': shape [2] but 1 values"),
    ({"inputs": [{**ONE, "shape": [1, 2]}]}, "shape must be [n] or [n, 1]"),
    ({"inputs": [{**ONE, "shape": [0], "data": []}]}, "no rows"),
    ({"inputs": [{**ONE, "data": "1"}]}, "'data' must be an array, not str"),
    ({"inputs": [{**ONE, "data": [[[1.0]]]}]}, "flat or nested once per row"),
    ({"inputs": [ONE, ONE]}, "input 'x' is given twice"),
    ({"inputs": [{**ONE, "datatype": "INT8", "data": [300]}]}, "300 is not a valid INT8 value"),
    ({"inputs": [{**ONE, "datatype": "UINT8", "data": [-1]}]}, "-1 is not a valid UINT8 value"),
    ({"inputs": [{**ONE, "datatype": "BOOL", "data": [1]}]}, "1 is not a valid BOOL value"),
    ({"inputs": [{**ONE, "data": ["1"]}]}, '"1" is not a valid FP64 value'),
    ({"inputs": [{**ONE, "datatype": "BYTES", "data": [1]}]}, "1 is not a valid BYTES value"),
    (
        {"inputs": [ONE, {**ONE, "name": "y", "shape": [2], "data": [1.0, 2.0]}]},
        "input 'y' has 2 rows, another input has 1",
    ),
    ({"inputs": [ONE, JSON_ONE]}, "not both"),
    ({"inputs": [{**JSON_ONE, "data": ["[1]"]}]}, "an element is a JSON array, not an object"),
    ({"inputs": [{**JSON_ONE, "data": ["{"]}]}, "invalid JSON in an element"),
    ({"inputs": [{**JSON_ONE, "data": [{"x": 1}]}]}, "a JSON object as a string"),
    (
        {"inputs": [{**JSON_ONE, "datatype": "FP64", "parameters": {"content_type": "json"}}]},
        "JSON rows must have datatype BYTES",
    ),
    (
        {"inputs": [{**JSON_ONE, "data": ['{"x": [1]}']}]},
        "feature 'x' must be a number, a string, a boolean or null, not array",
    ),
    ({"inputs": [ONE], "outputs": [{"name": "nope"}]}, "unknown output(s) ['nope']"),
    (
        {"inputs": [{**ONE, "name": "gallup", "datatype": "BYTES", "data": ["a string"]}]},
        "the model cannot use these features: TypeError",
    ),
    # the binary tensor and shared-memory extensions
    ({"inputs": [{**ONE, "parameters": {"binary_data_size": 8}}]}, "binary tensor extension"),
    ({"inputs": [ONE], "parameters": {"binary_data_output": True}}, "binary tensor extension"),
    (
        {"inputs": [ONE], "outputs": [{"name": "prediction", "parameters": {"binary_data": True}}]},
        "binary tensor extension",
    ),
    ({"inputs": [{**ONE, "parameters": {"shared_memory_region": "r"}}]}, "shared-memory"),
    # found by a review: each used to be answered 200
    (
        {"inputs": [ONE], "outputs": [{"name": "prediction"}] * 2},
        "output 'prediction' is requested twice",
    ),
    (
        {"inputs": [ONE], "outputs": [{"name": "prediction", "parameters": {"classification": 1}}]},
        "output 'prediction': the classification extension is not supported",
    ),
    ({"inputs": [{**ONE, "shape": [1.0]}]}, "input 'x': shape must be [n] or [n, 1]"),
    ({"inputs": [{**ONE, "shape": [True]}]}, "input 'x': shape must be [n] or [n, 1]"),
    (
        {"inputs": [{**ONE, "datatype": "FP16", "data": [1e10]}]},
        "input 'x': 10000000000.0 is out of the range of FP16 (±65504)",
    ),
    (
        {"inputs": [{**ONE, "datatype": "FP32", "data": [1e300]}]},
        "input 'x': 1e+300 is out of the range of FP32 (±3.4028234663852886e+38)",
    ),
]


def test_bad_requests_are_400_with_the_reason(served: dict[str, Any]) -> None:
    client = served["client"]
    for body, message in BAD_BODIES:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        response = client.post("/v2/models/reg/infer", content=raw)
        assert response.status_code == 400, (body, response.text)
        assert list(response.json()) == ["error"]
        assert message in response.json()["error"], (body, response.json())
    # what tritonclient sends by default: a JSON header then binary tensors
    header = orjson.dumps({"inputs": [{**ONE, "parameters": {"binary_data_size": 8}}]})
    response = client.post(
        "/v2/models/reg/infer",
        content=header + np.float64(1.0).tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400
    assert "binary tensor extension is not supported" in response.json()["error"]
    assert "binary_data=False" in response.json()["error"]
    response = client.post(
        "/v2/models/reg/infer",
        content=orjson.dumps({"inputs": [ONE]}),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 400
    assert "Content-Encoding 'gzip' is not supported" in response.json()["error"]


def test_body_over_the_limit_is_400(kit, store: SnapshotStore, redis_url: str, prefix: str) -> None:
    model, kind, rows = kit.trained_models()["reg"]
    kit.publish(store, "reg", model, kind)
    app = create_app(
        kit.make_settings(redis_url, prefix),
        metrics=ServingMetrics(CollectorRegistry()),
        max_body_bytes=2000,
    )
    with kit.serve_in_thread(app) as client:
        kit.wait_until(lambda: client.get("/v2/models/reg/ready").status_code == 200)
        small = {"inputs": json_rows(rows[:2])}
        assert client.post("/v2/models/reg/infer", json=small).status_code == 200
        response = client.post("/v2/models/reg/infer", json={"inputs": json_rows(rows * 2)})
        assert response.status_code == 400
        assert response.json() == {"error": "body larger than 2000 bytes"}


def test_unknown_is_404_and_not_loaded_is_503(
    kit, store: SnapshotStore, redis_url: str, prefix: str
) -> None:
    model, kind, rows = kit.trained_models()["reg"]
    version = kit.publish(store, "reg", model, kind)
    kit.publish(store, "tampered", model, kind, key=b"another key")  # refused: never loaded
    settings = kit.make_settings(redis_url, prefix, serve_models="reg,tampered")
    app = create_app(settings, metrics=ServingMetrics(CollectorRegistry()))
    body = {"inputs": json_rows(rows[:1])}
    with kit.serve_in_thread(app) as client:
        kit.wait_until(lambda: client.get("/v2/models/reg/ready").status_code == 200)

        def check(path: str, status: int, message: str) -> None:
            response = client.post(path, json=body) if path.endswith("/infer") else client.get(path)
            assert (response.status_code, response.json()) == (status, {"error": message}), path

        for suffix in ("", "/ready", "/infer"):
            check(f"/v2/models/nope{suffix}", 404, "model 'nope' is unknown")
            check(f"/v2/models/nope/versions/1{suffix}", 404, "model 'nope' is unknown")
            wrong = f"version '{version + 7}' of model 'reg' is not served (serving {version})"
            check(f"/v2/models/reg/versions/{version + 7}{suffix}", 404, wrong)
            check(f"/v2/models/reg/versions/v1{suffix}", 404, wrong.replace(str(version + 7), "v1"))
            check(f"/v2/models/tampered{suffix}", 503, "model 'tampered' is not loaded yet")
        response = client.get("/v2/health/ready")  # the rule of /readyz
        assert client.get("/readyz").status_code == 503
        assert response.status_code == 503
        assert response.json() == {"ready": False, "error": "not ready: missing ['tampered']"}
        assert client.get("/v2/health/live").status_code == 200


def test_an_output_requested_many_times_is_a_small_400(served: dict[str, Any]) -> None:
    """Each repetition was written in full: this 71 kB request got a 54 MB answer."""
    n = 1000
    body = {
        "inputs": [{"name": "gallup", "shape": [n], "datatype": "FP64", "data": [43.8] * n}],
        "outputs": [{"name": "prediction"}] * 3000,
    }
    response = served["client"].post("/v2/models/reg/infer", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": "output 'prediction' is requested twice"}


def test_mlserver_string_codec_rows_give_the_numbers_of_v1(served: dict[str, Any]) -> None:
    """MLServer's StringCodec adds ``parameters.content_type: "str"`` to the ``features`` input:
    it was read as one string feature, and the model answered as for an empty row."""
    client = served["client"]
    for name in ("reg", "clf"):
        rows = served["models"][name][2][:3]
        (tensor,) = json_rows(rows)
        for content_type in ("str", "json"):
            body = {"inputs": [{**tensor, "parameters": {"content_type": content_type}}]}
            response = client.post(f"/v2/models/{name}/infer", json=body)
            assert response.status_code == 200, response.text
            assert as_v1(response.json()["outputs"]) == v1(client, name, rows)["predictions"]


@pytest.mark.parametrize("dumps", [lambda b: json.dumps(b).encode(), orjson.dumps])
def test_fp16_and_fp32_out_of_range_in_the_commonest_body_are_400(
    served: dict[str, Any], dumps: Any
) -> None:
    """The commonest layout (read in C): FP16 1e10 and FP32 1e300 were read as floats."""
    client = served["client"]
    for datatype, value, shown in (("FP16", 1e10, "10000000000.0"), ("FP32", 1e300, "1e+300")):
        inputs = [{"name": f, "shape": [1], "datatype": datatype, "data": [0.5]} for f in TRUMP]
        response = client.post("/v2/models/reg/infer", content=dumps({"inputs": inputs}))
        assert response.status_code == 200, response.text
        inputs[-1]["data"] = [value]
        response = client.post("/v2/models/reg/infer", content=dumps({"inputs": inputs}))
        assert response.status_code == 400
        message = f"input 'you_gov': {shown} is out of the range of {datatype}"
        assert message in response.json()["error"]


def test_more_values_than_the_limit_are_a_400(served: dict[str, Any]) -> None:
    """1000 rows of 1001 inputs: within the limits of rows (1000) and inputs (10 000) but over
    a million values, which /v1 could not carry in its 16 MiB body (4-5 times the bytes)."""
    n, k = 1000, 1001
    data = b",".join([b"1"] * n)
    parts = [
        b'{"name":"f%d","shape":[%d],"datatype":"FP64","data":[%b]}' % (i, n, data)
        for i in range(k)
    ]
    raw = b'{"inputs":[' + b",".join(parts) + b"]}"
    response = served["client"].post("/v2/models/reg/infer", content=raw)
    assert response.status_code == 400
    assert response.json() == {
        "error": "1000 rows of 1001 inputs: 1001000 values, the limit is 1000000 (rows × inputs)"
    }


def test_openapi_documents_the_infer_routes(served: dict[str, Any]) -> None:
    """The request body and the answers given (200, 400, 404, 503, the errors as
    ``{"error"}``), not the 422 FastAPI assumes."""
    schema = served["client"].get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for path, parameters in (
        ("/v2/models/{name}/infer", ["name"]),
        ("/v2/models/{name}/versions/{version}/infer", ["name", "version"]),
    ):
        op = schema["paths"][path]["post"]
        assert [p["name"] for p in op["parameters"]] == parameters
        body = op["requestBody"]["content"]["application/json"]
        assert body["schema"]["required"] == ["inputs"]
        assert set(body["examples"]) == {"per_feature", "json_rows"}
        assert set(op["responses"]) == {"200", "400", "404", "503"}
        for status in ("400", "404", "503"):
            ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert components[ref.rsplit("/", 1)[1]]["required"] == ["error"]
        ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        answer = components[ref.rsplit("/", 1)[1]]
        assert {"model_name", "model_version", "outputs"} <= set(answer["required"])


# -- a real third-party client against a real uvicorn process ----------------------------------
@pytest.fixture
def api_process(kit, store: SnapshotStore, redis_url: str, prefix: str) -> Iterator[dict[str, Any]]:
    models = {k: v for k, v in kit.trained_models().items() if k in ("clf", "reg")}
    versions = {name: kit.publish(store, name, m, kind) for name, (m, kind, _) in models.items()}
    port = kit.free_port()
    settings = kit.make_settings(redis_url, prefix, serve_port=port)
    with kit.serve_process(settings) as base:
        yield {"url": f"127.0.0.1:{port}", "base": base, "models": models, "versions": versions}


@pytest.mark.slow
def test_tritonclient_health_metadata_and_infer_equal_v1(api_process: dict[str, Any]) -> None:
    import tritonclient.http as triton  # type: ignore[import-untyped]
    from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

    versions = api_process["versions"]
    client = triton.InferenceServerClient(url=api_process["url"])
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.get_server_metadata()["name"] == "riverstream"
        for name, (_, kind, rows) in api_process["models"].items():
            version = str(versions[name])
            assert client.is_model_ready(name)
            assert client.is_model_ready(name, version)
            assert not client.is_model_ready(name, str(versions[name] + 100))
            assert not client.is_model_ready("nope")
            meta = client.get_model_metadata(name)
            assert meta["versions"] == [version] and meta["platform"] == "river"
            assert client.get_model_metadata(name, version) == meta

            # mapping (a), built from the metadata as a generic client does
            inputs = []
            for spec in meta["inputs"]:
                tensor = triton.InferInput(spec["name"], [len(rows)], spec["datatype"])
                column = np.array([x[spec["name"]] for x in rows], dtype=np.float64)
                inputs.append(tensor.set_data_from_numpy(column, binary_data=False))
            outputs = [
                triton.InferRequestedOutput(o["name"], binary_data=False) for o in meta["outputs"]
            ]
            result = client.infer(
                name, inputs, model_version=version, outputs=outputs, request_id="r-1"
            )
            response = result.get_response()
            assert (response["model_name"], response["model_version"]) == (name, version)
            assert response["id"] == "r-1"
            order = [spec["name"] for spec in meta["inputs"]]  # the order of the inputs
            with httpx.Client(base_url=api_process["base"]) as http:
                want = v1(http, name, [{f: x[f] for f in order} for x in rows])
                want_json = v1(http, name, rows)
            assert want["version"] == versions[name]
            predictions = result.as_numpy("prediction")
            assert predictions.tolist() == [p["prediction"] for p in want["predictions"]]
            if kind == "classifier":
                assert predictions.dtype == np.bool_
                for label in ("true", "false"):
                    got = result.as_numpy(f"proba_{label}").tolist()
                    assert got == [p["probabilities"][label] for p in want["predictions"]]
                assert len(set(predictions.tolist())) == 2
            else:
                assert predictions.dtype == np.float64

            # mapping (b): one BYTES input of JSON rows
            features = triton.InferInput("features", [len(rows)], "BYTES")
            encoded = np.array([orjson.dumps(x).decode() for x in rows], dtype=np.object_)
            features.set_data_from_numpy(encoded, binary_data=False)
            result = client.infer(name, [features], outputs=outputs)
            assert result.get_response()["outputs"] == [
                {
                    "name": o["name"],
                    "datatype": o["datatype"],
                    "shape": [len(rows)],
                    "data": as_columns(want_json["predictions"])[o["name"]],
                }
                for o in meta["outputs"]
            ]

            # the client's defaults: binary tensors, then binary outputs: a clear 400 each time
            binary = triton.InferInput(meta["inputs"][0]["name"], [1], "FP64")
            binary.set_data_from_numpy(np.array([1.0]))
            with pytest.raises(InferenceServerException) as refused:
                client.infer(name, [binary], outputs=outputs)
            assert refused.value.status() == "400"
            assert "binary tensor extension is not supported" in refused.value.message()
            assert "binary_data=False" in refused.value.message()
            with pytest.raises(InferenceServerException) as refused:
                client.infer(name, [features])  # no outputs named: asks for binary outputs
            assert refused.value.status() == "400"
            assert "binary tensor extension is not supported" in refused.value.message()

        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_metadata("nope")
        assert unknown.value.status() == "404"
        assert "model 'nope' is unknown" in unknown.value.message()
    finally:
        client.close()

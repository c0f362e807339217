"""Property: whatever the v2 infer body, the answer is a 200 or a 4xx ``{"error": ...}``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from serving.app import create_app
from serving.telemetry import ServingMetrics
from serving.v2_tensors import DATATYPES
from stream.store.snapshots import SnapshotStore

pytestmark = pytest.mark.integration

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # NaN and ±Infinity included: json.dumps writes them as bare literals
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
feature_names = st.sampled_from(["gallup", "ipsos", "https", "long_url", "features", "x", ""])
parameters = st.dictionaries(
    st.sampled_from(["content_type", "binary_data", "binary_data_size", "binary_data_output"]),
    st.sampled_from(["json", "pd", True, False, 8, None]),
    max_size=2,
)
tensors = st.fixed_dictionaries(
    {
        "name": feature_names | st.text(max_size=6),
        "datatype": st.sampled_from(sorted(DATATYPES)) | st.text(max_size=5),
        "shape": st.lists(st.integers(-1, 4), max_size=3),
        "data": st.lists(scalars | st.lists(scalars, max_size=2), max_size=5) | json_values,
    },
    optional={"parameters": parameters | json_values},
)
json_rows = st.lists(
    st.dictionaries(feature_names, scalars, max_size=4), min_size=1, max_size=4
).map(
    lambda rows: {
        "name": "features",
        "datatype": "BYTES",
        "shape": [len(rows)],
        "data": [json.dumps(r) for r in rows],
    }
)
requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensors | json_rows, max_size=3) | json_values},
    optional={
        "id": st.text(max_size=5) | json_values,
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["prediction", "proba_true", "nope"])},
                optional={"parameters": parameters},
            ),
            max_size=2,
        )
        | json_values,
        "parameters": parameters | json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    requests.map(lambda r: json.dumps(r).encode()),
)
paths = st.sampled_from(
    [
        "clf/infer",
        "reg/infer",
        "det/infer",
        "missing/infer",
        "clf/versions/1/infer",
        "reg/versions/x/infer",
    ]
)


@pytest.fixture
def api(kit, store: SnapshotStore, redis_url: str, prefix: str) -> Iterator[httpx.Client]:
    for name, (model, kind, _) in kit.trained_models(100).items():
        kit.publish(store, name, model, kind)
    settings = kit.make_settings(redis_url, prefix, max_features=6)
    app = create_app(
        settings, metrics=ServingMetrics(CollectorRegistry()), max_instances=4, max_body_bytes=4096
    )
    with kit.serve_in_thread(app) as client:
        kit.wait_until(lambda: client.get("/readyz").status_code == 200)
        yield client


@hsettings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=paths, body=bodies)
def test_no_infer_body_gives_a_5xx(api: httpx.Client, path: str, body: bytes) -> None:
    response = api.post(f"/v2/models/{path}", content=body)
    assert response.status_code in (200, 400, 404), (response.status_code, response.text)
    content: Any = response.json()
    if response.status_code != 200:
        assert list(content) == ["error"] and isinstance(content["error"], str)
    else:
        assert content["outputs"][0]["name"] in ("prediction", "proba_true")

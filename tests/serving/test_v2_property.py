"""Property: whatever the v2 infer body, the answer is a 200 or a 4xx ``{"error": ...}``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from serving.v2_tensors import DATATYPES
from tests.support.fuzz import json_values, scalars

pytestmark = pytest.mark.integration

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


@hsettings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=paths, body=bodies)
def test_no_infer_body_gives_a_5xx(small_api: httpx.Client, path: str, body: bytes) -> None:
    response = small_api.post(f"/v2/models/{path}", content=body)
    assert response.status_code in (200, 400, 404), (response.status_code, response.text)
    content: Any = response.json()
    if response.status_code != 200:
        assert list(content) == ["error"] and isinstance(content["error"], str)
    else:
        assert content["outputs"][0]["name"] in ("prediction", "proba_true")

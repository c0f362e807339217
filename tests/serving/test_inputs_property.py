"""Property: whatever the body, the API answers with a status below 500."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.support.fuzz import json_values

pytestmark = pytest.mark.integration

features = st.dictionaries(st.text(max_size=12), json_values, max_size=8)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda f: json.dumps({"features": f}).encode(), features | json_values),
    st.builds(
        lambda i: json.dumps({"instances": i}).encode(),
        st.lists(features | json_values, max_size=5) | json_values,
    ),
    st.builds(
        lambda f, extra: json.dumps({"features": f, **extra}).encode(),
        features,
        st.dictionaries(st.text(max_size=5), json_values, max_size=2),
    ),
)
names = st.sampled_from(["clf", "reg", "det", "missing", "a b", "%00", "clf/../reg"])


@hsettings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=names, body=bodies)
def test_no_body_gives_a_5xx(small_api: httpx.Client, name: str, body: bytes) -> None:
    response = small_api.post(f"/v1/models/{name}/predict", content=body)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code == 422:
        detail = response.json()["detail"]
        assert detail and all({"loc", "msg", "type"} <= set(d) for d in detail)


@hsettings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=names,
    body=st.binary(max_size=64),
    content_type=st.sampled_from(["application/json", "text/plain", "x/y"]),
)
def test_no_content_type_or_garbage_gives_a_5xx(
    small_api: httpx.Client, name: str, body: bytes, content_type: str
) -> None:
    response = small_api.post(
        f"/v1/models/{name}/predict", content=body, headers={"content-type": content_type}
    )
    assert response.status_code < 500

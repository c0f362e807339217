"""`serving.v2_requests`: the one-pass reading of the commonest infer body gives the rows the
general checks give, and no datatype, however malformed, escapes as anything but a 400."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.inputs import InputLimits
from serving.v2_requests import parse_infer_body
from serving.v2_tensors import V2Error
from tests.support.fuzz import json_values, scalars

LIMITS = InputLimits(max_features=8, max_instances=4)
tensor = st.fixed_dictionaries(
    {
        "name": st.text(max_size=4),
        "datatype": st.sampled_from(["FP16", "FP32", "FP64", "INT64", "BOOL"]) | json_values,
        "value": st.floats(allow_nan=False, allow_infinity=False)
        | st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | scalars,  # not arrays: [[v]] is also a valid row of shape [1]
    }
)


def _parsed(inputs: list[dict[str, Any]]) -> Any:
    try:
        return parse_infer_body(json.dumps({"inputs": inputs}).encode(), LIMITS)
    except V2Error as exc:
        return ("error", exc.status)


@settings(max_examples=400)
@given(tensors=st.lists(tensor, min_size=1, max_size=6))
def test_one_row_read_in_one_pass_equals_the_general_reading(tensors: list[dict]) -> None:
    """Shape [1] takes the one-pass reader when it can; shape [1, 1] always the general checks:
    the same rows (order, floats for integers) or both a 400."""
    flat = [{"name": t["name"], "shape": [1], "datatype": t["datatype"], "data": [t["value"]]}
            for t in tensors]  # fmt: skip
    nested = [{**t, "shape": [1, 1], "data": [[t["data"][0]]]} for t in flat]
    fast, general = _parsed(flat), _parsed(nested)
    assert fast == general
    if fast[0] != "error":
        assert [list(row) for row in fast[1]] == [list(row) for row in general[1]]
        assert [type(v) for v in fast[1][0].values()] == [type(v) for v in general[1][0].values()]


@pytest.mark.parametrize("datatype", [[], {}, ["FP64"], {"FP64": 1}, 64, None])
@pytest.mark.parametrize("shape", [[1], [2]])
def test_a_datatype_that_is_not_a_string_is_a_400(datatype: Any, shape: list[int]) -> None:
    """It used to raise TypeError (unhashable) and answer 500."""
    body = {
        "inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": [1.0] * shape[0]}]
    }
    with pytest.raises(V2Error) as raised:
        parse_infer_body(orjson.dumps(body), LIMITS)
    assert raised.value.status == 400 and "datatype" in raised.value.message

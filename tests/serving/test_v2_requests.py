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


def _error(body: dict[str, Any], limits: InputLimits = LIMITS) -> str:
    """The message of the 400 that ``body`` gets."""
    with pytest.raises(V2Error) as raised:
        parse_infer_body(orjson.dumps(body), limits)
    assert raised.value.status == 400
    return raised.value.message


X = {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.5]}
COLOR = {"name": "c", "shape": [1], "datatype": "BYTES", "data": ["red"]}


def test_an_output_requested_twice_is_a_400() -> None:
    """Each one would be written again in full: 3000 times ``prediction`` made a 71 kB request
    a 54 MB answer."""
    body = {"inputs": [X], "outputs": [{"name": "prediction"}, {"name": "proba_true"}] * 2}
    assert _error(body) == "output 'prediction' is requested twice"
    one_each = {"inputs": [X], "outputs": [{"name": "prediction"}, {"name": "proba_true"}]}
    assert parse_infer_body(orjson.dumps(one_each), LIMITS)[2] == one_each["outputs"]


def test_the_classification_extension_is_a_400() -> None:
    """Triton's ``classification`` output parameter was silently ignored."""
    output = {"name": "prediction", "parameters": {"classification": 2, "binary_data": False}}
    message = _error({"inputs": [X], "outputs": [output]})
    assert message == "output 'prediction': the classification extension is not supported"


@pytest.mark.parametrize("shape", [[1.0], [True], [1, 1.0], [True, 1]])
@pytest.mark.parametrize("others", [[], [COLOR]])
def test_a_shape_of_other_numbers_than_integers_is_a_400(
    shape: list[Any], others: list[Any]
) -> None:
    """``[1.0]`` and ``[true]`` equal ``[1]``: the one-pass reader took them, the general
    checks (with a BYTES input) refused them; both refuse them now."""
    message = _error({"inputs": [{**X, "shape": shape}, *others]})
    assert message.startswith("input 'x': shape must be [n] or [n, 1]")


@pytest.mark.parametrize("content_type", [None, "str", "json"])
def test_features_as_json_rows_with_mlserver_string_codec(content_type: str | None) -> None:
    """MLServer's StringCodec adds ``content_type: "str"``: the input named ``features`` was
    then one string feature, and the model answered an empty row."""
    tensor: dict[str, Any] = {
        "name": "features",
        "shape": [2],
        "datatype": "BYTES",
        "data": ['{"x": 1.5, "c": "red"}', '{"x": 2}'],
    }
    if content_type is not None:
        tensor["parameters"] = {"content_type": content_type}
    rows = parse_infer_body(orjson.dumps({"inputs": [tensor]}), LIMITS)[1]
    assert rows == [{"x": 1.5, "c": "red"}, {"x": 2}]
    # another content type keeps it a string feature named features
    pd = {**tensor, "parameters": {"content_type": "pd"}}
    assert parse_infer_body(orjson.dumps({"inputs": [pd]}), LIMITS)[1][0] == {
        "features": '{"x": 1.5, "c": "red"}'
    }


def test_more_values_than_the_cell_limit_is_a_400_before_any_value_is_read() -> None:
    """Rows × inputs: a column spends 2 bytes on a value where /v1 writes its feature's name
    too. Refused from the shapes, before any value is read (the last one here is wrong)."""
    limits = InputLimits(max_features=8, max_instances=4, max_cells=6)

    def inputs(n_inputs: int) -> list[dict[str, Any]]:
        return [
            {"name": f"x{i}", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}
            for i in range(n_inputs)
        ]

    assert len(parse_infer_body(orjson.dumps({"inputs": inputs(3)}), limits)[1]) == 2
    wrong = inputs(4)
    wrong[-1]["data"] = ["not a number", 2.0]
    message = _error({"inputs": wrong}, limits)
    assert message == "2 rows of 4 inputs: 8 values, the limit is 6 (rows × inputs)"
    assert InputLimits().max_cells == 1_000_000


@pytest.mark.parametrize(
    ("datatype", "value", "shown"),
    [
        ("FP16", 1e10, "10000000000.0"),
        ("FP16", -65520.0, "-65520.0"),
        ("FP16", 70000, "70000.0"),
        ("FP32", 1e300, "1e+300"),
        ("FP32", -3.5e38, "-3.5e+38"),
        ("FP32", 2.0**128 - 2.0**103, "3.4028235677973366e+38"),
    ],
)
@pytest.mark.parametrize("shape", [[1], [1, 1], [2]])
def test_fp16_and_fp32_values_out_of_range_are_a_400(
    datatype: str, value: float, shown: str, shape: list[int]
) -> None:
    """Values the datatype rounds to infinity, through the one-pass reader ([1]) and the
    general checks ([1, 1], [2])."""
    data: list[Any] = [value] if shape == [1] else [[value]] if shape == [1, 1] else [0.5, value]
    tensor = {"name": "x", "shape": shape, "datatype": datatype, "data": data}
    message = _error({"inputs": [tensor]})
    largest = {"FP16": "65504", "FP32": "3.4028234663852886e+38"}[datatype]
    assert message == f"input 'x': {shown} is out of the range of {datatype} (±{largest})"


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("FP16", 65504.0),
        ("FP16", -65519.99),  # rounds to -65504 as an FP16
        ("FP32", 3.4028234663852886e38),
        ("FP32", 3.4028235e38),  # the largest FP32 as float32 writers write it
        ("FP32", -1e38),
        ("FP64", 1e300),
    ],
)
def test_values_in_range_are_read(datatype: str, value: float) -> None:
    for shape, data in (([1], [value]), ([1, 1], [[value]])):
        tensor = {"name": "x", "shape": shape, "datatype": datatype, "data": data}
        assert parse_infer_body(orjson.dumps({"inputs": [tensor]}), LIMITS)[1] == [{"x": value}]

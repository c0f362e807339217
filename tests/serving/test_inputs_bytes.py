"""`serving.inputs.linear_sum`: the commonest `/v1` predict body's linear sum read from its bytes
(`serving/_v2_body.c`'s ``read_dot``) is, float for float, the sum of the features the general
reading gives (orjson, then `numeric_features`, then the compiled model's sum), and any other
body, however close, is left to the general reading (None). `serving.inputs.read_features`
(``read_features``, the same reader building the features) gives those very features: the
same names in the same order, each value of the same type, float for float."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners.linear import _sum
from serving.inputs import (
    InputError,
    InputLimits,
    linear_sum,
    numeric_features,
    predict_features,
    read_dot_in_c,
    read_features,
    read_features_in_c,
)

LIMITS = InputLimits(max_features=6)
PARAMS: dict[Any, tuple[float, float, float]] = {
    "a": (0.5, 2.0, 1.25),
    "b": (-3.0, 0.1, -0.75),
    "long name with spaces": (1e6, 3.0, 1e-3),
    "é": (0.0, 1.0, 2.0),  # not ASCII: a body naming it is left to the general reading
    "x:1": (2.0, 4.0, 0.5),
}
KNOWN = ["a", "b", "long name with spaces", "é", "x:1"]
TRICKY = ['"', "\\", ":", ",", "}", "{", "\n", "features", "id", " ", "\u2028"]
names = st.sampled_from(KNOWN) | st.sampled_from(TRICKY) | st.text(max_size=4)
ODD_LITERALS = [
    "-0", "0", "-0.0", "1E+2", "1e-5", "0.10", "12345678901234567890123", "9007199254740993",
    "-123456789012345678", "1234567890123456789", "1e400", "1e-400", "true", "null", '"1"',
    "[1]", "01", "1.", ".5", "NaN", "-", "2.5e", "4.9406564584124654e-324",
]  # fmt: skip
json_numbers = st.from_regex(
    r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
)
literals = (
    st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | st.integers(min_value=-(2**63), max_value=2**63).map(str)
    | st.sampled_from(ODD_LITERALS)
    | json_numbers
)
spaces = st.sampled_from(["", " ", "\n", "\t", "  \r\n"])


def in_c(raw: bytes, params: dict[Any, Any] = PARAMS) -> float | None:
    assert read_dot_in_c is not None, "serving/_v2_body.c was not built: pip install -e . again"
    return linear_sum(raw, params, LIMITS)


def general(raw: bytes, params: dict[Any, Any] = PARAMS) -> float | None:
    """The sum the general reading leads to, or None when it answers otherwise than with the
    compiled model's sum of numbers (an error, another body, a batch, a null, a boolean).
    `numeric_features` reads the commonest bodies; one whose values' sum overflows it leaves
    to `predict_features`, which gives the same features."""
    try:
        body = orjson.loads(raw)
        features = numeric_features(body, LIMITS) or predict_features(body, LIMITS)
    except (orjson.JSONDecodeError, InputError):
        return None
    if not isinstance(features, dict) or not all(
        type(v) in (int, float) and math.isfinite(v) for v in features.values()
    ):
        return None
    return _sum(features, params.get)


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


def typed(features: dict[str, Any]) -> list[tuple[str, type, Any]]:
    """Name, type and value (a float's bits) of each feature, in order: ``1 == 1.0`` and
    ``0.0 == -0.0`` for ``==``, not here."""
    return [(k, type(v), bits(v) if type(v) is float else v) for k, v in features.items()]


def assert_alike(raw: bytes, params: dict[Any, Any] = PARAMS) -> float | None:
    """``raw``'s sum and features read from the bytes are the general reading's, when read."""
    got = in_c(raw, params)
    if got is not None:
        want = general(raw, params)
        assert want is not None, raw
        assert bits(got) == bits(want), (raw, got, want)
    assert read_features_in_c is not None
    features = read_features(raw, LIMITS)
    if features is not None:
        body = orjson.loads(raw)  # raises for a body that is not JSON: a failure
        wanted = numeric_features(body, LIMITS) or predict_features(body, LIMITS)
        assert isinstance(wanted, dict) and typed(features) == typed(wanted), (raw, features)
    return got


def body(pairs: list[tuple[str, str]], space: str = " ", ensure_ascii: bool = True) -> bytes:
    entries = [f"{json.dumps(n, ensure_ascii=ensure_ascii)}:{space}{v}" for n, v in pairs]
    inner = f",{space}".join(entries)
    return f'{{"features":{space}{{{inner}}}}}'.encode()


@pytest.mark.parametrize("dumps", [lambda b: json.dumps(b).encode(), orjson.dumps])
def test_the_commonest_bodies_are_read_from_their_bytes(dumps: Any) -> None:
    features = {"a": 1.5, "zzz": 3, "b": -2, "x:1": 3e-7, "long name with spaces": 12345.678}
    raw = dumps({"features": features})
    got = assert_alike(raw)
    assert got is not None and got == _sum(features, PARAMS.get)
    assert assert_alike(dumps({"features": {}})) == 0.0


@given(
    pairs=st.lists(st.tuples(names, literals), max_size=8),
    space=spaces,
    ensure_ascii=st.booleans(),
)
@settings(max_examples=400, deadline=None)
def test_any_body_is_read_as_the_general_reading_reads_it(
    pairs: list[tuple[str, str]], space: str, ensure_ascii: bool
) -> None:
    assert_alike(body(pairs, space, ensure_ascii))


@given(raw=st.binary(max_size=60), cut=st.integers(min_value=0, max_value=80))
@settings(max_examples=300, deadline=None)
def test_bytes_cut_or_slipped_in_are_never_read_otherwise(raw: bytes, cut: int) -> None:
    base = body([("a", "1.5"), ("b", "-2"), ("c", "7")])
    at = min(cut, len(base))
    assert_alike(base[:at] + raw + base[at:])
    assert_alike(base[:at])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"features": {"a": 1, "a": 2}}',  # a known name twice: orjson keeps 2 at a's place
        b'{"features": {"a": 1}, "id": "p1"}',  # an id: the prediction is logged
        b'{"id": "p1", "features": {"a": 1}}',
        b'{"instances": [{"a": 1}]}',
        b'{"features": {"a": true}}',
        b'{"features": {"a": null}}',
        b'{"features": {"a": "1"}}',
        b'{"features": {"a": 1e400}}',
        b'{"features": {"\\u0061": 1}}',  # an escape
        b'{"features": {"\xc3\xa9": 1}}',  # past ASCII
        b'{"features": {"a": 1,}}',
        b'{"features": {"a": 1}} x',
        b'{"features": {"a" 1}}',
        b'{"features": [1]}',
    ],
)
def test_other_bodies_are_left_to_the_general_reading(raw: bytes) -> None:
    assert in_c(raw) is None
    assert read_features(raw, LIMITS) is None


def test_a_name_given_twice_is_found_past_the_stack_set() -> None:
    """Past 64 known names the set of names seen moves to the heap, and still finds a name
    given twice (by its entry: names sharing one entry object are taken for one name, which
    only leaves the body to the general reading)."""
    params = {f"f{i}": tuple([0.0, 1.0, 1.0]) for i in range(300)}  # an entry each
    limits = InputLimits(max_features=1000)
    distinct = [(f"f{i}", str(i)) for i in range(300)]
    assert read_dot_in_c is not None
    assert read_dot_in_c(body(distinct), params, limits.max_features) == sum(range(300))
    again = [*distinct, ("f7", "1")]
    assert read_dot_in_c(body(again), params, limits.max_features) is None
    shared = {f"f{i}": (0.0, 1.0, 1.0) for i in range(300)}  # one constant tuple
    assert read_dot_in_c(body(distinct), shared, limits.max_features) is None


def test_more_features_than_the_limit_are_left_to_the_general_reading() -> None:
    pairs = [(f"u{i}", "1") for i in range(LIMITS.max_features + 1)]
    assert in_c(body(pairs)) is None
    assert in_c(body(pairs[:-1])) == 0.0


def test_a_params_entry_it_cannot_use_leaves_the_body_to_the_others() -> None:
    raw = body([("a", "1")])
    assert in_c(raw, {"a": (0, 1.0, 1.0)}) is None  # an int mean: Python's int arithmetic
    assert in_c(raw, {"a": (0.0, 0.0, 1.0)}) is None  # a std of 0
    assert in_c(raw, {"a": [0.0, 1.0, 1.0]}) is None
    assert in_c(raw, {"b": (0, 1.0, 1.0)}) == 0.0  # an entry the body does not name: unread


def test_a_limit_past_the_c_range_is_no_limit_and_a_negative_one_reads_nothing() -> None:
    """`max_features` is a setting with no upper bound: 2**63 and more read as no limit (they
    raised OverflowError on every request); a negative one, which the general reading meets
    with a 422 even for an empty object, reads nothing."""
    from serving._v2_body import read_row, read_row_dot

    raw = body([("a", "1"), ("b", "2")])
    want = in_c(raw)
    assert want is not None and read_dot_in_c is not None
    row = b'{"inputs":[{"name":"a","shape":[1],"datatype":"FP64","data":[1]}]}'
    for limit in (2**63, 2**100):
        assert read_dot_in_c(raw, PARAMS, limit) == want
        assert read_row(row, limit) == {"a": 1.0}
        assert read_row_dot(row, PARAMS, limit) == 1.25 * ((1.0 - 0.5) / 2.0)
    for limit in (-1, -(2**100)):
        assert read_dot_in_c(b'{"features": {}}', PARAMS, limit) is None
        assert read_row(row, limit) is None and read_row_dot(row, PARAMS, limit) is None

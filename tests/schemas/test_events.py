"""Event schemas: explicit limits, rejections that name the reason, exported JSON Schema."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import SchemaError
from schemas.events import EventCodec, Limits
from schemas.jsonschema import HERE, render

codec = EventCodec(Limits(max_event_bytes=2000, max_features=5, max_id_length=8))


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b'{"id": "a", "time": 1, "features": {"x": 1e400}}', "not_finite", "features"),
        (b'{"id": "a", "time": "t", "features": {}}', "schema", "time"),
        (b'{"id": "", "time": 1, "features": {}}', "empty_id", "id"),
        (b'{"id": "123456789", "time": 1, "features": {}}', "id_too_long", "id"),
        (b'{"id": "a", "time": 1, "features": {"x": [1]}}', "schema", "features"),
        (b'{"id": "a", "time": 1, "features": {}, "extra": 1}', "schema", "extra"),
        (b'{"id": "a", "time": 1}', "schema", "features"),
        (b"\xff\xfe", "bad_json", None),
    ],
)
def test_feature_rejections_name_reason_and_field(raw: bytes, reason: str, field: str) -> None:
    with pytest.raises(SchemaError) as info:
        codec.decode_feature(raw)
    assert (info.value.reason, info.value.field) == (reason, field)


def test_limits_on_size_and_feature_count() -> None:
    many = {"id": "a", "time": 1, "features": {f"f{i}": i for i in range(6)}}
    with pytest.raises(SchemaError, match="too_many_features"):
        codec.decode_feature(orjson.dumps(many))
    big = {"id": "a", "time": 1, "features": {"s": "x" * 3000}}
    with pytest.raises(SchemaError, match="too_large"):
        codec.decode_feature(orjson.dumps(big))


def test_label_types() -> None:
    for label in (True, 3, 2.5, "spam"):
        raw = orjson.dumps({"id": "a", "time": 2, "label": label})
        decoded = codec.decode_label(raw).label
        assert decoded == label and type(decoded) is type(label)
    with pytest.raises(SchemaError):
        codec.decode_label(b'{"id": "a", "time": 2, "label": null}')


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**53), 2**53),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=5),
        ),
        max_size=5,
    ),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_round_trip(features: dict[str, object], time: float) -> None:
    raw = orjson.dumps({"id": "x", "time": time, "features": features})
    event = codec.decode_feature(raw)
    assert event.features == features
    assert orjson.loads(codec.encode(event)) == orjson.loads(raw)


def test_exported_json_schema_is_current() -> None:
    for name, text in render().items():
        assert (HERE / name).read_text() == text, f"run python -m schemas.jsonschema ({name})"


def test_a_message_without_value_is_refused_not_a_crash() -> None:
    """A Kafka tombstone (a message whose value is null) used to crash the learner with
    ``TypeError: len(None)``: it is refused with its reason, like any bad event."""
    codec = EventCodec(Limits())
    good = orjson.dumps({"id": "a", "time": 1, "features": {"x": 1}})
    events, refused = codec.decode_features([good, None, good])  # type: ignore[list-item]
    assert [e.id for e in events] == ["a", "a"]
    assert [(i, e.reason) for i, e in refused] == [(1, "no_value")]
    _, refused = codec.decode_labels([None])  # type: ignore[list-item]
    assert refused[0][1].reason == "no_value"


def test_decoded_events_are_not_tracked_by_the_collector() -> None:
    """The learner holds tens of thousands of events read ahead: none of them (a feature event
    with what the API served, a label) is left for the collector's young passes to walk."""
    import gc

    codec = EventCodec(Limits())
    raw = (
        b'{"id":"a","time":1.0,"features":{"x":1.0,"c":"red","m":null},'
        b'"served":{"model":"m","version":2,"prediction":true,"probabilities":{"true":0.7},'
        b'"shadows":{"s":{"prediction":false,"versions":{"m":1}}}}}'
    )
    (feature,), _ = codec.decode_features([raw])
    (label,), _ = codec.decode_labels([b'{"id":"a","time":2.0,"label":true}'])
    assert feature.served is not None and feature.served.shadows is not None
    for obj in (feature, feature.features, feature.served, feature.served.shadows["s"], label):
        assert not gc.is_tracked(obj), obj

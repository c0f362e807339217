"""Feature and label events: the wire format, its limits and a fast validating decoder.

Events are JSON objects (UTF-8). A feature event carries the inputs of one prediction, a label
event the outcome observed later for the same ``id``. The Kafka message key is the id, so that a
label lands in the same partition as its features.

>>> codec = EventCodec(Limits())
>>> event = codec.decode_feature(b'{"id": "a1", "time": 3, "features": {"x": 1.5, "c": "red"}}')
>>> event.id, event.time, event.features
('a1', 3.0, {'x': 1.5, 'c': 'red'})
>>> codec.decode_label(b'{"id": "a1", "time": 5, "label": true}').label
True
>>> codec.decode_feature(b'{"id": "a1", "time": 3, "features": {"x": 1e999}}')
Traceback (most recent call last):
...
schemas.errors.SchemaError: not_finite at features: Number out of range
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from schemas.errors import SchemaError

FeatureValue = int | float | str | bool | None
Label = bool | int | float | str

# The events are not tracked by the garbage collector (``gc=False``): they hold strings,
# numbers and dicts of them, never a reference cycle, and the learner keeps tens of thousands
# of them read ahead, which each young collection would otherwise walk.


class ShadowAnswer(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """What a graph's shadow branch answered for the same features (not served), and
    ``versions``: the models it used, name → version (absent from events logged before it was
    recorded). The learner scores it per graph version, as the primary answer."""

    prediction: Label | None = None
    probabilities: dict[str, float] | None = None
    versions: dict[str, int] | None = None


class Served(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """What the API answered for these features (``POST .../predict`` with an id): the learner
    scores it against the label, per model and version (`riverstream_served_metric`).

    For a serving graph (``POST /v1/graphs/{name}/predict`` with an id and ``"log": true``),
    ``model`` is the graph and ``version`` its version, ``versions`` the models it used, and
    ``shadows`` what each shadow branch answered, by its path, with the models it used and
    their versions (scored the same way, and compared with the primary answer on the labels
    both scored)."""

    model: str
    version: int
    prediction: Label | None = None
    probabilities: dict[str, float] | None = None
    versions: dict[str, int] | None = None
    shadows: dict[str, ShadowAnswer] | None = None


class FeatureEvent(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True, gc=False
):
    """The inputs of one prediction, at event time ``time`` (and, when the API logged it, the
    answer it served)."""

    id: str
    time: float
    features: dict[str, FeatureValue]
    served: Served | None = None


class LabelEvent(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """The outcome for the feature event with the same ``id``, known at event time ``time``."""

    id: str
    time: float
    label: Label


_Event = TypeVar("_Event", FeatureEvent, LabelEvent)


@dataclass(frozen=True, slots=True)
class Limits:
    """Explicit bounds on what an event may contain."""

    max_event_bytes: int = 1_048_576
    max_features: int = 10_000
    max_id_length: int = 256

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(settings.max_event_bytes, settings.max_features, settings.max_id_length)


_PATH = re.compile(r"at `\$(?P<path>[^`]*)`")
_NAMED = re.compile(r"field `(?P<name>[^`]*)`")


def _field_of(message: str) -> str | None:
    """Turn msgspec's ``$.features[...]`` path into ``features``."""
    match = _PATH.search(message)
    path = match.group("path").lstrip(".").replace("[...]", "") if match else ""
    named = _NAMED.search(message)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    return path or None


class EventCodec:
    """Decodes and encodes events, enforcing `Limits`; every rejection is a `SchemaError`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._features = msgspec.json.Decoder(FeatureEvent)
        self._labels = msgspec.json.Decoder(LabelEvent)
        self._encoder = msgspec.json.Encoder()
        self._max_bytes = limits.max_event_bytes
        self._max_id = limits.max_id_length
        self._max_features = limits.max_features

    def decode_feature(self, raw: bytes) -> FeatureEvent:
        """Decode and validate a feature event, or raise `SchemaError` naming the reason."""
        events, refused = self.decode_features([raw])
        if refused:
            raise refused[0][1]
        return events[0]

    def decode_label(self, raw: bytes) -> LabelEvent:
        """Decode and validate a label event, or raise `SchemaError` naming the reason."""
        events, refused = self.decode_labels([raw])
        if refused:
            raise refused[0][1]
        return events[0]

    def decode_features(
        self, raws: list[bytes]
    ) -> tuple[list[FeatureEvent], list[tuple[int, SchemaError]]]:
        """`decode_feature` over a run: the good events in order, and ``(index, error)`` for
        each refused one (one call per run, not per event)."""
        return self._decode_run(self._features, raws, self._refuse_feature, count_features=True)

    def decode_labels(
        self, raws: list[bytes]
    ) -> tuple[list[LabelEvent], list[tuple[int, SchemaError]]]:
        """`decode_label` over a run: the good events in order, and ``(index, error)`` for each
        refused one."""
        return self._decode_run(self._labels, raws, self._refuse_label, count_features=False)

    def _decode_run(
        self,
        decoder: msgspec.json.Decoder[_Event],
        raws: list[bytes],
        refuse: Callable[[bytes], _Event],
        *,
        count_features: bool,
    ) -> tuple[list[_Event], list[tuple[int, SchemaError]]]:
        # The fast path: msgspec validates types in C; JSON has no NaN or Infinity literals and
        # msgspec refuses numbers that overflow a float, so every number is finite already.
        # What it refuses is decoded again by ``refuse``, slowly, to name the reason.
        # ``decode`` is read as returning Any: ``event.features`` is only looked at when
        # ``count_features``, i.e. for feature events, which the type checker cannot follow.
        decode: Callable[[bytes], Any] = decoder.decode
        max_bytes = self._max_bytes
        max_id, max_features = self._max_id, self._max_features
        events: list[_Event] = []
        refused: list[tuple[int, SchemaError]] = []
        for index, raw in enumerate(raws):
            if raw is not None and len(raw) <= max_bytes:
                try:
                    event = decode(raw)
                except msgspec.MsgspecError:
                    pass
                else:
                    if 0 < len(event.id) <= max_id and (
                        not count_features or len(event.features) <= max_features
                    ):
                        events.append(event)
                        continue
            try:
                events.append(refuse(raw))  # pragma: no cover - always raises
            except SchemaError as exc:
                refused.append((index, exc))
        return events, refused

    def _refuse_feature(self, raw: bytes) -> FeatureEvent:
        event: FeatureEvent = self._decode(self._features, raw)
        self._check_common(event.id, event.time)
        features = event.features
        if len(features) > self.limits.max_features:
            raise SchemaError(
                "too_many_features",
                "features",
                f"{len(features)} features, the limit is {self.limits.max_features}",
            )
        return event  # pragma: no cover - only reached for events the fast path accepts

    def _refuse_label(self, raw: bytes) -> LabelEvent:
        event: LabelEvent = self._decode(self._labels, raw)
        self._check_common(event.id, event.time)
        return event  # pragma: no cover - only reached for events the fast path accepts

    def encode(self, event: FeatureEvent | LabelEvent) -> bytes:
        return self._encoder.encode(event)

    def _decode(self, decoder: msgspec.json.Decoder[_Event], raw: bytes | None) -> _Event:
        if raw is None:  # a Kafka message with no value (a tombstone): nothing to learn
            raise SchemaError("no_value", None, "the message has no value (a tombstone)")
        if len(raw) > self.limits.max_event_bytes:
            raise SchemaError(
                "too_large", None, f"{len(raw)} bytes, the limit is {self.limits.max_event_bytes}"
            )
        try:
            return decoder.decode(raw)
        except msgspec.ValidationError as exc:
            message = str(exc)
            field = _field_of(message)
            reason = "not_finite" if "Number out of range" in message else "schema"
            raise SchemaError(reason, field, _PATH.sub("", message).strip(" -")) from None
        except msgspec.DecodeError as exc:
            raise SchemaError("bad_json", None, str(exc)) from None

    def _check_common(self, event_id: str, time: float) -> None:
        if not event_id:
            raise SchemaError("empty_id", "id", "id must not be empty")
        if len(event_id) > self.limits.max_id_length:
            raise SchemaError(
                "id_too_long",
                "id",
                f"{len(event_id)} characters, limit {self.limits.max_id_length}",
            )
        if not math.isfinite(time):  # pragma: no cover - msgspec rejects these already
            raise SchemaError("not_finite", "time", "number is not finite")


def feature_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a feature event, for producers in other languages."""
    return _with_limits(msgspec.json.schema(FeatureEvent), "FeatureEvent")


def label_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a label event, for producers in other languages."""
    return _with_limits(msgspec.json.schema(LabelEvent), "LabelEvent")


def _with_limits(schema: dict[str, Any], name: str) -> dict[str, Any]:
    limits = Limits()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    props = schema["$defs"][name]["properties"]
    props["id"].update(minLength=1, maxLength=limits.max_id_length)
    if "features" in props:
        props["features"]["maxProperties"] = limits.max_features
    schema["$comment"] = (
        f"Numbers must be finite; an encoded event may not exceed {limits.max_event_bytes} bytes. "
        "The Kafka message key is the event id."
    )
    return schema


def without_missing(x: dict[str, Any]) -> dict[str, Any]:
    """``x`` without its ``None`` values: a null feature is a missing one (River's convention).

    >>> without_missing({"a": 1.0, "b": None}), without_missing({"a": 1.0})
    ({'a': 1.0}, {'a': 1.0})
    """
    if None in x.values():
        return {k: v for k, v in x.items() if v is not None}
    return x

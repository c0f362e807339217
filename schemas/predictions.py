"""Asynchronous prediction requests and answers: the wire format of the request and prediction
topics, with the same limits and rejection reasons as feature events.

A request asks one target (a model name, or a serving graph's) to answer for one set of
features.
The Kafka key of both messages is the id, and the request's ``x-`` headers are copied onto its
answer, so a client can correlate by key, by id or by its own header.

>>> codec = RequestCodec(Limits())
>>> request = codec.decode(b'{"id": "r1", "target": "lr", "features": {"x": 1.5}}')
>>> request.id, request.target, request.features
('r1', 'lr', {'x': 1.5})
>>> codec.decode(b'{"id": "r1", "target": "no/such", "features": {}}')
Traceback (most recent call last):
...
schemas.errors.SchemaError: bad_target at target: 'no/such' is not a model name: letters, digits and _ . - (at most 128 characters, starting with a letter or digit)
>>> codec.decode(b'{"id": "r1", "features": {}}')
Traceback (most recent call last):
...
schemas.errors.SchemaError: schema at target: Object missing required field `target`
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.errors import SchemaError
from schemas.events import _PATH, FeatureValue, Label, Limits, _field_of
from schemas.names import MODEL_NAME_MAX, MODEL_NAME_RULE, is_model_name

HEADER_PREFIX = "x-"
"""Request headers whose name starts with this are copied onto the answer."""


class PredictionRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One asynchronous prediction request: ``target`` answers for ``features``."""

    id: str
    target: str
    features: dict[str, FeatureValue]


class PredictionAnswer(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The answer to the request with the same ``id``.

    ``versions`` maps each model that answered to its version (one entry for a model target);
    ``decided_by`` names what produced the prediction (the model itself for a model target).
    A graph target's answer also has the fields of ``POST /v1/graphs/{name}/predict``:
    ``graph_version``, ``kind``, ``path`` (the choices made), ``decision`` and ``reason`` (the
    matching rule's), and ``decided_by`` is the node or rule that decided; a model target's
    answer has none of them.
    ``probabilities`` are given for classifiers, keyed by the label as JSON object keys
    (``"true"``/``"false"`` for boolean labels), exactly as ``POST /v1/models/{name}/predict``
    gives them. ``requested_at`` is the request message's Kafka timestamp and ``answered_at``
    the worker's clock when it answered, both in seconds since the epoch.
    ``shadow``: set on the answer of a graph's shadow branch (its path) that the API logged
    beside the served answer (``POST /v1/graphs/{name}/predict`` with ``"log": true``): it was
    not served.
    """

    id: str
    target: str
    versions: dict[str, int]
    prediction: Label | None
    probabilities: dict[str, float] | None
    decided_by: str
    requested_at: float
    answered_at: float
    graph_version: int | None = None
    kind: str | None = None
    path: list[str] | None = None
    decision: str | None = None
    reason: str | None = None
    shadow: str | None = None


class RequestCodec:
    """Decodes and validates requests; every rejection is a `SchemaError` naming the reason."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._decoder = msgspec.json.Decoder(PredictionRequest)

    def decode(self, raw: bytes) -> PredictionRequest:
        """The request in ``raw``, or a `SchemaError` (``too_large``, ``bad_json``, ``schema``,
        ``not_finite``, ``empty_id``, ``id_too_long``, ``too_many_features``, ``bad_target``)."""
        limits = self.limits
        if len(raw) > limits.max_event_bytes:
            raise SchemaError(
                "too_large", None, f"{len(raw)} bytes, the limit is {limits.max_event_bytes}"
            )
        try:
            request = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            message = str(exc)
            reason = "not_finite" if "Number out of range" in message else "schema"
            raise SchemaError(
                reason, _field_of(message), _PATH.sub("", message).strip(" -")
            ) from None
        except msgspec.DecodeError as exc:
            raise SchemaError("bad_json", None, str(exc)) from None
        if not request.id:
            raise SchemaError("empty_id", "id", "id must not be empty")
        if len(request.id) > limits.max_id_length:
            raise SchemaError(
                "id_too_long", "id", f"{len(request.id)} characters, limit {limits.max_id_length}"
            )
        if len(request.features) > limits.max_features:
            raise SchemaError(
                "too_many_features",
                "features",
                f"{len(request.features)} features, the limit is {limits.max_features}",
            )
        if not is_model_name(request.target):
            raise SchemaError(
                "bad_target", "target", f"{request.target!r} is not a model name: {MODEL_NAME_RULE}"
            )
        return request


def request_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a prediction request, for producers in other languages."""
    limits = Limits()
    schema = msgspec.json.schema(PredictionRequest)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    props = schema["$defs"]["PredictionRequest"]["properties"]
    props["id"].update(minLength=1, maxLength=limits.max_id_length)
    props["target"].update(pattern=rf"^[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MODEL_NAME_MAX - 1}}}$")
    props["features"]["maxProperties"] = limits.max_features
    schema["$comment"] = (
        f"Numbers must be finite; an encoded request may not exceed {limits.max_event_bytes} "
        "bytes. The Kafka message key is the request id; headers named x-* are copied onto the "
        "answer."
    )
    return schema


def answer_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a prediction answer, for consumers in other languages."""
    schema = msgspec.json.schema(PredictionAnswer)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$comment"] = (
        "The Kafka message key is the request id; the request's x-* headers are copied. "
        "Delivery is at-least-once: an id may be answered more than once, and answers with the "
        "same id and versions are equal except for answered_at."
    )
    return schema

"""Documentation of the API: response models and request examples for the OpenAPI schema.

Handlers parse raw bodies (`serving.inputs`) and return orjson responses, so these models only
describe the API; they are never used to validate or serialise a request.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serving.v2_tensors import DATATYPES

FeatureValue = float | int | str | bool | None


class Prediction(BaseModel):
    prediction: Any = Field(
        description="predict_one (classifiers, regressors) or score_one (anomaly models)",
        examples=[True],
    )
    probabilities: dict[str, float] | None = Field(
        None,
        description="predict_proba_one, for classifiers",
        examples=[{"false": 0.2, "true": 0.8}],
    )


_VERSION = "The version that answered, or the one a live update continues."
_SAMPLES = "Samples the answering state learned: with version, names it exactly."


class PredictResponse(Prediction):
    model: str = Field(examples=["fraud"])
    version: int = Field(examples=[42], description=_VERSION)
    samples_learned: int | None = Field(examples=[120_345], description=_SAMPLES)


class BatchPredictResponse(BaseModel):
    model: str = Field(examples=["fraud"])
    version: int = Field(examples=[42], description=_VERSION)
    samples_learned: int | None = Field(examples=[120_345], description=_SAMPLES)
    predictions: list[Prediction] = Field(description="One per instance, in order.")


class ModelInfo(BaseModel):
    model: str
    version: int
    kind: str = Field(examples=["classifier"])
    spec: str | None = Field(None, examples=["logreg"])
    created_at: float | None = Field(None, description="Unix time the snapshot was written.")
    age_seconds: float | None = Field(None, description="Seconds since the snapshot was written.")
    loaded_at: float = Field(description="Unix time this process started serving it.")
    samples_learned: int | None = None
    live: bool = Field(
        False, description="A live update continuing version (see RIVERSTREAM_LIVE_EVERY_SECONDS)."
    )
    metrics: dict[str, float] = Field(examples=[{"Accuracy": 0.91}])
    size: int | None = Field(None, description="Signed snapshot size in bytes.")
    sha256: str | None = None
    river_version: str | None = None


class ModelList(BaseModel):
    models: list[ModelInfo]


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(examples=[["body", "features", "x"]])
    msg: str = Field(examples=["number is not finite"])
    type: str = Field(examples=["finite_number"])


class ValidationErrorBody(BaseModel):
    detail: list[ErrorItem]


class Message(BaseModel):
    detail: str


_FEATURES = {
    "type": "object",
    "description": "Feature name → value (finite number, string, boolean or null).",
    "additionalProperties": {"type": ["number", "string", "boolean", "null"]},
}

PREDICT_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "Model name.",
            "example": "fraud",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "title": "Single",
                            "type": "object",
                            "properties": {"features": _FEATURES},
                            "required": ["features"],
                            "additionalProperties": False,
                        },
                        {
                            "title": "Batch",
                            "type": "object",
                            "properties": {"instances": {"type": "array", "items": _FEATURES}},
                            "required": ["instances"],
                            "additionalProperties": False,
                        },
                    ]
                },
                "examples": {
                    "single": {
                        "summary": "One prediction",
                        "value": {"features": {"amount": 12.5, "country": "FR", "new": True}},
                    },
                    "batch": {
                        "summary": "Several predictions",
                        "value": {"instances": [{"amount": 12.5}, {"amount": 830.0}]},
                    },
                },
            }
        },
    },
}

PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": PredictResponse | BatchPredictResponse,
        "description": "Prediction(s) of the version currently served.",
        "content": {
            "application/json": {
                "examples": {
                    "classifier": {
                        "value": {
                            "model": "fraud",
                            "version": 42,
                            "samples_learned": 120345,
                            "prediction": True,
                            "probabilities": {"false": 0.2, "true": 0.8},
                        }
                    },
                    "regressor": {
                        "value": {
                            "model": "price",
                            "version": 7,
                            "samples_learned": 5012,
                            "prediction": 3.14,
                            "probabilities": None,
                        }
                    },
                    "batch": {
                        "value": {
                            "model": "price",
                            "version": 7,
                            "samples_learned": 5012,
                            "predictions": [{"prediction": 3.1}, {"prediction": 4.2}],
                        }
                    },
                },
            }
        },
    },
    404: {"model": Message, "description": "Unknown model."},
    413: {"model": Message, "description": "Body too large."},
    422: {"model": ValidationErrorBody, "description": "Malformed body; names field and problem."},
    503: {"model": Message, "description": "The model is configured but not loaded yet."},
}


# -- the Open Inference Protocol v2's infer routes (serving.v2) ---------------------------------
class V2Tensor(BaseModel):
    name: str = Field(examples=["prediction"])
    datatype: str = Field(examples=["BOOL"])
    shape: list[int] = Field(examples=[[1]])
    data: list[Any] = Field(examples=[[True]])


class V2InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str = Field(examples=["fraud"])
    model_version: str = Field(examples=["42"], description=_VERSION)
    id: str | None = Field(None, description="The request's id, when it has one.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="A model's samples_learned and live: with model_version, the state answering.",
        examples=[{"samples_learned": 120_345, "live": False}],
    )
    outputs: list[V2Tensor] = Field(
        description="prediction, then proba_<class> (classifiers), each of shape [n]; graphs "
        "add decided_by, decision, reason, path and versions. Those requested, in their order."
    )


class V2ErrorBody(BaseModel):
    error: str = Field(
        examples=["input 'gallup': shape must be [n] or [n, 1] for n rows, not [2, 2]"]
    )


_V2_INPUT = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "A feature, or features (JSON rows)."},
        "shape": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "description": "[n] or [n, 1] for n rows, the same n for every input.",
        },
        "datatype": {"type": "string", "enum": sorted(DATATYPES)},
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "n values, flat or nested once per row."},
    },
    "required": ["name", "shape", "datatype", "data"],
}
_V2_OUTPUT = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
    "required": ["name"],
}


def _path_parameter(name: str, description: str, example: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
        "example": example,
    }


def v2_infer_body(*, versioned: bool) -> dict[str, Any]:
    """The path parameters and the request body of ``POST /v2/models/{name}[/versions/{v}]/infer``
    (the route reads its raw body, so FastAPI cannot see them)."""
    parameters = [_path_parameter("name", "Model or graph name.", "fraud")]
    if versioned:
        parameters.append(_path_parameter("version", "The version served (else a 404).", "42"))
    return {
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "parameters": {"type": "object"},
                            "inputs": {"type": "array", "minItems": 1, "items": _V2_INPUT},
                            "outputs": {
                                "type": "array",
                                "items": _V2_OUTPUT,
                                "description": "The outputs to return, each named once (all "
                                "when absent or empty).",
                            },
                        },
                        "required": ["inputs"],
                        "additionalProperties": False,
                    },
                    "examples": {
                        "per_feature": {
                            "summary": "One input per feature (two rows)",
                            "value": {
                                "inputs": [
                                    {
                                        "name": "amount",
                                        "shape": [2],
                                        "datatype": "FP64",
                                        "data": [12.5, 830.0],
                                    },
                                    {
                                        "name": "country",
                                        "shape": [2],
                                        "datatype": "BYTES",
                                        "data": ["FR", "DE"],
                                    },
                                ]
                            },
                        },
                        "json_rows": {
                            "summary": "One BYTES input of JSON rows",
                            "value": {
                                "id": "req-1",
                                "inputs": [
                                    {
                                        "name": "features",
                                        "shape": [1],
                                        "datatype": "BYTES",
                                        "data": ['{"amount": 12.5, "country": "FR"}'],
                                    },
                                ],
                                "outputs": [{"name": "prediction"}],
                            },
                        },
                    },
                }
            },
        },
    }


V2_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": V2InferResponse, "description": "The output tensors of the version served."},
    400: {
        "model": V2ErrorBody,
        "description": "Anything the client can fix: invalid JSON, a malformed tensor, a wrong "
        "datatype, shape or value, too many values, features the model cannot use, a body over "
        "the limit, an unsupported extension (binary tensors, shared memory, classification).",
    },
    404: {"model": V2ErrorBody, "description": "Unknown model or graph, or version not served."},
    503: {
        "model": V2ErrorBody,
        "description": "The model (or a graph's member) is known but not loaded yet.",
    },
}

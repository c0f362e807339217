"""Documentation of the API: response models and request examples for the OpenAPI schema.

Handlers parse raw bodies (`serving.inputs`) and return orjson responses, so these models only
describe the API; they are never used to validate or serialise a request.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

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

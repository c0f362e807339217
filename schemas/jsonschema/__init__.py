"""JSON Schema documents of the events, for producers written in other languages.

Regenerate with ``python -m schemas.jsonschema``; a test fails when the committed files differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import feature_json_schema, label_json_schema
from schemas.predictions import answer_json_schema, request_json_schema

HERE = Path(__file__).parent
DOCUMENTS = {
    "feature_event.json": feature_json_schema,
    "label_event.json": label_json_schema,
    "prediction_request.json": request_json_schema,
    "prediction_answer.json": answer_json_schema,
}


def render() -> dict[str, str]:
    return {
        name: json.dumps(make(), indent=2, sort_keys=True) + "\n"
        for name, make in DOCUMENTS.items()
    }


def write() -> None:
    for name, text in render().items():
        (HERE / name).write_text(text)


if __name__ == "__main__":
    write()

"""What the closed loop logs for a serving graph's answer (`serving.feedback`): a graph predict
with an id and ``"log": true``.

- The feature event *as served* goes to the features topic: id, time, features and the answer
  (`schemas.events.Served`: the graph and its version, the models it used and their versions,
  the prediction and probabilities) with what each **shadow** branch answered, by its path, and
  the models that branch used and their versions. The shadows of a logged request are
  evaluated off the event loop after the response, as for other requests, and its log is
  written once they have run (`serving.feedback`): the log then carries them, and the learner
  scores them against the label with the served answer (`learners.served`). A shadow that
  fails is left out of the log (and counted, as always); it never fails the request.
- The prediction record of the served answer goes to the predictions topic (the graph targets'
  answer format, `schemas.predictions.PredictionAnswer`), and one record per shadow answer with
  ``shadow`` = its branch (not served: for whoever reads the topic).
"""

from __future__ import annotations

from typing import Any

from learners.graph import ShadowResult
from schemas.events import EventCodec
from schemas.settings import Settings
from serving.asgi import render

Outgoing = tuple[str, bytes, bytes]  # topic, key, value

_RECORD = (
    "graph_version", "versions", "prediction", "probabilities", "kind", "path", "decided_by",
    "decision", "reason",
)  # fmt: skip


def graph_messages(
    settings: Settings,
    codec: EventCodec,
    name: str,
    event_id: str,
    event_time: float,
    body: dict[str, Any],
    content: dict[str, Any],
    shadows: list[ShadowResult],
    *,
    answered_at: float,
) -> list[Outgoing]:
    """The messages logging graph ``name``'s answer ``content`` (the body of its 200) to the
    request ``body``, and its ``shadows``' results (see the module). Raises `SchemaError` when
    the features cannot be logged as a feature event."""
    answered = [(r.path, r.answer) for r in shadows if r.answer is not None]
    served = {
        "model": name,
        "version": content["graph_version"],
        "prediction": content["prediction"],
        "probabilities": content["probabilities"],
        "versions": content["versions"],
        "shadows": {
            path: {
                "prediction": answer.prediction,
                "probabilities": answer.probabilities,
                "versions": answer.versions,
            }
            for path, answer in answered
        },
    }
    feature = render(
        {"id": event_id, "time": event_time, "features": body["features"], "served": served}
    )
    codec.decode_feature(feature)  # the validation of Kafka producers
    record = {
        "id": event_id, "target": name, "requested_at": event_time, "answered_at": answered_at,
        **{k: content[k] for k in _RECORD},
    }  # fmt: skip
    key = event_id.encode()
    messages = [
        (settings.topic_features, key, feature),
        (settings.topic_predictions, key, render(record)),
    ]
    for path, answer in answered:
        fields = {k: v for k, v in answer.as_dict().items() if k in _RECORD}
        shadow = {**record, **fields, "shadow": path}
        messages.append((settings.topic_predictions, key, render(shadow)))
    return messages

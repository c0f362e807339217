"""Promise 4: malformed events reach the dead-letter topic with their reason; nothing else is lost."""

from __future__ import annotations

import orjson

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.events import EventCodec, FeatureEvent, LabelEvent, Limits
from schemas.settings import Settings
from stream.kafka.client import EventProducer, create_topics, read_all
from tests.support.pipeline import fast, learn, publish

BAD = [
    ("features", b'{"id": "x1", "time": 3.5, "features": {"a": 1e999}}', "not_finite"),
    ("features", b'{"id": "x2", "time": 4.5, "features": ', "bad_json"),
    ("labels", b'{"id": "x3", "time": 5.5, "label": [1, 2]}', "schema"),
    (
        "features",
        b'{"id": "x4", "time": 6.5, "features": {"s": "' + b"z" * 2000 + b'"}}',
        "too_large",
    ),
    ("labels", b'{"id": "x5", "time": 7.5, "label": true, "oops": 1}', "schema"),
    ("features", b"\x00\x01binary", "bad_json"),
]


def test_malformed_events_go_to_the_dlq_and_the_stream_goes_on(settings: Settings) -> None:
    s = fast(settings, max_event_bytes=1000)
    assert s.kafka_bootstrap_servers is not None
    codec = EventCodec(Limits())
    create_topics(s.kafka_bootstrap_servers, {s.topic_features: 3, s.topic_labels: 3})
    producer = EventProducer(s.kafka_bootstrap_servers)
    events = list(dataset_events("Phishing", label_delay=5, limit=300))
    bad = iter(BAD)
    for i, event in enumerate(events):
        topic = s.topic_features if isinstance(event, FeatureEvent) else s.topic_labels
        producer.send(topic, event.id.encode(), codec.encode(event))
        if i % 100 == 10:
            kind, raw, _ = next(bad)
            producer.send(s.topic_features if kind == "features" else s.topic_labels, b"bad", raw)
    producer.flush()
    producer.close()

    [summary] = learn(s, [ModelSpec("lr", "logreg")])
    assert summary["samples_learned"] == 300  # every good event learned

    dead = read_all(s.kafka_bootstrap_servers, [s.topic_dlq])
    assert len(dead) == len(BAD)
    got = sorted((r.value, dict(r.headers)) for r in dead)
    for (kind, raw, reason), (value, headers) in zip(
        sorted(BAD, key=lambda b: b[1]), got, strict=True
    ):
        assert value == raw  # the original bytes, untouched
        assert headers["rs.reason"].decode() == reason
        assert headers["rs.topic"].decode() == (
            s.topic_features if kind == "features" else s.topic_labels
        )
        assert int(headers["rs.offset"]) >= 0 and int(headers["rs.partition"]) >= 0
        assert headers["rs.error"].decode().startswith(reason)


def test_valid_events_a_model_cannot_use_never_stop_the_learner(settings: Settings) -> None:
    """Schema-valid poison on real Kafka: a null feature (missing), a string where the scaler
    needs a number, a label "yes" among booleans. The learner used to exit on each of them,
    and again after every restart. Now it learns everything else; the event that no model
    could use reaches the dead-letter topic with the models' errors."""
    s = fast(settings)
    events = list(dataset_events("Phishing", label_delay=5, limit=200))
    poison: list[FeatureEvent | LabelEvent] = [
        FeatureEvent("p-null", 50.5, {"https": None, "popup_window": 1.0}),
        FeatureEvent("p-str", 60.5, {"https": "yes please"}),
        LabelEvent("p-null", 51.5, True),
        LabelEvent("p-str", 61.5, "yes"),  # wrong type too: nobody learns this one
    ]
    publish(s, sorted(events + poison, key=lambda e: e.time))
    summaries = {x["model"]: x for x in learn(s, [ModelSpec("lr", "logreg")])}
    assert summaries["lr"]["samples_learned"] == 201  # 200 + the null one (a missing feature)
    assert s.kafka_bootstrap_servers is not None
    dead = read_all(s.kafka_bootstrap_servers, [s.topic_dlq])
    assert [orjson.loads(r.value)["id"] for r in dead] == ["p-str"]
    headers = dict(dead[0].headers)
    assert headers["rs.reason"] == b"model_error"
    assert headers["rs.error"].decode().startswith("lr: ")

"""A valid event that no model could use is dead-lettered (``model_error``) with the partition
and offset it was read at, as a record that failed to decode is, against the real Kafka and
Redis: the original can be found in its topic."""

from __future__ import annotations

from learners.specs import ModelSpec
from schemas.events import FeatureEvent, LabelEvent
from schemas.settings import Settings
from stream.kafka.client import read_all
from stream.learner.runtime import build_learner
from tests.support.pipeline import fast, publish, run_to_end

N = 30


def test_an_unusable_feature_and_label_name_where_they_were_read(settings: Settings) -> None:
    s = fast(settings)
    events: list[FeatureEvent | LabelEvent] = []
    for i in range(N):
        events.append(FeatureEvent(str(i), float(i), {"x": float(i % 5)}))
        events.append(LabelEvent(str(i), i + 0.5, float(i % 5) * 2.0))
    events += [
        FeatureEvent("red", float(N), {"x": "red"}),  # no regressor can use a string
        FeatureEvent("s", N + 1.0, {"x": 1.0}),
        LabelEvent("s", N + 1.5, "oops"),  # nor learn a string
    ]
    publish(s, events)
    learner = build_learner(s, [ModelSpec("r", "linreg")], use_fork=False)
    [summary] = run_to_end(learner)
    assert summary["samples_learned"] == N
    bootstrap = s.kafka_bootstrap_servers or ""
    dead = {(r.key, dict(r.headers)["rs.topic"]): r for r in read_all(bootstrap, [s.topic_dlq])}
    originals = {
        (r.key, r.topic.encode()): r
        for r in read_all(bootstrap, [s.topic_features, s.topic_labels])
    }
    assert set(dead) == {(b"red", s.topic_features.encode()), (b"s", s.topic_labels.encode())}
    for where, letter in dead.items():
        headers, original = dict(letter.headers), originals[where]
        assert headers["rs.reason"] == b"model_error"
        assert headers["rs.partition"] == str(original.partition).encode()
        assert headers["rs.offset"] == str(original.offset).encode()
        assert [name for name, _ in letter.headers][:4] == [
            "rs.topic", "rs.partition", "rs.offset", "rs.reason",
        ]  # fmt: skip
    assert learner.stats.dead_letters == {"model_error": 2}

"""A far-future event (a time in milliseconds, the commonest producer bug) does not break the
learner, against the real Kafka and Redis.

Before the guard, one feature event stamped 1.8e12 (ms) among events in epoch seconds was
buffered until every input idled, then released last: the join's clock jumped to 1.8e12, the
features waiting for their labels expired (their labels, read after a restart, were never
learned), every later event was late, and while it waited its offset held the checkpoint back.
Now it is dead-lettered (``event_time_in_future``) before the watermark sees it, by its own
record's Kafka timestamp: the learner ends exactly where a learner of the good events alone
ends. The decision reads the record's stored timestamp, whatever its type: a topic with
``LogAppendTime`` is judged by the broker's stamp, one with ``CreateTime`` by the producer's,
also long in the past (a replay decides as the first reading did).
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from learners.core import LearningCore
from learners.specs import ModelSpec
from schemas.events import EventCodec, FeatureEvent, LabelEvent, Limits
from schemas.settings import Settings
from stream.kafka.client import read_all
from stream.learner.runtime import build_learner
from tests.support.pipeline import fast, final_model, publish, run_to_end

N, DELAY, SPLIT = 300, 5, 150
SPEC = ModelSpec("m", "linreg", ("MAE",))
IN_FUTURE = "event_time_in_future"


def stream(base: int) -> list[tuple[float, int, FeatureEvent | LabelEvent]]:
    """Features at ``base + i`` (epoch seconds), labels ``DELAY`` s later, in time order
    (labels first at equal times): ``(time, kind, event)``."""
    events: list[tuple[float, int, FeatureEvent | LabelEvent]] = []
    for i in range(N):
        x, t = float(i % 5), float(base + i)
        events.append((t, 1, FeatureEvent(str(i), t, {"x": x})))
        events.append((t + DELAY, 0, LabelEvent(str(i), t + DELAY, 2.0 * x)))
    return sorted(events, key=lambda e: e[:2])


def dead_letters(settings: Settings) -> list[Any]:
    return read_all(settings.kafka_bootstrap_servers or "", [settings.topic_dlq])


def test_a_time_in_milliseconds_is_dead_lettered_and_nothing_else_changes(
    settings: Settings,
) -> None:
    s = fast(settings, join_ttl=3600.0, snapshot_every_labels=50, snapshot_every_seconds=0.2)
    base = int(time.time()) - 100_000
    events = stream(base)
    first = [e for t, _, e in events if t < base + SPLIT]
    second = [e for t, _, e in events if t >= base + SPLIT]
    ms_feature = FeatureEvent("ms", (base + 70) * 1000.0, {"x": 1.0})
    ms_label = LabelEvent("ms-label", (base + 80) * 1000.0, 2.0)
    middle = len(first) // 2
    publish(s, [*first[:middle], ms_feature, ms_label, *first[middle:]])
    learner = build_learner(s, [SPEC], use_fork=False)
    run_to_end(learner)
    first_dead_letters = dict(learner.stats.dead_letters)
    # Restarted from its checkpoint, the learner reads the rest: the five features that waited
    # for their labels across the restart did not expire (their labels are learned), no event
    # is late, and the model and metric are those of the good events alone.
    publish(s, second)
    learner = build_learner(s, [SPEC], use_fork=False)
    [summary] = run_to_end(learner)
    counters = learner.core.counters
    assert (counters.late_events, counters.expired_without_label) == (0, 0)
    assert (counters.labels_joined, counters.pending_features) == (N, 0)
    assert summary["samples_learned"] == N

    alone = LearningCore([SPEC])
    for t, _, event in events:
        source = (0 if isinstance(event, FeatureEvent) else 1, 0)
        if isinstance(event, FeatureEvent):
            alone.push_feature(event, source, int(t))
        else:
            alone.push_label(event, source, int(t))
    alone.flush()
    assert final_model(s, "m").metric_values() == alone.metric_values("m")

    assert first_dead_letters == {IN_FUTURE: 2}
    letters = {r.key: r for r in dead_letters(s)}
    assert set(letters) == {b"ms", b"ms-label"}
    originals = {
        r.key: r
        for r in read_all(s.kafka_bootstrap_servers or "", [s.topic_features, s.topic_labels])
    }
    for key, letter in letters.items():
        headers, original = dict(letter.headers), originals[key]
        assert headers["rs.reason"] == b"event_time_in_future"
        assert headers["rs.topic"] == original.topic.encode()
        assert headers["rs.partition"] == str(original.partition).encode()
        assert headers["rs.offset"] == str(original.offset).encode()
        assert letter.value == original.value
        error = headers["rs.error"].decode()
        assert f"{original.timestamp_ms} ms" in error and "milliseconds" in error, error
    assert f"{(base + 70) * 1000}" in dict(letters[b"ms"].headers)["rs.error"].decode()


def test_the_record_s_own_stored_timestamp_decides_not_the_clock(settings: Settings) -> None:
    """Features on a ``LogAppendTime`` topic, sent with a producer timestamp of 2020 and event
    times of today: the broker's stamp counts, they are learned. Labels on a ``CreateTime``
    topic: one stamped 2020 by its producer with an event time two hours after that is
    dead-lettered, one 30 minutes after is not, though both are years in the past."""
    s = fast(settings)
    bootstrap = s.kafka_bootstrap_servers or ""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics(
        [
            NewTopic(s.topic_features, 3, 1, config={"message.timestamp.type": "LogAppendTime"}),
            NewTopic(s.topic_labels, 3, 1),
        ]
    )
    for future in created.values():
        future.result(30)
    codec = EventCodec(Limits.from_settings(s))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    y2020 = 1_577_836_800  # 2020-01-01T00:00:00Z, epoch seconds
    base = time.time() - 1000

    def send(topic: str, event: FeatureEvent | LabelEvent, stamp: int = 0) -> None:
        producer.produce(topic, codec.encode(event), event.id.encode(), partition=0,
                         timestamp=stamp)  # fmt: skip

    send(s.topic_labels, LabelEvent("late-ok", y2020 + 1800.0, 1.0), y2020 * 1000)
    send(s.topic_labels, LabelEvent("late-bad", y2020 + 7200.0, 1.0), y2020 * 1000)
    for i in range(20):
        send(s.topic_features, FeatureEvent(str(i), base + i, {"x": float(i)}), y2020 * 1000)
        send(s.topic_labels, LabelEvent(str(i), base + i + 0.5, 2.0 * i))  # stamped now
    assert producer.flush(30) == 0
    learner = build_learner(s, [SPEC], use_fork=False)
    [summary] = run_to_end(learner)
    assert summary["samples_learned"] == 20
    assert learner.stats.dead_letters == {IN_FUTURE: 1}
    [letter] = dead_letters(s)
    assert letter.key == b"late-bad"
    assert f"{y2020 * 1000} ms" in dict(letter.headers)["rs.error"].decode()

"""`riverstream score kafka:TOPIC` against the real Kafka: where a partition's input ends while a
transaction is open in it, and what its stall clock counts (the consumer's polls, not the time
the rows wait for a slow reader)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import stream.predict.batch as batch
from schemas.errors import KafkaAdapterError
from schemas.settings import Settings
from stream.kafka.client import EventProducer, create_topics
from stream.kafka.security import PLAINTEXT
from stream.predict.batch import KAFKA_STALL_SECONDS, kafka_rows
from stream.store.snapshots import SnapshotStore
from tests.support.scoring import open_transaction, publish_clf, run_score

pytestmark = pytest.mark.integration


def send(settings: Settings, messages: list[tuple[int, bytes]]) -> None:
    """Committed (plain) messages: (partition, value) each, in order."""
    assert settings.kafka_bootstrap_servers
    create_topics(settings.kafka_bootstrap_servers, settings.topics())
    producer = EventProducer(settings.kafka_bootstrap_servers)
    for partition, value in messages:
        producer.send(settings.topic_features, b"k", value, partition=partition)
    producer.flush()
    producer.close()


def test_an_open_transaction_ends_the_partition_at_its_last_stable_offset_and_says_so(
    kit: Any, store: SnapshotStore, predict_settings: Settings, tmp_path: Path
) -> None:
    """Partition 0 holds a committed event (offset 0), then a transaction left open (offset 1),
    then another committed event (offset 2): read committed, the consumer cannot pass offset 1
    until the transaction ends. The run ends there at once (not after the stall timeout with a
    "no progress" error) and says which offsets it did not read and why; partition 1 is read
    whole. Before, those offsets were left out without a word."""
    s = predict_settings
    assert s.kafka_bootstrap_servers
    _version, inputs = publish_clf(kit, store, s)

    def event(row_id: str) -> bytes:
        return orjson.dumps({"id": row_id, "time": 1, "features": inputs[0]})

    send(s, [(0, event("before")), (1, event("other"))])
    out = tmp_path / "out.jsonl"
    with open_transaction(s.kafka_bootstrap_servers, s.topic_features, 0, [event("open")]):
        send(s, [(0, event("after"))])
        started = time.monotonic()
        code, report, text = run_score(
            s, ["clf", f"kafka:{s.topic_features}", "--out", str(out)], tmp_path / "log"
        )
        took = time.monotonic() - started
    assert code == 0 and report is not None, text
    assert [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()] == [
        "before",
        "other",
    ]
    assert report["scored"] == 2 and report["rejected"] == 0
    assert took < KAFKA_STALL_SECONDS, text  # it did not wait for the transaction
    assert (
        "partition 0 offsets 1-2: not read: a transaction is open at offset 1 (messages are "
        "read committed, up to the last stable offset)" in text
    ), text
    assert "partition 1 offsets" not in text and "partition 2 offsets" not in text, text


class SlowReaderClock:
    """`time` for `stream.predict.batch`: the real monotonic clock plus the time a reader of
    rows is said to have spent on them (``spent``), without waiting for it."""

    def __init__(self) -> None:
        self.spent = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.spent


def test_a_slow_reader_of_rows_is_not_a_stalled_kafka(
    predict_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each row takes its reader (a slow sink, say) ten times the stall timeout: the rows all
    come, in order; only the time spent polling Kafka counts towards a stall."""
    s = predict_settings
    assert s.kafka_bootstrap_servers
    values = [(p, b"p%d-%d" % (p, i)) for p in (0, 2) for i in range(3)]
    send(s, values)
    clock = SlowReaderClock()
    monkeypatch.setattr(batch, "time", clock)
    got = []
    for where, value in kafka_rows(s.kafka_bootstrap_servers, s.topic_features):
        got.append((where, value))
        clock.spent += 10 * KAFKA_STALL_SECONDS
    assert [value for _, value in got] == [value for _, value in values]
    assert got[3][0] == "partition 2 offset 0"


def test_a_partition_that_makes_no_progress_is_an_error_after_the_stall_timeout(
    predict_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the stall clock: a partition whose end cannot be reached (said to be
    five offsets past the real log end) fails the run once its polls have waited the stall
    timeout (here 1 s), not before it, never hangs it."""
    s = predict_settings
    assert s.kafka_bootstrap_servers
    send(s, [(0, b"a"), (0, b"b")])
    real = batch._partition_ends

    def beyond(*args: Any) -> dict[int, tuple[int, int, int]]:
        return {p: (low, end + 5 if p == 0 else end, high + 5 if p == 0 else high)
                for p, (low, end, high) in real(*args).items()}  # fmt: skip

    monkeypatch.setattr(batch, "_partition_ends", beyond)
    monkeypatch.setattr(batch, "KAFKA_STALL_SECONDS", 1.0)
    rows = kafka_rows(s.kafka_bootstrap_servers, s.topic_features)
    assert [value for _, value in (next(rows), next(rows))] == [b"a", b"b"]
    started = time.monotonic()
    with pytest.raises(KafkaAdapterError, match=r"/0: no progress at offset 2 of 7 for 1 s"):
        next(rows)
    assert 1.0 <= time.monotonic() - started < 20


def test_the_partition_ends_on_a_topic_with_no_transaction_are_its_log_ends(
    predict_settings: Settings,
) -> None:
    """`batch._partition_ends` (first offset, last stable offset, log end) with no open
    transaction: the last stable offset is the log end."""
    s = predict_settings
    assert s.kafka_bootstrap_servers
    send(s, [(0, b"a"), (0, b"b"), (2, b"c")])
    ends = batch._partition_ends(s.kafka_bootstrap_servers, s.topic_features, PLAINTEXT)
    assert ends == {0: (0, 2, 2), 1: (0, 0, 0), 2: (0, 1, 1)}

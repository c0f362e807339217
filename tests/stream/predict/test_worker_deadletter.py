"""A request the worker refuses whose key and headers together are near Kafka's 1 MB message
size: its dead letter, with the worker's own headers, would be over the producer's
``message.max.bytes`` (1 000 000, key and headers included); the producer refused it and the
worker stopped, to read and refuse the request again at every start. The dead letter is cut
down to `MAX_DEAD_LETTER_BYTES` instead (`stream.kafka.deadletter.fitted`), saying so. A
valid request of that size gets no answer it cannot send: a dead letter instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.settings import Settings
from stream.kafka.deadletter import MAX_DEAD_LETTER_BYTES, message_bytes
from stream.predict.producer import MESSAGE_MAX_BYTES, RECORD_OVERHEAD
from stream.store.snapshots import SnapshotStore
from tests.stream.predict.test_worker import Reader, answered_ids, produce, stop
from tests.support.pipeline import spawn_cli

pytestmark = pytest.mark.integration
MAX_BYTES = MESSAGE_MAX_BYTES - RECORD_OVERHEAD  # the largest message the worker sends


def dead_letter_then_answer(settings: Settings, tmp_path: Path) -> tuple[Any, list[Any]]:
    """Run a worker until it has sent one dead letter and answered the request ``after``
    (it must not stop on the first): that dead letter, and the answers."""
    log = tmp_path / "w.log"
    dlq = Reader(settings, settings.topic_dlq)
    answers = Reader(settings, settings.topic_predictions)
    worker = spawn_cli(settings, ["predict-worker"], log)
    try:
        dlq.until(lambda ms: bool(ms) or worker.poll() is not None, 60)
        assert worker.poll() is None, "the worker stopped:\n" + log.read_text()[-3000:]
        answers.until(lambda ms: "after" in answered_ids(ms), 30)
        assert stop(worker) == 0
        [dead] = dlq.messages
    finally:
        dlq.close()
        answers.close()
        if worker.poll() is None:
            worker.kill()
    return dead, answers.messages


def test_a_dead_letter_whose_key_and_headers_are_too_large_is_cut_down(
    kit: Any, store: SnapshotStore, predict_settings: Settings, tmp_path: Path
) -> None:
    settings = predict_settings
    reg, _, inputs = kit.trained_models()["reg"]
    kit.publish(store, "reg", reg, "regressor", key=settings.require_snapshot_key())
    key = b"k" * 500_000
    headers = [("x-trace", b"big"), ("x-big", b"h" * 500_001)]
    good = {"id": "after", "target": "reg", "features": inputs[0]}
    produce(settings, [
        (key, b'{"id": "big", "target": "reg", "features": {', headers),
        (b"after", orjson.dumps(good), []),
    ])  # fmt: skip
    dead, _ = dead_letter_then_answer(settings, tmp_path)
    sent = dict(dead.headers())
    assert dead.key() == key and dead.value() == b'{"id": "big", "target": "reg", "features": {'
    assert "x-big" not in sent and sent["rs.headers_dropped"] == b"1"
    assert sent["x-trace"] == b"big" and sent["rs.reason"] == b"bad_json"
    assert sent["rs.topic"].decode() == settings.topic_requests
    assert int(sent["rs.partition"]) >= 0 and int(sent["rs.offset"]) >= 0


def test_a_valid_request_whose_answer_is_too_large_is_a_dead_letter(
    kit: Any, store: SnapshotStore, predict_settings: Settings, tmp_path: Path
) -> None:
    """A valid request whose key and ``x-`` headers are near the 1 MB a message may take: its
    answer (the same key and headers, plus the answer) was over the producer's
    ``message.max.bytes``, ``produce`` raised (``MSG_SIZE_TOO_LARGE``) and the worker stopped,
    to read the same request again at every start: every worker of the group in turn. The
    answer is measured first; too large, it is a dead letter ``answer_too_large``, itself cut
    down, and the worker answers the next request."""
    settings = predict_settings
    reg, _, inputs = kit.trained_models()["reg"]
    kit.publish(store, "reg", reg, "regressor", key=settings.require_snapshot_key())
    features = {"gallup": inputs[0]["gallup"]}  # a short request, a longer answer
    value = orjson.dumps({"id": "big", "target": "reg", "features": features})
    headers = [("x-trace", b"big"), ("x-big", b"h" * 499_000)]
    # the request itself is as large as what the worker's own producer may send, not larger
    key = b"k" * (MAX_BYTES - message_bytes(b"", value, headers))
    assert message_bytes(key, value, headers) == MAX_BYTES
    good = {"id": "after", "target": "reg", "features": inputs[1]}
    produce(settings, [(key, value, headers), (b"after", orjson.dumps(good), [])])
    dead, answered = dead_letter_then_answer(settings, tmp_path)
    assert answered_ids(answered) == {"after"}
    sent = dict(dead.headers())
    assert sent["rs.reason"] == b"answer_too_large", sent["rs.reason"]
    error = sent["rs.error"].decode()
    assert error.startswith("answer_too_large: ") and f"over the {MAX_BYTES}" in error, error
    assert int(error.split(" takes ")[1].split()[0]) > MAX_BYTES
    assert dead.value() == value, "the original request, whole"
    assert message_bytes(dead.key(), dead.value(), dead.headers()) <= MAX_DEAD_LETTER_BYTES
    assert dead.key() is None and sent["rs.key_bytes"] == str(len(key)).encode(), "cut down"
    assert sent["x-trace"] == b"big" and len(sent["x-big"]) == 499_000
    assert sent["rs.topic"].decode() == settings.topic_requests

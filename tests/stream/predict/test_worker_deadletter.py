"""A request the worker refuses whose key and headers together are near Kafka's 1 MB message
size: its dead letter, with the worker's own headers, would be over the producer's
``message.max.bytes`` (1 000 000, key and headers included); the producer refused it and the
worker stopped, to read and refuse the request again at every start. The dead letter is cut
down to `MAX_DEAD_LETTER_BYTES` instead (`stream.kafka.deadletter.fitted`), saying so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.settings import Settings
from stream.store.snapshots import SnapshotStore
from tests.stream.predict.test_worker import Reader, answered_ids, produce, stop
from tests.support.pipeline import spawn_cli

pytestmark = pytest.mark.integration


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
    log = tmp_path / "w.log"
    worker = spawn_cli(settings, ["predict-worker"], log)
    dlq = Reader(settings, settings.topic_dlq)
    answers = Reader(settings, settings.topic_predictions)
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
    sent = dict(dead.headers())
    assert dead.key() == key and dead.value() == b'{"id": "big", "target": "reg", "features": {'
    assert "x-big" not in sent and sent["rs.headers_dropped"] == b"1"
    assert sent["x-trace"] == b"big" and sent["rs.reason"] == b"bad_json"
    assert sent["rs.topic"].decode() == settings.topic_requests
    assert int(sent["rs.partition"]) >= 0 and int(sent["rs.offset"]) >= 0

"""A worker that waits for its followers' first look at Redis says why, and waits only for
what it needs: the real `riverstream predict-worker` against the real Kafka and Redis, the
graphs' follower failing on every poll: the graphs' index is not a set (Redis refuses to read
it, WRONGTYPE). A name in it that is not UTF-8 broke it too until it became that entry's
problem alone (`stream.store.graphs.UnreadableName`): a worker with such a name joins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.settings import Settings
from stream.store.snapshots import SnapshotStore
from tests.stream.predict.test_worker import Reader, answered_ids, produce, status_lines, stop
from tests.support.pipeline import spawn_cli

pytestmark = pytest.mark.integration


def waiting_lines(log: Path) -> list[str]:
    return [line["waiting"] for line in status_lines(log) if "waiting" in line]


def publish_reg(kit: Any, store: SnapshotStore, settings: Settings) -> None:
    """A model ``reg`` in Redis and a request ``r1`` for it in Kafka."""
    reg, _, inputs = kit.trained_models()["reg"]
    kit.publish(store, "reg", reg, "regressor", key=settings.require_snapshot_key())
    request = {"id": "r1", "target": "reg", "features": inputs[0]}
    produce(settings, [(b"r1", orjson.dumps(request), [])])


@pytest.fixture
def request_for_reg(kit: Any, store: SnapshotStore, predict_settings: Settings) -> bytes:
    """A model ``reg`` in Redis, a request for it in Kafka, and a graphs' index that cannot
    be read (a string, not a set): the graphs' follower fails on every poll. Returns the
    string."""
    publish_reg(kit, store, predict_settings)
    store.client.delete(store.keys.graphs)
    store.client.set(store.keys.graphs, b"not a set")
    return b"not a set"


def answers_r1(settings: Settings, args: list[str], log: Path) -> None:
    """Run ``riverstream ARGS`` (a worker) until it answered the request ``r1``, then stop it."""
    answers = Reader(settings, settings.topic_predictions)
    worker = spawn_cli(settings, args, log)
    try:
        answers.until(lambda ms: "r1" in answered_ids(ms) or worker.poll() is not None, 60)
        assert worker.poll() is None, log.read_text()[-3000:]
        assert stop(worker) == 0
    finally:
        answers.close()
        if worker.poll() is None:
            worker.kill()


def test_a_worker_waiting_for_the_graphs_says_why_until_they_are_read(
    kit: Any, store: SnapshotStore, predict_settings: Settings, request_for_reg: bytes,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A worker for every target waits for the graphs (a request for a graph would be an
    unknown target), saying why in its status lines, again and again, and in its log; it
    waited with one warning that named no reason. Repaired, it joins and answers."""
    settings = predict_settings
    log = tmp_path / "w.log"
    dlq = Reader(settings, settings.topic_dlq)
    answers = Reader(settings, settings.topic_predictions)
    worker = spawn_cli(settings, ["predict-worker", "--report-every", "0.2"], log)
    try:
        kit.wait_until(
            lambda: len(waiting_lines(log)) >= 3 or worker.poll() is not None, timeout=60,
            what="three status lines saying why the worker waits", log=log,
        )  # fmt: skip
        assert worker.poll() is None
        reason = waiting_lines(log)[-1]
        assert reason.startswith("graphs: ") and "WRONGTYPE" in reason, reason
        warned = [line for line in log.read_text().splitlines() if "first look at" in line]
        assert any(reason in line for line in warned), warned
        assert not dlq.messages and not answers.messages
        store.client.delete(store.keys.graphs)  # repaired
        answers.until(lambda ms: "r1" in answered_ids(ms), 60)
        assert stop(worker) == 0
    finally:
        dlq.close()
        answers.close()
        if worker.poll() is None:
            worker.kill()
    assert not dlq.messages
    assert "waiting" not in status_lines(log)[-1], "joined: no longer waiting"


def test_a_worker_for_models_only_does_not_wait_for_the_graphs(
    store: SnapshotStore, predict_settings: Settings, request_for_reg: bytes, tmp_path: Path
) -> None:
    """``--target reg``, a model it serves: models answer first, so what the graphs' follower
    has read does not matter to it. It stayed out of its group as long as that follower
    failed."""
    settings = predict_settings
    answers_r1(settings, ["predict-worker", "--target", "reg"], tmp_path / "w.log")
    assert store.client.get(store.keys.graphs) == request_for_reg, "still failing"


def test_a_graph_name_that_is_not_utf8_does_not_hold_a_worker(
    kit: Any, store: SnapshotStore, predict_settings: Settings, tmp_path: Path
) -> None:
    """A name in the graphs' index that is not UTF-8 failed every sync of the graphs: a
    worker for every target waited for ever. It is that entry's problem only: the worker
    joins and answers."""
    settings = predict_settings
    publish_reg(kit, store, settings)
    store.client.sadd(store.keys.graphs, b"\xff")
    log = tmp_path / "w.log"
    answers_r1(settings, ["predict-worker", "--report-every", "0.2"], log)
    assert "not UTF-8" in log.read_text(), "the entry is reported"

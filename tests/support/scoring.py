"""`riverstream score` in tests: a classifier published to score with, the command run as a
real CLI process (its exit status, JSON report and output), and a Kafka transaction left open
in a topic it reads."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from schemas.settings import Settings
from stream.store.snapshots import SnapshotStore
from tests.support.cluster import stop_all
from tests.support.pipeline import spawn_cli


def publish_clf(
    kit: Any, store: SnapshotStore, settings: Settings
) -> tuple[int, list[dict[str, Any]]]:
    """A classifier published to Redis as ``clf``: its version and inputs it can score."""
    model, kind, inputs = kit.trained_models()["clf"]
    version = kit.publish(
        store, "clf", kit.state(model, kind), kind, key=settings.require_snapshot_key()
    )
    return version, inputs


def run_score(
    settings: Settings, args: list[str], log: Path, timeout: float = 120
) -> tuple[int, dict[str, Any] | None, str]:
    """Run ``riverstream score ARGS`` to its end: exit status, its JSON report (None when it
    printed none) and everything it printed."""
    proc = spawn_cli(settings, ["score", *args], log)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        stop_all([proc])  # still running when the wait timed out
    text = log.read_text()
    reports = [json.loads(line) for line in text.splitlines() if line.startswith('{"target"')]
    log.unlink()
    return code, reports[-1] if reports else None, text


@contextmanager
def open_transaction(
    bootstrap: str, topic: str, partition: int, values: list[bytes]
) -> Iterator[None]:
    """``values`` written to ``topic``'s ``partition`` in a transaction kept open (on the real
    broker, by confluent-kafka's transactional producer) until the block ends, then aborted.
    The broker would abort it after ``transaction.timeout.ms``: 5 minutes, far beyond a test."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"test-open-{uuid.uuid4().hex[:10]}",
            "transaction.timeout.ms": 300_000,
        }
    )
    producer.init_transactions(60)
    producer.begin_transaction()
    try:
        for value in values:
            producer.produce(topic, value, key=b"open", partition=partition)
        assert producer.flush(30) == 0, "the open transaction's messages were not written"
        yield
    finally:
        producer.abort_transaction(60)

"""A running learner whose snapshot is refused because another learner owns one of its models,
and no ``release`` command arrives (lost in a Redis failover, or read and acknowledged by
another process of the learner's name), on the real Kafka and Redis: it drops the models the
owner keys give to another learner, loudly, and its next snapshot is written without them.

Before, only the final snapshot at a stop did that: a running learner retried the refused
snapshot forever, and wrote none of its other models either.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from tests.support.pipeline import fast, publish
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

EVENTS = list(dataset_events("Phishing", label_delay=5, limit=600))


def test_a_model_owned_elsewhere_without_a_release_is_dropped_at_the_refusal(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    a = fast(settings, learner="a", snapshot_every_labels=50, snapshot_every_seconds=0.2)
    publish(a, EVENTS[:400])
    learner = build_learner(a, [ModelSpec("lr", "logreg"), ModelSpec("other", "logreg")],
                            use_fork=False)  # fmt: skip
    failed: list[BaseException] = []

    def run() -> Any:
        try:
            learner.run()
        except BaseException as exc:  # reported by the test
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: learner.stats.snapshots >= 1, 60, "the first snapshot")
        store = snapshot_store(a)
        # The owner moved, and no release was queued (or it was lost): only the owner key says.
        store.client.set(store.keys.owner("other"), "b")
        written = learner.stats.snapshots
        caplog.set_level(logging.ERROR)
        publish(a, EVENTS[400:])
        wait_until(
            lambda: "other" not in learner.core.models and learner.stats.snapshots > written,
            30, "the model dropped and a snapshot written without it",
            detail=lambda: (sorted(learner.core.models), learner.stats.snapshots, failed),
        )  # fmt: skip
        assert any("other is owned by learner 'b'" in r.getMessage() for r in caplog.records)
    finally:
        learner.stop()
        thread.join(60)
        learner.source.close()
    assert not failed
    # Read once the learner has stopped: while it runs, a snapshot can be in the store before
    # its stats say so.
    assert store.latest_version("lr") == learner.stats.last_snapshot_version

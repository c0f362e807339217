"""The learner's Prometheus observer reads the learner only: a snapshot's size it was not given
stays unknown, and no Redis outage can reach learning through the observer."""

from __future__ import annotations

from typing import cast

from prometheus_client import CollectorRegistry

from learners.core import LearningCore
from learners.specs import ModelSpec
from stream.checkpoint.protocol import SnapshotResult
from stream.learner.observer import PrometheusObserver
from stream.learner.observing import LearnerView
from stream.learner.telemetry import LearnerMetrics
from tests.support.metrics import View


def test_a_snapshot_whose_sizes_were_not_read_back_is_exported_without_redis() -> None:
    """A forked child wrote the version and Redis went away before its sizes were read back
    (seen in CI: the observer then read them itself, raised, and the learner stopped)."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(LearnerMetrics(registry))
    # no store to read: none is needed
    view = cast(LearnerView, View(LearningCore([ModelSpec("lr", "logreg")])))
    observer.snapshot(view, SnapshotResult(1, True, 0.2, 0.01, sizes={"lr": 1500}))
    observer.snapshot(view, SnapshotResult(2, True, 0.2, 0.01, sizes={}))
    sample = registry.get_sample_value
    assert sample("riverstream_snapshot_version", {"model": "lr"}) == 2
    assert sample("riverstream_snapshot_size_bytes", {"model": "lr"}) == 1500  # kept, not read

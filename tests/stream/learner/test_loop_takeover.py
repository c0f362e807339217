"""Models a learner loads at its start besides its own checkpoint, on the real Kafka and Redis
(`stream.learner.groups`: handed over to it, or with versions but no handover recorded).

- Handed to a learner that has a checkpoint of its own, a model's latest version must be of the
  ``--model`` spec given: refused at that start, as a restored model is (before, it was loaded
  whatever the spec, and the next start failed instead).
- A model missing from the learner's checkpoint that already has versions, with no handover to
  it recorded (a Redis failover lost the handover), continues from its latest version, with an
  error in the log: before, it started again from nothing, silently.
"""

from __future__ import annotations

import logging

import pytest

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.errors import SnapshotError
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from stream.registry.registry import Registry
from tests.support.pipeline import fast, final_model, publish, run_to_end

pytestmark = pytest.mark.integration

EVENTS = list(dataset_events("Phishing", label_delay=5, limit=300))  # 600 events


def test_a_model_taken_over_at_position_must_match_the_spec(settings: Settings) -> None:
    a = fast(settings, learner="a", snapshot_every_labels=100, snapshot_every_seconds=0.2)
    b = a.model_copy(update={"learner": "b"})
    publish(a, EVENTS[:300])
    run_to_end(build_learner(a, [ModelSpec("lr", "logreg"), ModelSpec("m", "logreg")],
                             use_fork=False))  # fmt: skip
    run_to_end(build_learner(b, [ModelSpec("x", "logreg")], use_fork=False))  # its own checkpoint
    Registry(snapshot_store(a), by="test").handover("m", "b", reason="move")
    with pytest.raises(SnapshotError, match="model m was snapshotted with spec 'logreg'"):
        build_learner(b, [ModelSpec("x", "logreg"), ModelSpec("m", "hoeffding")], use_fork=False)
    store = snapshot_store(b)
    before = store.latest_version("m")
    learner = build_learner(b, [ModelSpec("x", "logreg"), ModelSpec("m", "logreg")],
                            use_fork=False)  # fmt: skip
    run_to_end(learner)
    assert (store.latest_version("m") or 0) > (before or 0)


def test_a_model_with_versions_and_no_handover_recorded_continues_from_its_latest(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    a = fast(settings, learner="a", snapshot_every_labels=100, snapshot_every_seconds=0.2)
    publish(a, EVENTS[:300])
    run_to_end(build_learner(a, [ModelSpec("lr", "logreg"), ModelSpec("m", "logreg")],
                             use_fork=False))  # fmt: skip
    store = snapshot_store(a)
    learned = store.meta("m", store.latest_version("m") or 0).samples_learned
    assert learned > 0
    # What a failover that lost a handover of m and back leaves: a's checkpoint without m
    # (a went on without it), m's versions, m owned by a, and no handover marker.
    Registry(store, by="test").handover("m", "b", reason="move")
    publish(a, EVENTS[300:400])
    run_to_end(build_learner(a, [ModelSpec("lr", "logreg")], use_fork=False))
    store.client.delete(store.keys.owner("m"), store.keys.handover("m"),
                        store.keys.learner_commands("a"))  # fmt: skip
    store.client.set(store.keys.owner("m"), "a")
    caplog.set_level(logging.ERROR)
    publish(a, EVENTS[400:])
    run_to_end(build_learner(a, [ModelSpec("lr", "logreg"), ModelSpec("m", "logreg")],
                             use_fork=False))  # fmt: skip
    assert any("no handover to this learner is recorded" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert final_model(a, "m").samples_learned > learned  # went on from it, not from nothing

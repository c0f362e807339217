"""A rollback queued before a handover, on the real Kafka and Redis: the new owner carries it
out (`stream.registry.owners.handover` moves it to its command list).

Before, it stayed with the previous owner: the new owner continued from the version before the
rollback, and its first automatic promotion served that, undoing the operator's rollback.
"""

from __future__ import annotations

import pytest

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from stream.registry.registry import Registry
from tests.support.pipeline import fast, final_model, publish, run_to_end

pytestmark = pytest.mark.integration

EVENTS = list(dataset_events("Phishing", label_delay=5, limit=600))  # 1200 events


def test_a_rollback_queued_before_a_handover_is_carried_out_by_the_new_owner(
    settings: Settings,
) -> None:
    a = fast(settings, learner="a", snapshot_every_labels=50, snapshot_every_seconds=0.2)
    b = a.model_copy(update={"learner": "b"})
    publish(a, EVENTS[:300])
    run_to_end(build_learner(a, [ModelSpec("lr", "logreg")], use_fork=False))
    registry = Registry(snapshot_store(a), by="test")
    versions = registry.store.versions("lr")
    target, latest = versions[0], versions[-1]
    at_target = registry.store.meta("lr", target).samples_learned
    at_latest = registry.store.meta("lr", latest).samples_learned
    assert at_target < at_latest
    # learner a is stopped (or has not read its commands yet): roll lr back, then move it to b
    command = registry.rollback("lr", to=target, resume="skip", reason="bad model")
    done = registry.handover("lr", "b", reason="move")
    assert [c.id for c in done.moved] == [command.id]

    publish(a, EVENTS[300:])
    learner_b = build_learner(b, [ModelSpec("lr", "logreg")], use_fork=False)
    run_to_end(learner_b)
    assert learner_b.stats.rollbacks == 1
    assert [c.action for c in registry.pending_commands()] == ["release"]  # a's, stopped
    final = final_model(b, "lr")
    # b went back to the version rolled back to (a skip: at its input position, wherever it was
    # when it read the command), so it lacks what lr had learned past it; before, all 600
    assert final.samples_learned <= at_target + (600 - at_latest) < 600
    served = registry.serving_version("lr")
    assert served is not None and served > latest
    assert registry.store.meta("lr", served).samples_learned == final.samples_learned

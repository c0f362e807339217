"""Two processes of one learner name on the real Kafka and Redis: the one that started last
learns, the other stops at its first write (`stream.registry.owners.claim`'s epoch).

Before the epoch, both claimed the learner's models (the claim compares names only): both
learned, one overwrote the other's checkpoint or had its snapshots refused forever, and either
could acknowledge (delete) commands the other had not read.
"""

from __future__ import annotations

from typing import cast

import pytest

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from stream.registry.registry import Registry
from stream.store.snapshots import FencedError, SnapshotStore
from tests.support.pipeline import fast, final_model, publish, run_to_end

pytestmark = pytest.mark.integration

EVENTS = list(dataset_events("Phishing", label_delay=5, limit=400))
SPECS = [ModelSpec("lr", "logreg")]


def _written(store: SnapshotStore) -> tuple[list[int], bytes | None]:
    return store.versions("lr"), cast(
        "bytes | None", store.client.get(store.keys.checkpoint_latest)
    )


def test_the_older_of_two_processes_of_one_learner_writes_nothing_and_stops(
    settings: Settings,
) -> None:
    a = fast(settings, learner="a", snapshot_every_labels=100, snapshot_every_seconds=0.2)
    publish(a, EVENTS)
    store = snapshot_store(a)
    old = build_learner(a, SPECS, use_fork=False)  # still running (a zombie, an old pod)
    new = build_learner(a, SPECS, use_fork=False)  # started after it: learns from now on
    with pytest.raises(FencedError, match="another process of learner 'a' started at"):
        run_to_end(old)  # its first snapshot is refused: it stops
    assert _written(store) == ([], None)  # nothing of the old process
    run_to_end(new)
    versions, checkpoint = _written(store)
    assert versions and checkpoint is not None
    assert final_model(a, "lr").samples_learned == len(EVENTS) // 2

    # A command queued now: the old process may read it, not acknowledge (delete) it.
    registry = Registry(store, by="test")
    command = registry.rollback("lr", to=versions[0], resume="skip", reason="test")
    assert old.commands is not None
    assert [c.id for c in old.commands.peek()] == [command.id]
    with pytest.raises(FencedError, match="learner 'a'"):
        old.commands.ack(1)
    assert [c.id for c in registry.pending_commands()] == [command.id]


def test_a_learner_restarted_after_its_process_died_takes_over(settings: Settings) -> None:
    """The newest process is the one that learns: a restart (after a kill -9 the old process
    never stopped cleanly) continues from the checkpoint its predecessor wrote."""
    a = fast(settings, learner="a", snapshot_every_labels=100, snapshot_every_seconds=0.2)
    publish(a, EVENTS[:200])
    run_to_end(build_learner(a, SPECS, use_fork=False))
    first = snapshot_store(a).latest_version("lr")
    publish(a, EVENTS[200:])
    restarted = build_learner(a, SPECS, use_fork=False)
    assert restarted.stats.restored_from is not None
    run_to_end(restarted)
    assert (snapshot_store(a).latest_version("lr") or 0) > (first or 0)
    assert final_model(a, "lr").samples_learned == len(EVENTS) // 2

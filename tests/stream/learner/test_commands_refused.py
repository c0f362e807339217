"""A rollback the learner cannot carry out is refused, not retried at every start.

Retention prunes each model's versions on its own: a checkpoint kept for one model (its
promoted version) may hold another model whose copy of that version is gone. The registry
accepts a replay to that checkpoint (it exists), and the learner's restore of it fails. Before,
that error stopped the learner, and every start read the command again and stopped again. Now
the learner leaves its state as it was, acknowledges the command, and sets the model's promotion
to ``manual`` with the reason, so that the version rolled back to stays served.

Real servers: the suite's Kafka and Redis, an in-process learner.
"""

from __future__ import annotations

import pytest

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from stream.registry.registry import Registry
from tests.support.pipeline import fast, publish, run_to_end

pytestmark = pytest.mark.integration


def test_a_replay_to_a_checkpoint_missing_a_model_is_refused_and_the_learner_goes_on(
    settings: Settings,
) -> None:
    s = fast(settings, learner="a", snapshot_every_labels=100, snapshot_every_seconds=0.2)
    publish(s, list(dataset_events("Phishing", label_delay=5, limit=300)))
    specs = [ModelSpec("lr", "logreg"), ModelSpec("other", "logreg")]
    run_to_end(build_learner(s, specs))
    store = snapshot_store(s)
    first = store.versions("other")[0]
    # what retention does to "other" alone, keeping the checkpoint for "lr"'s sake
    store.client.delete(store.keys.meta("other", first))
    store.client.zrem(store.keys.versions("other"), str(first))
    registry = Registry(store, by="test")
    command = registry.rollback("lr", to=first, resume="replay", reason="bad labels")
    learned = registry.versions("lr")[-1].meta.samples_learned

    publish(s, list(dataset_events("Phishing", label_delay=5, limit=400))[300:])
    summaries = run_to_end(build_learner(s, specs))  # raised SnapshotError before

    assert registry.pending_commands() == []  # acknowledged, not read again at every start
    assert registry.policy("lr").policy == "manual"
    entry = registry.history("lr")[-1]
    assert entry.action == "policy" and command.id in entry.reason
    assert f"no snapshot other v{first}" in entry.reason
    assert registry.serving_version("lr") == first  # the operator's rollback stays served
    # the learner kept its own state and went on learning from it (not rewound)
    lr = next(x for x in summaries if x["model"] == "lr")
    assert lr["samples_learned"] > learned

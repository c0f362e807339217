"""A rollback the learner cannot carry out is refused, not retried at every start, nor ignored.

Retention prunes each model's versions on its own: a checkpoint kept for one model (its
promoted version) may hold another model whose copy of that version is gone. The registry
refuses a replay to it when it knows (`stream.registry.resume`), but retention may prune the copy
after the command was queued, and the learner's restore of it fails. Before, that error stopped
the learner, and every start read the command again and stopped again. Now the learner leaves
its state as it was, acknowledges the command, and sets the model's promotion to ``manual``
with the reason, so that the version rolled back to stays served.

The same goes for the refusals that only logged before (and the learner's next automatic
promotion then silently undid the rollback): a replay to a checkpoint written before a model
joined the learner, a rollback of a model the learner owns but does not learn, a skip to a
version of another spec. A rollback of a model handed over to another learner since it was
queued is ignored, with the policy left alone (`stream.learner.commands`).

Real servers: the suite's Kafka and Redis, an in-process learner.
"""

from __future__ import annotations

import uuid

import pytest

from learners.datasets import dataset_events
from learners.model_state import ModelState
from learners.serialization import dump_signed
from learners.specs import ModelSpec
from schemas.records import RollbackCommand, SnapshotMeta
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotStore
from tests.support.pipeline import fast, final_model, publish, run_to_end

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
    registry = Registry(store, by="test")
    command = registry.rollback("lr", to=first, resume="replay", reason="bad labels")
    # what retention does to "other" alone once the command is queued, keeping the checkpoint
    # for "lr"'s sake (before, the registry refuses the replay: `stream.registry.resume`)
    store.client.delete(store.keys.meta("other", first))
    store.client.zrem(store.keys.versions("other"), str(first))
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


def _events(start: int, stop: int) -> list:
    return list(dataset_events("Phishing", label_delay=5, limit=stop))[start:]


def _register(store: SnapshotStore, spec: ModelSpec) -> int:
    """A new version of ``spec.name``, fresh, registered as an import does (no pointer moves)."""
    blob = dump_signed(ModelState.from_spec(spec), store.signing_key)
    meta = SnapshotMeta.describe(
        spec.name, blob, kind="classifier", spec=spec.spec, samples_learned=0, metrics={},
        offsets={},
    )  # fmt: skip
    version = store.next_version()
    Registry(store, by="test").register(meta, blob, version)
    return version


def _refused(registry: Registry, model: str, command: RollbackCommand, why: str) -> None:
    """``command`` was acknowledged and refused: ``model``'s promotion is manual, saying why."""
    assert registry.pending_commands() == []
    assert registry.policy(model).policy == "manual"
    entry = registry.history(model)[-1]
    assert entry.action == "policy" and command.id in entry.reason and why in entry.reason
    assert registry.serving_version(model) == command.to  # the rollback stays served


def test_a_replay_to_a_checkpoint_written_before_a_model_was_added_is_refused(
    settings: Settings,
) -> None:
    """The registry cannot tell: the model added is in no checkpoint yet when it is queued."""
    s = fast(settings, learner="a", snapshot_every_labels=100, snapshot_every_seconds=0.2)
    publish(s, _events(0, 300))
    run_to_end(build_learner(s, [ModelSpec("lr", "logreg")]))
    registry = Registry(snapshot_store(s), by="test")
    first = registry.versions("lr")[0].meta.version
    command = registry.rollback("lr", to=first, resume="replay", reason="bad labels")
    learned = registry.versions("lr")[-1].meta.samples_learned

    publish(s, _events(300, 400))
    specs = [ModelSpec("lr", "logreg"), ModelSpec("new", "logreg")]
    summaries = run_to_end(build_learner(s, specs))  # only logged it, before

    _refused(registry, "lr", command, f"checkpoint v{first} does not hold ['new']")
    lr = next(x for x in summaries if x["model"] == "lr")
    assert lr["samples_learned"] > learned  # not rewound


def test_a_rollback_of_a_model_the_learner_owns_but_does_not_learn_is_refused(
    settings: Settings,
) -> None:
    """An imported model (the learner ``default`` owns a model nobody claimed) that the learner
    was started without: should it learn it one day, it starts from the latest version, whose
    automatic promotion would undo the rollback."""
    s = fast(settings, snapshot_every_labels=100, snapshot_every_seconds=0.2)
    store = snapshot_store(s)
    target, _later = (_register(store, ModelSpec("imp", "logreg")) for _ in range(2))
    registry = Registry(store, by="test")
    command = registry.rollback("imp", to=target, reason="the later import is bad")
    publish(s, _events(0, 300))
    run_to_end(build_learner(s, [ModelSpec("lr", "logreg")]))  # only logged it, before
    _refused(registry, "imp", command, "learner 'default' owns imp but does not learn it")


def test_a_rollback_of_a_model_handed_over_since_it_was_queued_leaves_its_policy_alone(
    settings: Settings,
) -> None:
    """The model is the new owner's: the handover moved the rollback to the new owner's
    command list (`stream.registry.owners`), and this learner, stopped meanwhile, dropped the
    model at its start and reads only the release; the policy is left alone and the version
    rolled back to stays served until the new owner carries the rollback out."""
    s = fast(settings, learner="a", snapshot_every_labels=100, snapshot_every_seconds=0.2)
    publish(s, _events(0, 300))
    run_to_end(build_learner(s, [ModelSpec("lr", "logreg"), ModelSpec("other", "logreg")]))
    registry = Registry(snapshot_store(s), by="test")
    first = registry.versions("other")[0].meta.version
    command = registry.rollback("other", to=first, reason="bad labels")
    registry.handover("other", "b", reason="split")

    publish(s, _events(300, 400))
    run_to_end(build_learner(s, [ModelSpec("lr", "logreg")]))

    assert registry.pending_commands() == [command]  # b's now; a acknowledged the release
    raw = registry.client.lrange(registry.keys.learner_commands("b"), 0, -1)
    assert [RollbackCommand.from_json(r).id for r in raw] == [command.id]
    assert registry.policy("other").policy == "always"
    assert registry.history("other")[-1].action == "handover"
    assert registry.serving_version("other") == first


def test_a_skip_to_a_version_of_another_spec_is_refused_and_the_learner_starts_again(
    settings: Settings,
) -> None:
    """The registry refuses such a rollback (`stream.registry.resume`); one it could not tell
    of (queued by a registry without the check) reaches the learner, which refused nothing:
    it learned a tree as ``lr`` from then on, and could not start again (its checkpoint's
    ``lr`` was not the ``logreg`` it is started with)."""
    s = fast(settings, learner="a", snapshot_every_labels=100, snapshot_every_seconds=0.2)
    specs = [ModelSpec("lr", "logreg")]
    publish(s, _events(0, 300))
    run_to_end(build_learner(s, specs))
    store = snapshot_store(s)
    tree = _register(store, ModelSpec("lr", "hoeffding"))  # say, imported from a store of trees
    registry = Registry(store, by="test")
    registry.promote("lr", tree, reason="serve the tree")
    command = RollbackCommand(str(uuid.uuid4()), "lr", "rollback", tree, "skip", [], 0.0)
    store.client.rpush(store.keys.learner_commands("a"), command.to_json())

    publish(s, _events(300, 400))
    run_to_end(build_learner(s, specs))

    _refused(registry, "lr", command, f"lr v{tree} is a 'hoeffding' model, not 'logreg'")
    assert type(final_model(s, "lr").model).__name__ != "HoeffdingTreeClassifier"
    publish(s, _events(400, 450))
    run_to_end(build_learner(s, specs))  # it starts again

"""The registry refuses a rollback its learner could not carry out, before queueing anything
(`stream.registry.resume`): a replay to a checkpoint without one of the learner's models, a
version of another spec than the model learns as.

Before, these rollbacks were accepted: the pointer moved, the learner refused the command (it
only logged), and its next automatic promotion undid the rollback. Real Redis, no learner.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from learners.serialization import dump_signed
from schemas.settings import Settings
from stream.learner.runtime import snapshot_store
from stream.registry.registry import Registry, RegistryError
from stream.store.snapshots import SnapshotMeta, SnapshotStore
from tests.support.registry import dump_all

pytestmark = pytest.mark.integration


def _write(store: SnapshotStore, key: bytes, specs: Mapping[str, str]) -> int:
    """One snapshot of ``store``'s learner: model → its spec, with a checkpoint."""
    version = store.next_version()
    written = {}
    for name, spec in specs.items():
        blob = dump_signed({"model": name, "version": version}, key)
        meta = SnapshotMeta.describe(
            name, blob, kind="classifier", spec=spec, samples_learned=version, metrics={},
            offsets={"features:0": version},
        )  # fmt: skip
        written[name] = (blob, meta)
    store.write(version, written, dump_signed({"join": version}, key), {"features:0": version})
    return version


@pytest.fixture
def store_b(settings: Settings) -> Iterator[SnapshotStore]:
    """The store of learner ``b``, beside the learner ``default`` of the `store` fixture."""
    store = snapshot_store(settings.model_copy(update={"learner": "b"}))
    yield store
    store.client.close()


def _refused(store: SnapshotStore, registry: Registry, match: str, **rollback: object) -> None:
    """The rollback of ``m`` is refused, naming the problem, and changes nothing."""
    before = dump_all(store)
    with pytest.raises(RegistryError, match=match):
        registry.rollback("m", reason="bad", **rollback)  # type: ignore[arg-type]
    assert dump_all(store) == before  # no pointer moved, no command queued


def test_a_replay_to_a_checkpoint_written_before_a_model_joined_the_learner_is_refused(
    store: SnapshotStore, store_b: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1 = _write(store, key, {"m": "logreg"})
    store.client.set(store.keys.owner("z"), "b")
    _write(store_b, key, {"z": "logreg"})  # another learner's model: not rewound with ``m``
    _write(store, key, {"m": "logreg", "n": "logreg"})  # ``n`` joins the learner
    _refused(
        store, registry, rf"learner 'default' learns \['n'\] too, with no version v{v1}",
        to=v1, resume="replay",
    )  # fmt: skip
    registry.rollback("m", to=v1, reason="bad")  # skip: only ``m`` goes back
    # Once ``n`` is another learner's, the learner leaves it out of the checkpoint: accepted.
    registry.handover("n", "b", reason="split")
    command = registry.rollback("m", to=v1, resume="replay", reason="bad")
    assert command in registry.pending_commands()


def test_a_replay_to_a_checkpoint_whose_copy_of_a_model_was_pruned_is_refused(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1, _v2, _v3 = (_write(store, key, {"m": "logreg", "n": "logreg"}) for _ in range(3))
    assert registry.prune("n", keep_last=1) == [v1]  # the checkpoint stays: ``m`` keeps v1
    assert store.client.exists(store.keys.checkpoint_meta(v1))
    _refused(store, registry, rf"\['n'\] too, with no version v{v1}", to=v1, resume="replay")


def test_a_replay_to_a_checkpoint_before_a_model_was_handed_over_to_the_learner_is_refused(
    store: SnapshotStore, store_b: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1 = _write(store, key, {"m": "logreg"})
    store.client.set(store.keys.owner("y"), "b")
    _write(store_b, key, {"y": "logreg"})
    registry.handover("y", "default", reason="merge")  # not in the learner's checkpoints yet
    _refused(store, registry, r"learner 'default' learns \['y'\] too", to=v1, resume="replay")


def test_a_rollback_to_a_version_of_another_spec_is_refused(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1 = _write(store, key, {"m": "hoeffding"})  # say, imported from a store of trees
    _write(store, key, {"m": "logreg"})
    for resume in ("skip", "replay"):
        _refused(
            store, registry, rf"m v{v1} is a 'hoeffding' model, but m learns as 'logreg'",
            to=v1, resume=resume,
        )  # fmt: skip
    registry.pin("m", v1, reason="serve the tree")  # what the refusal suggests
    assert registry.serving_version("m") == v1

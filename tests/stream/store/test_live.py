"""Live updates' write rule (`stream.store.live`) against the real Redis: an older process of a
learner's name, still running after a newer one started, publishes no live update."""

from __future__ import annotations

from typing import Any

from river import linear_model

from learners.serialization import dump_signed
from stream.registry.owners import claim
from stream.store.live import LiveMeta, LiveStore
from stream.store.snapshots import SnapshotStore


def write(kit: Any, store: SnapshotStore, version: int, samples: int) -> bool:
    blob = dump_signed(kit.state(linear_model.LogisticRegression(), "classifier"), kit.KEY)
    meta = LiveMeta.describe(
        "m", version, blob, kind="classifier", spec="x", samples_learned=samples, metrics={}
    )
    return LiveStore(store).write("m", version, blob, meta)


def test_an_older_process_of_the_learner_publishes_no_live_update(
    kit: Any, store: SnapshotStore
) -> None:
    version = kit.publish(store, "m", kit.state(linear_model.LogisticRegression(), "classifier"),
                          "classifier")  # fmt: skip
    first = claim(store.client, store.keys, store.keys.learner, ["m"])
    older = store.using(store.client)
    older.epoch = first
    assert write(kit, older, version, 10)  # the newest process so far
    newer = store.using(store.client)
    newer.epoch = claim(store.client, store.keys, store.keys.learner, ["m"])
    assert newer.epoch > first

    assert not write(kit, older, version, 20)
    assert LiveStore(store).pointers("m").live.samples_learned == 10  # type: ignore[union-attr]
    assert write(kit, newer, version, 30)
    assert LiveStore(store).pointers("m").live.samples_learned == 30  # type: ignore[union-attr]
    assert write(kit, store, version, 40)  # a store without an epoch (tools) is not checked

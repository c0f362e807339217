"""The models' follower against the real Redis: a pointer that does not parse is one model's
problem, an unexpected error does not hold a starting process, and a refused version is never
covered by a live update."""

from __future__ import annotations

from typing import Any

import pytest
from river import linear_model

from learners.serialization import dump_signed
from stream.store.follower import SnapshotFollower
from stream.store.live import LiveMeta, LiveStore
from stream.store.snapshots import SnapshotStore
from tests.support.serving import FollowerRecorder

pytestmark = pytest.mark.integration


def classifier(kit) -> Any:
    return kit.state(linear_model.LogisticRegression(), "classifier")


def served(follower: SnapshotFollower, name: str) -> tuple[int, bool] | None:
    model = follower.get(name)
    return None if model is None else (model.version, model.live)


@pytest.mark.parametrize("live", [False, True], ids=["exact", "live"])
def test_an_unparsable_pointer_is_the_problem_of_that_model_only(
    kit, store: SnapshotStore, live: bool
) -> None:
    kit.publish(store, "a", classifier(kit), "classifier")
    vb = kit.publish(store, "b", classifier(kit), "classifier")
    store.client.set(store.keys.promoted("a"), b"oops")  # "a" sorts first: synced first
    follower = SnapshotFollower(store, FollowerRecorder(), poll_seconds=0.1, live=live)
    follower.start()
    try:
        assert follower.first_sync.wait(10), "a bad pointer held the first sync"
        kit.wait_until(lambda: served(follower, "b") == (vb, False))
        status = follower.status()
        assert status["redis"]["reachable"], status["redis"]
        assert status["redis"]["error"] is None
        assert status["missing"] == ["a"] and not status["ready"]
        [error] = status["errors"]
        assert error["model"] == "a" and "oops" in error["error"]
        assert follower.get("a") is None

        store.client.delete(store.keys.promoted("a"))  # repaired: "a" is followed again
        kit.wait_until(lambda: follower.get("a") is not None)
        kit.wait_until(lambda: follower.status()["errors"] == [])
        assert follower.status()["ready"]
    finally:
        follower.stop()


class Failing(SnapshotFollower):
    def _sync(self) -> None:
        raise RuntimeError("boom")


def test_an_unexpected_error_is_reported_and_does_not_hold_the_start(
    kit, store: SnapshotStore
) -> None:
    kit.publish(store, "a", classifier(kit), "classifier")
    follower = Failing(store, FollowerRecorder(), poll_seconds=0.1)
    follower.start()
    try:
        assert follower.first_sync.wait(10), "a failing sync held the first sync"
        redis = follower.status()["redis"]
        assert redis["follower_error"] == "RuntimeError: boom"
    finally:
        follower.stop()


def write_live(kit, store: SnapshotStore, name: str, version: int, samples: int) -> None:
    blob = dump_signed(classifier(kit), kit.KEY)
    meta = LiveMeta.describe(
        name, version, blob, kind="classifier", spec="x", samples_learned=samples, metrics={}
    )
    assert LiveStore(store).write(name, version, blob, meta)


def pin(store: SnapshotStore, name: str, version: int) -> None:
    """What the registry's pin does to the keys (the live update goes, the pin is set)."""
    store.client.delete(store.keys.live(name))
    store.client.set(store.keys.pin(name), version)


def test_a_live_update_never_covers_a_refused_version(kit, store: SnapshotStore) -> None:
    # synced by hand (no thread): each step is one look at Redis
    follower = SnapshotFollower(store, FollowerRecorder(), models=["c"], live=True)
    v3 = kit.publish(store, "c", classifier(kit), "classifier")
    follower.sync()
    assert served(follower, "c") == (v3, False)
    v4 = kit.publish(store, "c", classifier(kit), "classifier", key=b"wrong-key")
    follower.sync()
    assert follower.status()["refused"] == [
        {"model": "c", "version": v4, "reason": "bad_signature"}
    ]
    assert served(follower, "c") == (v3, False)

    write_live(kit, store, "c", v4, samples=999)  # continues the refused version
    follower.sync()
    assert served(follower, "c") == (v3, False)

    pin(store, "c", v4)  # a pin wins over live updates, even to a refused version
    follower.sync()
    assert served(follower, "c") == (v3, False)


def test_a_pin_to_a_refused_version_stops_a_live_update(kit, store: SnapshotStore) -> None:
    follower = SnapshotFollower(store, FollowerRecorder(), models=["c"], live=True)
    v3 = kit.publish(store, "c", classifier(kit), "classifier")
    follower.sync()
    assert served(follower, "c") == (v3, False)
    # v4 is refused, but only once it is loaded: its live update serves first
    v4 = kit.publish(store, "c", classifier(kit), "classifier", key=b"wrong-key")
    write_live(kit, store, "c", v4, samples=999)
    follower.sync()
    assert served(follower, "c") == (v4, True)

    pin(store, "c", v4)  # the live update is no longer allowed; v4 is refused: v3 again
    follower.sync()
    assert served(follower, "c") == (v3, False)
    assert [r["version"] for r in follower.status()["refused"]] == [v4]

    # a process that never loaded an exact version of "c" serves nothing of it then
    store.client.delete(store.keys.pin("c"))
    write_live(kit, store, "c", v4, samples=1999)
    fresh = SnapshotFollower(store, FollowerRecorder(), models=["c"], live=True)
    fresh.sync()
    assert served(fresh, "c") == (v4, True)
    pin(store, "c", v4)
    fresh.sync()
    assert fresh.get("c") is None
    status = fresh.status()
    assert status["missing"] == ["c"] and not status["ready"]
    assert [r["version"] for r in status["refused"]] == [v4]

"""The models' follower and a name in the models' index that is not UTF-8 (written by something
else: the store writes valid names only), against the real Redis: that entry is skipped, logged
and counted once, reported in ``errors``, and every other model is followed as usual."""

from __future__ import annotations

import logging

import pytest
from river import linear_model

from stream.store.follower import SnapshotFollower
from stream.store.snapshots import SnapshotStore
from tests.support.serving import FollowerRecorder

pytestmark = pytest.mark.integration

BAD = (b"\xff", b"b\xc3")  # one sorts before "a", one between "a" and "c"


def publish(kit, store: SnapshotStore, name: str) -> int:
    model = kit.state(linear_model.LogisticRegression(), "classifier")
    return int(kit.publish(store, name, model, "classifier"))


def served(follower: SnapshotFollower, name: str) -> int | None:
    model = follower.get(name)
    return None if model is None else model.version


def test_the_store_lists_a_name_that_is_not_utf8_escaped(store: SnapshotStore) -> None:
    store.client.sadd(store.keys.models, b"ok", *BAD)
    names = store.models()
    assert names == ["\\xff", "b\\xc3", "ok"]
    assert [getattr(n, "raw", None) for n in names] == [*BAD, None]  # `UnreadableModelName`


@pytest.mark.parametrize("live", [False, True], ids=["exact", "live"])
def test_a_model_name_that_is_not_utf8_is_the_problem_of_that_entry_only(
    kit, store: SnapshotStore, live: bool
) -> None:
    """Such a name failed every sync (``UnicodeDecodeError`` reading the index): no model was
    loaded at start, none was ready, and a pointer moved without a notification was never
    followed."""
    va = publish(kit, store, "a")
    vc = publish(kit, store, "c")
    store.client.sadd(store.keys.models, *BAD)
    recorder = FollowerRecorder()
    follower = SnapshotFollower(store, recorder, poll_seconds=0.1, live=live)
    follower.start()
    try:
        assert follower.first_sync.wait(10)
        kit.wait_until(lambda: served(follower, "a") == va and served(follower, "c") == vc)
        status = follower.status()
        assert follower.synced and status["redis"]["follower_error"] is None, status["redis"]
        assert status["ready"] and status["missing"] == [], status
        errors = {e["model"]: e["error"] for e in status["errors"]}
        assert set(errors) == {"\\xff", "b\\xc3"}, errors  # the bytes escaped
        assert "b'\\xff'" in errors["\\xff"] and "not UTF-8" in errors["\\xff"], errors
        assert not follower.is_known("\\xff")

        # polling still follows: a pointer moved without a notification (a lost message)
        va2 = publish(kit, store, "a")
        kit.wait_until(lambda: served(follower, "a") == va2)
        store.client.set(store.keys.promoted("a"), va)
        kit.wait_until(lambda: served(follower, "a") == va, what="a back to its first version")

        store.client.srem(store.keys.models, *BAD)  # repaired
        kit.wait_until(lambda: not follower.status()["errors"], what="the problems forgotten")
        assert follower.status()["ready"]
    finally:
        follower.stop()
    unreadable = [r for r in recorder.refused if r[1] == "unreadable_name"]
    assert sorted(unreadable) == [("\\xff", "unreadable_name"), ("b\\xc3", "unreadable_name")]


def test_an_unreadable_name_is_logged_and_counted_once(
    kit, store: SnapshotStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Once per name while it stays in the index, not at every poll; again once it comes back
    after being removed."""
    va = publish(kit, store, "a")
    store.client.sadd(store.keys.models, BAD[0])
    recorder = FollowerRecorder()
    follower = SnapshotFollower(store, recorder)  # synced by hand: each call is one poll
    with caplog.at_level(logging.INFO, logger="stream.store"):
        for _ in range(3):
            follower.sync()
        assert served(follower, "a") == va
        assert recorder.refused == [("\\xff", "unreadable_name")]
        about = [r for r in caplog.records if "\\xff" in r.getMessage()]
        assert len(about) == 1 and about[0].levelno == logging.ERROR, about

        store.client.srem(store.keys.models, BAD[0])
        follower.sync()
        assert follower.status()["errors"] == []
        store.client.sadd(store.keys.models, BAD[0])
        follower.sync()
        follower.sync()
    assert recorder.refused == [("\\xff", "unreadable_name")] * 2
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2

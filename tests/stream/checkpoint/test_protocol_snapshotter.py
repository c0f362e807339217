"""When the learner forks for a snapshot and when it writes in-process (real Redis)."""

from __future__ import annotations

import pytest
import redis

from learners.core import LearningCore
from learners.specs import ModelSpec
from schemas.errors import SnapshotError
from stream.checkpoint.protocol import Snapshotter, restore
from stream.store.snapshots import SnapshotStore

pytestmark = pytest.mark.integration

KEY = b"test-key"


def _snapshotter(redis_url: str, prefix: str, fork_min_bytes: int) -> Snapshotter:
    def store() -> SnapshotStore:  # the forked child opens its own connection
        return SnapshotStore(redis.Redis.from_url(redis_url), prefix, KEY)

    return Snapshotter(store(), store, KEY, fork_min_bytes=fork_min_bytes)


def _take(snapshotter: Snapshotter, core: LearningCore) -> tuple[bool, int]:
    result = snapshotter.take(core, {"features:0": 1})
    if result is None:  # forked: reap the child
        result = snapshotter.poll(block=True)
    assert result is not None and result.ok
    return result.forked, result.version


def test_a_small_snapshot_is_written_in_process_after_the_first(redis_url, prefix) -> None:
    core = LearningCore([ModelSpec("m", "logreg")])
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000)
    first_forked, _ = _take(snapshotter, core)
    assert first_forked  # size unknown: fork
    assert snapshotter.last_bytes is not None and 0 < snapshotter.last_bytes < 1_000_000
    second_forked, version = _take(snapshotter, core)
    assert not second_forked
    restored = restore(snapshotter.store, KEY, [ModelSpec("m", "logreg")])
    assert restored is not None and restored.version == version


def test_snapshots_above_the_threshold_keep_forking(redis_url, prefix) -> None:
    core = LearningCore([ModelSpec("m", "logreg")])
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=0)
    assert [_take(snapshotter, core)[0] for _ in range(3)] == [True, True, True]


def test_a_failed_in_process_snapshot_is_reported_and_the_next_one_is_written(
    redis_url, prefix
) -> None:
    core = LearningCore([ModelSpec("m", "logreg")])
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000)
    _take(snapshotter, core)  # the first forks; the next ones are small: in-process

    def failing(*_args: object) -> None:
        raise SnapshotError("registry unavailable")

    snapshotter.after_write = failing
    failed = snapshotter.take(core, {"features:0": 2})
    assert failed is not None and not failed.forked and not failed.ok
    snapshotter.after_write = None
    forked, version = _take(snapshotter, core)
    assert not forked and version > failed.version

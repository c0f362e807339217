"""How the learner's snapshots are written: a forked child, the writer thread, or in line
(real Redis)."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from learners.core import LearningCore, ModelState
from learners.serialization import pickled_within
from learners.specs import ModelSpec
from schemas.errors import SnapshotError
from schemas.records import SnapshotMeta
from stream.checkpoint import protocol
from stream.checkpoint.protocol import (
    WRITER_SWITCH_INTERVAL,
    SnapshotResult,
    Snapshotter,
    restore,
)
from stream.store.snapshots import PERMISSIONS, SnapshotStore, refusal
from tests.support.outage import PrivateRedis, locked_redis
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

KEY = b"test-key"
__all__ = ["locked_redis"]  # fixtures
INTERVAL = 0.005  # the interpreter's switch interval each test starts from


@pytest.fixture(autouse=True)
def _switch_interval() -> Iterator[None]:
    """Each test starts at a known switch interval and must leave it as it was."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(INTERVAL)
    try:
        yield
        assert sys.getswitchinterval() == INTERVAL  # every writer thread put it back
    finally:
        sys.setswitchinterval(before)


def _snapshotter(
    redis_url: str, prefix: str, fork_min_bytes: int, *, use_fork: bool = True
) -> Snapshotter:
    def store() -> SnapshotStore:  # the forked child and the writer thread open their own
        return SnapshotStore(redis.Redis.from_url(redis_url), prefix, KEY)

    return Snapshotter(store(), store, KEY, use_fork=use_fork, fork_min_bytes=fork_min_bytes)


def _take(snapshotter: Snapshotter, core: LearningCore, offset: int = 1) -> SnapshotResult:
    result = snapshotter.take(core, {"features:0": offset})
    if result is None:  # forked, or handed to the writer thread: reap it
        assert snapshotter.busy
        result = snapshotter.poll(block=True)
    assert result is not None
    assert not snapshotter.busy
    return result


def test_a_small_snapshot_is_written_by_a_thread_from_the_first(redis_url, prefix) -> None:
    """The first snapshot of a process has no previous size: its models' pickles, counted up
    to the threshold, decide (a learner that just started does not fork for a small model)."""
    core = LearningCore([ModelSpec("m", "logreg")])
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000)
    first = _take(snapshotter, core)
    assert first.ok and first.how == "thread"
    assert snapshotter.last_bytes is not None and 0 < snapshotter.last_bytes < 1_000_000
    second = _take(snapshotter, core)
    assert second.ok and second.how == "thread"
    assert second.sizes == {"m": snapshotter.last_bytes}
    assert snapshotter.last_version == second.version
    restored = restore(snapshotter.store, KEY, [ModelSpec("m", "logreg")])
    assert restored is not None and restored.version == second.version


def test_the_writer_thread_writes_while_the_learner_goes_on(redis_url, prefix) -> None:
    """`take` returns once the snapshot is serialized; the version is written and the
    registry's steps run beside the caller, and the outcome is reaped by `poll`."""
    core = LearningCore([ModelSpec("m", "logreg")])
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000)
    _take(snapshotter, core)  # a first one, so that the writer thread's store is open
    entered, release = threading.Event(), threading.Event()
    seen: list[tuple[int, list[str], int | None]] = []

    def registry_steps(store: SnapshotStore, version: int, metas: dict[str, SnapshotMeta]) -> None:
        seen.append((version, list(metas), store.latest_version("m")))
        entered.set()
        assert release.wait(30)

    snapshotter.after_write = registry_steps
    try:
        assert snapshotter.take(core, {"features:0": 2}) is None  # the caller does not wait
        snapshotter.after_write = None  # the thread keeps the steps of its `take`
        assert entered.wait(30)
        assert snapshotter.busy and snapshotter.poll() is None  # still in the registry's steps
        assert sys.getswitchinterval() == WRITER_SWITCH_INTERVAL
        version = seen[0][0]
        assert seen == [(version, ["m"], version)]  # the version was visible before its steps
    finally:
        release.set()
    result = snapshotter.poll(block=True)
    assert result is not None and result.ok and result.version == version
    assert result.stall_seconds < result.seconds
    assert snapshotter.poll() is None and not snapshotter.busy
    assert sys.getswitchinterval() == INTERVAL  # the learner's own again


def test_the_switch_interval_comes_back_without_a_poll(redis_url, prefix) -> None:
    """Put back by the last writer thread to end, even if its Snapshotter is never polled
    (a learner that stopped on an outage), and with two Snapshotters writing at once."""
    core = LearningCore([ModelSpec("m", "logreg")])
    first = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000)
    second = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000)
    _take(first, core)  # a first one each: the writer threads' stores are open
    _take(second, core)
    entered = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]

    def steps_of(i: int) -> Callable[..., None]:
        def steps(*_args: object) -> None:
            entered[i].set()
            assert release[i].wait(30)

        return steps

    first.after_write, second.after_write = steps_of(0), steps_of(1)
    try:
        assert first.take(core, {"features:0": 2}) is None
        assert second.take(core, {"features:0": 3}) is None
        assert entered[0].wait(30) and entered[1].wait(30)
        release[0].set()
        writer = first.busy and first._writing and first._writing.thread
        assert writer and wait_until(lambda: not writer.is_alive(), 30, "the first writer")
        assert sys.getswitchinterval() == WRITER_SWITCH_INTERVAL  # the second still writes
    finally:
        release[0].set()
        release[1].set()
    result = second.poll(block=True)  # the first is never polled
    assert result is not None and result.ok
    assert sys.getswitchinterval() == INTERVAL


def test_snapshots_above_the_threshold_keep_forking(redis_url, prefix) -> None:
    core = LearningCore([ModelSpec("m", "logreg")])
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=0)
    assert [_take(snapshotter, core).how for _ in range(3)] == ["fork", "fork", "fork"]


def test_a_first_snapshot_whose_models_pickle_larger_forks(redis_url, prefix) -> None:
    """Over the threshold by the models' pickles: the first forks; then the previous size
    (the compressed blobs) decides, as before."""
    core = LearningCore([ModelSpec("m", "logreg")])
    for i in range(50):  # a state of some hundreds of bytes: 50 features learned
        core.models["m"].learn({f"feature_{i}": float(i)}, i % 2 == 0, (None, None))
    pickles = pickled_within(core.models.values(), 10**9)
    assert pickles is not None
    size = sum(map(len, pickles))
    assert size > 1000
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=size)
    assert _take(snapshotter, core).how == "fork"  # pickles of `size` bytes: not under it
    compressed = snapshotter.last_bytes
    assert compressed is not None and compressed < size
    assert _take(snapshotter, core).how == "thread"  # the blobs are under the threshold
    again = _snapshotter(redis_url, prefix, fork_min_bytes=size + 1)
    assert _take(again, core).how == "thread"  # a byte more: under it


def test_without_fork_a_snapshot_is_written_in_line(redis_url, prefix) -> None:
    core = LearningCore([ModelSpec("m", "logreg")])
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000, use_fork=False)
    result = snapshotter.take(core, {"features:0": 1})
    assert result is not None and result.ok and result.how == "inline"
    assert not snapshotter.busy and snapshotter.store.latest_version("m") == result.version


def test_a_failed_thread_snapshot_is_reported_and_the_next_one_is_written(
    redis_url, prefix
) -> None:
    core = LearningCore([ModelSpec("m", "logreg")])
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000)
    _take(snapshotter, core)  # small: a thread writes it, and the next ones
    written = snapshotter.last_bytes

    def failing(*_args: object) -> None:
        raise SnapshotError("registry unavailable")

    snapshotter.after_write = failing
    failed = _take(snapshotter, core, 2)
    assert failed.how == "thread" and not failed.ok and failed.sizes == {}
    assert snapshotter.last_version != failed.version and snapshotter.last_bytes == written
    snapshotter.after_write = None
    again = _take(snapshotter, core, 3)
    assert again.ok and again.how == "thread" and again.version > failed.version


def test_a_thread_snapshot_that_cannot_be_written_is_reported(redis_url, prefix) -> None:
    """The writer thread's store cannot reach Redis: the write itself fails (not only the
    registry's steps), and the result says so."""
    down = socket.socket()
    down.bind(("127.0.0.1", 0))  # a port nothing listens on
    closed_port = down.getsockname()[1]
    down.close()
    unreachable = f"redis://127.0.0.1:{closed_port}/0"

    def store() -> SnapshotStore:
        return SnapshotStore(redis.Redis.from_url(unreachable), prefix, KEY)

    first = SnapshotStore(redis.Redis.from_url(redis_url), prefix, KEY)  # the version numbers
    snapshotter = Snapshotter(first, store, KEY, fork_min_bytes=1_000_000)
    core = LearningCore([ModelSpec("m", "logreg")])
    failed = _take(snapshotter, core, 2)  # the thread opens its store: unreachable
    assert failed.how == "thread" and not failed.ok and failed.sizes == {}
    assert snapshotter.store.latest_version("m") != failed.version


def test_a_snapshot_that_cannot_be_serialized_fails_at_once(
    redis_url, prefix, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = LearningCore([ModelSpec("m", "logreg")])
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000)
    _take(snapshotter, core)

    def unpicklable(*_args: object) -> bytes:
        raise TypeError("cannot pickle")

    monkeypatch.setattr(protocol, "pickle_state", unpicklable)
    failed = snapshotter.take(core, {"features:0": 2})
    assert failed is not None and failed.how == "thread" and not failed.ok
    assert not snapshotter.busy and sys.getswitchinterval() == INTERVAL
    monkeypatch.undo()
    assert _take(snapshotter, core, 3).ok


def test_the_writer_thread_signs_what_the_learning_thread_pickled(
    redis_url, prefix, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The learning thread only pickles a small snapshot: its compression, MACs and checksums
    (≈ 5 ms for a 180 kB tree's compression alone, more than its pickling) are the writer
    thread's, and what it writes restores. A signing that fails is a failed snapshot, reaped
    as one, and the next is written."""
    core = LearningCore([ModelSpec("m", "logreg")])
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000)
    signers: list[str] = []
    sign = protocol.sign_pickled

    def recorded(body: bytes, key: bytes) -> bytes:
        signers.append(threading.current_thread().name)
        return sign(body, key)

    monkeypatch.setattr(protocol, "sign_pickled", recorded)
    assert _take(snapshotter, core).ok
    assert signers and threading.main_thread().name not in signers, signers
    assert all(name.startswith("snapshot-v") for name in signers)
    assert restore(snapshotter.store, KEY, [ModelSpec("m", "logreg")]) is not None

    def broken(body: bytes, key: bytes) -> bytes:
        raise MemoryError("no room to compress")

    monkeypatch.setattr(protocol, "sign_pickled", broken)
    failed = _take(snapshotter, core, 2)
    assert not failed.ok and failed.how == "thread"
    monkeypatch.setattr(protocol, "sign_pickled", recorded)
    assert _take(snapshotter, core, 3).ok


def test_a_first_snapshot_of_a_model_that_cannot_be_pickled_fails_and_is_tried_again(
    redis_url, prefix
) -> None:
    """The size check of a first snapshot pickles the models: what it raises is a failed
    snapshot, as the write's own pickling would be, never an exception out of `take` (it
    stopped the learner)."""
    core = LearningCore([ModelSpec("m", "logreg")])
    state = core.models["m"]
    state.model.unpicklable = lambda: None  # type: ignore[attr-defined]
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=1_000_000)
    failed = snapshotter.take(core, {"features:0": 1})
    assert failed is not None and not failed.ok and failed.failure == "error"
    assert not snapshotter.busy
    del state.model.unpicklable  # type: ignore[attr-defined]
    assert _take(snapshotter, core, 2).ok


def test_the_size_checks_pickles_are_the_snapshots(
    redis_url, prefix, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first snapshot's size check pickles each model once, and those pickles are written:
    a model is not pickled twice in the learning thread (with a large threshold, as in-process
    snapshots set it, the whole model would be)."""
    core = LearningCore([ModelSpec("m", "logreg"), ModelSpec("h", "hoeffding")])
    for i in range(200):
        x = {"a": float(i % 7), "b": float(i % 3)}
        for state in core.models.values():
            state.learn(x, i % 2 == 0, (None, None))
    pickled: list[str] = []
    getstate = ModelState.__getstate__

    def counted(self: ModelState) -> dict[str, object]:
        pickled.append(self.spec.name)
        return getstate(self)

    monkeypatch.setattr(ModelState, "__getstate__", counted)
    snapshotter = _snapshotter(redis_url, prefix, fork_min_bytes=10**12)
    result = _take(snapshotter, core)
    assert result.ok and result.how == "thread"
    assert sorted(pickled) == ["h", "m"]  # once each
    monkeypatch.undo()
    restored = restore(
        snapshotter.store, KEY, [ModelSpec("m", "logreg"), ModelSpec("h", "hoeffding")]
    )
    assert restored is not None
    x = {"a": 3.0, "b": 1.0}
    for name, state in core.models.items():
        model = restored.core.models[name].model
        assert model.predict_proba_one(x) == state.model.predict_proba_one(x)


@pytest.mark.parametrize("fork_min_bytes", [0, 1_000_000])  # forked child, writer thread
def test_a_snapshot_refused_for_its_credentials_says_so(
    locked_redis: PrivateRedis, fork_min_bytes: int
) -> None:
    """The write's store is refused (a password changed under the learner): the result is
    ``unavailable`` (ridden out) and ``refused`` (reported as refused credentials, not as an
    outage), from the writer thread and from a forked child's exit status alike."""
    right = SnapshotStore(locked_redis.admin(), "refused", KEY)  # the version numbers

    def wrong() -> SnapshotStore:
        url = f"redis://:not-{locked_redis.password}@127.0.0.1:{locked_redis.port}/0"
        return SnapshotStore(redis.Redis.from_url(url), "refused", KEY)

    snapshotter = Snapshotter(right, wrong, KEY, fork_min_bytes=fork_min_bytes)
    result = _take(snapshotter, LearningCore([ModelSpec("m", "logreg")]))
    assert not result.ok and result.failure == "unavailable" and result.refused
    assert result.how == ("fork" if fork_min_bytes == 0 else "thread")


@pytest.mark.parametrize("fork_min_bytes", [0, 1_000_000])  # forked child, writer thread
def test_a_snapshot_its_acl_denies_says_so(locked_redis: PrivateRedis, fork_min_bytes: int) -> None:
    """The write's user may not PUBLISH (its ACL changed under the learner): ``refused`` as for
    credentials, and its ``error`` reads as the ACL's refusal (`refusal`), from a forked
    child's exit status too (which says no more than its status)."""
    right = SnapshotStore(locked_redis.admin(), "denied", KEY)
    password = locked_redis.add_user("nopub", ["~*", "&*", "+@all", "-publish"])

    def denied() -> SnapshotStore:
        url = f"redis://nopub:{password}@127.0.0.1:{locked_redis.port}/0"
        return SnapshotStore(redis.Redis.from_url(url), "denied", KEY)

    snapshotter = Snapshotter(right, denied, KEY, fork_min_bytes=fork_min_bytes)
    result = _take(snapshotter, LearningCore([ModelSpec("m", "logreg")]))
    assert not result.ok and result.failure == "unavailable" and result.refused
    assert result.how == ("fork" if fork_min_bytes == 0 else "thread")
    # what the learner reports (`stream.learner.checkpoints`: the error as refused credentials)
    assert refusal(redis.AuthenticationError(result.error))[1] == PERMISSIONS, result.error

"""Why a snapshot written by a forked child failed: the child says it by its exit status (75:
Redis unavailable, 76: a model handed over, else an error) and `Snapshotter.poll` maps that
back to `SnapshotResult.failure`, which decides what the learner does next (ride out an
outage, drop the model, or retry with a backoff: `stream.learner.checkpoints`).

The real fork path against a private redis-server: the learner takes the version number, forks,
and the child's store waits at a gate until the test has put Redis in the state the child is to
meet (down, refusing writes, the model handed over, a key of the wrong type)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterator

import pytest
import redis

from learners.core import LearningCore
from learners.specs import ModelSpec
from schemas.records import SnapshotMeta
from stream.checkpoint import protocol
from stream.checkpoint.protocol import SnapshotResult, Snapshotter
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotStore
from tests.support.outage import REFUSALS, PrivateRedis, private_redis, refusing

pytestmark = pytest.mark.integration
__all__ = ["private_redis"]  # a fixture

KEY = b"test-key"
PREFIX = "forked"
GATE_SECONDS = 60  # the longest a child waits at its gate (then it goes on regardless)


class _Gated:
    """A `Snapshotter` that always forks, whose child opens its store only once `open` is
    called (or the test ended: the gate's write end closed); ``statuses``: the exit status of
    every child it reaped."""

    def __init__(self, server: PrivateRedis, monkeypatch: pytest.MonkeyPatch) -> None:
        self._read, self._write = os.pipe()
        parent = os.getpid()

        def store() -> SnapshotStore:
            if os.getpid() != parent:  # the forked child: wait at the gate
                os.close(self._write)  # its copy, so that the parent's close is an EOF
                if select.select([self._read], [], [], GATE_SECONDS)[0]:
                    os.read(self._read, 1)
            return SnapshotStore(redis.Redis(port=server.port, socket_timeout=10), PREFIX, KEY)

        self.snapshotter = Snapshotter(store(), store, KEY, fork_min_bytes=0)
        self.statuses: list[int] = []
        waitpid = os.waitpid

        def reaping(pid: int, options: int) -> tuple[int, int]:
            writing = self.snapshotter._writing
            waited, status = waitpid(pid, options)
            if waited and writing is not None and pid == writing.pid:  # not a server's
                self.statuses.append(os.waitstatus_to_exitcode(status))
            return waited, status

        monkeypatch.setattr(protocol.os, "waitpid", reaping)

    def take(self, core: LearningCore, offset: int) -> None:
        assert self.snapshotter.take(core, {"features:0": offset}) is None  # forked
        assert self.snapshotter.busy

    def open_and_reap(self) -> SnapshotResult:
        os.write(self._write, b"x")
        result = self.snapshotter.poll(block=True)
        assert result is not None and result.how == "fork" and not self.snapshotter.busy
        return result

    def close(self) -> None:
        for fd in (self._write, self._read):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def gated(private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Gated]:
    gate = _Gated(private_redis, monkeypatch)
    try:
        yield gate
    finally:
        gate.close()  # a child still at its gate goes on, and ends
        if gate.snapshotter.busy:
            gate.snapshotter.poll(block=True)


def _written(gate: _Gated, core: LearningCore) -> int:
    """A first snapshot, written: the model exists (and the gate works)."""
    gate.take(core, 1)
    first = gate.open_and_reap()
    assert first.ok and first.failure is None and gate.statuses == [0]
    return first.version


@contextlib.contextmanager
def _outage(server: PrivateRedis, how: str) -> Iterator[None]:
    """Redis killed (connection refused), or refusing writes with the code ``how``."""
    if how == "down":
        server.kill(signal.SIGKILL)
        yield
    else:
        with refusing(server, how):
            yield


@pytest.mark.parametrize("how", ["down", *REFUSALS])
def test_a_child_that_finds_redis_unavailable_is_reported_unavailable(
    private_redis: PrivateRedis, gated: _Gated, how: str
) -> None:
    core = LearningCore([ModelSpec("m", "logreg")])
    written = _written(gated, core)
    gated.take(core, 2)
    with _outage(private_redis, how):
        result = gated.open_and_reap()
    assert gated.statuses == [0, 75]
    assert not result.ok and result.failure == "unavailable"
    assert result.version > written and gated.snapshotter.last_version == written


def test_a_child_whose_model_was_handed_over_is_reported_ownership(gated: _Gated) -> None:
    core = LearningCore([ModelSpec("m", "logreg")])
    written = _written(gated, core)
    gated.take(core, 2)  # the version number is taken; the write comes after the handover
    Registry(gated.snapshotter.store, by="test").handover("m", "elsewhere")
    result = gated.open_and_reap()
    assert gated.statuses == [0, 76]
    assert not result.ok and result.failure == "ownership"
    assert gated.snapshotter.store.latest_version("m") == written  # nothing became visible


def _wrong_type(gate: _Gated) -> None:
    """The model's versions key made a string: the write refuses it (`SnapshotStore.write`
    checks the types of the keys its transaction adds to)."""
    store = gate.snapshotter.store
    store.client.delete(store.keys.versions("m"))
    store.client.set(store.keys.versions("m"), "not a sorted set")


def _killing(_store: SnapshotStore, _version: int, _metas: dict[str, SnapshotMeta]) -> None:
    """The registry's steps, in the child: the child dies by a signal."""
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize(("how", "status"), [("wrongtype", 1), ("killed", -signal.SIGKILL)])
def test_a_child_that_fails_otherwise_is_reported_error(
    gated: _Gated, how: str, status: int
) -> None:
    core = LearningCore([ModelSpec("m", "logreg")])
    _written(gated, core)
    if how == "wrongtype":
        _wrong_type(gated)
    else:
        gated.snapshotter.after_write = _killing
    gated.take(core, 2)
    result = gated.open_and_reap()
    assert gated.statuses == [0, status]
    assert not result.ok and result.failure == "error"


@pytest.mark.parametrize(("learner_alive", "status"), [(True, 0), (False, 1)])
def test_a_snapshot_child_whose_learner_is_gone_before_it_asks_to_die_with_it_exits(
    learner_alive: bool, status: int
) -> None:
    """The kernel kills the child with the learner only once it has asked (PR_SET_PDEATHSIG):
    a learner killed between the fork and that request leaves the child re-parented, and
    nothing would ever tell it. It sees so and exits at once; with its learner there it goes
    on."""
    from stream.checkpoint.protocol import _die_with_parent

    learner = os.getpid() if learner_alive else os.getpid() + 1_000_000  # no such parent
    pid = os.fork()
    if pid == 0:
        try:
            _die_with_parent(learner)
        finally:
            os._exit(0)
    _, waited = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(waited) == status

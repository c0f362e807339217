"""A registry operation whose EXEC reply is lost (a timeout, a connection reset, a failover)
is known by its mark (``P:registry:op:ID``, written by the same transaction): applied, it
returns as done, neither reported as failed nor retried on top of itself (a rollback without
``--to`` went back one more step when the operator tried again); not applied, it is retried or
reported as before. Faults injected into redis-py against the suite's real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.client

from stream.registry.base import RegistryUnavailableError
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotStore
from tests.support.registry import write_version

pytestmark = pytest.mark.integration

_ORIGINAL = redis.client.Pipeline._execute_transaction


@pytest.fixture
def lose_reply(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The next transaction that queues an RPUSH (a rollback's command) loses its reply:
    ``after`` True, once Redis applied it; False, before it reached Redis."""
    state: dict[str, Any] = {"armed": False, "after": True, "lost": 0}

    def flaky(self: Any, conn: Any, stack: Any, raise_on_error: bool) -> Any:
        mine = state["armed"] and any(c[0][0] == "RPUSH" for c in stack)
        if mine:
            state["armed"] = False
            state["lost"] += 1
            if not state["after"]:
                raise redis.ConnectionError("connection reset before EXEC (injected)")
        out = _ORIGINAL(self, conn, stack, raise_on_error)
        if mine:
            raise redis.ConnectionError("reply lost after EXEC (injected)")
        return out

    monkeypatch.setattr(redis.client.Pipeline, "_execute_transaction", flaky)
    yield state


def _four_promoted(registry: Registry, store: SnapshotStore, key: bytes) -> list[int]:
    versions = []
    for _ in range(4):
        version = write_version(store, key)
        registry.promote("m", version, "p")
        versions.append(version)
    return versions


def _rolled_back_once(registry: Registry, command: Any, versions: list[int]) -> None:
    """One step back from the newest of ``versions``: served, commanded and recorded once."""
    assert command.to == versions[2] == registry.serving_version("m")
    assert [c.id for c in registry.pending_commands()] == [command.id]
    assert [e.action for e in registry.history("m")].count("rollback") == 1


def test_a_rollback_applied_whose_reply_is_lost_returns_as_done(
    registry: Registry, store: SnapshotStore, key: bytes, lose_reply: dict[str, Any]
) -> None:
    versions = _four_promoted(registry, store, key)
    lose_reply["armed"] = True
    command = registry.rollback("m", reason="bad labels")  # raised, or rolled back twice
    assert lose_reply["lost"] == 1
    _rolled_back_once(registry, command, versions)


def test_a_rollback_whose_connection_is_lost_before_it_reached_redis_is_applied_once(
    registry: Registry, store: SnapshotStore, key: bytes, lose_reply: dict[str, Any]
) -> None:
    """Not applied (no mark): tried again on a new connection, as a watched key that changed
    is, and applied once."""
    versions = _four_promoted(registry, store, key)
    lose_reply.update(armed=True, after=False)
    command = registry.rollback("m", reason="bad labels")
    assert lose_reply["lost"] == 1
    _rolled_back_once(registry, command, versions)


def test_a_lost_reply_that_redis_cannot_answer_for_says_so(
    registry: Registry,
    store: SnapshotStore,
    key: bytes,
    lose_reply: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mark cannot be read either (Redis gone): the error says the operation may have been
    applied and where to look, instead of "nothing was changed"."""
    _four_promoted(registry, store, key)
    lose_reply["armed"] = True

    def unreachable(*_args: Any) -> int:
        raise redis.ConnectionError("Redis gone (injected)")

    monkeypatch.setattr(registry.client, "get", unreachable)
    with pytest.raises(RegistryUnavailableError, match="cannot say whether it was applied"):
        registry.rollback("m", reason="bad labels")


def test_an_attempt_that_redis_runs_late_is_found_by_the_next_one(
    registry: Registry, store: SnapshotStore, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt's reply is lost before Redis ran it, so its mark is not there yet and
    the operation is tried again; then Redis runs the first EXEC after all (it sat in its input
    buffer), between the second attempt's WATCH and its EXEC. The second EXEC fails, finds the
    first attempt's mark, and returns the first attempt's result: one rollback, not two."""
    versions = _four_promoted(registry, store, key)
    state: dict[str, Any] = {"saved": None, "late": False}

    def flaky(self: Any, conn: Any, stack: Any, raise_on_error: bool) -> Any:
        if state["saved"] is None and any(c[0][0] == "RPUSH" for c in stack):
            state["saved"] = list(stack)
            raise redis.ConnectionError("reply lost, the EXEC still queued in Redis (injected)")
        if state["saved"] is not None and not state["late"]:
            state["late"] = True
            late = redis.Redis(connection_pool=self.connection_pool).pipeline(transaction=True)
            late.command_stack = state["saved"]
            late.execute()  # the first attempt's transaction, run now
        return _ORIGINAL(self, conn, stack, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "_execute_transaction", flaky)
    command = registry.rollback("m", reason="bad labels")
    assert state["late"]
    _rolled_back_once(registry, command, versions)


def test_an_attempt_lost_in_its_reads_does_not_confuse_the_mark(
    registry: Registry,
    store: SnapshotStore,
    key: bytes,
    lose_reply: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first attempt loses its connection while it reads (a WatchError, tried again); the
    second one's reply is lost after Redis applied it: the mark names the second attempt's
    result (the mark held the loop's count, one past the results kept: an IndexError)."""
    versions = _four_promoted(registry, store, key)
    require = Registry._require_model
    failed: list[bool] = []

    def flaky_read(self: Registry, r: Any, model: str) -> None:
        if not failed:
            failed.append(True)
            raise redis.WatchError("a connection error occurred while watching (injected)")
        require(self, r, model)

    monkeypatch.setattr(Registry, "_require_model", flaky_read)
    lose_reply["armed"] = True
    command = registry.rollback("m", reason="bad labels")
    assert failed and lose_reply["lost"] == 1
    _rolled_back_once(registry, command, versions)

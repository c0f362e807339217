"""Operator commands for a running learner (rollbacks), queued in Redis by the registry.

The queue is the list ``{prefix}:learner:commands`` of `RollbackCommand` JSON objects
written by the registry (`stream.registry.registry.Registry.rollback`); a learner with another
name than ``default`` has its own, ``{prefix}:learner:NAME:commands``. Besides rollbacks, a
``release`` command (`stream.registry.owners.handover`) tells it to drop a model.
The learner peeks at it between batches, applies each command, makes the result durable with a
snapshot (whose checkpoint records the ids applied) and only then acknowledges the commands: a
crash in between re-reads them, and the recorded ids make them no-ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from schemas.records import RollbackCommand
from stream.store.keys import DEFAULT_LEARNER, RedisKeys
from stream.store.snapshots import wrapped


class CommandQueue:
    def __init__(self, client: redis.Redis, prefix: str, learner: str = DEFAULT_LEARNER) -> None:
        self.client = client
        self.key = RedisKeys(prefix, learner).commands

    def peek(self) -> list[RollbackCommand]:
        with wrapped("reading learner commands"):
            raw = self.client.lrange(self.key, 0, -1)
        return [RollbackCommand.from_json(item) for item in raw]

    def ack(self, n: int) -> None:
        if n:
            with wrapped("acknowledging learner commands"):
                self.client.ltrim(self.key, n, -1)


def in_ranges(time: float, ranges: Sequence[Sequence[float]]) -> bool:
    """True when ``time`` falls in one of the closed ``ranges``.

    >>> in_ranges(5, [(1, 3), (5, 6)]), in_ranges(4, [(1, 3)])
    (True, False)
    """
    return any(a <= time <= b for a, b in ranges)

"""Operator commands for a running learner (rollbacks), queued in Redis by the registry.

The queue is the list ``{prefix}:learner:commands`` of `RollbackCommand` JSON objects
written by the registry (`stream.registry.registry.Registry.rollback`); a learner with another
name than ``default`` has its own, ``{prefix}:learner:NAME:commands``. Besides rollbacks, a
``release`` command (`stream.registry.owners.handover`) tells it to drop a model.
The learner peeks at it between batches, applies each command, makes the result durable with a
snapshot (whose checkpoint records the ids applied) and only then acknowledges the commands: a
crash in between re-reads them, and the recorded ids make them no-ops.

The acknowledgement removes the commands that were read, by value (each holds a unique id), not
the first N of the list: a handover moves a model's pending rollbacks to its new owner's list
(`stream.registry.owners`), so what was read may no longer be at the head. With the learner
process's epoch (`stream.registry.owners.claim`) it is refused with
`stream.store.snapshots.FencedError`, nothing removed, once another process of the same learner
name started: only the newest one acknowledges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from schemas.records import RollbackCommand
from stream.store.keys import DEFAULT_LEARNER, RedisKeys
from stream.store.snapshots import FENCE_LUA, fence_owner, fenced_error, this_process, wrapped

# KEYS: the command list, the learner's epoch hash. ARGV: the process's epoch, started_at, host
# and pid (`fence_owner`; '' four times: none), then the commands read. Removes them (LREM, one
# each) unless a newer epoch holds the hash: then it removes nothing and returns the hash's
# fields (`FENCE_FIELDS`); else {} (a hash that lost this epoch gets it back: `FENCE_LUA`).
_ACK = (
    FENCE_LUA
    + """
if ARGV[1] ~= '' then
  local newer = fence(KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
  if newer then return newer end
end
for i = 5, #ARGV do redis.call('LREM', KEYS[1], 1, ARGV[i]) end
return {}
"""
)


class CommandQueue:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        learner: str = DEFAULT_LEARNER,
        *,
        epoch: int | None = None,
    ) -> None:
        self.client = client
        keys = RedisKeys(prefix, learner)
        self.key = keys.commands
        self._epoch_key = keys.epoch
        self._learner = learner
        self.epoch = epoch
        """The learner process's fencing token: `ack` refuses once a newer process started."""
        self._process = this_process()
        self._read: list[Any] = []  # the commands as `peek` read them, for `ack`

    def peek(self) -> list[RollbackCommand]:
        with wrapped("reading learner commands"):
            raw = self.client.lrange(self.key, 0, -1)
        self._read = list(raw)
        return [RollbackCommand.from_json(item) for item in raw]

    def ack(self, n: int) -> None:
        """Remove the first ``n`` commands the last `peek` read (wherever they are now)."""
        if not n:
            return
        done = self._read[:n]
        owner = [""] * 4 if self.epoch is None else fence_owner(self.epoch, self._process)
        with wrapped("acknowledging learner commands"):
            fence = self.client.eval(_ACK, 2, self.key, self._epoch_key, *owner, *done)
        if fence and self.epoch is not None:
            refused = fenced_error(self._learner, self.epoch, list(fence))
            if refused is not None:
                raise refused
        self._read = self._read[n:]


def in_ranges(time: float, ranges: Sequence[Sequence[float]]) -> bool:
    """True when ``time`` falls in one of the closed ``ranges``.

    >>> in_ranges(5, [(1, 3), (5, 6)]), in_ranges(4, [(1, 3)])
    (True, False)
    """
    return any(a <= time <= b for a, b in ranges)

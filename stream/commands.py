"""Operator commands for a running learner (rollbacks), queued in Redis by the registry.

The queue is the list ``{prefix}:learner:commands`` of JSON objects
``{"id", "model", "action": "rollback", "to", "resume": "skip" | "replay", "exclude": [[a, b]]}``.
The learner peeks at it between batches, applies each command, makes the result durable with a
snapshot (whose checkpoint records the ids applied) and only then acknowledges the commands: a
crash in between re-reads them, and the recorded ids make them no-ops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from schemas.errors import SnapshotError


@dataclass(frozen=True)
class Command:
    id: str
    model: str
    action: str
    to: int
    resume: str
    exclude: tuple[tuple[float, float], ...]

    @classmethod
    def from_json(cls, raw: bytes) -> Command:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            id=str(data["id"]),
            model=str(data["model"]),
            action=str(data.get("action", "rollback")),
            to=int(data["to"]),
            resume=str(data.get("resume", "skip")),
            exclude=tuple((float(a), float(b)) for a, b in data.get("exclude") or ()),
        )


def commands_key(prefix: str) -> str:
    return f"{prefix}:learner:commands"


class CommandQueue:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.key = commands_key(prefix)

    def peek(self) -> list[Command]:
        try:
            raw = self.client.lrange(self.key, 0, -1)
        except redis.RedisError as exc:
            raise SnapshotError(f"reading learner commands failed: {exc}") from exc
        return [Command.from_json(item) for item in raw]

    def ack(self, n: int) -> None:
        if n:
            self.client.ltrim(self.key, n, -1)


def in_ranges(time: float, ranges: list[tuple[float, float]]) -> bool:
    """True when ``time`` falls in one of the closed ``ranges``.

    >>> in_ranges(5, [(1, 3), (5, 6)]), in_ranges(4, [(1, 3)])
    (True, False)
    """
    return any(a <= time <= b for a, b in ranges)

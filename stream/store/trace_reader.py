"""Reading the learning curves written by the learner (`stream.store.trace` has the format and
the semantics): for the API's ``GET /v1/models/{name}/curve``, the console and the report."""

from __future__ import annotations

from typing import Any, cast

import redis

from stream.store.keys import RedisKeys
from stream.store.snapshots import wrapped
from stream.store.trace import TracePoint


class TraceReader:
    """Reads the curves (the API, the console, the report); errors wrapped like the store's."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def points(self, model: str, *, after: int = 0, limit: int | None = None) -> list[TracePoint]:
        """Points of ``model`` past ``after`` labels, oldest first (at most ``limit``)."""
        with wrapped(f"trace of {model}"):
            entries = self.client.xrange(
                self.keys.trace(model), min=str(max(0, after) + 1), max="+", count=limit
            )
        return [TracePoint.from_entry(i, v) for i, v in cast("list[tuple[Any, Any]]", entries)]

    def last(self, model: str) -> TracePoint | None:
        """The newest point of ``model``, if any."""
        with wrapped(f"trace of {model}"):
            entries = self.client.xrevrange(self.keys.trace(model), max="+", min="-", count=1)
        found = cast("list[tuple[Any, Any]]", entries)
        return TracePoint.from_entry(*found[0]) if found else None

    def at(self, model: str, labels: int) -> TracePoint | None:
        """The point of ``model`` at exactly ``labels``, if the stream has it."""
        with wrapped(f"trace of {model}"):
            entries = self.client.xrange(self.keys.trace(model), min=str(labels), max=str(labels))
        found = cast("list[tuple[Any, Any]]", entries)
        return TracePoint.from_entry(*found[0]) if found else None

"""Several Redis commands in one round trip, also inside a transaction's WATCH phase.

redis-py sends the commands of a pipeline that is WATCHing one by one, each waiting for its
reply (its "immediate" mode), so a transaction that reads five keys before its MULTI pays five
round trips, and a write whose chunks follow a WATCH pays one per chunk. `batch` sends them
together on the watching connection, after its WATCH, as Redis would have received them one by
one, and reads every reply back in order. The steps after every snapshot (`SnapshotStore.write`,
the registry's promotion and retention) are mostly such reads: 31-39 round trips a version
before, 13 with it (`tests/stream/registry/test_base.py` counts them).
"""

from __future__ import annotations

from typing import Any

import redis


def batch(r: Any, *commands: tuple[Any, ...]) -> list[Any]:
    """The replies of ``commands`` (each ``(NAME, *args)``), sent in one round trip.

    ``r`` is a client, or a transaction's pipeline in its WATCH phase: the commands then go on
    its watching connection (a WATCH among them watches as `Pipeline.watch` does). An error
    reply is raised once every reply is read, so the connection stays in step.

    >>> batch(object())
    []
    """
    if not commands:
        return []
    if not getattr(r, "watching", False):
        pipe = r.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute())
    connection = r.connection
    connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    for command in commands:
        try:
            replies.append(r.parse_response(connection, command[0]))
        except redis.ResponseError as exc:
            replies.append(exc)
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies

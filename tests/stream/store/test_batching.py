"""`batch`: commands in one round trip, on a transaction's watching connection too (real Redis)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from stream.store.batching import batch

pytestmark = pytest.mark.integration


def _atomic(client: redis.Redis, watch: list[str], body: Any) -> Any:
    """WATCH, ``body(pipe)`` → (result, write), MULTI/EXEC; retried while a watched key moved."""
    while True:
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*watch)
                result, write = body(pipe)
                pipe.multi()
                write(pipe)
                pipe.execute()
                return result
            except redis.WatchError:
                continue


def test_reads_batched_in_a_transaction_keep_its_watch(client: redis.Redis, prefix: str) -> None:
    watched, other, out = f"{prefix}:w", f"{prefix}:other", f"{prefix}:out"
    client.set(watched, 1)
    client.set(other, 5)
    attempts: list[int] = []

    def body(r: Any) -> Any:
        raw, more = batch(r, ("GET", watched), ("GET", other))
        attempts.append(int(raw))
        if len(attempts) == 1:  # another client changes it between the read and EXEC
            client.set(watched, 10)
        return int(raw), lambda p: p.set(out, int(raw) + int(more))

    assert _atomic(client, [watched], body) == 10
    assert attempts == [1, 10]
    assert client.get(out) == b"15"


def test_a_watch_in_a_batch_watches(client: redis.Redis, prefix: str) -> None:
    first, second, out = f"{prefix}:first", f"{prefix}:second", f"{prefix}:out"
    client.set(second, "a")
    seen: list[bytes] = []

    def body(r: Any) -> Any:
        _ok, value = batch(r, ("WATCH", second), ("GET", second))
        seen.append(value)
        if len(seen) == 1:
            client.set(second, "b")
        return value, lambda p: p.set(out, value)

    assert _atomic(client, [first], body) == b"b"
    assert seen == [b"a", b"b"] and client.get(out) == b"b"


def test_an_error_reply_is_raised_once_every_reply_is_read(
    client: redis.Redis, prefix: str
) -> None:
    listed, plain = f"{prefix}:list", f"{prefix}:plain"
    client.rpush(listed, "a")
    client.set(plain, "p")
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(plain)
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            batch(pipe, ("GET", listed), ("GET", plain), ("LRANGE", listed, 0, -1))
        # the watching connection is in step: its next command gets its own reply
        assert batch(pipe, ("GET", plain), ("LLEN", listed)) == [b"p", 1]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        batch(client, ("GET", listed), ("GET", plain))
    assert client.get(plain) == b"p"
    assert batch(client, ("GET", plain), ("LLEN", listed)) == [b"p", 1]

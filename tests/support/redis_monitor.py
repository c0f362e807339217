"""Watching a real Redis from outside: the commands its clients send, as they execute.

`RedisMonitor` reads Redis' ``MONITOR`` feed on a plain socket (one line per command, in the
order the server executed them, each with the client's address). Crash tests use it to pick
the moment of a kill by what the learner is doing to Redis: reading the checkpoint back
(restore), writing a version's chunks, making a version visible. Nothing in the production
code knows it is watched.

`drain` closes a window of observation exactly: it sends an ``ECHO`` with a unique marker on
another connection and reads the feed up to that marker, so every command executed before it
has been seen (MONITOR shows commands in execution order).

Only the first two words of a command are parsed (its name and first key): values, such as a
snapshot's chunks, are never decoded.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

import redis

# +1700000000.123456 [0 127.0.0.1:52345] "SET" "key" "value"  (or [0 lua] inside scripts)
_LINE = re.compile(rb'^\+[0-9.]+ \[\d+ ([^\]]*)\] "([^"\\]*)"(?: "((?:[^"\\]|\\.)*)")?')


@dataclass(frozen=True)
class Command:
    """One command a client sent: its client's port (0 inside a Lua script), name and key."""

    port: int
    name: str
    key: str


def parse(line: bytes) -> Command | None:
    """A MONITOR line as a `Command` (None for anything else).

    >>> parse(b'+1.5 [0 127.0.0.1:4242] "set" "p:model:lr:v:3:chunk:0" "\\\\x00"')
    Command(port=4242, name='SET', key='p:model:lr:v:3:chunk:0')
    >>> parse(b'+1.5 [0 lua] "GET" "p:checkpoint:latest"')
    Command(port=0, name='GET', key='p:checkpoint:latest')
    """
    match = _LINE.match(line)
    if match is None:
        return None
    client, name, key = match.groups()
    port = int(client.rsplit(b":", 1)[1]) if b":" in client else 0
    return Command(port, name.decode().upper(), (key or b"").decode(errors="replace"))


class RedisMonitor:
    """The MONITOR feed of the Redis at ``url``; close it (or use it as a context manager)."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.address = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self.client = redis.Redis(host=self.address[0], port=self.address[1])
        self._sock = socket.create_connection(self.address, timeout=10)
        self._buffer = b""
        self._sock.sendall(b"MONITOR\r\n")
        assert self._line(time.monotonic() + 10) == b"+OK", "MONITOR refused"

    def _line(self, deadline: float) -> bytes | None:
        while b"\r\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._sock.settimeout(min(left, 0.2))
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            assert data, "the MONITOR connection was closed"
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def next(self, deadline: float) -> Command | None:
        """The next command executed, or None once ``deadline`` (monotonic) has passed."""
        while (line := self._line(deadline)) is not None:
            command = parse(line)
            if command is not None:
                return command
        return None

    def wait_for(
        self,
        match: Callable[[Command], bool],
        timeout: float,
        what: str,
        *,
        going_on: Callable[[], bool] = lambda: True,
    ) -> tuple[Command, list[Command]]:
        """The first command that ``match``es, with every command seen before it; fails after
        ``timeout`` seconds or as soon as ``going_on()`` is false (the watched process died)."""
        deadline = time.monotonic() + timeout
        seen: list[Command] = []
        while True:
            command = self.next(min(deadline, time.monotonic() + 0.5))
            if command is not None:
                if match(command):
                    return command, seen
                seen.append(command)
            assert going_on(), f"the watched process ended before {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"

    def drain(self, timeout: float = 30) -> list[Command]:
        """Every command executed since the last read, up to now (an ``ECHO`` marker)."""
        marker = f"drain-{uuid.uuid4().hex}"
        self.client.echo(marker)
        _marker, seen = self.wait_for(
            lambda c: c.name == "ECHO" and c.key == marker, timeout, "the drain marker"
        )
        return seen

    def close(self) -> None:
        self._sock.close()
        self.client.close()

    def __enter__(self) -> RedisMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

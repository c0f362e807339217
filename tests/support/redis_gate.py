"""A gate in front of a real Redis: it forwards every command until told to hold, then holds.

Crash tests kill a process at one step of a protocol, chosen by what it sends to Redis. Watching
Redis' MONITOR and then pausing Redis races the watched process: between the command seen and
the pause taking effect, a fast writer can already have sent its next ones (it did: the
transaction that makes a version visible ran before ``CLIENT PAUSE WRITE`` landed, in one CI
run out of about ten). The gate removes the race by standing in the path: the process talks
to the gate's port, and the gate decides, command by command and before Redis sees it, whether
to forward.

``trigger(command)`` is asked about every command, in the order the gate reads them, until it
says yes; that command is forwarded, and from then on each command for which ``hold(command)``
is true stops its connection: neither it nor anything after it on that connection reaches
Redis. Replies, and the commands of other connections, still flow. When the client side
closes (the process was killed), the gate closes its connection to Redis, so Redis drops it
and discards whatever it had queued (a ``MULTI`` without its ``EXEC``).

Commands are parsed as RESP arrays (what redis-py sends) or inline lines; only the name and
first argument are decoded. Tests only: nothing in production code knows of it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlparse, urlunparse

from tests.support.redis_monitor import Command


class _Commands:
    """RESP commands cut from a byte stream: ``feed`` returns the complete ones, each as its
    raw bytes and a `Command` (port left 0)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes, Command]]:
        self.buffer += data
        out = []
        while (cut := self._one()) is not None:
            size, command = cut
            out.append((self.buffer[:size], command))
            self.buffer = self.buffer[size:]
        return out

    def _one(self) -> tuple[int, Command] | None:
        buf = self.buffer
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        if not buf.startswith(b"*"):  # an inline command: one line
            words = buf[:end].split()
            return end + 2, _command(words)
        count, pos, words = int(buf[1:end]), end + 2, []
        for _ in range(count):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            size = int(buf[pos + 1 : end])  # "$<size>"
            start = end + 2
            if len(buf) < start + size + 2:
                return None
            if len(words) < 2:
                words.append(buf[start : start + size])
            pos = start + size + 2
        return pos, _command(words)


def _command(words: list[bytes]) -> Command:
    name = words[0].decode(errors="replace").upper() if words else ""
    key = words[1].decode(errors="replace") if len(words) > 1 else ""
    return Command(0, name, key)


class RedisGate:
    """A proxy on 127.0.0.1 for the Redis at ``url``, at its own `url`. `armed_port` is the
    client port (the process's own end of its socket) that sent the trigger (0 until it came),
    `held_ports` those of the connections held since."""

    def __init__(
        self,
        url: str,
        trigger: Callable[[Command], bool],
        hold: Callable[[Command], bool],
    ) -> None:
        parsed = urlparse(url)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self._trigger, self._hold = trigger, hold
        self._lock = threading.Lock()
        self.armed_port = 0
        self.held_ports: set[int] = set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = urlunparse(parsed._replace(netloc=f"127.0.0.1:{self.port}"))
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="redis-gate").start()

    def _accept(self) -> None:
        while True:
            try:
                client, (_host, port) = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self._upstream, timeout=10)
            except OSError:  # Redis is not there: the client sees its connection closed
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            threading.Thread(
                target=self._forward, args=(client, upstream, port), daemon=True
            ).start()
            threading.Thread(target=self._replies, args=(upstream, client), daemon=True).start()

    def _decide(self, command: Command, port: int) -> bool:
        """Whether ``command`` may go on to Redis."""
        with self._lock:
            if not self.armed_port:  # a client's port is never 0
                if self._trigger(command):
                    self.armed_port = port
                return True
            if self._hold(command):
                self.held_ports.add(port)
                return False
            return True

    def _forward(self, client: socket.socket, upstream: socket.socket, port: int) -> None:
        commands, holding = _Commands(), False
        try:
            while data := client.recv(1 << 16):
                if holding:
                    continue  # read and drop until the client goes away
                out = []
                for raw, command in commands.feed(data):
                    if not self._decide(command, port):
                        holding = True
                        break
                    out.append(raw)
                if out:
                    upstream.sendall(b"".join(out))
        except OSError:
            pass
        finally:
            _close(upstream)  # Redis drops the connection and anything it had queued
            _close(client)

    @staticmethod
    def _replies(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(1 << 16):
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        _close(self._server)  # shutdown wakes the accept (close alone would leave it blocked)
        for sock in sockets:
            _close(sock)

    def __enter__(self) -> RedisGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()

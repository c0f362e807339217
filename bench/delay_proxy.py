"""A TCP proxy that adds a fixed latency, to measure against a Redis (or any server) that is
not on this machine's loopback.

    python bench/delay_proxy.py --upstream 127.0.0.1:6379 --rtt-ms 0.5
    # prints "listening 127.0.0.1:PORT", then forwards every connection to the upstream

Each chunk read from either side is written to the other half a round trip after it arrived,
in order, so a request and its answer take ``--rtt-ms`` more (bandwidth is not limited). This
machine's kernel has no ``netem`` queueing discipline, which would do the same in the
network stack; this proxy costs a little CPU of its own (it runs as its own process, as a
network would not). Stopped by SIGTERM or SIGINT.

Threads, not an event loop: each direction of a connection has a reader and a sender, which
waits with `time.sleep` and spins its last 0.3 ms. The first version waited with
`asyncio.sleep`, whose epoll timeout is rounded up to a whole millisecond: every round trip
took ≈ 2.6 ms whatever ``--rtt-ms`` said (PING through it at 0.2, 0.5 and 1.0 ms: 2.63,
2.67, 2.74 ms; found on 2026-12-01, session 14). Measured now by ``--check``: a PING's
median round trip through the proxy, against the same without it.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import socket
import statistics
import threading
import time

_SPIN = 0.0003
"""The end of each wait spent spinning: `time.sleep` and the thread's wake-up come ≈ 0.15 ms
late here, so a wait of 0.25 ms slept whole took ≈ 0.4."""


def _pipe(source: socket.socket, target: socket.socket, delay: float) -> None:
    """Forward ``source`` to ``target``, each chunk ``delay`` seconds after it was read."""
    chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def send() -> None:
        while True:
            due, data = chunks.get()
            if not data:
                break
            wait = due - time.perf_counter() - _SPIN
            if wait > 0:
                time.sleep(wait)  # the latency itself, not a synchronisation
            while time.perf_counter() < due:  # the last _SPIN: a sleep wakes up late
                pass
            try:
                target.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        while data := source.recv(65536):
            chunks.put((time.perf_counter() + delay, data))
    except OSError:
        pass
    finally:
        chunks.put((0.0, b""))
        sender.join()


def _connection(client: socket.socket, upstream: tuple[str, int], delay: float) -> None:
    try:
        server = socket.create_connection(upstream)
    except OSError:
        client.close()
        return
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pipe, args=(server, client, delay), daemon=True)
    back.start()
    _pipe(client, server, delay)
    back.join()
    client.close()
    server.close()


def serve(upstream: tuple[str, int], rtt: float, port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    address = listener.getsockname()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(
                target=_connection, args=(client, upstream, rtt / 2), daemon=True
            ).start()

    threading.Thread(target=accept, daemon=True).start()
    print(f"listening {address[0]}:{address[1]}", flush=True)
    stop.wait()
    listener.close()


def check(upstream: tuple[str, int], rtt: float) -> None:
    """Print a Redis PING's median round trip without the proxy and through it."""
    ready = threading.Event()
    port: list[int] = []

    def run() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        port.append(listener.getsockname()[1])
        ready.set()
        client, _ = listener.accept()
        _connection(client, upstream, rtt / 2)

    threading.Thread(target=run, daemon=True).start()
    ready.wait()

    def ping(address: tuple[str, int]) -> float:
        with socket.create_connection(address) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times = []
            for _ in range(200):
                start = time.perf_counter()
                sock.sendall(b"PING\r\n")
                sock.recv(64)
                times.append(time.perf_counter() - start)
            return statistics.median(times[20:]) * 1000

    direct, proxied = ping(upstream), ping(("127.0.0.1", port[0]))
    print(f"PING: direct {direct:.3f} ms, through the proxy {proxied:.3f} ms "
          f"(+{proxied - direct:.3f} ms for --rtt-ms {rtt * 1000:g})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip added, ms")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: free)")
    parser.add_argument("--check", action="store_true", help="time a Redis PING through it")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    if args.check:
        check((host, int(port)), args.rtt_ms / 1000)
    else:
        serve((host, int(port)), args.rtt_ms / 1000, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

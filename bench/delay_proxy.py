"""A TCP proxy that adds a fixed latency, to measure against a Redis (or any server) that is
not on this machine's loopback.

    python bench/delay_proxy.py --upstream 127.0.0.1:6379 --rtt-ms 0.5
    # prints "listening 127.0.0.1:PORT", then forwards every connection to the upstream

Each chunk read from either side is written to the other half a round trip after it arrived,
in order, so a request and its answer take ``--rtt-ms`` more (bandwidth is not limited). This
machine's kernel has no ``netem`` queueing discipline, which would do the same in the
network stack; this proxy costs a little CPU of its own (it runs as its own process, as a
network would not). Stopped by SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward ``reader`` to ``writer``, each chunk ``delay`` seconds after it was read."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # the latency itself, not a synchronisation
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    finally:
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(Exception):
            await sender
        writer.close()


async def serve(upstream: tuple[str, int], rtt: float, port: int) -> None:
    delay = rtt / 2

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay),
            return_exceptions=True,
        )  # fmt: skip

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = server.sockets[0].getsockname()
    print(f"listening {address[0]}:{address[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip added, ms")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: free)")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    started = time.perf_counter()
    asyncio.run(serve((host, int(port)), args.rtt_ms / 1000, args.port))
    return 0 if time.perf_counter() > started else 1


if __name__ == "__main__":
    raise SystemExit(main())

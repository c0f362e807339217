"""`serving.runner.run_uvicorn` with several workers spreads connections over them even when one
is busy as they arrive: each worker listens on a socket of its own (``SO_REUSEPORT``). With one
socket shared by the workers, the idle one accepted the whole burst, and the connections (kept
alive, as wrk's and most clients' are) stayed on it: one CPU worked, the other idled. The cost,
also shown: the connections hashed to the busy worker wait until it is free."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from stream.dev.services import free_port
from tests.support import procs

ROOT = Path(__file__).resolve().parents[2]
CONNECTIONS = 48
WORKERS = 2

pytestmark = pytest.mark.integration


def _answers_pid(port: int) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        return int(conn.getresponse().read())
    except (OSError, ValueError):
        return None


def _start(port: int, tmp_path: Path, *, capture: bool = False) -> subprocess.Popen[bytes]:
    """`run_uvicorn` of the pid app with two workers (``capture``: its stderr, to read once it
    exits)."""
    code = (
        "from serving.runner import run_uvicorn; "
        f"run_uvicorn('tests.support.pid_app:factory', '127.0.0.1', {port}, {WORKERS})"
    )
    env = {
        **os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT),
        "PID_APP_BUSY_FILE": str(tmp_path / "busy"),
    }  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE)


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _workers_answering(server: subprocess.Popen[bytes], port: int) -> set[int]:
    """The pids of the workers, once each has answered a connection (polled, 30 s at most)."""
    deadline = time.monotonic() + 30
    workers: set[int] = set()
    while len(workers) < WORKERS:
        assert time.monotonic() < deadline, f"workers answering: {workers}"
        assert server.poll() is None, "the server exited"
        pid = _answers_pid(port)
        if pid is not None:
            workers.add(pid)
    assert workers <= set(procs.children(server.pid))
    return workers


@pytest.mark.timeout(60)
def test_a_server_still_listening_keeps_its_port(tmp_path: Path) -> None:
    """Sockets that share a port are only for one server's workers: a second server on a port
    that a running one listens on is refused with the reason, and takes none of its traffic."""
    port = free_port()
    first = _start(port, tmp_path)
    try:
        workers = _workers_answering(first, port)
        second = _start(port, tmp_path, capture=True)
        try:
            _, err = second.communicate(timeout=30)
        finally:
            if second.poll() is None:
                _stop(second)
        assert second.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port}" in err.decode()
        answered = {_answers_pid(port) for _ in range(20)} - {None}  # None: too slow to answer
        assert answered and answered <= workers, answered
    finally:
        _stop(first)


@pytest.mark.timeout(60)
def test_a_burst_of_connections_is_spread_over_the_workers_even_with_one_busy(
    tmp_path: Path,
) -> None:
    port = free_port()
    busy_file = tmp_path / "busy"
    server = _start(port, tmp_path)
    try:
        workers = _workers_answering(server, port)
        # one worker busy for a second (whichever takes this connection)...
        busy = socket.create_connection(("127.0.0.1", port), timeout=5)
        busy.sendall(b"GET /busy?1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        while not busy_file.exists():  # polled: the worker creates it as it starts being busy
            assert time.monotonic() - started < 10, "the busy request never started"
            time.sleep(0.002)
        # ...and the burst, as wrk opens its connections: non-blocking connects in a tight loop, so
        # they wait in the listening queue together before any worker accepts one
        burst = []
        for _ in range(CONNECTIONS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            burst.append(sock)
        for sock in burst:
            sock.settimeout(5)
        owners: Counter[int] = Counter()
        for sock in burst:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in burst:
            response = b""
            while not response.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in response:
                response += sock.recv(4096)
            head, _, body = response.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += sock.recv(4096)
            owners[int(body)] += 1
            sock.close()
        busy.close()
        assert set(owners) == workers
        # a hash of 48 connections over 2 sockets: fewer than 12 on one has odds below 1e-3
        assert min(owners.values()) >= CONNECTIONS // 4, owners
    finally:
        _stop(server)

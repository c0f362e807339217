"""The suite's private Redis (`tests.support.outage.PrivateRedis`) survives the port race of
`free_port`: a port taken between its choice and the server's bind (redis-server then exits at
once) is given up for another at the first start; before, the start waited 20 s for a server
that had exited and failed the test's setup."""

from __future__ import annotations

import socket
from pathlib import Path

import redis

from tests.support.outage import PrivateRedis


def test_a_port_taken_before_the_first_start_is_given_up_for_another(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    taken = server.port
    with socket.socket() as squatter:  # what took the chosen port meanwhile
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            server.start()
            assert server.port != taken
            assert redis.Redis(port=server.port, socket_timeout=5).ping()
        finally:
            server.stop()

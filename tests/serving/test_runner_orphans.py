"""`riverstream serve --workers 2` whose supervisor is killed with SIGKILL (the OOM killer, a
``kill -9``): its workers stop too (`serving.runner.end_with_supervisor`). They went on serving
for ever, each on its own socket of the port, beside the workers of a restarted API."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import httpx
import pytest

from serving.runner import end_with_supervisor
from stream.dev.services import free_port
from tests.support.procs import alive, children, cmdline
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def workers(supervisor: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's spawned interpreters)."""
    return [p for p in children(supervisor) if "spawn_main" in " ".join(cmdline(p))]


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_workers_stop_when_their_supervisor_is_killed(
    kit, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    settings = kit.make_settings(redis_url, prefix, state_dir=tmp_path)
    port = free_port()
    log = tmp_path / "api.err"
    api = kit.start_serve(settings, 2, log, port=port)
    try:
        spawned = wait_until(lambda: len(workers(api.pid)) == 2 and workers(api.pid), 60,
                             "two workers", log=log)  # fmt: skip
        wait_until(lambda: answers(port), 60, "the API answering", log=log)
        os.kill(api.pid, signal.SIGKILL)
        api.wait(timeout=10)
        wait_until(
            lambda: not [p for p in spawned if alive(p)],
            30,
            "the workers to stop",
            detail=lambda: [(p, cmdline(p)) for p in spawned if alive(p)],
            log=log,
        )
        assert not answers(port)  # nobody serves the port any more
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group: the workers too, if left
            os.killpg(api.pid, signal.SIGKILL)
        api.wait()


def test_only_a_spawned_worker_asks_to_stop_with_its_parent() -> None:
    """In the supervisor itself (or a single-process API) nothing is asked of the kernel."""
    assert end_with_supervisor() is False

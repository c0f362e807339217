"""`riverstream score --workers N` stopped: its worker processes never outlive it.

The input is a named pipe the test writes a few chunks into and keeps open, so the command is
surely still running (blocked reading it, its workers forked and waiting for chunks) when it is
signalled. SIGTERM is a clean exit that shuts the workers down; killed -9, the command cannot
do anything, and its workers die with it (``PR_SET_PDEATHSIG``). Before, both left the workers
blocked forever, re-parented, with the model in memory."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.settings import Settings
from stream.predict.batch import CHUNK
from stream.store.snapshots import SnapshotStore
from tests.support.pipeline import spawn_cli
from tests.support.procs import alive, children, cmdline
from tests.support.scoring import publish_clf
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_the_workers_end_with_the_command(
    kit: Any, store: SnapshotStore, predict_settings: Settings, tmp_path: Path, how: int
) -> None:
    _version, inputs = publish_clf(kit, store, predict_settings)
    source = tmp_path / "in.jsonl"
    os.mkfifo(source)
    log = tmp_path / "log"
    args = ["score", "clf", str(source), "--out", str(tmp_path / "out.jsonl"), "--workers", "2"]
    proc = spawn_cli(predict_settings, args, log)
    workers: list[int] = []
    fifo = None
    try:

        def opened() -> int | None:
            """The command opened its input (a writer can open a pipe with a reader)."""
            assert proc.poll() is None, log.read_text()
            try:
                return os.open(source, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                return None

        fifo = wait_until(opened, timeout=60, log=log)
        os.set_blocking(fifo, True)
        rows = (
            orjson.dumps({"id": f"e{i}", "time": i, "features": inputs[i % len(inputs)]})
            for i in range(3 * CHUNK)
        )
        os.write(fifo, b"".join(row + b"\n" for row in rows))  # the pipe stays open: no end

        def forked() -> list[int]:
            """The command's two worker processes (forked: its own command line)."""
            assert proc.poll() is None, log.read_text()
            found = [p for p in children(proc.pid) if cmdline(p) == cmdline(proc.pid)]
            return found if len(found) == 2 else []

        workers = wait_until(forked, timeout=30, log=log)
        os.kill(proc.pid, how)
        code = proc.wait(timeout=30)
        assert code == (128 + signal.SIGTERM if how == signal.SIGTERM else -signal.SIGKILL)
        wait_until(
            lambda: not any(alive(p) for p in workers), timeout=20,
            what="the worker processes to end", detail=lambda: [p for p in workers if alive(p)],
            log=log,
        )  # fmt: skip
        if how == signal.SIGTERM:
            assert "stopped (SIGTERM)" in log.read_text()
    finally:
        if fifo is not None:
            os.close(fifo)
        for pid in [proc.pid, *workers]:
            if alive(pid) and (pid == proc.pid or cmdline(pid) == args_of(proc)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def args_of(proc: Any) -> list[str]:
    """The command line the CLI process was started with (its workers have the same)."""
    return [str(a) for a in proc.args]

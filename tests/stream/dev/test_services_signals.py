"""A Ctrl-C while `riverstream services up` starts a service leaves none running unrecorded.

A service runs in a session of its own, so it outlives the command that started it. A failure or
a Ctrl-C while `up` waited for it to answer killed it, but one between its spawn and that wait,
or between its answer and its record in ``services.json``, left it running where no `services
down` could find it (and its port taken). Now Ctrl-C waits for the end of those two steps: the
service is killed, or recorded, before the command ends.

The harness (`tests.support.gate`) holds the real command at the exact step; the test sends it
SIGINT there, as a Ctrl-C in its terminal does, then lets it go on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.settings import Settings
from stream.dev.ports import PORTS_FILE
from stream.dev.services import ServiceManager, free_port, pid_alive, stop_pid
from tests.support.gate import gate_then_signal

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("gate", "match", "recorded"),
    [("spawn", "redis-server", False), ("record", "redis", True)],
    ids=["spawned, not yet waited for", "ready, not yet recorded"],
)
def test_ctrl_c_while_a_service_starts_leaves_none_unrecorded(
    tmp_path: Path, gate: str, match: str, recorded: bool
) -> None:
    state = tmp_path / "state"
    (state / "redis").mkdir(parents=True)
    (state / "redis" / PORTS_FILE).write_text(json.dumps({"redis": free_port()}))
    announce = tmp_path / "gate"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERSTREAM_")}
    harness = subprocess.Popen(
        [sys.executable, "-m", "tests.support.gate", str(announce), gate, match,
         "--", "services", "up", "redis"],
        env={**env, "RIVERSTREAM_STATE_DIR": str(state)}, cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    manager = ServiceManager(Settings(state_dir=state))
    pid = None
    try:
        pid = gate_then_signal(harness, announce, signal.SIGINT)
        _, err = harness.communicate(timeout=60)
        assert harness.returncode == 128 + signal.SIGINT, err  # ended by the Ctrl-C
        records = manager.records()
        if recorded:  # up and recorded: `services down` stops it
            assert "redis" in records and records["redis"].pid == pid, records
            assert pid_alive(pid)
        else:  # killed, never recorded
            assert "redis" not in records, records
            assert not pid_alive(pid)
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.communicate(timeout=30)
        manager.down(("redis",), purge=True)
        if pid is not None:  # left running unrecorded (the defect): stopped all the same
            stop_pid(pid, "redis-server")

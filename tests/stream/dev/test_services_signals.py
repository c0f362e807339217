"""A Ctrl-C, SIGTERM or SIGHUP while `riverstream services up` starts a service leaves none
running unrecorded.

A service runs in a session of its own, so it outlives the command that started it. A failure or
a Ctrl-C while `up` waited for it to answer killed it, but one between its spawn and that wait,
or between its answer and its record in ``services.json``, left it running where no `services
down` could find it (and its port taken). Now Ctrl-C waits for the end of those two steps: the
service is killed, or recorded, before the command ends. SIGTERM and SIGHUP (its terminal
closed) killed the command at once wherever they fell, a Kafka still starting left running (a
JVM holding its ports); they now end it as Ctrl-C does (`stream.dev.processes.EndOnSignal`), with
one line and the status of a process killed by them (128 + the signal). With ``--cluster`` a
node is recorded as it is spawned: a signal there waits for its record.

The harness (`tests.support.gate`) holds the real command at the exact step; the test sends it
the signal there, then lets it go on. Kafka's wait for its readiness lasts seconds: the test
signals the real command, unheld, once Kafka's process runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.settings import Settings
from stream.dev.cluster import KAFKA_HOME, cluster_down
from stream.dev.kafka_node import MARKER as KAFKA_MARKER
from stream.dev.ports import PORTS_FILE
from stream.dev.processes import RECORDS
from stream.dev.services import SERVICES, ServiceManager, free_port, pid_alive, stop_pid
from tests.support.gate import gate_then_signal
from tests.support.procs import cmdline, live_in
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
@pytest.mark.parametrize(
    ("gate", "match", "recorded"),
    [("spawn", "redis-server", False), ("record", "redis", True)],
    ids=["spawned, not yet waited for", "ready, not yet recorded"],
)
def test_a_signal_while_a_service_starts_leaves_none_unrecorded(
    tmp_path: Path, gate: str, match: str, recorded: bool, signum: signal.Signals
) -> None:
    state = tmp_path / "state"
    (state / "redis").mkdir(parents=True)
    (state / "redis" / PORTS_FILE).write_text(json.dumps({"redis": free_port()}))
    announce = tmp_path / "gate"
    harness = subprocess.Popen(
        [sys.executable, "-m", "tests.support.gate", str(announce), gate, match,
         "--", "services", "up", "redis"],
        env=_environment(state), cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    manager = ServiceManager(Settings(state_dir=state))
    pid = None
    try:
        pid = gate_then_signal(harness, announce, signum)
        _, err = harness.communicate(timeout=60)
        assert harness.returncode == 128 + signum, err  # ended by the signal
        if signum != signal.SIGINT:
            _said_once(err.decode(), signum)
        records = manager.records()
        if recorded:  # up and recorded: `services down` stops it
            assert "redis" in records and records["redis"].pid == pid, records
            assert pid_alive(pid)
        else:  # killed, never recorded
            assert "redis" not in records, records
            wait_until(lambda: not live_in(state), 10, "redis killed, not left running")
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.communicate(timeout=30)
        manager.down(("redis",), purge=True)
        if pid is not None:  # left running unrecorded (the defect): stopped all the same
            stop_pid(pid, "redis-server")
        _clean(state)


@pytest.mark.parametrize("signum", SIGNALS[1:], ids=[s.name for s in SIGNALS[1:]])
def test_a_signal_while_kafka_starts_kills_it(tmp_path: Path, signum: signal.Signals) -> None:
    """The signal falls while `up` waits for Kafka to answer (seconds: a JVM starting)."""
    state = tmp_path / "state"
    up = _riverstream(state, "services", "up", "kafka")
    manager = ServiceManager(Settings(state_dir=state))
    try:
        kafka = wait_until(lambda: _running(state, KAFKA_MARKER, up), 60, "kafka spawned")
        assert "kafka" not in manager.records()  # still starting
        up.send_signal(signum)
        _, err = up.communicate(timeout=60)
        assert up.returncode == 128 + signum, err
        _said_once(err, signum)
        assert "kafka" not in manager.records()
        wait_until(lambda: not live_in(state), 20, "kafka killed, nothing left running")
        assert not pid_alive(kafka)
    finally:
        _stop(up)
        _clean(state)


def test_a_signal_at_a_cluster_nodes_spawn_leaves_it_recorded(tmp_path: Path) -> None:
    """`services up --cluster` records a node as it spawns it; a SIGTERM right after the spawn
    waits for that record, so that `services down` stops everything it started."""
    state, announce = tmp_path / "state", tmp_path / "gate"
    harness = subprocess.Popen(
        [sys.executable, "-m", "tests.support.gate", str(announce), "spawn", KAFKA_MARKER,
         "--", "services", "up", "--cluster"],
        env=_environment(state), cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        broker = gate_then_signal(harness, announce, signal.SIGTERM)
        _, err = harness.communicate(timeout=60)
        assert harness.returncode == 128 + signal.SIGTERM, err
        _said_once(err.decode(), signal.SIGTERM)
        recorded = state / KAFKA_HOME / RECORDS
        assert recorded.exists(), "the broker spawned was left unrecorded"
        nodes = json.loads(recorded.read_text())
        assert [node["pid"] for node in nodes.values()] == [broker], nodes
        down = subprocess.run(
            [sys.executable, "-m", "stream", "services", "down"], env=_environment(state),
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert down.returncode == 0 and "kafka-1" in down.stderr, down.stderr
        wait_until(lambda: not live_in(state), 20, "everything stopped by `services down`")
    finally:
        _stop(harness)
        _clean(state)


def _environment(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERSTREAM_")}
    return {**env, "RIVERSTREAM_STATE_DIR": str(state)}


def _riverstream(state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stream", *args], env=_environment(state), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _running(state: Path, marker: str, command: subprocess.Popen[str]) -> int | None:
    """The pid of the process of ``state`` that runs ``marker``, once there is one."""
    assert command.poll() is None, command.communicate()
    found = [pid for pid in live_in(state) if marker in cmdline(pid)]
    return found[0] if found else None


def _said_once(err: str, signum: signal.Signals) -> None:
    """The command's last word: one line naming the signal, no traceback."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{signum.name}: services up stopped; what runs is recorded"), err


def _stop(command: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if command.poll() is None:
        command.kill()
        command.communicate(timeout=30)


def _clean(state: Path) -> None:
    """Stop what the state directory's records hold, then kill by pid whatever still runs
    there (left unrecorded: the defect)."""
    ServiceManager(Settings(state_dir=state)).down(SERVICES, purge=True)
    cluster_down(state.resolve(), purge=True)
    for pid in live_in(state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not live_in(state), 20, "every process of the test's state killed")

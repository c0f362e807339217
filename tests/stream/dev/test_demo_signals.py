"""A demo that is signalled stops what it started; one killed is stopped by `riverstream demo stop`.

The demo's processes run in sessions of their own, so they outlive the demo. Killed by SIGTERM or
SIGHUP (its terminal closed), the demo used to die at once and leave them running, with its
Prometheus scrape targets; only ``--keep`` recorded them, so `demo stop` knew nothing of them and,
once they exited, the local Prometheus alerted for ever that a learner nobody ran was down. Now
every demo is recorded in ``<state_dir>/demos/<tag>/`` as its processes start, SIGTERM ends it
through its own cleanup, and `demo stop` finishes the job of one that was SIGKILLed, sparing a
process given a recorded pid since (the markers name the demo).

Each test starts a real demo, slowed down (``--rate``) so that it is still replaying when the test
signals it, in a state directory of its own (its own services).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from schemas.settings import Settings
from stream.dev.services import SERVICES, ServiceManager, pid_alive, stop_pid
from tests.support.gate import gate_then_signal
from tests.support.procs import cmdline, live_with_env, parent
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]
SLOW = ["--limit", "1000", "--rate", "50", "--label-delay", "5"]  # about 40 s of replay


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signalled_demo_stops_what_it_started(tmp_path: Path, signum: signal.Signals) -> None:
    state = tmp_path / "[x]" / "state"  # the demo's log shows paths as they are (rich markup)
    demo = _start(state)
    try:
        home, nodes = _spawned(state, demo)
        demo.send_signal(signum)  # SIGHUP: its terminal closed
        _, err = demo.communicate(timeout=120)
        assert demo.returncode == 128 + signum, err
        assert f"{signum.name}: the demo stops what it started" in err, err
        assert f"recorded in {home} (" in err, err
        # its own cleanup stopped its processes (and theirs), its targets, its services
        assert not any(pid_alive(node["pid"]) for node in nodes.values()), nodes
        assert not _left(home.name), _left(home.name)
        assert not list((state / "prometheus" / "targets").glob(f"{home.name}.*"))
        assert not home.exists()
        assert json.loads((state / "services.json").read_text()) == {}
    finally:
        _clean(state, demo)


def test_demo_stop_stops_a_killed_demo_and_no_other(tmp_path: Path) -> None:
    state = tmp_path / "state"
    demo = _start(state)
    decoy: subprocess.Popen[bytes] | None = None
    try:
        home, nodes = _spawned(state, demo)
        tag = home.name
        # a demo that runs is left to stop what it started itself
        running = _riverstream(state, "demo", "stop")
        assert f"demo {tag}: still running (pid {demo.pid})" in running.stderr, running.stderr
        assert all(pid_alive(node["pid"]) for node in nodes.values()) and demo.poll() is None

        demo.kill()
        demo.communicate(timeout=30)
        assert all(pid_alive(node["pid"]) for node in nodes.values())  # orphans, still scraped
        assert list((state / "prometheus" / "targets").glob(f"{tag}.*"))
        # the learner's pid, given since to another demo's learner (same command, another demo)
        decoy = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)",
             "-X", "riverstream-demo=demo-other", "-m", "stream", "learn", "--model",
             "model=logreg"],
        )  # fmt: skip
        learner = nodes.pop("learner")
        assert stop_pid(learner["pid"], learner["marker"])
        records = json.loads((home / "processes.json").read_text())
        records["learner"]["pid"] = decoy.pid
        (home / "processes.json").write_text(json.dumps(records))

        stopped = _riverstream(state, "demo", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert decoy.poll() is None, stopped.stderr  # not this demo's: left alone
        said = stopped.stderr
        assert all(f"{name} (pid {node['pid']})" in said for name, node in nodes.items()), said
        assert f"learner (pid {decoy.pid})" not in said, said
        assert not any(pid_alive(node["pid"]) for node in nodes.values())
        assert not _left(tag), _left(tag)
        assert not list((state / "prometheus" / "targets").glob(f"{tag}.*"))
        assert not home.exists()
        assert json.loads((state / "services.json").read_text()) == {}  # the demo's own
    finally:
        if decoy is not None:
            decoy.kill()
            decoy.wait(timeout=10)
        _clean(state, demo)


def test_ctrl_c_between_a_spawn_and_its_record_leaves_nothing_running(tmp_path: Path) -> None:
    """Ctrl-C raised `KeyboardInterrupt` wherever it fell: between the learner's spawn and its
    record, the demo's cleanup knew nothing of it, which ran on, unrecorded, in its own session.
    Ctrl-C now waits there (the harness holds the demo right after the spawn)."""
    state, announce = tmp_path / "state", tmp_path / "gate"
    demo = subprocess.Popen(
        [sys.executable, "-m", "tests.support.gate", str(announce), "spawn", "-m stream learn",
         "--", "demo", *SLOW],
        env=_environment(state), cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    learner = None
    try:
        learner = gate_then_signal(demo, announce, signal.SIGINT)
        [log] = state.glob("*.learner.log")
        tag = log.name.removesuffix(".learner.log")
        _, err = demo.communicate(timeout=120)
        assert demo.returncode == 128 + signal.SIGINT, err  # the Ctrl-C ended it
        assert not pid_alive(learner), err  # stopped by the demo's cleanup
        assert not _left(tag), _left(tag)
        assert not (state / "demos" / tag).exists()
        assert json.loads((state / "services.json").read_text()) == {}
    finally:
        if learner is not None:  # left running (the defect): stopped all the same
            stop_pid(learner, "-m stream learn")
        _clean(state, demo)


def _environment(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERSTREAM_")}
    return {**env, "RIVERSTREAM_STATE_DIR": str(state)}


def _start(state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stream", "demo", *SLOW], env=_environment(state), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _riverstream(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args], env=_environment(state), cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _left(tag: str) -> list[tuple[int, int | None, list[str]]]:
    """The live processes with the demo's environment: pid, parent and command line (what a
    failure names)."""
    return [(p, parent(p), cmdline(p)) for p in live_with_env("RIVERSTREAM_REDIS_PREFIX", tag)]


def _spawned(state: Path, demo: subprocess.Popen[str]) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Once the demo has recorded its learner and its API: its record's directory and the
    processes it holds (name → pid, port, log, marker)."""

    def recorded() -> tuple[Path, dict[str, dict[str, Any]]] | None:
        assert demo.poll() is None, demo.communicate()
        for path in (state / "demos").glob("*/processes.json"):
            nodes: dict[str, dict[str, Any]] = json.loads(path.read_text())
            if {"learner", "api"} <= set(nodes):
                return path.parent, nodes
        return None

    found: tuple[Path, dict[str, dict[str, Any]]] = wait_until(
        recorded, 120, "the demo's learner and API recorded", interval=0.1
    )
    home, nodes = found
    assert home.parent == state.resolve() / "demos"
    # each marker names the demo: a pid given to another demo's process is not this demo's
    assert all(f"-X riverstream-demo={home.name} -m stream " in n["marker"] for n in nodes.values())
    return home, nodes


def _clean(state: Path, demo: subprocess.Popen[Any]) -> None:
    """Whatever the test did not get to stop: the demo, the processes of every demo recorded
    (and theirs), then the services (a learner stopped first can still write its snapshot)."""
    if demo.poll() is None:
        demo.kill()
        demo.communicate(timeout=30)
    for home in state.glob("demos/*"):
        for pid in live_with_env("RIVERSTREAM_REDIS_PREFIX", home.name):
            stop_pid(pid, "-m stream")
    ServiceManager(Settings(state_dir=state)).down(SERVICES, purge=True)

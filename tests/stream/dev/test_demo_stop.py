"""`riverstream demo stop` (`stream.dev.demo.stop_kept`) and the services' start, at the edges a
final read found (no demo is run: the records are written as a demo writes them):

- the services a killed demo started stay up while another demo, still running, uses them;
- a demo's folder without its record yet (a demo starting) is left alone;
- a service whose start is interrupted (SIGTERM turned into an exit, Ctrl-C) is killed, never
  left running unrecorded.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from schemas.settings import Settings
from stream.dev.demo import DEMOS_DIR, KEPT_FILE, stop_kept
from stream.dev.processes import start_ticks
from stream.dev.services import ServiceManager, ServiceRecord, _Launch
from tests.support.procs import alive, children, cmdline
from tests.support.waiting import wait_until


def record(state: Path, tag: str, content: dict[str, object] | None) -> Path:
    home = state / DEMOS_DIR / tag
    home.mkdir(parents=True)
    if content is not None:
        (home / KEPT_FILE).write_text(json.dumps(content))
    return home


def test_stop_leaves_the_services_a_running_demo_uses_and_a_starting_demo_alone(
    tmp_path: Path,
) -> None:
    me = os.getpid()
    live = record(tmp_path, "demo-live", {"services": [], "pid": me, "started": start_ticks(me)})
    dead = record(tmp_path, "demo-dead", {"services": ["kafka", "redis"], "pid": 2**22 + 7})
    starting = record(tmp_path, "demo-starting", None)
    said = stop_kept(Settings(state_dir=tmp_path))
    assert any(line.startswith("demo demo-live: still running") for line in said), said
    assert any(line.startswith("demo demo-dead: stopped") for line in said), said
    assert any("services left running (kafka, redis): demo demo-live" in line for line in said)
    assert not any("services the demo started: stopped" in line for line in said), said
    assert live.exists() and starting.exists() and not dead.exists()


def test_a_service_whose_start_is_interrupted_is_killed(tmp_path: Path) -> None:
    manager = ServiceManager(Settings(state_dir=tmp_path))
    started: list[int] = []

    def interrupted() -> bool:
        started.extend(p for p in children(os.getpid()) if cmdline(p) == ["sleep", "61"])
        raise KeyboardInterrupt  # as the demo's SIGTERM (a SystemExit) or Ctrl-C

    records: dict[str, ServiceRecord] = {}
    with pytest.raises(KeyboardInterrupt):
        manager._start("sleeper", _Launch(["sleep", "61"], tmp_path, "", "", interrupted), records)
    [pid] = started
    try:
        wait_until(lambda: not alive(pid), 10, "the service killed, not left running")
        assert records == {} and manager.records() == {}
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)

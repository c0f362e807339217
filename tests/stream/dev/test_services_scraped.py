"""`riverstream learn`, `serve` and `predict-worker` register with the local Prometheus only what
they hold, and delete only their own registration (`stream.dev.services.scraped`).

The targets' file was named by the configured address alone, written before the process had
bound it, and deleted when the process stopped: a second `riverstream serve` on a port in use
(which fails to bind) deleted the running API's registration as it exited, or with several
workers left its own failed one; a second learner on a metrics port in use (it logs the error
and learns on) registered the address and, when either stopped, removed the other's. Now a
process registers once its exporter (the API's socket) is bound, writes its pid in the file,
and deletes the file only while it holds that pid. A process that fails at its start (its
settings refused, `ConfigError`) leaves no registration, as one that stops; one that crashes
stays registered, so that its alert fires.

`serve` also ends by SIGTERM again, with one worker or several, once its registration is gone:
it exited 143 with one worker (a failure to systemd) and 0 with several.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from schemas.errors import ConfigError
from schemas.settings import Settings
from stream.dev.services import ServiceManager, free_port, scraped
from tests.support.pipeline import spawn_cli
from tests.support.scraping import as_if_services_up, registrations
from tests.support.serving import stop_process
from tests.support.waiting import wait_until

JOB = "riverstream-learner"


@pytest.mark.parametrize(
    "end", [None, SystemExit(0), KeyboardInterrupt(), ConfigError("refused at start")],
    ids=["returns", "exits", "ctrl-c", "config-error"],
)  # fmt: skip
def test_a_registration_is_deleted_when_its_process_stops(
    tmp_path: Path, end: BaseException | None
) -> None:
    targets = as_if_services_up(tmp_path)
    name = f"127.0.0.1:9999.{JOB}.json"
    ends = pytest.raises(type(end)) if end else contextlib.nullcontext()
    with ends, scraped(Settings(state_dir=tmp_path), JOB, ("0.0.0.0", 9999)):
        assert registrations(targets) == {name: ("127.0.0.1:9999", os.getpid())}
        if end is not None:
            raise end
    assert registrations(targets) == {}


def test_a_process_that_crashes_stays_registered(tmp_path: Path) -> None:
    targets = as_if_services_up(tmp_path)
    with pytest.raises(RuntimeError), scraped(Settings(state_dir=tmp_path), JOB, ("::1", 9999)):
        raise RuntimeError("crashed while it ran")
    assert registrations(targets) == {f"[::1]:9999.{JOB}.json": ("[::1]:9999", os.getpid())}


def test_a_registration_written_since_by_another_process_stays(tmp_path: Path) -> None:
    targets = as_if_services_up(tmp_path)
    settings = Settings(state_dir=tmp_path)
    with scraped(settings, JOB, ("127.0.0.1", 9999)):
        other = os.getppid()  # a process that registered the same address meanwhile
        ServiceManager(settings).register_targets("127.0.0.1:9999", {JOB: "127.0.0.1:9999"},
                                                  pid=other)  # fmt: skip
    assert registrations(targets) == {f"127.0.0.1:9999.{JOB}.json": ("127.0.0.1:9999", other)}


def test_nothing_bound_registers_nothing(tmp_path: Path) -> None:
    targets = as_if_services_up(tmp_path)
    with scraped(Settings(state_dir=tmp_path), JOB, None):
        assert registrations(targets) == {}


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_api_on_a_busy_port_leaves_the_first_registered(
    settings: Settings, tmp_path: Path, workers: int
) -> None:
    targets = as_if_services_up(settings.state_dir)
    port = free_port()
    command = ["serve", "--port", str(port), "--workers", str(workers)]
    name = f"127.0.0.1:{port}.riverstream-api.json"
    first = spawn_cli(settings, command, tmp_path / "first.log")
    procs = [first]
    try:
        wait_until(lambda: _answers(port), 60, "the first API", log=tmp_path / "first.log")
        assert registrations(targets) == {name: (f"127.0.0.1:{port}", first.pid)}

        procs.append(second := spawn_cli(settings, command, tmp_path / "second.log"))
        # it cannot bind: uvicorn's STARTUP_FAILURE (one worker), the address refused (several)
        assert second.wait(timeout=60) == (3 if workers == 1 else 2)
        assert "in use" in (tmp_path / "second.log").read_text()
        assert registrations(targets) == {name: (f"127.0.0.1:{port}", first.pid)}
        assert _answers(port)

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == -signal.SIGTERM  # dies by it, a clean stop to systemd
        assert registrations(targets) == {}  # unregistered before
    finally:
        for proc in procs:
            stop_process(proc)


@pytest.mark.integration
def test_a_second_learner_on_a_busy_metrics_port_leaves_the_first_registered(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    settings = settings.model_copy(update={"learner_metrics_port": port})
    targets = as_if_services_up(settings.state_dir)
    command = ["learn", "--model", "m=logreg"]
    name = f"127.0.0.1:{port}.{JOB}.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(first := spawn_cli(settings, command, tmp_path / "first.log"))
        wait_until(lambda: registrations(targets), 60, "the first learner registered",
                   log=tmp_path / "first.log")  # fmt: skip
        assert registrations(targets) == {name: (f"127.0.0.1:{port}", first.pid)}

        # another learner (a name and a model of its own: it is fenced off otherwise)
        second_command = ["learn", "--model", "n=logreg", "--learner", "second"]
        procs.append(second := spawn_cli(settings, second_command, tmp_path / "second.log"))
        log = tmp_path / "second.log"
        wait_until(lambda: "metrics: " in log.read_text(), 60, "the second learner running",
                   detail=second.poll, log=log)  # fmt: skip
        assert "cannot serve /metrics" in log.read_text()  # the port is the first's
        assert registrations(targets) == {name: (f"127.0.0.1:{port}", first.pid)}
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert registrations(targets) == {name: (f"127.0.0.1:{port}", first.pid)}

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
        assert registrations(targets) == {}
    finally:
        for proc in procs:
            stop_process(proc)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False

"""The local Prometheus scrapes what riverstream registers and evaluates the alert rules.

Its configuration used to scrape nothing (``targets: []``, no rule files), so locally the alerts
never evaluated and `riverstream report` always fell back to the trace. Now `up` writes the
scrape jobs that the alert rules name, each reading its targets from files that Prometheus
re-reads by itself (file-based discovery), and loads ``observability/prometheus/alerts.yml``; a
state directory of an older riverstream gets the new configuration at the next `up`, reloaded in
place when Prometheus already runs.

The configuration named the rules and the targets' files by absolute paths, which Prometheus
reads as glob patterns: a state directory with ``*`` in its path had the configuration refused
(Prometheus exited at start), one with ``[x]`` loaded no rule and scraped nothing. They are
relative to the configuration's directory now.

`up` also registered the settings' default ports, and the rules fired when a job had no target
at all (``absent``): a plain `services up` alerted at once that the learner and the API were
down, where none had been started. Only what runs is registered now (`scraped`, the demo), and
an alert that a process is down fires for a registered target that is down, and for no other;
the alerts that no learner or API is scraped at all (their own group, for a deployment that
declares what runs) are not loaded here. `riverstream serve` ends by SIGTERM, as before the
registration (it exited 143).
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from observability import alerts
from schemas.settings import Settings
from stream.dev.ports import PORTS_FILE
from stream.dev.services import PID_LABEL, ServiceManager, free_port, prometheus_config
from tests.support.pipeline import spawn_cli
from tests.support.serving import stop_process
from tests.support.waiting import wait_until

DEADLINE = 30.0  # seconds: scrapes and rule evaluations are every second here


def _api(url: str, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(f"{url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


def _alert_names() -> set[str]:
    """The alerts the local Prometheus loads: not those that nothing is scraped at all."""
    return {rule["alert"] for group in yaml.safe_load(alerts.PATH.read_text())["groups"]
            if group["name"] != alerts.ABSENT_GROUP for rule in group["rules"]}  # fmt: skip


def _loaded_alerts(url: str) -> set[str]:
    groups = _api(url, "/api/v1/rules?type=alert")["data"]["groups"]
    return {rule["name"] for group in groups for rule in group["rules"]}


def _targets(url: str) -> dict[tuple[str, str], str]:
    """(job, instance) → health of every active target."""
    return {target: health for target, (health, _) in _discovered(url).items()}


def _discovered(url: str) -> dict[tuple[str, str], tuple[str, dict[str, str]]]:
    """(job, instance) → health and labels as discovered (with `PID_LABEL`) of every active
    target; no label of a scraped series holds the pid."""
    found = _api(url, "/api/v1/targets?state=active")["data"]["activeTargets"]
    assert not any(PID_LABEL in t["labels"] for t in found), found
    return {(t["labels"]["job"], t["labels"]["instance"]): (t["health"], t["discoveredLabels"])
            for t in found}  # fmt: skip


def _down_alerts(url: str) -> set[tuple[str, str]]:
    """(alert, instance) of the pending or firing alerts that a process is down."""
    found = _api(url, "/api/v1/alerts")["data"]["alerts"]
    return {(a["labels"]["alertname"], a["labels"].get("instance", "")) for a in found
            if a["labels"]["alertname"].endswith("Down")}  # fmt: skip


def _state_dir(tmp_path: Path, name: str) -> tuple[ServiceManager, Path]:
    """A manager of the state directory ``tmp_path / name`` (Prometheus on a free port) and its
    Prometheus' home."""
    home = tmp_path / name / "prometheus"
    home.mkdir(parents=True)
    (home / PORTS_FILE).write_text(json.dumps({"prometheus": free_port()}))
    return ServiceManager(Settings(state_dir=tmp_path / name)), home


# `*`: the configuration was refused; `[x]`: a pattern matching no path, so nothing was loaded
@pytest.mark.parametrize("name", ["state", "[x]", "a*b?"])
def test_registered_targets_are_scraped_and_the_alert_rules_loaded(
    tmp_path: Path, name: str
) -> None:
    manager, home = _state_dir(tmp_path, name)
    # what an older `services up` left in this state directory: a configuration that scrapes
    # nothing, and the targets of the settings' default ports (registered whether anything ran
    # there or not)
    stale = prometheus_config([])
    (home / "prometheus.yml").write_text(stale)
    (home / "targets").mkdir()
    (home / "targets" / "default.riverstream-api.json").write_text('[{"targets": ["x:1"]}]')
    registry = CollectorRegistry()
    Gauge("riverstream_learner_up", "A learner's exporter, for the test.", registry=registry).set(1)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    expected = _alert_names()
    try:
        url = manager.up(("prometheus",))["prometheus"].url
        wait_until(lambda: _loaded_alerts(url) == expected, DEADLINE, "the alert rules",
                   detail=lambda: _loaded_alerts(url))  # fmt: skip
        assert not list((home / "targets").iterdir())  # nothing registered: nothing runs

        # a process on a port of its own (as the demo's), registered while Prometheus runs
        probe = ("riverstream-learner", f"127.0.0.1:{port}")
        manager.register_targets("probe", {"riverstream-learner": probe[1]})
        wait_until(lambda: _targets(url).get(probe) == "up", DEADLINE, "the probe scraped",
                   detail=lambda: _targets(url))  # fmt: skip
        query = f"/api/v1/query?query=riverstream_learner_up%7Binstance%3D%22{probe[1]}%22%7D"
        wait_until(lambda: _api(url, query)["data"]["result"], DEADLINE, "its metric stored")
        assert set(_targets(url)) == {probe}
        manager.unregister_targets("probe")
        wait_until(lambda: probe not in _targets(url), DEADLINE, "the probe dropped",
                   detail=lambda: _targets(url))  # fmt: skip

        # a running Prometheus that loaded an older configuration: `up` replaces and reloads it
        (home / "prometheus.yml").write_text(stale)
        _api(url, "/-/reload", method="POST")
        wait_until(lambda: not _loaded_alerts(url), DEADLINE, "the stale configuration")
        assert manager.up(("prometheus",))["prometheus"].url == url  # not restarted
        wait_until(lambda: _loaded_alerts(url) == expected, DEADLINE, "the rules reloaded",
                   detail=lambda: _loaded_alerts(url))  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        manager.down(("prometheus",), purge=True)


def test_only_a_registered_target_that_is_down_alerts(tmp_path: Path) -> None:
    """A plain `services up` (nothing started) alerts nothing; a learner registered and down
    does, and once unregistered (stopped), no longer."""
    manager, _ = _state_dir(tmp_path, "state")
    nothing_there = f"127.0.0.1:{free_port()}"
    try:
        url = manager.up(("prometheus",))["prometheus"].url
        wait_until(lambda: _loaded_alerts(url) == _alert_names(), DEADLINE, "the alert rules")
        manager.register_targets("crashed", {"riverstream-learner": nothing_there})
        down = {("RiverstreamLearnerDown", nothing_there)}
        # evaluated after the registration was scraped: any other alert of a process down (the
        # learner or the API of nobody, the settings' default ports) would be there too
        wait_until(lambda: down <= _down_alerts(url), DEADLINE, "the learner down alerted",
                   detail=lambda: _down_alerts(url))  # fmt: skip
        assert _down_alerts(url) == down
        assert set(_targets(url)) == {("riverstream-learner", nothing_there)}

        manager.unregister_targets("crashed")
        wait_until(lambda: not _down_alerts(url), DEADLINE, "no alert once unregistered",
                   detail=lambda: _down_alerts(url))  # fmt: skip
    finally:
        manager.down(("prometheus",), purge=True)


def test_what_runs_registers_itself_and_a_learner_that_dies_alerts(
    settings: Settings, tmp_path: Path
) -> None:
    """`riverstream learn`, `serve` and `predict-worker` are scraped while they run (the local
    Prometheus of their state directory), unregistered when stopped; a learner killed stays
    registered, and its alert fires."""
    ports = {"learner_metrics_port": free_port(), "predict_metrics_port": free_port()}
    settings = settings.model_copy(update=ports)
    api_port = free_port()
    home = settings.state_dir / "prometheus"
    home.mkdir(parents=True)
    (home / PORTS_FILE).write_text(json.dumps({"prometheus": free_port()}))
    manager = ServiceManager(settings)
    commands = {
        "riverstream-learner": ["learn", "--model", "m=logreg"],
        "riverstream-api": ["serve", "--port", str(api_port)],
        "riverstream-predict-worker": ["predict-worker"],
    }
    wanted = {
        ("riverstream-learner", f"127.0.0.1:{ports['learner_metrics_port']}"),
        ("riverstream-api", f"127.0.0.1:{api_port}"),
        ("riverstream-predict-worker", f"127.0.0.1:{ports['predict_metrics_port']}"),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        url = manager.up(("prometheus",))["prometheus"].url

        def spawn(job: str) -> subprocess.Popen[bytes]:
            procs.append(spawn_cli(settings, commands[job], tmp_path / f"{job}.log"))
            return procs[-1]

        def healthy() -> set[tuple[str, str]]:
            return {target for target, health in _targets(url).items() if health == "up"}

        running = [spawn(job) for job in commands]
        wait_until(lambda: healthy() == wanted, 120, "each scraped", detail=_state(url, procs))
        pids = {target: labels.get(PID_LABEL) for target, (_, labels) in _discovered(url).items()}
        by_job = dict(zip(commands, running, strict=True))
        assert pids == {(job, at): str(by_job[job].pid) for job, at in wanted}  # its own
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        # stopped, each by its own handler; the API dies by the signal once uvicorn has stopped
        assert [proc.wait(timeout=60) for proc in running] == [0, -signal.SIGTERM, 0]
        wait_until(lambda: not _targets(url), DEADLINE, "each unregistered",
                   detail=lambda: _targets(url))  # fmt: skip
        assert not list((home / "targets").iterdir())
        # scraped down between their stop and their files' removal (pending, for less than the
        # rules' minute), then not at all: no alert
        wait_until(lambda: not _down_alerts(url), DEADLINE, "no alert of a process down",
                   detail=lambda: _down_alerts(url))  # fmt: skip

        learner = spawn("riverstream-learner")
        instance = next(i for job, i in wanted if job == "riverstream-learner")
        wait_until(lambda: _targets(url).get(("riverstream-learner", instance)) == "up", 120,
                   "the learner scraped again", detail=_state(url, procs))  # fmt: skip
        learner.kill()  # dies without its stop: still registered, down
        learner.wait(timeout=30)
        wait_until(lambda: _down_alerts(url) == {("RiverstreamLearnerDown", instance)},
                   DEADLINE, "the learner down alerted", detail=lambda: _down_alerts(url))  # fmt: skip
    finally:
        for proc in procs:
            stop_process(proc)
        manager.down(("prometheus",), purge=True)


def _state(url: str, procs: list[subprocess.Popen[bytes]]) -> Callable[[], object]:
    """What a wait for targets shows when it gives up: the targets, and which process ended."""
    return lambda: (_targets(url), [proc.poll() for proc in procs])

"""The local Prometheus scrapes what riverstream registers and evaluates the alert rules.

Its configuration used to scrape nothing (``targets: []``, no rule files), so locally the alerts
never evaluated and `riverstream report` always fell back to the trace. Now `up` writes the
scrape jobs that the alert rules name, each reading its targets from files that Prometheus
re-reads by itself (file-based discovery), registers the settings' default ports, and loads
``observability/prometheus/alerts.yml``; a state directory of an older riverstream gets the new
configuration at the next `up`, reloaded in place when Prometheus already runs.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from observability import alerts
from schemas.settings import Settings
from stream.dev.ports import PORTS_FILE
from stream.dev.services import ServiceManager, free_port, prometheus_config
from tests.support.waiting import wait_until

DEADLINE = 30.0  # seconds: scrapes and rule evaluations are every second here


def _api(url: str, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(f"{url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


def _alert_names() -> set[str]:
    return {rule["alert"] for group in yaml.safe_load(alerts.PATH.read_text())["groups"]
            for rule in group["rules"]}  # fmt: skip


def _loaded_alerts(url: str) -> set[str]:
    groups = _api(url, "/api/v1/rules?type=alert")["data"]["groups"]
    return {rule["name"] for group in groups for rule in group["rules"]}


def _targets(url: str) -> dict[tuple[str, str], str]:
    """(job, instance) → health of every active target."""
    found = _api(url, "/api/v1/targets?state=active")["data"]["activeTargets"]
    return {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in found}


def test_registered_targets_are_scraped_and_the_alert_rules_loaded(tmp_path: Path) -> None:
    home = tmp_path / "prometheus"
    home.mkdir()
    (home / PORTS_FILE).write_text(json.dumps({"prometheus": free_port()}))
    # the configuration an older `services up` left in this state directory: it scrapes nothing
    stale = prometheus_config([])
    (home / "prometheus.yml").write_text(stale)
    manager = ServiceManager(Settings(state_dir=tmp_path))
    registry = CollectorRegistry()
    Gauge("riverstream_learner_up", "A learner's exporter, for the test.", registry=registry).set(1)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    expected = _alert_names()
    try:
        url = manager.up(("prometheus",))["prometheus"].url
        wait_until(lambda: _loaded_alerts(url) == expected, DEADLINE, "the alert rules",
                   detail=lambda: _loaded_alerts(url))  # fmt: skip
        # the learner's and the API's default ports of the settings (a prediction worker is
        # optional: scraped where one is registered, so no alert fires for one nobody runs)
        defaults = {
            ("riverstream-learner", "127.0.0.1:9108"),
            ("riverstream-api", "127.0.0.1:8000"),
        }
        wait_until(lambda: defaults <= set(_targets(url)), DEADLINE, "the default targets",
                   detail=lambda: _targets(url))  # fmt: skip
        assert set(_targets(url)) == defaults

        # a process on a port of its own (as the demo's), registered while Prometheus runs
        probe = ("riverstream-learner", f"127.0.0.1:{port}")
        manager.register_targets("probe", {"riverstream-learner": probe[1]})
        wait_until(lambda: _targets(url).get(probe) == "up", DEADLINE, "the probe scraped",
                   detail=lambda: _targets(url))  # fmt: skip
        query = f"/api/v1/query?query=riverstream_learner_up%7Binstance%3D%22{probe[1]}%22%7D"
        wait_until(lambda: _api(url, query)["data"]["result"], DEADLINE, "its metric stored")
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

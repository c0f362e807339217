"""Alert rules are up to date, valid for promtool, and unit-tested firing and silent."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from observability import alerts

PROM_DIR = alerts.PATH.parent


def _promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus)"
    return subprocess.run(
        [promtool, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=60
    )


def test_committed_rules_match_the_generator():
    assert alerts.main(["--check"]) == 0, "run: python -m observability.alerts"


def test_promtool_check_rules():
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alerts.ALERTS)} rules found" in result.stdout


def test_promtool_check_config():
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules():
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent():
    text = (PROM_DIR / "alerts_test.yml").read_text()
    blocks = re.split(r"\n\s+- eval_time:", text)[1:]
    firing: set[str] = set()
    silent: set[str] = set()
    for block in blocks:
        found = re.search(r"alertname: (\w+)", block)
        assert found is not None
        name = found.group(1)
        (silent if "exp_alerts: []" in block else firing).add(name)
    names = {a.name for a in alerts.ALERTS}
    assert names == firing, names ^ firing
    assert names == silent, names ^ silent


def test_names_are_unique_and_prefixed():
    names = [a.name for a in alerts.ALERTS]
    assert len(names) == len(set(names))
    assert all(n.startswith("Riverstream") for n in names)


def test_the_alerts_that_nothing_is_scraped_are_a_group_of_their_own():
    """`absent` alerts fire where no learner or API is scraped at all: the local Prometheus of
    `riverstream services up`, which scrapes only what was started, leaves their group out
    (tests/stream/dev/test_services_prometheus.py); no other alert uses `absent`."""
    groups = yaml.safe_load(alerts.PATH.read_text())["groups"]
    names = {group["name"]: {rule["alert"] for rule in group["rules"]} for group in groups}
    assert names[alerts.ABSENT_GROUP] == {"RiverstreamLearnerAbsent", "RiverstreamServingAbsent"}
    assert all("absent(" not in a.expr for a in alerts.ALERTS if a.group != alerts.ABSENT_GROUP)

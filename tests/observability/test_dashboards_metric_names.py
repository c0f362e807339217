"""Every metric a dashboard or an alert mentions is exported, and names follow conventions."""

from __future__ import annotations

import re

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from observability import alerts, dashboards

NAME = re.compile(r"\briverstream_[a-z0-9_]+")


def _exported(*metrics) -> set[str]:
    names: set[str] = set()
    for m in metrics:
        for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
            names.update(s.name for s in family.samples)
    return names


def _referenced() -> set[str]:
    exprs = [e for _, _, e in dashboards.panel_queries()]
    exprs += [a.expr for a in alerts.ALERTS] + [s for a in alerts.ALERTS for s in a.signals]
    for uid in dashboards.DASHBOARDS:
        for v in dashboards.build(uid)["templating"]["list"]:
            exprs.append(v.get("query", "") if isinstance(v.get("query"), str) else "")
    return {n for e in exprs for n in NAME.findall(e)}


def test_every_referenced_metric_is_exported(learner_metrics, serving_metrics, worker_metrics):
    referenced = _referenced()
    missing = referenced - _exported(learner_metrics, serving_metrics, worker_metrics)
    assert not missing, f"queries mention metrics nobody exports: {sorted(missing)}"
    assert len(referenced) > 20


def test_every_exported_metric_is_on_a_dashboard(learner_metrics, serving_metrics, worker_metrics):
    referenced = {re.sub(r"_(bucket|sum|count)$", "", n) for n in _referenced()}
    families = set()
    for m in (learner_metrics, serving_metrics, worker_metrics):
        for family in m.registry.collect():
            families.add(family.name + ("_total" if family.type == "counter" else ""))
    assert families - referenced == set()


def test_naming_conventions(learner_metrics, serving_metrics, worker_metrics):
    for m in (learner_metrics, serving_metrics, worker_metrics):
        for family in m.registry.collect():
            assert family.name.startswith("riverstream_"), family.name
            if family.type == "counter":
                assert family.samples[0].name.endswith("_total"), family.name
            if family.type == "histogram":
                assert family.name.endswith("_seconds"), family.name
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                assert set(sample.labels) <= {
                    "topic", "partition", "reason", "outcome", "model", "metric", "route",
                    "status", "le", "challenger", "graph", "shadow", "version",
                }, sample  # fmt: skip

"""Observability as code: Grafana dashboards, Prometheus alert rules, a PNG report."""

"""Serving metrics add up across worker processes (prometheus-client multiprocess mode)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from serving import telemetry
from tests.support.cluster import stop_all

REPO = Path(__file__).resolve().parents[2]

WORKER = """
import sys
from serving.telemetry import get_metrics
i = int(sys.argv[1])
m = get_metrics()
for _ in range(10 * (i + 1)):
    m.observe_request("/models/{name}/predict", "lr", 200, 0.002)
m.observe_request("/models/{name}/predict", "lr", 500, 0.3)
m.snapshot_swapped("lr", version=5 + i, snapshot_timestamp=1000.0 + i, load_seconds=0.01)
m.snapshot_refused("lr", "bad_signature")
"""


def _samples(body: bytes) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counts_add_up_across_processes(tmp_path, monkeypatch):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO), "PATH": ""}
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(i)], env=env, cwd=REPO)
        for i in range(3)
    ]
    try:
        assert [w.wait(timeout=60) for w in workers] == [0, 0, 0]
    finally:
        stop_all(workers)  # still running when a wait timed out

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    body, content_type = telemetry.metrics_response_bytes()
    assert content_type.startswith("text/plain")
    s = _samples(body)
    route = ("route", "/models/{name}/predict")
    ok = (("model", "lr"), route, ("status", "200"))
    assert s[("riverstream_http_requests_total", ok)] == 10 + 20 + 30
    assert s[("riverstream_http_requests_total", (("model", "lr"), route, ("status", "500")))] == 3
    key = (("model", "lr"), route)
    assert s[("riverstream_http_request_duration_seconds_count", key)] == 63
    assert s[("riverstream_http_request_duration_seconds_bucket", (("le", "0.25"), *key))] == 60
    assert s[("riverstream_model_swaps_total", (("model", "lr"),))] == 3
    assert (
        s[("riverstream_snapshots_refused_total", (("model", "lr"), ("reason", "bad_signature")))]
        == 3
    )
    assert s[("riverstream_snapshot_load_seconds_count", (("model", "lr"),))] == 3
    # gauges: the version every live worker has reached, and the oldest snapshot served
    assert s[("riverstream_model_version", (("model", "lr"),))] == 5
    assert s[("riverstream_model_snapshot_timestamp_seconds", (("model", "lr"),))] == 1000.0


def test_dead_workers_gauges_can_be_dropped(tmp_path, monkeypatch):
    from prometheus_client.multiprocess import mark_process_dead

    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO), "PATH": ""}
    pids = []
    for i in range(2):
        p = subprocess.Popen([sys.executable, "-c", WORKER, str(i)], env=env, cwd=REPO)
        try:
            assert p.wait(timeout=60) == 0
        finally:
            stop_all([p])  # still running when the wait timed out
        pids.append(p.pid)
    mark_process_dead(pids[0], str(tmp_path))  # the worker serving version 5 is gone
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    s = _samples(telemetry.metrics_response_bytes()[0])
    assert s[("riverstream_model_version", (("model", "lr"),))] == 6
    assert s[("riverstream_model_swaps_total", (("model", "lr"),))] == 2  # counters keep history


def test_single_process_uses_the_default_registry(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    telemetry.get_metrics().observe_request("/health", "none", 200, 0.001)
    body, _ = telemetry.metrics_response_bytes()
    assert b'riverstream_http_requests_total{model="none",route="/health",status="200"}' in body

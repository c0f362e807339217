"""Against the real Prometheus: every panel query and alert signal returns finite values.

A learner exporter (in this process) and an API exporter (a child process in multiprocess
mode) keep updating every metric while Prometheus scrapes them each second. This proves the
PromQL against real exposition; the replay with the real learner and API is the lead's
integration test, which can reuse `dashboards.panel_queries` and `alerts.ALERTS[*].signals`.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from observability import alerts, dashboards
from observability.report import build_report, ops_from_prometheus
from stream.dev.services import free_port
from stream.learner.telemetry import LearnerMetrics, start_http_server
from stream.predict.metrics import WorkerMetrics, serve_metrics
from tests.support.cluster import stop_all
from tests.support.metrics import touch_learner, touch_worker

REPO = Path(__file__).resolve().parents[2]

API_EXPORTER = """
import http.server, sys, time, threading
from serving.telemetry import get_metrics, metrics_response_bytes
from serving.graphs import GraphMetrics
m = get_metrics()
g = GraphMetrics.for_registry(m.registry)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body, ctype = metrics_response_bytes()
        self.send_response(200); self.send_header("Content-Type", ctype); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
n = 0
while True:  # healthy traffic: one 5xx in 1000 requests, far below the alert's 1 %
    now = time.time()
    for _ in range(100):
        m.observe_request("/models/{name}/predict", "lr", 200, 0.002)
    if n % 10 == 0:
        m.observe_request("/models/{name}/predict", "lr", 500, 0.004)
    n += 1
    m.snapshot_swapped("lr", version=7, snapshot_timestamp=now - 1, load_seconds=0.001)
    m.snapshot_refused("lr", "bad_signature")
    g.graph_swapped("fraud", 3)
    g.graph_refused("fraud", "invalid")
    shadow = {"graph": "fraud", "shadow": "root.shadow.shadows[0]"}
    for i in range(10):
        g.shadow_runs.labels(**shadow).inc()
        g.shadow_agreements.labels(**shadow).inc(i % 2)
        g.shadow_duration_seconds.labels(**shadow).observe(1e-4)
    g.shadow_errors.labels(**shadow, reason="TypeError").inc()
    g.shadow_dropped.labels(graph="fraud").inc()
    time.sleep(0.1)
"""


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def _query(base: str, expr: str) -> list:
    body = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is required (Debian package prometheus)"
    tmp = tmp_path_factory.mktemp("prom")
    learner = LearnerMetrics(CollectorRegistry())
    server, _thread = start_http_server(0, learner.registry, addr="127.0.0.1")
    worker = WorkerMetrics(CollectorRegistry())  # a prediction worker's exporter
    worker_port = free_port()
    worker_server = serve_metrics(worker.registry, worker_port, "127.0.0.1")
    assert worker_server is not None
    stop = threading.Event()

    def feed():
        while not stop.is_set():
            touch_learner(learner, time.time())
            touch_worker(worker)
            stop.wait(0.1)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    api_port, prom_port = free_port(), free_port()
    (tmp / "mp").mkdir()
    api = subprocess.Popen(
        [sys.executable, "-c", API_EXPORTER, str(api_port)],
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp / "mp"), "PYTHONPATH": str(REPO), "PATH": ""},
        cwd=REPO,
    )
    config = (REPO / "observability" / "prometheus" / "prometheus.yml").read_text()
    config = config.replace("127.0.0.1:9108", f"127.0.0.1:{server.server_port}")
    config = config.replace("127.0.0.1:8000", f"127.0.0.1:{api_port}")
    config = config.replace("127.0.0.1:9109", f"127.0.0.1:{worker_port}")
    (tmp / "prometheus.yml").write_text(config)
    shutil.copy(alerts.PATH, tmp / "alerts.yml")
    prom = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{prom_port}"
    try:
        deadline = time.time() + 30
        # ready, the three targets scraped, and enough samples for rate() of each exporter's
        # own series over the panels' 30 s (a scrape times out after 1 s on a loaded machine:
        # the targets being up once is not enough)
        series = ("riverstream_http_requests_total", "riverstream_events_consumed_total")
        while True:
            try:
                ups = _query(base, "count_over_time(up[1m]) >= 3")
                if (
                    len(ups) == 3
                    and len(_query(base, "up == 1")) == 3
                    and all(_query(base, f"count_over_time({s}[30s]) >= 2") for s in series)
                ):
                    break
            except OSError:
                pass
            assert time.time() < deadline, "Prometheus did not scrape the three targets"
            time.sleep(0.5)
        yield base
    finally:
        stop.set()
        try:
            for p in (prom, api):
                p.terminate()
                p.wait(timeout=10)
        finally:
            stop_all([prom, api])  # what still runs when a wait timed out
        server.shutdown()
        server.server_close()
        worker_server[0].shutdown()
        worker_server[0].server_close()


def _assert_finite(base: str, expr: str) -> None:
    result = _query(base, expr)
    assert result, f"empty result: {expr}"
    for series in result:
        value = float(series["value"][1])
        assert math.isfinite(value), f"{expr} -> {series}"


@pytest.mark.integration
@pytest.mark.parametrize(
    "uid,title,expr", list(dashboards.panel_queries()), ids=lambda x: str(x)[:40]
)
def test_every_panel_query_returns_finite_values(prometheus, uid, title, expr):
    _assert_finite(prometheus, dashboards.substitute(expr, "30s"))


@pytest.mark.integration
@pytest.mark.parametrize("alert", alerts.ALERTS, ids=lambda a: a.name)
def test_every_alert_evaluates_and_its_signals_are_finite(prometheus, alert):
    _query(prometheus, alert.expr)  # valid and evaluable (silent is fine here)
    for signal in alert.signals:
        _assert_finite(prometheus, signal)


@pytest.mark.integration
def test_no_alert_fires_on_a_healthy_system(prometheus):
    groups = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in rules} == {a.name for a in alerts.ALERTS}
    assert all(r["health"] == "ok" for r in rules), rules  # each evaluated, without error
    # drift and dead letters are fed on purpose; everything else must be quiet, the serving
    # error alert included (the API exporter answers one request in 1000 with a 5xx)
    firing = {r["name"] for r in rules if r["state"] != "inactive"}
    assert firing <= {"RiverstreamDriftDetected", "RiverstreamDeadLetterRate"}, firing


@pytest.mark.integration
def test_report_from_prometheus(prometheus, tmp_path):
    now = time.time()
    ops = ops_from_prometheus(
        prometheus, now - 30, now, topics=["riverstream.features", "riverstream.labels"],
        models=["lr"], step=1, rate_window="30s",
    )  # fmt: skip
    assert ops.throughput and all(v >= 0 for _, v in ops.throughput)
    assert any(v == 3 for _, v in ops.lag)
    assert ops.latency["predict p99"]
    other = ops_from_prometheus(prometheus, now - 30, now, topics=["other.features"],
                                models=["other"], step=1, rate_window="30s")  # fmt: skip
    assert not other.lag and not other.latency["predict p99"]  # only the stream's series
    curve = [{"labels": 10, "event_time": 1.0, "wall_time": now - 5, "samples": 10,
              "metrics": {"Accuracy": 0.9}}]  # fmt: skip
    titles = [ax.get_title() for ax in build_report({"lr": curve}, ops).axes]
    assert "Consumer lag (from Prometheus)" in titles and "Latency (from Prometheus)" in titles

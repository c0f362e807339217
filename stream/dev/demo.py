"""`riverstream demo`: the whole system on one machine, in one command.

Starts the local services (unless they already run), a learner, the API, the console and a
prediction worker as child processes, opens the console in a browser when there is a display,
replays a River dataset with delayed labels while asking the API for predictions, shows the
progressive metric and the version being served live, prints a summary and stops what it started
(``keep=True`` leaves it running). The learning curve is traced every ``len(dataset) /
CURVE_POINTS`` labels, so that the console and ``riverstream report`` draw a few hundred points
whatever the dataset.

The three serving architectures, briefly: the API's answers during the replay (online,
synchronous: ``POST /v1/models/model/predict``, with their latency as the client measured it),
then requests through Kafka to the ``predict-worker`` and a batch ``score``
(`stream.dev.demo_architectures`).
"""

from __future__ import annotations

import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from learners.datasets import dataset_events
from schemas.errors import RiverstreamError
from schemas.events import FeatureEvent
from schemas.settings import Settings
from stream.dev.demo_architectures import OtherArchitectures, run_other_architectures
from stream.dev.services import SERVICES, ServiceManager, free_port, resolve, wait_until
from stream.kafka.publish import Publisher

CURVE_POINTS = 300
"""Learning-curve points the demo aims at, per model."""


@dataclass
class DemoOptions:
    dataset: str = "Phishing"
    model: str = "logreg"
    label_delay: str = "20"
    limit: int | None = None
    rate: float = 1500.0
    seed: int = 42
    keep: bool = False


@dataclass
class DemoSummary:
    events: int = 0
    samples_learned: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    versions_seen: list[int] = field(default_factory=list)
    predictions: int = 0
    failed_predictions: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    api_url: str = ""
    console_url: str = ""
    prometheus_url: str | None = None
    other: OtherArchitectures = field(default_factory=OtherArchitectures)

    def latency(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_environment()}


class Demo:
    def __init__(self, options: DemoOptions, log: Callable[[str], None] = lambda _m: None) -> None:
        self.options = options
        self.log = log
        self.children: list[subprocess.Popen[bytes]] = []
        self.started_services: tuple[str, ...] = ()
        self._logs: dict[str, Path] = {}

    def prepare(self) -> Settings:
        base = Settings()
        manager = ServiceManager(base, log=self.log)
        running = set(manager.running())
        self.started_services = tuple(s for s in SERVICES if s not in running)
        manager.up(SERVICES)
        tag = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        return resolve(base).model_copy(
            update={
                "topic_features": f"{tag}.features",
                "topic_labels": f"{tag}.labels",
                "topic_dlq": f"{tag}.dlq",
                "topic_requests": f"{tag}.requests",
                "topic_predictions": f"{tag}.predictions",
                "predict_group": f"{tag}.predict",
                "redis_prefix": tag,
                # The closed loop's routes are closed, as in production (see the README).
                "ingest_token": SecretStr(secrets.token_urlsafe(24)),
                "predict_token": SecretStr(secrets.token_urlsafe(24)),
                "snapshot_every_labels": 200,
                "snapshot_every_seconds": 1.0,
                "serve_port": free_port(),
                "console_port": free_port(),
                "learner_metrics_port": free_port(),
                "watermark_idle_grace": 1.0,
            }
        )

    def _spawn(self, settings: Settings, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log_path = Path(settings.state_dir) / f"{settings.redis_prefix}.{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stream", *args],
                env=_child_env(settings),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children.append(proc)
        self._logs[log_name] = log_path
        return proc

    def run(self, on_progress: Callable[[int, int, dict[str, Any]], None]) -> DemoSummary:
        o = self.options
        settings = self.prepare()
        events = list(
            dataset_events(o.dataset, label_delay=o.label_delay, limit=o.limit, seed=o.seed)
        )
        features = [e for e in events if isinstance(e, FeatureEvent)]
        every = max(1, len(features) // CURVE_POINTS)
        settings = settings.model_copy(update={"trace_every_labels": every})
        summary = DemoSummary(events=len(events), prometheus_url=settings.prometheus_url)
        api = f"http://127.0.0.1:{settings.serve_port}"
        summary.api_url = api
        name = "model"
        learner = self._spawn(settings, ["learn", "--model", f"{name}={o.model}"], "learner")
        self._spawn(settings, ["serve", "--port", str(settings.serve_port)], "api")
        summary.console_url = f"http://127.0.0.1:{settings.console_port}/"
        token = settings.predict_token.get_secret_value() if settings.predict_token else ""
        client = httpx.Client(base_url=api, timeout=5, headers={"Authorization": f"Bearer {token}"})
        try:
            wait_until(lambda: client.get("/healthz").status_code == 200, 60, "the API")
            # started once the API answers: three processes importing River at once on a small
            # machine slow each other down
            self._spawn(settings, ["console", "--port", str(settings.console_port)], "console")
            wait_until(lambda: _answers(summary.console_url + "healthz"), 60, "the console")
            self.log(f"console: {summary.console_url}")
            # joins its consumer group and follows the model while the replay runs
            self._spawn(settings, ["predict-worker", "--report-every", "0.5"], "predict-worker")
            if _has_display():
                webbrowser.open(summary.console_url)
            stop = threading.Event()
            publisher_done = threading.Event()
            published = [0]

            def publish() -> None:
                publisher = Publisher(settings)
                try:
                    publisher.publish_events(
                        events,
                        rate=o.rate,
                        progress=lambda n: published.__setitem__(0, published[0] + n),
                    )
                finally:
                    publisher.close()
                    publisher_done.set()

            thread = threading.Thread(target=publish, daemon=True)
            thread.start()
            i = 0
            info: dict[str, Any] = {}
            deadline = time.monotonic() + max(120.0, 3 * len(events) / o.rate)
            while not stop.is_set() and time.monotonic() < deadline:
                info = self._poll_model(client, name, summary)
                x = features[i % len(features)].features
                i += 1
                start = time.perf_counter()
                try:
                    response = client.post(f"/v1/models/{name}/predict", json={"features": x})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if info:  # predictions count once a model is being served
                    summary.predictions += 1
                    summary.latencies_ms.append((time.perf_counter() - start) * 1000)
                    summary.failed_predictions += int(not ok)
                on_progress(published[0], len(events), info)
                if publisher_done.is_set() and info.get("samples_learned", 0) >= len(features):
                    break
                time.sleep(0.02)  # pacing the demo's own requests, not synchronisation
            thread.join(timeout=30)
            info = self._poll_model(client, name, summary)
            summary.samples_learned = int(info.get("samples_learned", 0))
            summary.metrics = dict(info.get("metrics", {}))
            if learner.poll() is not None:
                raise RiverstreamError(
                    f"the learner stopped unexpectedly; its log ends with:\n{self._tail('learner')}"
                )
            run_other_architectures(
                settings, client, name, features, summary.other, children=self.children,
                worker_log=self._logs["predict-worker"], tail=self._tail,
            )  # fmt: skip
            return summary
        finally:
            client.close()
            if not o.keep:
                self.stop()

    def _tail(self, name: str, lines: int = 30) -> str:
        path = self._logs.get(name)
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _poll_model(self, client: httpx.Client, name: str, summary: DemoSummary) -> dict[str, Any]:
        try:
            response = client.get(f"/v1/models/{name}")
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            return {}
        info: dict[str, Any] = response.json()
        version = info.get("version")
        if version is not None and (
            not summary.versions_seen or summary.versions_seen[-1] != version
        ):
            summary.versions_seen.append(int(version))
        return info

    def stop(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.children:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.started_services:
            ServiceManager(Settings()).down(self.started_services)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _has_display() -> bool:
    """A graphical browser can be opened (never a text browser taking over the terminal)."""
    return sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def describe(summary: DemoSummary) -> list[str]:
    other = summary.other
    metric = ", ".join(f"{k} {v:.4f}" for k, v in summary.metrics.items()) or "n/a"
    p50 = summary.latency(0.5)
    p99 = summary.latency(0.99)
    mean = statistics.fmean(summary.latencies_ms) if summary.latencies_ms else float("nan")
    waits = sorted(other.async_latencies_ms) or [float("nan")]
    return [
        f"events published      {summary.events}",
        f"samples learned       {summary.samples_learned}",
        f"progressive metric    {metric}",
        f"versions served       {len(summary.versions_seen)} "
        f"(first {summary.versions_seen[:1]}, last {summary.versions_seen[-1:]})",
        f"predictions asked     {summary.predictions} ({summary.failed_predictions} failed)",
        f"latency (client)      p50 {p50:.2f} ms, p99 {p99:.2f} ms, mean {mean:.2f} ms",
        "serving architectures",
        f"online, synchronous   {summary.predictions} answers over HTTP "
        f"({summary.failed_predictions} failed), p50 {p50:.2f} ms",
        f"asynchronous, Kafka   {other.async_answered} of {other.async_requests} requests "
        f"answered by the predict-worker",
        f"                      versions {other.async_versions}, request → answer p50 "
        f"{waits[len(waits) // 2]:.1f} ms",
        f"batch, score          {other.batch_scored} rows scored ({other.batch_rejected} "
        f"rejected), versions {other.batch_versions}",
        f"                      into {other.batch_output}",
        f"                      and Redis: {other.batch_lookup}",
        f"console               {summary.console_url}",
    ]


__all__ = ["Demo", "DemoOptions", "DemoSummary", "describe"]

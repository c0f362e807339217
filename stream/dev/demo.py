"""`riverstream demo`: the whole system on one machine, in one command.

Starts the local services (unless they already run), a learner, the API, the console and a
prediction worker as child processes, opens the console in a browser when there is a display,
replays a River dataset with delayed labels while asking the API for predictions, shows the
progressive metric and the version being served live, prints a summary and stops what it started
(``keep=True`` leaves it running). The learning curve is traced every ``len(dataset) /
CURVE_POINTS`` labels, so that the console and ``riverstream report`` draw a few hundred points
whatever the dataset.

The three serving architectures, briefly, once the replay is over:

- **online, synchronous**: the API's answers during the replay (``POST /v1/models/model/
  predict``), with their latency as the client measured it;
- **asynchronous, through Kafka**: `ASYNC_REQUESTS` requests written to the requests topic by a
  plain producer and their answers read back from the predictions topic, answered by the
  ``predict-worker`` started beside the console (its status lines say when it has joined its
  group and loaded the model: the requests are sent then);
- **batch**: ``riverstream score`` over a JSON Lines file of `BATCH_ROWS` feature events,
  ``--into redis``, and one of its answers looked up through ``GET
  /v1/models/model/predictions/{id}``. It runs while the asynchronous requests travel.

Either one failing (an unanswered request, a rejected row, a lookup that does not return the
stored answer) fails the demo, with the worker's or `score`'s output.
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
import orjson
from pydantic import SecretStr

from learners.datasets import dataset_events
from schemas.errors import RiverstreamError
from schemas.events import FeatureEvent
from schemas.settings import Settings
from stream.dev.services import SERVICES, ServiceManager, free_port, resolve, wait_until
from stream.kafka.publish import Publisher

CURVE_POINTS = 300
"""Learning-curve points the demo aims at, per model."""
ASYNC_REQUESTS = 20
"""Requests the demo sends through Kafka to the prediction worker."""
BATCH_ROWS = 50
"""Feature events the demo scores with `riverstream score`."""
OTHER_ARCHITECTURES_SECONDS = 60.0
"""How long the asynchronous answers and the batch run may take together."""


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
    async_requests: int = 0
    async_answered: int = 0
    async_versions: list[int] = field(default_factory=list)
    async_latencies_ms: list[float] = field(default_factory=list)
    """Per answer: its ``answered_at`` minus its ``requested_at`` (the request's Kafka time)."""
    batch_scored: int = 0
    batch_rejected: int = 0
    batch_versions: list[int] = field(default_factory=list)
    batch_output: str = ""
    batch_lookup: str = ""

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
            self._other_architectures(settings, client, name, features, summary)
            return summary
        finally:
            client.close()
            if not o.keep:
                self.stop()

    def _other_architectures(
        self,
        settings: Settings,
        client: httpx.Client,
        name: str,
        features: list[FeatureEvent],
        summary: DemoSummary,
    ) -> None:
        """Batch scoring (a `score` process) while requests travel through Kafka to the worker."""
        state = Path(settings.state_dir)
        batch_in = state / f"{settings.redis_prefix}.batch.jsonl"
        batch_out = state / f"{settings.redis_prefix}.scores.jsonl"
        rows = features[:BATCH_ROWS]
        batch_in.write_bytes(
            b"".join(
                orjson.dumps({"id": e.id, "time": e.time, "features": e.features}) + b"\n"
                for e in rows
            )
        )
        scoring = subprocess.Popen(
            [sys.executable, "-m", "stream", "score", name, str(batch_in), "--out",
             str(batch_out), "--into", "redis"],
            env=_child_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.children.append(scoring)
        deadline = time.monotonic() + OTHER_ARCHITECTURES_SECONDS
        requests = [(f"demo-request-{i}", features[-1 - i].features) for i in range(ASYNC_REQUESTS)]
        summary.async_requests = len(requests)
        # the worker's status lines say when it owns partitions and serves the model: the
        # latencies measured are then the architecture's, not the worker's start
        worker_log = self._logs["predict-worker"]
        wait_until(
            lambda: _worker_ready(worker_log, name), OTHER_ARCHITECTURES_SECONDS, "the worker"
        )
        answers = _ask_through_kafka(settings, name, requests, deadline)
        summary.async_answered = len(answers)
        summary.async_versions = sorted(
            {v for body in answers.values() for v in body["versions"].values()}
        )
        summary.async_latencies_ms = [
            (body["answered_at"] - body["requested_at"]) * 1e3 for body in answers.values()
        ]
        if len(answers) < len(requests):
            raise RiverstreamError(
                f"the predict-worker answered {len(answers)} of {len(requests)} requests within "
                f"{OTHER_ARCHITECTURES_SECONDS:.0f} s; its log ends with:\n"
                f"{self._tail('predict-worker')}"
            )
        try:
            output, _ = scoring.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            scoring.kill()
            output, _ = scoring.communicate()
        text = output.decode(errors="replace")
        reports = [line for line in text.splitlines() if line.startswith('{"target"')]
        if scoring.returncode != 0 or not reports:
            raise RiverstreamError(f"`riverstream score` failed ({scoring.returncode}):\n{text}")
        report = orjson.loads(reports[-1])
        summary.batch_scored = int(report["scored"])
        summary.batch_rejected = int(report["rejected"])
        summary.batch_versions = sorted(report["versions"].values())
        summary.batch_output = batch_out.name
        stored = orjson.loads(batch_out.read_bytes().splitlines()[0])
        route = f"/v1/models/{name}/predictions/{stored['id']}"
        looked_up = client.get(route)
        if looked_up.status_code != 200 or looked_up.json()["prediction"] != stored["prediction"]:
            raise RiverstreamError(
                f"GET {route} answered {looked_up.status_code}: {looked_up.text[:300]}"
            )
        summary.batch_lookup = f"GET {route} → 200"

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


def _worker_ready(log: Path, model: str) -> bool:
    """Whether the prediction worker's last status line says it owns partitions and serves
    ``model``."""
    lines = [s for s in log.read_text(errors="replace").splitlines() if s.startswith("{")]
    if not lines:
        return False
    status = orjson.loads(lines[-1])
    return bool(status.get("assigned")) and model in status.get("serving", {})


def _ask_through_kafka(
    settings: Settings,
    target: str,
    requests: list[tuple[str, dict[str, Any]]],
    deadline: float,
) -> dict[str, dict[str, Any]]:
    """Write ``requests`` (id, features) to the requests topic with a plain producer and read
    the answers from the predictions topic until each id is answered or ``deadline``: id →
    answer."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from stream.kafka.client import create_topics, partitions_for

    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap  # resolved by `prepare`
    create_topics(bootstrap, settings.topics())
    topic = settings.topic_predictions
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"{settings.predict_group}.reader",
         "enable.auto.commit": False}
    )  # fmt: skip
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1})
    answers: dict[str, dict[str, Any]] = {}
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions_for(bootstrap, topic)])
        for request_id, x in requests:
            body = orjson.dumps({"id": request_id, "target": target, "features": x})
            producer.produce(settings.topic_requests, body, request_id.encode())
        producer.flush(10)
        sent = {request_id for request_id, _ in requests}
        while len(answers) < len(requests) and time.monotonic() < deadline:
            for m in consumer.consume(100, 0.2):
                if m.error() is not None:
                    continue
                answer = orjson.loads(m.value() or b"{}")
                request_id = answer.get("id")
                if request_id in sent:
                    answers.setdefault(request_id, answer)
    finally:
        consumer.close()
    return answers


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
    metric = ", ".join(f"{k} {v:.4f}" for k, v in summary.metrics.items()) or "n/a"
    p50 = summary.latency(0.5)
    p99 = summary.latency(0.99)
    mean = statistics.fmean(summary.latencies_ms) if summary.latencies_ms else float("nan")
    waits = sorted(summary.async_latencies_ms) or [float("nan")]
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
        f"asynchronous, Kafka   {summary.async_answered} of {summary.async_requests} requests "
        f"answered by the predict-worker",
        f"                      versions {summary.async_versions}, request → answer p50 "
        f"{waits[len(waits) // 2]:.1f} ms",
        f"batch, score          {summary.batch_scored} rows scored ({summary.batch_rejected} "
        f"rejected), versions {summary.batch_versions}",
        f"                      into {summary.batch_output}",
        f"                      and Redis: {summary.batch_lookup}",
        f"console               {summary.console_url}",
    ]


__all__ = ["Demo", "DemoOptions", "DemoSummary", "describe"]

"""The demo's other two serving architectures, once the replay is over (see `stream.dev.demo`).

- **asynchronous, through Kafka**: `ASYNC_REQUESTS` requests written to the requests topic by a
  plain producer and their answers read back from the predictions topic, answered by the
  ``predict-worker`` the demo started (its status lines say when it has joined its group and
  loaded the model: the requests are sent then);
- **batch**: ``riverstream score`` over a JSON Lines file of `BATCH_ROWS` feature events,
  ``--into redis``, and one of its answers looked up through ``GET
  /v1/models/model/predictions/{id}``. It runs while the asynchronous requests travel, started
  as the demo starts its other processes (`Spawn`: recorded, stopped with them).

Either one failing (an unanswered request, a rejected row, a lookup that does not return the
stored answer) raises `RiverstreamError` with the worker's or `score`'s output.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from schemas.errors import RiverstreamError
from schemas.events import FeatureEvent
from schemas.settings import Settings
from stream.dev.services import wait_until

ASYNC_REQUESTS = 20
"""Requests the demo sends through Kafka to the prediction worker."""
BATCH_ROWS = 50
"""Feature events the demo scores with `riverstream score`."""
OTHER_ARCHITECTURES_SECONDS = 60.0
"""How long the asynchronous answers and the batch run may take together."""
Spawn = Callable[[list[str], str], tuple[subprocess.Popen[bytes], Path]]
"""Starts ``riverstream ARGS`` as one of the demo's processes, named (``"score"``): the process,
and its log (its output and errors)."""


@dataclass
class OtherArchitectures:
    """What the demo saw of the asynchronous and batch architectures."""

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


def run_other_architectures(
    settings: Settings,
    client: httpx.Client,
    name: str,
    features: list[FeatureEvent],
    summary: OtherArchitectures,
    *,
    spawn: Spawn,
    worker_log: Path,
    tail: Callable[[str], str],
) -> None:
    """Fill ``summary`` from batch scoring (a `score` process, started by ``spawn``) while
    requests travel through Kafka to the worker (whose log is ``worker_log``; ``tail(name)``
    ends a child's log)."""
    state = Path(settings.state_dir)
    batch_in = state / f"{settings.redis_prefix}.batch.jsonl"
    batch_out = state / f"{settings.redis_prefix}.scores.jsonl"
    rows = features[:BATCH_ROWS]
    batch_in.write_bytes(
        b"".join(
            orjson.dumps({"id": e.id, "time": e.time, "features": e.features}) + b"\n" for e in rows
        )
    )
    scoring, score_log = spawn(
        ["score", name, str(batch_in), "--out", str(batch_out), "--into", "redis"], "score"
    )
    deadline = time.monotonic() + OTHER_ARCHITECTURES_SECONDS
    requests = [(f"demo-request-{i}", features[-1 - i].features) for i in range(ASYNC_REQUESTS)]
    summary.async_requests = len(requests)
    # the worker's status lines say when it owns partitions and serves the model: the
    # latencies measured are then the architecture's, not the worker's start
    wait_until(lambda: _worker_ready(worker_log, name), OTHER_ARCHITECTURES_SECONDS, "the worker")
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
            f"{tail('predict-worker')}"
        )
    try:
        scoring.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        scoring.kill()
        scoring.wait()
    text = score_log.read_text(errors="replace")
    reports = [line for line in text.splitlines() if line.startswith('{"target"')]
    if scoring.returncode != 0 or not reports:
        raise RiverstreamError(f"`riverstream score` failed ({scoring.returncode}):\n{text}")
    report = orjson.loads(reports[-1])
    summary.batch_scored = int(report["scored"])
    summary.batch_rejected = int(report["rejected"])
    summary.batch_versions = sorted(report["versions"].values())
    summary.batch_output = str(batch_out.resolve())
    stored = orjson.loads(batch_out.read_bytes().splitlines()[0])
    route = f"/v1/models/{name}/predictions/{stored['id']}"
    looked_up = client.get(route)
    if looked_up.status_code != 200 or looked_up.json()["prediction"] != stored["prediction"]:
        raise RiverstreamError(
            f"GET {route} answered {looked_up.status_code}: {looked_up.text[:300]}"
        )
    summary.batch_lookup = f"GET {route} → 200"


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

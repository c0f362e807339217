"""Helpers of the tests that kill nodes of replicated infrastructure under a running learner
and API (`tests/stream/store/test_connect_failover.py`, `tests/stream/dev/test_cluster.py`)."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from river import evaluate, metrics

from learners.datasets import load_dataset, river_delay
from learners.specs import build_estimator
from schemas.settings import Settings
from stream.kafka.security import PLAINTEXT, KafkaSecurity
from tests.support.pipeline import final_model
from tests.support.waiting import wait_until


def learned(port: int, model: str = "lr", host: str = "127.0.0.1") -> float:
    """The learner's ``riverstream_samples_learned_total`` for ``model`` (0 if unreadable)."""
    try:
        text = httpx.get(f"http://{host}:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    name = f'riverstream_samples_learned_total{{model="{model}"}}'
    match = re.search("^" + re.escape(name) + r" ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_learned(
    port: int,
    n: int,
    timeout: float,
    what: str,
    log: Path,
    model: str = "lr",
    host: str = "127.0.0.1",
) -> None:
    """Wait until the learner at ``port`` reports ``n`` samples of ``model`` learned; a timeout
    shows the count reached and the tail of ``log``."""
    wait_until(
        lambda: learned(port, model, host) >= n,
        timeout,
        what,
        log=log,
        detail=lambda: learned(port, model, host),
    )


class SteadyClient:
    """Predictions one after another on a thread, each on a fresh connection, until stopped:
    the statuses and the versions that answered."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: Counter[int] = Counter()
        self.versions: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for i in itertools.count():
            if self._stop.is_set():
                return
            body = {"features": {"salary": 20_000.0 + i, "age": 40 + i % 30, "elevel": i % 5}}
            try:
                response = httpx.post(self.url, json=body, timeout=15)
            except httpx.HTTPError:
                self.statuses[0] += 1
                continue
            self.statuses[response.status_code] += 1
            if response.status_code == 200:
                self.versions.append(int(response.json()["version"]))

    def start(self) -> SteadyClient:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def failures(self) -> dict[int, int]:
        """Answers that were no answer (0) or a server error (5xx)."""
        return {code: n for code, n in self.statuses.items() if code == 0 or code >= 500}


def assert_equal_to_river(
    s: Settings,
    dataset: str,
    limit: int,
    delay: int,
    seed: int,
    spec: str = "logreg",
    name: str = "lr",
) -> None:
    """The final snapshot of ``name`` equals River's progressive validation on the same data."""
    model: Any = build_estimator(spec)  # a classifier: River's Estimator declares no predict
    accuracy = metrics.Accuracy()
    data: Any = itertools.islice(load_dataset(dataset, seed=seed), limit)  # River: Hashable keys
    evaluate.progressive_val_score(data, model, accuracy, delay=river_delay(delay, seed))
    ours = final_model(s, name)
    assert ours.samples_learned == limit, name
    assert ours.metric_values() == {"Accuracy": accuracy.get()}
    for x, _ in itertools.islice(load_dataset(dataset, seed=seed), 0, limit, 1499):
        assert ours.model.predict_proba_one(x) == model.predict_proba_one(x)


def messages(bootstrap: str, topic: str, security: KafkaSecurity = PLAINTEXT) -> int:
    """Messages in ``topic``: the sum of its partitions' end offsets (they start at 0)."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    conf: dict[str, str | int | float | bool] = {
        "bootstrap.servers": bootstrap, **security.librdkafka()
    }  # fmt: skip
    meta = AdminClient(conf).list_topics(topic, timeout=10)
    consumer = Consumer({**conf, "group.id": "rs-test-count"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.topics[topic].partitions
        )
    finally:
        consumer.close()


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (an API's uvicorn workers, a learner's snapshot
    child), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop what still runs of ``procs`` (the processes a test started) and their children:
    SIGTERM (uvicorn then stops its workers), kill -9 after 20 s; every one reaped."""
    for proc in procs:
        if proc.poll() is not None:
            continue
        family = children(proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for pid in family:  # only if still the python child it was (pids are reused)
            with contextlib.suppress(OSError):
                if b"python" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)

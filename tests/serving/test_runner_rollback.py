"""Promises 3 and 5 across processes: the real learner feeds `riverstream serve --workers 2`;
versions swap under load in every worker, and `riverstream snapshots rollback` moves every
worker to the target.

Requests come from four client threads, each on a fresh connection, so the kernel hands them
to either worker. Which worker answered is read from outside, with no help from the server:
while the connection is still open after the response, the server's end of it (API port →
client port) is found in ``/proc/net/tcp`` and its socket in one worker's file descriptors
(`tests.support.procs.socket_owner`).

1. A learner (logistic regression on Phishing) is started on the first stretch and the API
   once it has a version; under load, the rest of the stream is published in stretches, so the
   learner writes new versions which both workers pick up while answering. Each worker's
   versions never go backwards, and each serves several.
2. Once everything is learned, an early version is the rollback target. From the moment the
   rollback is committed (its history entry), every request sent more than `BOUND` later, to
   either worker, is answered by the target; both workers answer such requests. The polling
   fallback is set far above the bound (``RIVERSTREAM_SERVE_POLL_SECONDS=30``), so the
   notification is what moves them.
3. Throughout: no failed request (every status 200, no connection error), and every answer
   equals the answer of the model version it names, loaded from Redis as the learner wrote
   it. The learner continues from the target: the version it writes on applying the rollback
   has the target's sample count.

Timings on the shared 2-CPU machine (load average 5-10): 39-48 s, 10 s of it the bound.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from learners.datasets import dataset_events, load_dataset
from schemas.events import LabelEvent
from schemas.settings import Settings
from stream.dev.services import free_port
from stream.learner.runtime import snapshot_store
from stream.registry.registry import Registry
from tests.conftest import settings_env
from tests.support import procs
from tests.support.cluster import stop_all
from tests.support.pipeline import fast, publish, spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Seconds from the rollback's commit to every worker answering with the target: what is
# promised on a loaded CI machine (2 workers under 4 clients on 2 shared cores), where the
# notification, the load from Redis and the swap each wait for a CPU; seconds, not minutes.
BOUND = 10.0
CLIENTS = 4
PROBES = [x for x, _ in load_dataset("Phishing", limit=40)]


@dataclass(frozen=True)
class Answer:
    sent: float  # time.time() when the request was sent
    done: float  # ... and when its answer had been read
    status: int
    pid: int | None  # the worker that held the connection
    probe: int
    body: dict[str, Any]


class Load(threading.Thread):
    """Predictions one after another, each on a new connection, until stopped."""

    def __init__(self, port: int, workers: list[int], offset: int) -> None:
        super().__init__(name=f"load-{offset}")
        self.port, self.workers, self.offset = port, workers, offset
        self.stop = threading.Event()
        self.answers: list[Answer] = []
        self.errors: list[str] = []

    def run(self) -> None:
        n = self.offset
        while not self.stop.is_set():
            n += 1
            probe = n % len(PROBES)
            body = json.dumps({"features": PROBES[probe]})
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            sent = time.time()
            try:
                conn.request("POST", "/v1/models/lr/predict", body,
                             {"Content-Type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                data = response.read()
                done = time.time()
                assert conn.sock is not None
                client_port = conn.sock.getsockname()[1]
                pid = procs.socket_owner(self.port, client_port, self.workers)
                parsed = json.loads(data) if response.status == 200 else {"raw": data.decode()}
                self.answers.append(Answer(sent, done, response.status, pid, probe, parsed))
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))
            finally:
                conn.close()


def recent(loads: list[Load]) -> str:
    """The last answers by worker and version, and the errors: what a timeout reports."""
    last = sorted(answers(loads), key=lambda a: a.sent)[-200:]
    seen = Counter((a.pid, a.status, a.body.get("version")) for a in last)
    return (
        f"(last answers by (pid, status, version): {dict(seen)}; errors: "
        + str([e for load in loads for e in load.errors][:5])
        + ")"
    )


def ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def expected_answer(model: Any, x: dict[str, Any]) -> dict[str, Any]:
    """The body the API gives for ``x`` from ``model`` (JSON object keys for the classes)."""
    proba = model.predict_proba_one(x)
    return {
        "prediction": model.predict_one(x),
        "probabilities": {json.dumps(k): v for k, v in proba.items()},
    }


def test_swaps_and_a_rollback_reach_every_worker_of_a_real_api(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    s = fast(
        settings, snapshot_every_labels=100, snapshot_every_seconds=0.3, serve_poll_seconds=30.0,
        watermark_idle_grace=1.0,
    )  # fmt: skip
    store = snapshot_store(s)
    events = list(dataset_events("Phishing", label_delay=5))
    stretches = [events[i * len(events) // 5 : (i + 1) * len(events) // 5] for i in range(5)]
    publish(s, stretches[0])
    learner = spawn_cli(s, ["learn", "--model", "lr=logreg"], tmp_path / "learner.log")
    api = spawn_cli(s, ["serve", "--workers", "2", "--port", str(port)], tmp_path / "api.log")
    loads: list[Load] = []
    try:
        wait_until(lambda: store.latest_version("lr"), 90, "the learner's first version")
        wait_until(lambda: ready(port) or api.poll() is not None, 90, "the API")
        assert api.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
        # uvicorn's workers: children started by multiprocessing's spawn (another child of the
        # API process is multiprocessing's resource tracker)
        workers = [c for c in procs.children(api.pid) if "spawn_main" in " ".join(procs.cmdline(c))]
        assert len(workers) == 2, [procs.cmdline(c) for c in procs.children(api.pid)]
        loads = [Load(port, workers, offset) for offset in range(CLIENTS)]
        for load in loads:
            load.start()

        # 1. swaps under load: each stretch makes the learner write versions, and both workers
        # answer with the newest before the next stretch comes
        for k in range(1, len(stretches)):
            publish(s, stretches[k])
            labels = sum(
                isinstance(e, LabelEvent) for stretch in stretches[: k + 1] for e in stretch
            )
            latest = wait_until(
                cast(Callable[[], Any], lambda n=labels: learned(store, n)),
                120,
                f"stretch {k} to be learned",
            )
            wait_until(
                cast(
                    Callable[[], Any],
                    lambda v=latest: all(serves(answers(loads), w, v) for w in workers),
                ),
                60,
                f"both workers {workers} to serve v{latest}",
                detail=lambda: recent(loads),
            )

        # 2. the rollback, under the same load
        target = store.versions("lr")[1]
        rollback = subprocess.run(
            [sys.executable, "-m", "stream", "snapshots", "rollback", "lr", "--to", str(target),
             "--resume", "skip", "--reason", "multi-worker test"],
            env=settings_env(s), capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert rollback.returncode == 0, rollback.stderr
        [entry] = [e for e in Registry(store).history("lr") if e.action == "rollback"]
        committed = entry.time
        wait_until(
            lambda: all(len(after(answers(loads), w, committed + BOUND)) >= 20 for w in workers),
            BOUND + 60,
            "both workers to answer after the bound",
        )
        assert store.serving_version("lr") == target  # (until the learner's final snapshot)
    finally:
        for load in loads:
            load.stop.set()
        for load in loads:
            load.join(timeout=30)
        for proc in (learner, api):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        try:
            assert learner.wait(timeout=60) == 0, (tmp_path / "learner.log").read_text()[-3000:]
            api.wait(timeout=30)
        finally:
            stop_all([learner, api])  # what still runs when a wait timed out or failed

    everything = answers(loads)
    assert [e for load in loads for e in load.errors] == []
    assert {a.status for a in everything} == {200}, [a for a in everything if a.status != 200][:5]
    assert {a.pid for a in everything} == set(workers) and len(workers) == 2

    # Each answer from a version is the answer of that version, as the learner wrote it. (An
    # answer naming more samples than its version holds came from a live update continuing
    # it, between versions: not stored as a version, so not compared here.)
    states = {v: store.load_model("lr", v)[0] for v in {a.body["version"] for a in everything}}
    from_versions = [a for a in everything if not live(a, states)]
    assert len(from_versions) >= len(everything) / 2, "most answers come from versions"
    for a in from_versions:
        want = expected_answer(states[a.body["version"]].model, PROBES[a.probe])
        assert {k: a.body[k] for k in want} == want, (a, want)

    before = [a for a in everything if a.done < committed]
    for w in workers:
        mine = [a for a in before if a.pid == w]
        assert never_backwards(mine), f"worker {w} went backwards"
        versions = {a.body["version"] for a in mine}
        assert len(versions) >= 3, f"worker {w} swapped too little under load: {versions}"
        late = after(everything, w, committed + BOUND)
        assert {a.body["version"] for a in late} == {target}, (w, target, late[:3])
        assert not [a for a in late if live(a, states)], "the target itself answers"

    # The learner continued from the target: its next version holds the target's samples.
    target_samples = store.meta("lr", target).samples_learned
    newer = [v for v in store.versions("lr") if v > latest]
    assert newer and store.meta("lr", newer[0]).samples_learned == target_samples


def learned(store: Any, labels: int) -> int | None:
    """The latest version, once it has learned ``labels`` samples."""
    latest = store.latest_version("lr")
    return latest if latest and store.meta("lr", latest).samples_learned == labels else None


def serves(everything: list[Answer], worker: int, version: int) -> bool:
    return any(a.pid == worker and a.body.get("version") == version for a in everything)


def never_backwards(mine: list[Answer]) -> bool:
    """No answer names an older version than one the same worker gave before it was sent (an
    answer finished before another was sent was processed before it; requests in flight
    together may be processed in any order)."""
    finished = sorted(mine, key=lambda a: a.done)
    newest, i = 0, 0
    for a in sorted(mine, key=lambda a: a.sent):
        while i < len(finished) and finished[i].done < a.sent:
            newest = max(newest, finished[i].body["version"])
            i += 1
        if a.body["version"] < newest:
            return False
    return True


def live(answer: Answer, states: dict[int, Any]) -> bool:
    """Answered by a live update: more samples than the version it names."""
    samples = answer.body.get("samples_learned")
    return samples is not None and samples != states[answer.body["version"]].samples_learned


def answers(loads: list[Load]) -> list[Answer]:
    return [a for load in loads for a in list(load.answers)]


def after(everything: list[Answer], worker: int, moment: float) -> list[Answer]:
    return [a for a in everything if a.pid == worker and a.sent >= moment]

"""Promise 2 as a matrix: kill -9 the learner at each step of the checkpoint protocol, chosen by
watching Redis from outside; the end equals an uninterrupted run.

For each seed and both snapshot modes (in-process: ``RIVERSTREAM_SNAPSHOT_FORK_MIN_BYTES``
large, so every snapshot is written by the learner's writer thread; forked: 0, every snapshot
is written by a child) one stream, synth.Agrawal with random label delays, two models (``lr`` logistic
regression, ``tree`` Hoeffding tree) and malformed events of every kind mixed in, is learned
by a sequence of learner processes, each killed with SIGKILL at one moment:

1. **before the first checkpoint**: the first stretch holds features only (no label can be
   learned, so no snapshot can be due); the learner is killed once its /metrics count every
   record of it as consumed, and Redis is checked to hold no checkpoint.
2. **right after a version becomes visible**: Redis' MONITOR shows the transaction that
   writes the checkpoint's metadata; the kill follows at once, while the writer is still
   between that transaction and its notification and promotion, or just past them (the first
   version of that process).
3. **during restore and seek** (right after a restart): with seeds 1 and 3 the kill comes at
   the learner's first read of the checkpoint, its later commands held by a `RedisGate` (see
   step 4) so that the restore cannot go further; with seed 2 at its last restore read (the
   tree's chunks), so that it dies unpickling, seeking or in its first poll. Either way the
   feed shows that it never reached its loop (no look at the command list).
4. **while a version's chunks exist but its meta does not**: this learner talks to Redis
   through a `RedisGate` that forwards the chunks of a new version and holds the transaction
   that follows them (its ``WATCH``), so it never reaches Redis; the process that sent them is
   identified (the learner itself in-process: its writer thread; its child when forked) and killed; Redis then
   holds that chunk and no meta of the version. (Watching MONITOR and then pausing Redis
   raced the writer: once in about ten CI runs its transaction landed first.)

A last learner reads to the end. Then: metrics, ``samples_learned`` and predictions on probes
of both models equal `river.evaluate.progressive_val_score` over the same stream (the
uninterrupted run: the equivalence tests show the learner equals it), every malformed event is
in the dead-letter topic at least once with its reason, and after every kill no process of
this learner (its snapshot child included, found by its environment) is left running.

Timings on the shared 2-CPU machine: 16-22 s per case at a load average of ≈ 5, 30-60 s at
≈ 10 (six cases: 2-5 minutes). Five learner processes per case; most of it is their start-up.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
from river import evaluate, metrics
from river.base.typing import Dataset

from learners.datasets import dataset_events, load_dataset, river_delay
from learners.specs import build_estimator
from schemas.events import FeatureEvent, LabelEvent
from schemas.settings import Settings
from stream.dev.services import free_port
from stream.kafka.client import read_all
from stream.kafka.publish import Publisher
from stream.store.keys import RedisKeys
from tests.support import procs
from tests.support.pipeline import fast, final_model, spawn_cli
from tests.support.redis_gate import RedisGate
from tests.support.redis_monitor import Command, RedisMonitor
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMIT, DELAY = 2_000, "random:20-80"
MODES = {"in-process": 10**12, "forked": 0}  # RIVERSTREAM_SNAPSHOT_FORK_MIN_BYTES
MODELS = ["--model", "lr=logreg", "--model", "tree=hoeffding"]
METRICS = ["--metric", "Accuracy", "--metric", "lr:ROCAUC"]
EXPECTED_METRICS = {"lr": ("Accuracy", "ROCAUC"), "tree": ("Accuracy",)}
PREFIX_ENV = "RIVERSTREAM_REDIS_PREFIX"
LOOP_COMMANDS = {"LRANGE", "LTRIM", "INCR", "SET", "MULTI", "EXEC", "EVALSHA", "PUBLISH"}


@dataclass(frozen=True)
class Bad:
    """A malformed record: where it goes, its key and bytes, and the reason it must get."""

    topic: str  # "features" or "labels"
    key: bytes
    value: bytes | None
    reason: str


def malformed(seed: int) -> list[Bad]:
    tag = f"m{seed}"
    return [
        Bad("features", b"b1", f'{{"id": "{tag}-1", "time": '.encode(), "bad_json"),
        Bad("labels", b"b2", f'{{"id": "{tag}-2", "time": 1, "label": [1]}}'.encode(), "schema"),
        Bad(
            "features",
            b"b3",
            f'{{"id": "{tag}-3", "time": 1e999, "features": {{}}}}'.encode(),
            "not_finite",
        ),
        Bad("labels", f"{tag}-tombstone".encode(), None, "no_value"),
        Bad("features", b"b5", b'{"id": "", "time": 5, "features": {"x": 1}}', "empty_id"),
        Bad("features", b"b6", b"\x00\x01" + tag.encode(), "bad_json"),
    ]


def stream(seed: int) -> list[list[Any]]:
    """The events and malformed records in publishing order, in four stretches: the features
    before the first label, then three thirds of the rest (each learner that must write
    versions gets a new one, so that it has labels to learn whatever its predecessor did)."""
    events: list[Any] = list(
        dataset_events("synth.Agrawal", label_delay=DELAY, limit=LIMIT, seed=seed)
    )
    first_label = next(i for i, e in enumerate(events) if isinstance(e, LabelEvent))
    head, tail = events[:first_label], events[first_label:]
    bad = malformed(seed)
    head[len(head) // 3 : len(head) // 3] = [bad[0]]
    head[2 * len(head) // 3 : 2 * len(head) // 3] = [bad[1]]
    for n, item in enumerate(bad[2:], 1):
        at = n * len(tail) // (len(bad) - 1)
        tail[at:at] = [item]
    thirds = [tail[i * len(tail) // 3 : (i + 1) * len(tail) // 3] for i in range(3)]
    return [head, *thirds]


@functools.cache
def river_reference(seed: int) -> dict[str, tuple[dict[str, float], Any]]:
    """Each model's metrics and final model under `progressive_val_score`, uninterrupted."""
    out = {}
    for name, spec in (("lr", "logreg"), ("tree", "hoeffding")):
        values, model = {}, None
        for metric in EXPECTED_METRICS[name]:  # one River run per metric, same model each time
            model = build_estimator(spec)
            data = cast(Dataset, load_dataset("synth.Agrawal", limit=LIMIT, seed=seed))
            score = getattr(metrics, metric)()
            evaluate.progressive_val_score(data, model, score, delay=river_delay(DELAY, seed))
            values[metric] = score.get()
        out[name] = (values, model)
    return out


class Run:
    """The learner processes of one case, and what each kill found."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.s = settings
        self.log = tmp_path / "learner.log"
        self.keys = RedisKeys(settings.redis_prefix)
        assert settings.redis_url
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.landed: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.publisher = Publisher(settings)

    def spawn(self, settings: Settings | None = None, *, idle: bool = False) -> subprocess.Popen:
        args = ["learn", *MODELS, *METRICS, *(["--exit-when-idle", "1"] if idle else [])]
        proc = spawn_cli(settings or self.s, args, self.log)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Kill what a failed case left running; close the clients."""
        self.publisher.close()
        self.redis.close()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    def publish(self, items: list[Any]) -> None:
        """Events and malformed records, in this order."""
        publisher = self.publisher
        for item in items:
            if isinstance(item, Bad):
                topic = publisher.topic("features" if item.topic == "features" else "labels")
                publisher.producer.send(topic, item.key, item.value)
            else:
                publisher.send_event(item)
        publisher.producer.flush()
        assert publisher.producer.failed == 0, publisher.producer.errors

    def kill(self, proc: subprocess.Popen) -> list[int]:
        """SIGKILL the learner; its children at that moment, all gone before this returns."""
        kids = procs.children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        wait_until(
            lambda: not procs.live_with_env(PREFIX_ENV, self.s.redis_prefix),
            10,
            "every process of this learner (snapshot child included) to be gone",
        )
        return kids

    def checkpoint(self) -> int:
        raw = self.redis.get(self.keys.checkpoint_latest)
        return 0 if raw is None else int(raw)

    def ours(self, command: Command) -> bool:
        return command.key.startswith(self.s.redis_prefix + ":")

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


def consumed(port: int) -> dict[str, float]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    pattern = r'^riverstream_events_consumed_total\{topic="([^"]+)"\} ([0-9.e+]+)$'
    return {t: float(v) for t, v in re.findall(pattern, text, re.MULTILINE)}


def kill_before_first_checkpoint(run: Run, head: list[Any]) -> None:
    port = free_port()
    features = sum(
        isinstance(i, FeatureEvent) or (isinstance(i, Bad) and i.topic == "features") for i in head
    )
    proc = run.spawn(run.s.model_copy(update={"learner_metrics_port": port}))
    wait_until(
        lambda: consumed(port).get(run.s.topic_features, 0) >= features or proc.poll() is not None,
        90,
        "the first stretch to be consumed",
    )
    assert proc.poll() is None, run.tail()
    assert run.checkpoint() == 0
    run.kill(proc)
    assert run.checkpoint() == 0  # it had read the whole stretch: nothing was written
    run.landed.append("before the first checkpoint")


def kill_right_after_visible(run: Run, nth: int) -> None:
    """Kill as the ``nth`` checkpoint of this process becomes visible (its EXEC)."""
    written: list[int] = []

    def visible(c: Command) -> bool:
        m = re.fullmatch(re.escape(run.s.redis_prefix) + r":checkpoint:(\d+):meta", c.key)
        if c.name == "SET" and m:
            written.append(int(m.group(1)))
        return len(written) == nth

    with RedisMonitor(run.s.redis_url or "") as feed:
        proc = run.spawn()
        feed.wait_for(
            visible, 90, f"checkpoint #{nth} of this process", going_on=lambda: proc.poll() is None
        )
        run.kill(proc)
    version = written[-1]
    for name in ("lr", "tree"):
        assert run.redis.exists(run.keys.meta(name, version))
    assert run.checkpoint() == version
    run.landed.append(f"right after v{version} became visible")


def kill_during_restore(run: Run, at_last_read: bool) -> None:
    """Kill at the restore's first read (later ones held) or at its last one."""
    restoring_from = run.checkpoint()
    assert restoring_from > 0
    last = run.keys.chunk("tree", restoring_from, 0)

    def trigger(c: Command) -> bool:
        if at_last_read:
            return c.name == "MGET" and c.key == last
        return c.name == "GET" and c.key == run.keys.checkpoint_latest

    with RedisMonitor(run.s.redis_url or "") as feed:
        if at_last_read:  # it goes on: unpickling, seeking, perhaps its first poll
            proc = run.spawn()
            feed.wait_for(trigger, 90, "the restore", going_on=lambda: proc.poll() is None)
            run.kill(proc)
        else:  # the restore cannot read on: the gate holds every later command
            with RedisGate(run.s.redis_url or "", trigger, lambda c: True) as gate:
                proc = run.spawn(run.s.model_copy(update={"redis_url": gate.url}))
                wait_until(
                    lambda: gate.held_ports or proc.poll() is not None,
                    90,
                    "the restore's second read",
                )
                assert proc.poll() is None, run.tail()
                run.kill(proc)
            feed.wait_for(trigger, 30, "the restore's first read in the feed")
        after = [c for c in feed.drain() if run.ours(c)]
    assert not [c for c in after if c.name in LOOP_COMMANDS], after  # never reached its loop
    assert run.checkpoint() == restoring_from
    where = "at its last read (unpickling, seeking)" if at_last_read else "at its first read"
    run.landed.append(f"during the restore of v{restoring_from}, {where}")


def kill_mid_write(run: Run, nth: int, forked: bool) -> None:
    """Kill while the ``nth`` version of this process has chunks and no meta yet."""
    versions: list[int] = []
    pattern = re.escape(run.s.redis_prefix) + r":model:lr:v:(\d+):chunk:0"

    def first_chunk(c: Command) -> bool:
        m = re.fullmatch(pattern, c.key)
        if c.name == "SET" and m:
            versions.append(int(m.group(1)))
        return len(versions) == nth

    def making_visible(c: Command) -> bool:  # the transaction after the chunks (or a meta)
        return c.name in {"WATCH", "MULTI", "EXEC"} or (c.name == "SET" and c.key.endswith(":meta"))

    with RedisGate(run.s.redis_url or "", first_chunk, making_visible) as gate:
        proc = run.spawn(run.s.model_copy(update={"redis_url": gate.url}))
        wait_until(
            lambda: gate.armed_port in gate.held_ports or proc.poll() is not None,
            90,
            f"version #{nth} of this process to reach its transaction",
        )
        assert proc.poll() is None, run.tail()
        writer = procs.socket_owner(
            gate.armed_port, gate.port, [proc.pid, *procs.children(proc.pid)]
        )
        kids = run.kill(proc)
    version = versions[-1]
    if forked:
        assert writer in kids and writer != proc.pid, (writer, proc.pid, kids)
    else:
        assert writer == proc.pid, (writer, proc.pid, kids)
    assert run.redis.exists(run.keys.chunk("lr", version, 0))
    for name in ("lr", "tree"):
        assert not run.redis.exists(run.keys.meta(name, version))
    assert not run.redis.exists(run.keys.checkpoint_meta(version))
    assert run.checkpoint() < version
    who = "its snapshot child" if forked else "the learner itself"
    run.landed.append(f"mid-write of v{version} (chunks, no meta; written by {who})")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_every_step_changes_nothing(
    settings: Settings, tmp_path: Path, seed: int, mode: str
) -> None:
    s = fast(
        settings,
        snapshot_every_labels=150,
        snapshot_every_seconds=0.5,
        consumer_batch=200,
        snapshot_fork_min_bytes=MODES[mode],
        snapshot_chunk_bytes=2048,
        learner_metrics_port=0,
    )
    forked = mode == "forked"
    nth = 1  # the first version of each process (written by its child, or its writer thread)
    head, *thirds = stream(seed)
    run = Run(s, tmp_path)
    try:
        run.publish(head)
        kill_before_first_checkpoint(run, head)
        run.publish(thirds[0])
        kill_right_after_visible(run, nth)
        kill_during_restore(run, at_last_read=seed == 2)
        run.publish(thirds[1])
        kill_mid_write(run, nth, forked)
        run.publish(thirds[2])
        last = run.spawn(idle=True)
        assert last.wait(timeout=180) == 0, run.tail()
    finally:
        run.close()
    assert not procs.live_with_env(PREFIX_ENV, s.redis_prefix)
    assert len(run.landed) == 4, run.landed

    reference = river_reference(seed)
    probes = [
        x for x, _ in itertools.islice(load_dataset("synth.Agrawal", seed=seed), 0, LIMIT, 97)
    ]
    for name, (values, model) in reference.items():
        ours = final_model(s, name)
        assert ours.samples_learned == LIMIT, (name, run.landed)
        assert ours.metric_values() == values, (name, run.landed)
        for x in probes:
            assert ours.model.predict_proba_one(x) == model.predict_proba_one(x), name

    dead = read_all(s.kafka_bootstrap_servers or "", [s.topic_dlq])
    reasons = [(r.key, r.value, dict(r.headers)["rs.reason"].decode()) for r in dead]
    for bad in malformed(seed):
        assert (bad.key, bad.value, bad.reason) in reasons, (bad, reasons)

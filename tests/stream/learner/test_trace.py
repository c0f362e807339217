"""The learning curve (`stream.store.trace`) against the real Kafka and Redis: it is River's
progressive-validation curve, written only with the snapshots that cover it, identical after a
kill -9, rewound by a replay, and readable by label count
(the API's route: tests/serving/test_curve.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import cast

import httpx
from river import evaluate
from river.base.typing import Dataset

from learners.core import LearningCore
from learners.datasets import dataset_events, load_dataset, river_delay
from learners.specs import ModelSpec, build_metric
from schemas.settings import Settings
from stream.dev.services import free_port
from stream.learner.runtime import snapshot_store
from stream.registry.registry import Registry
from stream.store.trace import TracePoint
from stream.store.trace_reader import TraceReader
from tests.support.cluster import stop_all
from tests.support.pipeline import fast, learn, publish, spawn_cli
from tests.support.replay import feed_in_order
from tests.support.waiting import wait_until

EVERY = 25


def _river_curve(preset: str, delay: int, limit: int | None, step: int) -> list[tuple[int, float]]:
    """River's ``(label count, Accuracy)`` every ``step`` labels."""
    spec = ModelSpec("m", preset, ("Accuracy",))
    steps = evaluate.iter_progressive_val_score(
        cast(Dataset, load_dataset("Phishing", limit=limit)),
        spec.build(),
        build_metric("Accuracy"),
        delay=river_delay(delay),
        step=step,
    )
    return [(int(s["Step"]), s["Accuracy"].get()) for s in steps if s["Step"] % step == 0]


def _curve(points: list[TracePoint]) -> list[tuple[int, float | None]]:
    return [(p.labels, p.metrics["Accuracy"]) for p in points]


def test_the_trace_is_rivers_curve_for_every_model(settings: Settings) -> None:
    s = fast(settings, trace_every_labels=EVERY, snapshot_every_labels=110)
    publish(s, dataset_events("Phishing", label_delay=20, limit=600))
    specs = [
        ModelSpec("lr", "logreg", ("Accuracy",)),
        ModelSpec("tree", "hoeffding", ("Accuracy",)),
    ]
    learn(s, specs)
    reader = TraceReader(snapshot_store(s).client, snapshot_store(s).keys)
    for name, preset in (("lr", "logreg"), ("tree", "hoeffding")):
        points = reader.points(name)
        assert _curve(points) == _river_curve(preset, 20, 600, EVERY), name
        assert [p.samples for p in points] == [p.labels for p in points]
        times = [p.event_time for p in points]
        walls = [p.wall_time for p in points]
        assert times == sorted(times) and walls == sorted(walls)
        assert abs(walls[-1] - time.time()) < 120
    # paging by label count, as the console and the API do
    assert [p.labels for p in reader.points("lr", after=550)] == [575, 600]
    assert [p.labels for p in reader.points("lr", after=0, limit=2)] == [25, 50]


def _labels_joined(metrics_url: str) -> int:
    """Labels the learner has joined (and learned), from its /metrics (0 while it is not up)."""
    try:
        text = httpx.get(metrics_url, timeout=2).text
    except httpx.HTTPError:
        return 0
    found = re.search(
        r'^riverstream_join_events_total\{outcome="joined"\} ([0-9.e+]+)$', text, re.M
    )
    return int(float(found.group(1))) if found else 0


def test_points_appear_only_with_their_snapshot_and_a_kill_9_leaves_the_same_curve(
    settings: Settings, tmp_path: Path
) -> None:
    # One snapshot only (the first, as soon as labels are learned), until the final one: the
    # learner learns far past it, and none of those points may be visible.
    port = free_port()
    # An idle grace longer than a publish takes: no partition is taken for idle while the
    # second part is published (its events would be late, and the curve not River's).
    s = fast(
        settings, trace_every_labels=EVERY, snapshot_every_labels=1_000_000,
        snapshot_every_seconds=600.0, learner_metrics_port=port, watermark_idle_grace=3.0,
    )  # fmt: skip
    events = list(dataset_events("Phishing", label_delay=20))
    publish(s, [e for e in events if e.time < 60])  # 40 labels
    store = snapshot_store(s)
    reader = TraceReader(store.client, store.keys)
    log = tmp_path / "learner.log"
    learner = spawn_cli(s, ["learn", "--model", "lr=logreg", "--metric", "Accuracy"], log)
    try:
        first = wait_until(lambda: store.latest_version("lr"), 120, "the first version")
        covered = store.meta("lr", first).samples_learned
        assert 0 < covered <= 40
        publish(s, [e for e in events if 60 <= e.time < 500])  # up to 480 labels
        metrics = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: _labels_joined(metrics) == 480, 120, "480 labels learned")
        assert store.latest_version("lr") == first  # still the one snapshot
        before_kill = reader.points("lr")
        # only the points that snapshot covers: none of the 18 marks (50 ... 475) learned since
        assert [p.labels for p in before_kill] == list(range(EVERY, covered + 1, EVERY))
    finally:
        os.kill(learner.pid, signal.SIGKILL)
        learner.wait(timeout=30)
    assert reader.points("lr") == before_kill  # nothing written by a dying learner

    publish(s, [e for e in events if e.time >= 500])
    again = spawn_cli(
        s, ["learn", "--model", "lr=logreg", "--metric", "Accuracy", "--exit-when-idle", "1"], log
    )
    try:
        assert again.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        stop_all([again])  # still running when the wait timed out
    points = reader.points("lr")
    assert _curve(points) == _river_curve("logreg", 20, None, EVERY)  # no gap, no duplicate
    assert points[: len(before_kill)] == before_kill  # what was written stays as it was


def test_a_replay_rewinds_the_curve_and_an_exclusion_changes_what_follows(
    settings: Settings,
) -> None:
    s = fast(settings, trace_every_labels=EVERY, snapshot_every_labels=100)
    events = list(dataset_events("Phishing", label_delay=5))
    publish(s, events)
    spec = ModelSpec("lr", "logreg", ("Accuracy",))
    learn(s, [spec], use_fork=False)  # in-process snapshots: one every 100 labels
    store = snapshot_store(s)
    reader = TraceReader(store.client, store.keys)
    first = reader.points("lr")
    assert [p.labels for p in first] == list(range(EVERY, 1251, EVERY))

    # a version learned before the stretch excluded below (versions every 100 labels after
    # the first, which comes as soon as labels are learned)
    target = next(v for v in store.versions("lr") if store.meta("lr", v).samples_learned >= 300)
    at = store.meta("lr", target).samples_learned
    assert at < 600
    excluded = (700.0, 799.5)
    Registry(store).rollback(
        "lr", target, resume="replay", exclude=[excluded], reason="bad stretch"
    )
    learn(s, [spec])  # applies the command at start, replays, exits when idle again

    # What a learner that never saw the stretch marks (the same core, in one process).
    core = LearningCore([spec])
    core.trace_every = EVERY
    kept = [e for e in events if not excluded[0] <= e.time <= excluded[1]]
    feed_in_order(core, kept, batch=50)
    expected = [(m.labels, m.models["lr"][1]["Accuracy"]) for m in core.drain_marks()]

    points = reader.points("lr")
    assert _curve(points) == expected
    assert len({p.labels for p in points}) == len(points)  # no duplicate label count
    # up to the target, the points are those written the first time (same wall times)
    assert [p for p in points if p.labels <= at] == [p for p in first if p.labels <= at]
    # past it, the old timeline is gone: every later point was learned again
    old = {p.labels: p.wall_time for p in first}
    assert all(p.wall_time > old.get(p.labels, 0.0) for p in points if p.labels > at)
    lineage = json.loads(store.client.get(store.keys.trace_lineage("lr")) or b"[]")
    assert [start for start, _epoch in lineage] == [0, at]

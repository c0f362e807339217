"""Helpers for tests of the learner against the real Kafka and Redis."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from river import datasets

from learners.core import LearningCore
from learners.datasets import dataset_events
from learners.serialization import load_signed
from learners.specs import ModelSpec, build_estimator
from schemas.events import FeatureEvent, LabelEvent
from schemas.settings import Settings
from stream.kafka.client import EventProducer
from stream.kafka.publish import Publisher, PublishReport
from stream.kafka.security import kafka_security
from stream.learner.loop import Learner
from stream.learner.runtime import build_learner, snapshot_store
from tests.conftest import settings_env


def fast(settings: Settings, **changes: Any) -> Settings:
    """Settings for tests: a short idle grace so runs end quickly."""
    return settings.model_copy(update={"watermark_idle_grace": 0.2, **changes})


def publish(
    settings: Settings, events: Iterable[FeatureEvent | LabelEvent], *, at_once: bool = False
) -> PublishReport:
    """Publish ``events`` in the given order, then close the producer.

    ``at_once``: in one produce request, sent at the close (a minute of linger: at most 512 KiB
    per partition), for a learner that reads them live.
    Sent as they come (20 ms of linger), each request drains the partitions in turn while
    events are still being added, so a later request can carry a partition's events that are
    older than those an earlier one carried for another partition; should the next request
    come after the idle grace, those older events are late (the likely cause of a CI failure
    with a 0.2 s grace)."""
    producer = (
        EventProducer(
            settings.kafka_bootstrap_servers or "",
            linger_ms=60_000,
            security=kafka_security(settings),
        )
        if at_once
        else None
    )
    publisher = Publisher(settings, producer=producer)
    try:
        return publisher.publish_events(events)
    finally:
        publisher.close()


def replay(
    settings: Settings,
    dataset: str,
    delay: str | int,
    limit: int | None = None,
    seed: int | None = 1,
) -> PublishReport:
    return publish(settings, dataset_events(dataset, label_delay=delay, limit=limit, seed=seed))


def spawn_cli(
    settings: Settings, args: list[str], log: Path, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """``riverstream ARGS`` in a child process with ``settings``, its output appended to ``log``;
    ``prefix``: a command that runs it elsewhere (a host's ``ip netns exec NS``, which execs it:
    the pid is the CLI's)."""
    with log.open("ab") as handle:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "stream", *args],
            env=settings_env(settings), stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip


def learn(
    settings: Settings, specs: list[ModelSpec], *, use_fork: bool = True
) -> list[dict[str, Any]]:
    return run_to_end(build_learner(settings, specs, use_fork=use_fork))


def run_to_end(learner: Learner) -> list[dict[str, Any]]:
    """Run ``learner`` in this thread until its input is idle, then close its consumer."""
    try:
        return learner.run(exit_when_idle=0.5)
    finally:
        learner.source.close()


def phishing_logreg_after(n: int) -> Any:
    """River's ``logreg`` after the first ``n`` Phishing samples, learned in order."""
    model: Any = build_estimator("logreg")  # a classifier: River's Estimator declares no learn
    for x, y in list(datasets.Phishing())[:n]:
        model.learn_one(x, y)
    return model


def final_core(settings: Settings) -> LearningCore:
    """The learning core of the latest checkpoint (its join counters, its served metrics)."""
    checkpoint = snapshot_store(settings).latest_checkpoint()
    assert checkpoint is not None, "no checkpoint"
    _version, blob, _offsets = checkpoint
    core: LearningCore = load_signed(blob, settings.require_snapshot_key())["core"]
    return core


def final_model(settings: Settings, name: str) -> Any:
    store = snapshot_store(settings)
    version = store.latest_version(name)
    assert version is not None
    state, _meta = store.load_model(name, version)
    return state

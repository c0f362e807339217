"""Helpers for tests of the learner against the real Kafka and Redis."""

from __future__ import annotations

from typing import Any

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.publish import Publisher, PublishReport
from stream.runtime import build_learner, snapshot_store


def fast(settings: Settings, **changes: Any) -> Settings:
    """Settings for tests: a short idle grace so runs end quickly."""
    return settings.model_copy(update={"watermark_idle_grace": 0.2, **changes})


def replay(
    settings: Settings,
    dataset: str,
    delay: str | int,
    limit: int | None = None,
    seed: int | None = 1,
) -> PublishReport:
    publisher = Publisher(settings)
    try:
        events = dataset_events(dataset, label_delay=delay, limit=limit, seed=seed)
        return publisher.publish_events(events)
    finally:
        publisher.close()


def learn(
    settings: Settings, specs: list[ModelSpec], *, use_fork: bool = True
) -> list[dict[str, Any]]:
    learner = build_learner(settings, specs, use_fork=use_fork)
    try:
        return learner.run(exit_when_idle=0.5)
    finally:
        learner.source.close()


def final_model(settings: Settings, name: str) -> Any:
    store = snapshot_store(settings)
    version = store.latest_version(name)
    assert version is not None
    state, _meta = store.load_model(name, version)
    return state

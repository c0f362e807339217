"""Fixtures of the prediction tests: the test's settings with a consumer group of their own and
quick version polling, and a store opened with them (it replaces the kit's `store`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from schemas.settings import Settings
from stream.store.snapshots import SnapshotStore, open_store


@pytest.fixture
def predict_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"predict_group": f"{settings.redis_prefix}.predict", "serve_poll_seconds": 0.2}
    )


@pytest.fixture
def store(predict_settings: Settings) -> Iterator[SnapshotStore]:
    s = open_store(predict_settings)
    yield s
    s.client.close()

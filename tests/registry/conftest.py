"""Fixtures of the registry tests: a store and a registry under the test's own Redis prefix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from schemas.settings import Settings
from stream.learner.runtime import snapshot_store
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotStore


@pytest.fixture
def key(settings: Settings) -> bytes:
    return settings.require_snapshot_key()


@pytest.fixture
def store(settings: Settings) -> Iterator[SnapshotStore]:
    store = snapshot_store(settings)
    yield store
    store.client.close()


@pytest.fixture
def registry(store: SnapshotStore, key: bytes) -> Registry:
    return Registry(store, by="tester", signing_key=key)

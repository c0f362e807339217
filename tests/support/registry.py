"""The registry tests' fixtures (a store and a registry under the test's own Redis prefix, from
the `settings` fixture), writing versions without Kafka, and looking at every key of a prefix.

The fixtures are imported by the conftest files of tests/stream/registry and tests/stream/cli."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from learners.serialization import dump_signed
from schemas.records import HistoryEntry
from schemas.settings import Settings
from stream.learner.runtime import snapshot_store
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotMeta, SnapshotStore


def write_version(
    store: SnapshotStore,
    key: bytes,
    models: Mapping[str, Mapping[str, float]] | None = None,
    samples: int = 100,
) -> int:
    """One version of each model (default: ``m`` with Accuracy 0.5), with a checkpoint."""
    models = {"m": {"Accuracy": 0.5}} if models is None else models
    version = store.next_version()
    written = {}
    for name, metrics in models.items():
        blob = dump_signed({"model": name, "version": version}, key)
        meta = SnapshotMeta.describe(
            name, blob, kind="classifier", spec="logreg", samples_learned=samples,
            metrics=metrics, offsets={"features:0": version},
        )  # fmt: skip
        written[name] = (blob, meta)
    offsets = {"features:0": version, "labels:0": version}
    store.write(version, written, dump_signed({"join": version}, key), offsets)
    return version


def dump_all(store: SnapshotStore) -> dict[bytes, bytes | None]:
    """Every key under the store's prefix with its serialized value (Redis DUMP)."""
    client = store.client
    return {k: client.dump(k) for k in sorted(client.scan_iter(f"{store.keys.prefix}:*"))}


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


@pytest.fixture
def history_parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes | str]:
    """Every history entry parsed from now on (`HistoryEntry.from_json` spied), in order."""
    parsed: list[bytes | str] = []
    from_json = HistoryEntry.from_json

    def counting(raw: bytes | str) -> HistoryEntry:
        parsed.append(raw)
        return from_json(raw)

    monkeypatch.setattr(HistoryEntry, "from_json", counting)
    return parsed

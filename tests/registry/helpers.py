"""Writing versions without Kafka, and looking at every key of a test's prefix."""

from __future__ import annotations

from collections.abc import Mapping

from learners.serialization import dump_signed
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

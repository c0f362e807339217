"""Snapshots written by the learner: metadata, chunking, and refusal of tampered state."""

from __future__ import annotations

import pytest
import redis

from learners.specs import ModelSpec
from schemas.errors import SnapshotIntegrityError
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from tests.stream.helpers import fast, learn, replay


def test_metadata_and_chunking(settings: Settings) -> None:
    s = fast(settings, snapshot_chunk_bytes=4096)
    replay(s, "Phishing", 3)
    learn(s, [ModelSpec("tree", "hoeffding")])
    store = snapshot_store(s)
    version = store.latest_version("tree")
    meta = store.meta("tree", version)
    assert meta.samples_learned == 1250 and meta.kind == "classifier" and meta.spec == "hoeffding"
    assert set(meta.metrics) == {"Accuracy"} and 0.5 < meta.metrics["Accuracy"] < 1
    assert sum(meta.offsets.values()) == 2500  # every record of both topics covered
    assert meta.size > 4096 and meta.chunks == -(-meta.size // 4096)
    assert meta.river_version and meta.python_version and len(meta.sha256) == 64
    state, _ = store.load_model("tree", version)
    assert state.samples_learned == 1250


def test_tampered_checkpoint_is_refused(settings: Settings) -> None:
    s = fast(settings)
    replay(s, "Phishing", 3, limit=100)
    learn(s, [ModelSpec("lr", "logreg")])
    client = redis.Redis.from_url(s.redis_url)
    store = snapshot_store(s)
    version, _, _ = store.latest_checkpoint()
    key = store.keys.checkpoint_chunk(version, 0)
    blob = bytearray(client.get(key))
    blob[-1] ^= 0xFF
    client.set(key, bytes(blob))
    with pytest.raises(SnapshotIntegrityError):
        build_learner(s, [ModelSpec("lr", "logreg")])

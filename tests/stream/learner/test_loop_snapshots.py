"""Snapshots written by the learner: metadata, chunking, and refusal of tampered state."""

from __future__ import annotations

from typing import cast

import pytest
import redis

from learners.specs import ModelSpec
from schemas.errors import SnapshotIntegrityError
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from tests.support.pipeline import fast, learn, replay


def test_metadata_and_chunking(settings: Settings) -> None:
    s = fast(settings, snapshot_chunk_bytes=4096)
    replay(s, "Phishing", 3)
    learn(s, [ModelSpec("tree", "hoeffding")])
    store = snapshot_store(s)
    version = store.latest_version("tree")
    assert version is not None
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
    assert s.redis_url is not None
    client = redis.Redis.from_url(s.redis_url)
    store = snapshot_store(s)
    latest = store.latest_checkpoint()
    assert latest is not None
    version, _, _ = latest
    key = store.keys.checkpoint_chunk(version, 0)
    blob = bytearray(cast(bytes, client.get(key)))
    blob[-1] ^= 0xFF
    client.set(key, bytes(blob))
    with pytest.raises(SnapshotIntegrityError):
        build_learner(s, [ModelSpec("lr", "logreg")])


def test_a_version_every_n_labels_and_the_first_one_at_once(settings: Settings) -> None:
    """``RIVERSTREAM_SNAPSHOT_EVERY_LABELS=100`` over the 1 250 labels of Phishing read from a
    backlog gives a version at every 100 labels (it used to be checked once per poll batch of
    up to 10 000 records: 2 versions); and the first version does not wait for
    ``RIVERSTREAM_SNAPSHOT_EVERY_SECONDS``."""
    s = fast(settings, snapshot_every_labels=100, snapshot_every_seconds=3600)
    replay(s, "Phishing", 3)
    learn(s, [ModelSpec("lr", "logreg")], use_fork=False)
    store = snapshot_store(s)
    samples = [store.meta("lr", v).samples_learned for v in store.versions("lr")]
    assert samples[:12] == [100 * (i + 1) for i in range(12)]
    assert samples[-1] == 1250  # and the final snapshot of what is left


def test_the_first_version_comes_as_soon_as_labels_are_learned(settings: Settings) -> None:
    s = fast(settings, snapshot_every_labels=10_000, snapshot_every_seconds=3600)
    replay(s, "Phishing", 3, limit=300)
    learner = build_learner(s, [ModelSpec("lr", "logreg")], use_fork=False)
    try:
        thread_result: list = []
        import threading

        worker = threading.Thread(target=lambda: thread_result.extend(learner.run()))
        worker.start()
        store = snapshot_store(s)
        import time

        deadline = time.monotonic() + 30
        while store.latest_version("lr") is None:
            assert time.monotonic() < deadline, "no first version within 30 s"
            time.sleep(0.05)
        first = store.meta("lr", cast(int, store.latest_version("lr")))
        assert 0 < first.samples_learned < 300  # before the 10 000 labels / 3 600 s cadence
    finally:
        learner.stop()
        worker.join(timeout=60)
        learner.source.close()

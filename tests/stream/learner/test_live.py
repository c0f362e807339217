"""The learner's live updates between versions (`stream.learner.live`), against the real Kafka
and Redis: published while versions keep their cadence, each one exactly River's model after
the samples it names, and never written while the rule refuses them."""

from __future__ import annotations

import threading
from typing import Any

from river import datasets

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from stream.registry.registry import Registry
from stream.store.live import LiveStore
from tests.support.pipeline import fast, phishing_logreg_after, publish, replay
from tests.support.waiting import wait_until

N = 500
STEP = 100


class LiveRecorder:
    """Observer: after each batch, loads the live update if it changed (version, samples,
    model)."""

    def __init__(self, live: LiveStore) -> None:
        self.live = live
        self.seen: list[tuple[int, int, Any]] = []

    def after_batch(self, learner: Any, records: list[Any]) -> None:
        pointers = self.live.pointers("lr")
        meta = pointers.live
        if meta is None or (self.seen and self.seen[-1][1] == meta.samples_learned):
            return
        loaded = self.live.load("lr")
        assert loaded is not None
        state, meta = loaded
        self.seen.append((meta.version, meta.samples_learned, state.model))

    def snapshot(self, learner: Any, result: Any) -> None:
        pass

    def close(self) -> None:
        pass


def test_live_updates_follow_the_learner_between_versions_exactly(settings: Settings) -> None:
    """The stream arrives in steps of 100 samples; after each, serving could load a live update
    of exactly those samples (River's model after them), while the versions keep their
    cadence (here: the first one, then none for an hour). The idle grace is 1 s, not `fast`'s
    0.2 s: a partition whose part of a step reaches the broker that much later than another's
    would have its older events released after the other's newer ones (the documented limit of
    equivalence). Between steps every partition may turn idle; each step then resumes the
    stream, which gives every partition the grace again (`test_idleness_resume.py`; a CI run failed
    here before that rule)."""
    s = fast(
        settings, snapshot_every_labels=10_000, snapshot_every_seconds=3600,
        watermark_idle_grace=1.0,
    )  # fmt: skip
    events = list(dataset_events("Phishing", label_delay=0, limit=N, seed=1))
    learner = build_learner(s, [ModelSpec("lr", "logreg")], use_fork=False)
    store = snapshot_store(s)
    live = LiveStore(store)
    inputs = [x for x, _ in list(datasets.Phishing())[N : N + 20]]
    worker = threading.Thread(target=learner.run, name="learner")
    worker.start()
    try:
        for end in range(STEP, N + 1, STEP):
            publish(s, events[2 * (end - STEP) : 2 * end])  # a feature and a label per sample

            def caught_up(end: int = end) -> bool:
                meta = live.pointers("lr").live
                return meta is not None and meta.samples_learned == end

            wait_until(caught_up, 60)
            loaded = live.load("lr")
            assert loaded is not None
            state, meta = loaded
            assert meta.version == store.versions("lr")[0] and meta.samples_learned == end
            bare = phishing_logreg_after(end)
            assert [state.model.predict_proba_one(x) for x in inputs] == [
                bare.predict_proba_one(x) for x in inputs
            ]
    finally:
        learner.stop()
        worker.join(timeout=60)
        learner.source.close()
    assert len(store.versions("lr")) == 2  # the first version and the final one: no flood
    assert learner.live.stats.published >= N // STEP - 1


def test_no_live_update_under_a_pin(settings: Settings) -> None:
    s = fast(
        settings, snapshot_every_labels=10_000, snapshot_every_seconds=3600, consumer_batch=40,
        live_every_seconds=0.001,
    )  # fmt: skip
    replay(s, "Phishing", 0, limit=300)
    store = snapshot_store(s)
    registry = Registry(store, by="test")

    class PinFirst(LiveRecorder):
        def snapshot(self, learner: Any, result: Any) -> None:
            if result.ok and store.client.get(store.keys.pin("lr")) is None:
                registry.pin("lr", result.version, "hold")

    learner = build_learner(s, [ModelSpec("lr", "logreg")], use_fork=False)
    recorder = PinFirst(LiveStore(store))
    learner.observer = recorder
    try:
        learner.run(exit_when_idle=0.5)
    finally:
        learner.source.close()
    assert recorder.seen == [] and store.client.exists(store.keys.live("lr")) == 0
    assert learner.live.stats.published == 0 and learner.live.stats.refused > 0

"""Restoring a checkpoint with a different set of models (real Redis): a model may be added (it
starts fresh, the others and the comparisons go on), none may go missing; the comparisons are
written beside each snapshot for readers without River."""

from __future__ import annotations

import pytest
import redis

from learners.core import LearningCore
from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.errors import SnapshotError
from schemas.events import FeatureEvent
from stream.checkpoint.protocol import restore, write_snapshot
from stream.store.comparisons import ComparisonStore
from stream.store.snapshots import SnapshotStore

pytestmark = pytest.mark.integration

KEY = b"test-key"


def learned(core: LearningCore, n: int = 300) -> LearningCore:
    for offset, event in enumerate(dataset_events("Phishing", label_delay=4, limit=n, seed=1)):
        if isinstance(event, FeatureEvent):
            core.push_feature(event, (0, 0), offset)
        else:
            core.push_label(event, (1, 0), offset)
    core.flush()
    return core


def test_a_model_is_added_on_restore_and_none_may_go_missing(redis_url: str, prefix: str) -> None:
    store = SnapshotStore(redis.Redis.from_url(redis_url), prefix, KEY)
    a, b = ModelSpec("a", "logreg"), ModelSpec("b", "hoeffding")
    core = learned(LearningCore([a, b], compare=[("a", "b")]))
    version = store.next_version()
    write_snapshot(store, KEY, version, core, {"features:0": 600})
    written = ComparisonStore(store.client, prefix).get("a", "b")
    assert written is not None and written.version == version
    assert written.comparison.stats.to_dict() == core.comparisons[("a", "b")].stats.to_dict()

    c = ModelSpec("c", "logreg")
    restored = restore(store, KEY, [b, c, a])
    assert restored is not None and restored.added == ["c"]
    assert list(restored.core.models) == ["a", "b", "c"]  # the checkpoint's order, then the new
    assert restored.core.models["c"].samples_learned == 0
    assert restored.core.models["a"].samples_learned == core.models["a"].samples_learned
    kept = restored.core.comparisons[("a", "b")]
    assert kept.stats.to_dict() == core.comparisons[("a", "b")].stats.to_dict()
    restored.core.set_comparisons([("a", "b"), ("c", "a")])
    assert restored.core.comparisons[("c", "a")].stats.n == 0

    with pytest.raises(SnapshotError, match=r"started without \['b'\]"):
        restore(store, KEY, [a, c])
    store.client.close()

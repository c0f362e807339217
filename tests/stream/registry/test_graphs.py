"""Serving graphs in the registry, against the real Redis: versions, pointer, history,
notifications, refusals that change nothing."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
import redis

from schemas.errors import RegistryError
from schemas.graph_errors import GraphError
from stream.registry.graphs import GraphRegistry
from stream.store.graphs import GraphStore
from stream.store.keys import Notification
from stream.store.snapshots import SnapshotStore
from tests.support.registry import dump_all, write_version

pytestmark = pytest.mark.integration


def doc(*members: str, name: str = "fraud", combine: str = "mean") -> dict[str, Any]:
    return {"name": name, "root": {"ensemble": {"members": list(members), "combine": combine}}}


@pytest.fixture
def graphs(store: SnapshotStore, key: bytes) -> GraphRegistry:
    write_version(store, key, {"lr": {"Accuracy": 0.8}, "tree": {"Accuracy": 0.7}})
    return GraphRegistry(store.client, store.keys.prefix, by="tester")


def test_apply_stores_a_normalised_version_serves_it_and_notifies(
    graphs: GraphRegistry, store: SnapshotStore
) -> None:
    reader = GraphStore(store.client, store.keys.prefix)
    pubsub = store.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.keys.channel)
    try:
        applied = graphs.apply(doc("lr", "tree"), reason="first")
        message = None
        for _ in range(50):  # get_message waits up to its timeout for each message
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                break
    finally:
        pubsub.close()
    assert applied.changed and applied.previous is None and applied.models == ("lr", "tree")
    assert reader.names() == ["fraud"]
    assert reader.promoted("fraud") == applied.version
    assert reader.versions("fraud") == [applied.version]
    assert reader.document("fraud", applied.version) == {
        "name": "fraud",
        "root": {"ensemble": {"members": ["lr", "tree"], "combine": "mean"}},
    }
    # the notification: a graph's; a reader of models drops it, a reader of graphs gets it
    assert message is not None
    assert json.loads(message["data"]) == {"graph": "fraud", "version": applied.version}
    assert Notification.from_json(message["data"]) is None
    assert Notification.from_json(message["data"], graphs=True) == Notification(
        "fraud", applied.version, "graph"
    )
    (entry,) = graphs.history("fraud")
    assert (entry.action, entry.from_, entry.to, entry.reason, entry.by) == (
        "apply", None, applied.version, "first", "tester",
    )  # fmt: skip
    assert entry.detail == {"models": ["lr", "tree"]}


def test_the_version_counter_is_the_models_one(graphs: GraphRegistry, store: SnapshotStore) -> None:
    before = int(cast(bytes, store.client.get(store.keys.seq)))
    applied = graphs.apply(doc("lr"))
    assert applied.version == before + 1
    assert store.next_version() == applied.version + 1


def test_a_missing_model_is_refused_with_its_path_and_nothing_changes(
    graphs: GraphRegistry, store: SnapshotStore
) -> None:
    graphs.apply(doc("lr"))
    before = dump_all(store)
    with pytest.raises(GraphError) as refused:
        graphs.apply(doc("lr", "tre"))
    assert str(refused.value) == (
        'root.ensemble.members[1]: unknown model "tre" (did you mean "tree"?)'
    )
    with pytest.raises(GraphError, match=r"root\.ensemble\.combine"):
        graphs.apply(doc("lr", combine="median"))  # invalid: refused before Redis is read
    assert dump_all(store) == before


def test_applying_the_same_document_again_is_not_a_new_version(graphs: GraphRegistry) -> None:
    first = graphs.apply(doc("lr", "tree"))
    # the same graph, spelled differently: the normalised documents are equal
    again = graphs.apply(
        {"root": {"ensemble": {"members": [{"model": "lr"}, "tree"]}}, "name": "fraud"}
    )
    assert (again.changed, again.version, again.previous) == (False, first.version, first.version)
    assert [i.version for i in graphs.versions("fraud")] == [first.version]
    assert len(graphs.history("fraud")) == 1


def test_rollback_returns_to_the_previous_version_then_to_any(graphs: GraphRegistry) -> None:
    v1 = graphs.apply(doc("lr")).version
    v2 = graphs.apply(doc("lr", "tree")).version
    v3 = graphs.apply(doc("tree")).version
    back = graphs.rollback("fraud", reason="tree alone is worse")
    assert (back.version, back.previous, back.models) == (v2, v3, ("lr", "tree"))
    assert graphs.show("fraud").version == v2
    assert graphs.rollback("fraud", reason="again").version == v1  # the stack goes on down
    assert graphs.rollback("fraud", to=v3, reason="forward").version == v3
    assert [(e.action, e.from_, e.to) for e in graphs.history("fraud")] == [
        ("apply", None, v1), ("apply", v1, v2), ("apply", v2, v3),
        ("rollback", v3, v2), ("rollback", v2, v1), ("rollback", v1, v3),
    ]  # fmt: skip
    infos = graphs.versions("fraud")
    assert [(i.version, i.promoted) for i in infos] == [(v1, False), (v2, False), (v3, True)]
    with pytest.raises(RegistryError, match="already serves"):
        graphs.rollback("fraud", to=v3, reason="x")
    with pytest.raises(RegistryError, match="has no version 999999"):
        graphs.rollback("fraud", to=999_999, reason="x")
    with pytest.raises(RegistryError, match="needs a reason"):
        graphs.rollback("fraud", reason=" ")


def test_rollback_to_a_version_whose_model_is_gone_is_refused(
    graphs: GraphRegistry, store: SnapshotStore
) -> None:
    v1 = graphs.apply(doc("lr", "tree")).version
    graphs.apply(doc("lr"))
    store.client.srem(store.keys.models, "tree")  # the model was removed since
    before = dump_all(store)
    with pytest.raises(GraphError, match=r'members\[1\]: unknown model "tree"'):
        graphs.rollback("fraud", to=v1, reason="x")
    assert dump_all(store) == before


def test_delete_stops_serving_keeps_the_history_and_a_new_apply_continues_it(
    graphs: GraphRegistry, store: SnapshotStore
) -> None:
    v1 = graphs.apply(doc("lr"), reason="one").version
    graphs.apply(doc("lr", name="other"))
    assert graphs.delete("fraud", reason="retired") == v1
    reader = GraphStore(store.client, store.keys.prefix)
    assert reader.names() == ["other"]
    assert reader.promoted("fraud") is None and reader.served("fraud") is None
    assert not list(store.client.scan_iter(f"{store.keys.prefix}:graph:fraud:v:*"))
    with pytest.raises(RegistryError, match="unknown graph 'fraud'; graphs are \\['other'\\]"):
        graphs.versions("fraud")
    with pytest.raises(RegistryError, match="unknown graph"):
        graphs.delete("fraud")
    v2 = graphs.apply(doc("tree")).version
    actions = [(e.action, e.from_, e.to) for e in graphs.history("fraud")]
    assert actions == [("apply", None, v1), ("delete", v1, None), ("apply", None, v2)]
    # the rollback stack starts again after a delete: nothing below v2
    with pytest.raises(RegistryError, match="no earlier version"):
        graphs.rollback("fraud", reason="x")
    with pytest.raises(RegistryError, match="unknown graph 'nope'"):
        graphs.history("nope")


def test_a_client_decoding_responses_reads_the_same(
    graphs: GraphRegistry, store: SnapshotStore, redis_url: str
) -> None:
    applied = graphs.apply(doc("lr"))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        reader = GraphStore(client, store.keys.prefix)
        assert reader.served("fraud") == (applied.version, graphs.show("fraud").document)
        assert GraphRegistry(client, store.keys.prefix).names() == ["fraud"]
    finally:
        client.close()

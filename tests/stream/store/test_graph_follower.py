"""The graph follower against the real Redis: notifications, the polling fallback, deletion,
refused documents, and the by_metric weights it derives from the served snapshots."""

from __future__ import annotations

import json
from typing import Any

import pytest
from river import linear_model

from learners.predictor import ServedModel
from schemas.records import SnapshotMeta
from stream.registry.graphs import GraphRegistry
from stream.store.graph_follower import GraphFollower, ServedModels, metric_weight
from stream.store.graphs import GraphStore
from stream.store.snapshots import SnapshotStore

pytestmark = pytest.mark.integration


class Recorder:
    def __init__(self) -> None:
        self.swapped: list[tuple[str, int]] = []
        self.refused: list[tuple[str, str]] = []

    def graph_swapped(self, graph: str, version: int) -> None:
        self.swapped.append((graph, version))

    def graph_refused(self, graph: str, reason: str) -> None:
        self.refused.append((graph, reason))


@pytest.fixture
def registry(kit, store: SnapshotStore) -> GraphRegistry:
    kit.publish(store, "lr", linear_model.LogisticRegression(), "classifier")
    kit.publish(store, "nb", linear_model.LogisticRegression(), "classifier")
    return GraphRegistry(store.client, store.keys.prefix)


def served_version(follower: GraphFollower, name: str) -> int | None:
    graph = follower.get(name)
    return None if graph is None else graph.version


def test_notifications_then_polling_then_deletion(
    kit, registry: GraphRegistry, store: SnapshotStore
) -> None:
    # a poll interval far longer than the test: only notifications can move it at first
    recorder = Recorder()
    follower = GraphFollower(GraphStore(store.client, store.keys.prefix), recorder, poll_seconds=60)
    follower.start()
    try:
        assert follower.first_sync.wait(10)
        assert follower.served == {}
        v1 = registry.apply({"name": "g", "root": "lr"}).version
        kit.wait_until(lambda: served_version(follower, "g") == v1)
        v2 = registry.apply({"name": "g", "root": "nb"}).version
        kit.wait_until(lambda: served_version(follower, "g") == v2)
        served = follower.get("g")
        assert served is not None and served.spec.model_names() == ("nb",)
        assert served.document == {"name": "g", "root": "nb"}
    finally:
        follower.stop()
    assert recorder.swapped == [("g", v1), ("g", v2)]

    # a pointer moved without a notification (a lost message) is found by polling
    follower = GraphFollower(GraphStore(store.client, store.keys.prefix), poll_seconds=0.1)
    follower.start()
    try:
        kit.wait_until(lambda: served_version(follower, "g") == v2)
        store.client.set(store.keys.graph_promoted("g"), v1)  # no PUBLISH
        kit.wait_until(lambda: served_version(follower, "g") == v1)
        registry.delete("g", reason="gone")
        kit.wait_until(lambda: follower.get("g") is None)
        assert follower.status()["graphs"] == {}
    finally:
        follower.stop()


def test_a_document_that_does_not_parse_is_refused_and_the_previous_one_serves(
    kit, registry: GraphRegistry, store: SnapshotStore
) -> None:
    v1 = registry.apply({"name": "g", "root": "lr"}).version
    recorder = Recorder()
    follower = GraphFollower(
        GraphStore(store.client, store.keys.prefix), recorder, poll_seconds=0.1
    )
    follower.start()
    try:
        kit.wait_until(lambda: served_version(follower, "g") == v1)
        # a version written by something else: a node kind this code does not know
        bad = store.next_version()
        doc = {"name": "g", "root": {"stack": {"members": ["lr"]}}}
        store.client.set(store.keys.graph_doc("g", bad), json.dumps(doc))
        store.client.zadd(store.keys.graph_versions("g"), {str(bad): bad})
        store.client.set(store.keys.graph_promoted("g"), bad)
        kit.wait_until(lambda: recorder.refused)
        assert recorder.refused == [("g", "invalid")]
        status = follower.status()
        assert status["refused"][0]["version"] == bad and "root" in status["refused"][0]["reason"]
        assert served_version(follower, "g") == v1
        # a document whose name is another graph's is refused as well
        other = store.next_version()
        store.client.set(store.keys.graph_doc("g", other), json.dumps({"name": "h", "root": "lr"}))
        store.client.set(store.keys.graph_promoted("g"), other)
        kit.wait_until(lambda: len(recorder.refused) == 2)
        assert served_version(follower, "g") == v1
    finally:
        follower.stop()


def served(name: str, metrics: dict[str, float] | None, version: int = 1) -> ServedModel:
    meta = None
    if metrics is not None:
        meta = SnapshotMeta.describe(
            name, b"", kind="classifier", spec="", samples_learned=0, metrics=metrics, offsets={}
        )
    return ServedModel.build(
        name, linear_model.LogisticRegression(), version=version, kind="classifier", meta=meta
    )


def test_by_metric_weights_come_from_the_served_snapshots() -> None:
    models: dict[str, Any] = {
        "acc": served("acc", {"Accuracy": 0.8}),
        "loss": served("loss", {"MAE": 3.0, "R2": 0.1}, version=2),  # MAE is first by name
        "none": served("none", {}),
        "nometa": served("nometa", None),
    }
    cache: dict[tuple[str, int], float | None] = {}
    lookup = ServedModels(models, None, cache)
    assert [lookup.metric(n) for n in ("acc", "loss", "none", "nometa", "gone")] == [
        0.8, 0.25, None, None, None,
    ]  # fmt: skip
    assert cache == {("acc", 1): 0.8, ("loss", 2): 0.25, ("none", 1): None}
    assert ServedModels(models, "R2").metric("loss") == 0.1  # the configured metric
    assert ServedModels(models, "R2").metric("acc") is None  # a model without it weighs 0
    assert metric_weight({"LogLoss": -1.0}) is None
    # An ensemble's normalised weights: the one rule (`metric_weights`), remembered by the view.
    names = ("acc", "loss", "none")
    assert lookup.weights(names) == pytest.approx([0.8 / 1.05, 0.25 / 1.05, 0.0])
    assert lookup.weights(names) is lookup.weights(names)
    assert ServedModels(models).weights(("none", "nometa")) == [0.5, 0.5]  # none positive


def test_the_view_says_which_members_are_all_compiled_linear_models() -> None:
    from river import preprocessing, tree

    def build(name: str, estimator: Any) -> ServedModel:
        estimator.learn_one({"a": 1.0, "b": 2.0}, True)
        estimator.learn_one({"a": 3.0, "b": 0.5}, False)
        return ServedModel.build(name, estimator, version=1, kind="classifier")

    linear = lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression()  # noqa: E731
    models = {"lr": build("lr", linear()), "lr2": build("lr2", linear()),
              "tree": build("tree", tree.HoeffdingTreeClassifier())}  # fmt: skip
    view = ServedModels(models)
    both = view.linear(("lr", "lr2"))
    assert both is not None and view.linear(("lr", "lr2")) is both  # remembered by the view
    assert [(m.name, params) for m, params in both.members] == [
        (name, models[name].linear_parts.params)  # type: ignore[union-attr]
        for name in ("lr", "lr2")
    ]
    # the state they name, as a graph's answer gives it
    assert both.versions == {"lr": 1, "lr2": 1}
    assert both.samples_learned == {"lr": None, "lr2": None}  # built without metadata
    assert view.linear(("lr", "tree")) is None and view.linear(("lr", "gone")) is None
    assert view.get("lr") is models["lr"] and view.get("gone") is None


def test_the_view_remembers_the_state_its_models_name() -> None:
    """What a graph's answer says of the members it used (`named_state`), worked out once per
    view and order of names; a new view (the follower's next mapping) reads the new state."""
    models = {"acc": served("acc", {"Accuracy": 0.8}, version=3), "n": served("n", None)}
    view = ServedModels(models)
    state = view.state(("n", "acc"))
    assert state == ({"n": 1, "acc": 3}, {"n": None, "acc": 0})
    assert list(state[0]) == ["n", "acc"]  # the order the evaluation used them in
    assert view.state(("n", "acc")) is state and view.state(("acc",)) == ({"acc": 3}, {"acc": 0})
    swapped = {**models, "acc": served("acc", {"Accuracy": 0.9}, version=4)}
    assert ServedModels(swapped).state(("n", "acc"))[0] == {"n": 1, "acc": 4}


def test_an_unparsable_graph_pointer_is_the_problem_of_that_graph_only(
    kit, registry: GraphRegistry, store: SnapshotStore
) -> None:
    registry.apply({"name": "a", "root": "lr"})
    vz = registry.apply({"name": "z", "root": "nb"}).version
    store.client.set(store.keys.graph_promoted("a"), b"oops")  # "a" sorts first: synced first
    follower = GraphFollower(GraphStore(store.client, store.keys.prefix), poll_seconds=0.1)
    follower.start()
    try:
        assert follower.first_sync.wait(10), "a bad pointer held the first sync"
        kit.wait_until(lambda: served_version(follower, "z") == vz)
        status = follower.status()
        assert status["redis"]["reachable"], status["redis"]
        assert status["graphs"] == {"z": vz}
        [error] = status["errors"]
        assert error["graph"] == "a" and "oops" in error["error"]
    finally:
        follower.stop()


def test_a_live_updates_weight_follows_its_metrics() -> None:
    # a live update keeps the version it continues while its metrics change
    def model(accuracy: float, samples: int, live: bool) -> ServedModel:
        meta = SnapshotMeta(
            model="a", version=3, created_at=0.0, samples_learned=samples,
            metrics={"Accuracy": accuracy}, offsets={}, river_version="", python_version="",
            size=1, sha256=str(samples), chunks=0, kind="classifier", spec="",
        )  # fmt: skip
        return ServedModel.build(
            "a", linear_model.LogisticRegression(), version=3, kind="classifier", meta=meta,
            live=live,
        )  # fmt: skip

    cache: dict[tuple[str, int], float | None] = {}
    assert ServedModels({"a": model(0.10, 100, False)}, weights=cache).metric("a") == 0.10
    assert ServedModels({"a": model(0.95, 5000, True)}, weights=cache).metric("a") == 0.95
    assert ServedModels({"a": model(0.97, 6000, True)}, weights=cache).metric("a") == 0.97
    assert ServedModels({"a": model(0.10, 100, False)}, weights=cache).metric("a") == 0.10


def test_a_document_that_breaks_the_reading_is_refused_and_the_other_graphs_followed(
    kit, registry: GraphRegistry, store: SnapshotStore
) -> None:
    """A stored document whose reading fails with neither a `SnapshotError` nor a
    `GraphError` (JSON nested deeper than the parser's recursion: written by something else,
    the registry never stores one) is that version's problem, refused as a snapshot that does
    not load is: it failed every sync, so no graph after it was followed and the follower
    never counted as synced."""
    v1 = registry.apply({"name": "a", "root": "lr"}).version
    recorder = Recorder()
    follower = GraphFollower(
        GraphStore(store.client, store.keys.prefix), recorder, poll_seconds=0.1
    )
    follower.start()
    try:
        kit.wait_until(lambda: served_version(follower, "a") == v1)
        deep = store.next_version()  # "a" sorts first: synced before "z"
        store.client.set(store.keys.graph_doc("a", deep), "[" * 100_000 + "]" * 100_000)
        store.client.zadd(store.keys.graph_versions("a"), {str(deep): deep})
        store.client.set(store.keys.graph_promoted("a"), deep)
        kit.wait_until(lambda: recorder.refused, what="the deep document refused")
        vz = registry.apply({"name": "z", "root": "nb"}).version
        kit.wait_until(lambda: served_version(follower, "z") == vz, what="z followed")
        assert recorder.refused == [("a", "load_failed")]
        assert served_version(follower, "a") == v1, "the previous version keeps serving"
        status = follower.status()
        [refused] = status["refused"]
        assert refused["version"] == deep and refused["reason"].startswith("RecursionError")
        assert status["redis"]["follower_error"] is None and follower.synced
    finally:
        follower.stop()


def test_a_graph_name_that_is_not_utf8_is_the_problem_of_that_entry_only(
    kit, registry: GraphRegistry, store: SnapshotStore
) -> None:
    """A name in the graphs' index that is not UTF-8 (written by something else) failed every
    sync: no graph was followed and the follower never counted as synced (a worker waited on
    it for ever). It is that entry's problem: skipped, reported in ``errors``, the other
    graphs followed; removed, it is forgotten."""
    va = registry.apply({"name": "a", "root": "lr"}).version
    store.client.sadd(store.keys.graphs, b"\xff", b"b\xc3")  # one sorts first, one after "a"
    follower = GraphFollower(GraphStore(store.client, store.keys.prefix), poll_seconds=0.1)
    follower.start()
    try:
        assert follower.first_sync.wait(10)
        kit.wait_until(lambda: served_version(follower, "a") == va, what="a followed")
        vz = registry.apply({"name": "z", "root": "nb"}).version
        kit.wait_until(lambda: served_version(follower, "z") == vz, what="z followed")
        status = follower.status()
        assert follower.synced and status["redis"]["follower_error"] is None, status["redis"]
        assert status["graphs"] == {"a": va, "z": vz}
        errors = {e["graph"]: e["error"] for e in status["errors"]}
        assert set(errors) == {"\\xff", "b\\xc3"}, errors  # the bytes escaped
        assert "b'\\xff'" in errors["\\xff"] and "not UTF-8" in errors["\\xff"], errors
        json.dumps(status)  # what a status route serves
        store.client.srem(store.keys.graphs, b"\xff", b"b\xc3")  # repaired
        kit.wait_until(lambda: not follower.status()["errors"], what="the problems forgotten")
        assert follower.status()["graphs"] == {"a": va, "z": vz}
    finally:
        follower.stop()


class FailingGraphs(GraphStore):
    """A graph store whose index cannot be read, until ``failing`` is cleared, with an error
    that is neither Redis's nor a pointer's (a bug)."""

    failing = True

    def names(self) -> list[str]:
        if self.failing:
            raise RuntimeError("boom")
        return super().names()


def test_an_unexpected_error_of_the_graph_follower_is_reported_until_it_reads_again(
    kit, registry: GraphRegistry, store: SnapshotStore
) -> None:
    """The graphs' follower shares the models' loop (`stream.store.following`): an error that
    is neither a Redis error nor a pointer's sets ``first_sync``, is ``follower_error`` in its
    status and `unsynced_reason` (what a waiting worker reports), until a look at Redis
    succeeds."""
    vg = registry.apply({"name": "g", "root": "lr"}).version
    graphs = FailingGraphs(store.client, store.keys.prefix)
    follower = GraphFollower(graphs, poll_seconds=0.1)
    follower.start()
    try:
        assert follower.first_sync.wait(10), "a failing sync held the first sync"
        redis = follower.status()["redis"]
        assert redis["follower_error"] == "RuntimeError: boom", redis
        assert not follower.synced
        reason = follower.unsynced_reason()
        assert reason == "graphs: the follower fails: RuntimeError: boom", reason
        graphs.failing = False  # repaired
        # g is served inside the sync, before it marks the follower synced and clears the
        # error: wait for all three
        kit.wait_until(
            lambda: (
                served_version(follower, "g") == vg
                and follower.unsynced_reason() is None
                and follower.status()["redis"]["follower_error"] is None
            ),
            what="g followed and the follower synced again",
            detail=follower.status,
        )
        assert follower.synced
    finally:
        follower.stop()

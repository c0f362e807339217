"""Serving graphs end to end: real River models trained a bit, published as signed snapshots to
the real Redis, graphs applied through the registry, the API running in a thread (lifespan,
followers and all). Every expected answer is computed here by hand with River, on the models
loaded back from the store at the versions the API reports."""

from __future__ import annotations

import functools
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from river import anomaly, compose, datasets, linear_model, naive_bayes, preprocessing, tree

from learners.graph import sticky_unit
from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.registry.graphs import GraphRegistry
from stream.store.snapshots import SnapshotStore
from tests.support.serving import recording

pytestmark = pytest.mark.integration

METRICS = {
    "lr": {"Accuracy": 0.9},
    "tree": {"Accuracy": 0.6},
    "nb": {"ROCAUC": 0.9, "LogLoss": 0.5},  # the first by name is a loss: 1 / (1 + 0.5)
}


def as_json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


@functools.lru_cache(maxsize=1)
def river_models() -> tuple[dict[str, tuple[Any, str]], list[dict[str, Any]]]:
    """name → (estimator trained on 400 Phishing events, kind), and 60 unseen inputs."""
    data = list(datasets.Phishing())
    train, unseen = data[:400], [x for x, _ in data[400:460]]
    models: dict[str, tuple[Any, str]] = {
        "lr": (preprocessing.StandardScaler() | linear_model.LogisticRegression(), "classifier"),
        "tree": (tree.HoeffdingTreeClassifier(grace_period=40), "classifier"),
        "nb": (naive_bayes.GaussianNB(), "classifier"),
        "det": (preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=42), "anomaly"),
        "seq": (preprocessing.StandardScaler() | linear_model.LogisticRegression(), "classifier"),
        # no scaler: raises TypeError on a string feature (a scaler would map it to 0.0)
        "raw": (linear_model.LogisticRegression(), "classifier"),
        # sees three features only: a request carrying anything else is fine for it
        "sel": (
            compose.Select("https", "long_url", "is_popular") | linear_model.LogisticRegression(),
            "classifier",
        ),
    }
    for x, y in train:
        for name in ("lr", "tree", "nb", "sel", "raw"):
            models[name][0].learn_one(x, y)
        models["det"][0].learn_one(x)
    det = models["det"][0]
    for x, y in train:  # learns with the anomaly score of the trained detector as a feature
        models["seq"][0].learn_one({**x, "anomaly_score": det.score_one(x)}, y)
    return models, unseen


@pytest.fixture
def published(kit, store: SnapshotStore) -> dict[str, int]:
    models, _ = river_models()
    return {
        name: kit.publish(store, name, model, kind, metrics=METRICS.get(name))
        for name, (model, kind) in models.items()
    }


@pytest.fixture
def graphs(store: SnapshotStore, published: dict[str, int]) -> GraphRegistry:
    return GraphRegistry(store.client, store.keys.prefix, by="test")


@pytest.fixture
def metrics() -> ServingMetrics:
    return ServingMetrics(CollectorRegistry())


@pytest.fixture
def serve(kit, redis_url: str, prefix: str, metrics: ServingMetrics):
    """``serve(**create_app kwargs)``: the API in a thread, ready (every model loaded)."""

    def start(**kwargs: Any) -> Any:
        app = create_app(kit.make_settings(redis_url, prefix), metrics=metrics, **kwargs)
        return _ready(kit, app)

    return start


def _ready(kit, app: Any) -> Any:
    import contextlib

    @contextlib.contextmanager
    def running() -> Iterator[tuple[httpx.Client, Any]]:
        with kit.serve_in_thread(app) as client:
            kit.wait_until(lambda: client.get("/readyz").status_code == 200)
            yield client, app

    return running()


def loaded(store: SnapshotStore, versions: dict[str, int]) -> dict[str, Any]:
    """The estimators at the versions given, loaded back from the store (as the API did)."""
    return {name: store.load_model(name, v)[0] for name, v in versions.items()}


# -- compositions by hand ---------------------------------------------------------------------
def argmax(scores: dict[Any, float]) -> Any:
    best = max(scores.values())
    return min((k for k, v in scores.items() if v == best), key=repr)


def mean_of(probas: list[dict[Any, float]], weights: list[float] | None = None) -> dict[Any, float]:
    weights = [1.0] * len(probas) if weights is None else weights
    sums: dict[Any, float] = {}
    for proba, w in zip(probas, weights, strict=True):
        for label, p in proba.items():
            sums[label] = sums.get(label, 0.0) + w * p
    return {label: s / sum(weights) for label, s in sums.items()}


def vote_of(predictions: list[Any]) -> tuple[Any, dict[Any, float]]:
    counts = Counter(predictions)
    shares = {label: n / len(predictions) for label, n in counts.items()}
    return argmax({k: float(v) for k, v in counts.items()}), shares


def answer(
    prediction: Any,
    probabilities: dict[Any, float] | None,
    versions: dict[str, int],
    decided_by: str,
    path: tuple[str, ...] = (),
    decision: str | None = None,
    reason: str | None = None,
    kind: str = "classifier",
) -> dict[str, Any]:
    return {
        "versions": versions,  # kit.publish writes version v with 10 × v samples learned
        "samples_learned": {m: 10 * v for m, v in versions.items()},
        "prediction": prediction, "probabilities": as_json(probabilities),
        "kind": kind, "path": list(path), "decided_by": decided_by, "decision": decision,
        "reason": reason,
    }  # fmt: skip


def check(
    client: httpx.Client,
    graph: str,
    version: int,
    inputs: list[dict[str, Any]],
    expected: Callable[[dict[str, Any]], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Every input, one by one and as one batch, answers what ``expected`` computed."""
    wanted = [expected(x) for x in inputs]
    for x, want in zip(inputs, wanted, strict=True):
        response = client.post(f"/v1/graphs/{graph}/predict", json={"features": x})
        assert response.status_code == 200, response.text
        assert response.json() == {"graph": graph, "graph_version": version, **want}
    batch = client.post(f"/v1/graphs/{graph}/predict", json={"instances": inputs})
    assert batch.status_code == 200, batch.text
    assert batch.json() == {"graph": graph, "graph_version": version, "predictions": wanted}
    return wanted


# -- tests ------------------------------------------------------------------------------------
def test_a_graph_of_linear_models_is_answered_from_its_bytes(
    serve, graphs: GraphRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph whose models alone read the features, all compiled linear ones, has each one's
    sum read from the body's bytes (`serving.inputs.linear_sum`, as /v1 does): the answers are,
    byte for byte, those the general reading gives; other graphs and bodies never read so.
    The other graphs have the commonest body's features read from its bytes
    (`serving.inputs.read_features`): their answers are the general reading's too."""
    import serving.inputs

    rules = [
        {"when": {"output": "proba.true", "ge": 0.8}, "then": {"decision": "block"}},
        {"when": {"not": {"output": "prediction", "eq": True}}, "then": {"decision": "allow"}},
    ]
    pair = {"ensemble": {"members": ["lr", "seq"], "combine": "weighted", "weights": "by_metric"}}
    feature_rule = {"when": {"feature": "https", "gt": 0.5}, "then": {"decision": "look"}}
    # "inner": answers decided by the ensemble alike, after other choices inside it (paths)
    alike = [
        {"when": {"output": "proba.true", "ge": 0.5}, "then": {"decision": "look"}},
        {"when": {"not": {"output": "prediction", "eq": True}}, "then": {"decision": "look"}},
    ]
    inner = {"ensemble": {"members": [{"rules": {"over": "lr", "rules": alike}}, "seq"]}}
    reads = {"one": 1, "pair": 2, "back": 2, "ruled": 2, "inner": 2, "mixed": 0, "featured": 0}
    for name, root in {
        "one": "lr", "pair": pair, "ruled": {"rules": {"over": pair, "rules": rules}},
        "inner": inner,
        "back": {"ensemble": {"members": ["seq", "lr"]}},  # versions name "seq" first
        "mixed": {"ensemble": {"members": ["lr", "tree"]}},
        "featured": {"rules": {"over": "lr", "rules": [feature_rule]}},
    }.items():  # fmt: skip
        graphs.apply({"name": name, "root": root})
    _, inputs = river_models()
    bodies = []
    for x in inputs[:8]:
        bodies.append(orjson.dumps({"features": x}))
        bodies.append(orjson.dumps({"features": x}, option=orjson.OPT_INDENT_2))
    commonest = len(bodies)
    bodies += [
        b'{"features": {"https": 1, "long_url": -1, "https": 0}}',  # a name twice: orjson's
        b'{"features": {"https": 1}, "id": "r-1"}',  # an id
        b'{"features": {"https": 1e308, "long_url": 1e308, "is_popular": 1e308}}',  # overflows
        b'{"features": {"https": "1"}}',  # a string
        b'{"features": [1, 2]}',
    ]
    counted, sums = recording(serving.inputs.read_dot_in_c)
    with serve() as (client, _):

        def predict(graph: str) -> list[tuple[int, bytes]]:
            return [
                (r.status_code, r.content)
                for r in (client.post(f"/v1/graphs/{graph}/predict", content=b) for b in bodies)
            ]

        read_features_in_c = serving.inputs.read_features_in_c
        for graph, per_body in reads.items():
            monkeypatch.setattr(serving.inputs, "read_dot_in_c", None)
            monkeypatch.setattr(serving.inputs, "read_features_in_c", None)  # orjson alone
            general = predict(graph)
            monkeypatch.setattr(serving.inputs, "read_dot_in_c", counted)
            monkeypatch.setattr(serving.inputs, "read_features_in_c", read_features_in_c)
            sums.clear()
            assert predict(graph) == general, graph
            read = sums[: per_body * commonest]  # then what the odd bodies gave (None, nan)
            assert len(read) == per_body * commonest and (per_body > 0 or not sums), graph
            assert all(s is not None and math.isfinite(s) for s in read), graph
            assert all(status == 200 for status, _ in general[:commonest]), general
    assert {s for s, _ in general[commonest:]} == {200, 422}, general[commonest:]


def test_a_graph_read_from_its_bytes_names_the_state_that_answered_after_swaps(
    kit, serve, graphs: GraphRegistry, store: SnapshotStore, published: dict[str, int]
) -> None:
    """The fields naming the state, rendered once per graph version and view of the models
    (`GraphService._read_head`), follow a new version of the graph and one of its member."""
    models, inputs = river_models()
    first = graphs.apply({"name": "g", "root": "lr"}).version
    with serve() as (client, _):

        def answer() -> dict[str, Any]:
            response = client.post("/v1/graphs/g/predict", json={"features": inputs[0]})
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        body = answer()
        assert (body["graph_version"], body["versions"]) == (first, {"lr": published["lr"]})
        assert body["samples_learned"] == {"lr": published["lr"] * 10}  # `kit.publish`'s
        second = graphs.apply({"name": "g", "root": "lr", "description": "again"}).version
        kit.wait_until(lambda: answer()["graph_version"] == second)
        newer = kit.publish(store, "lr", models["lr"][0], "classifier", metrics=METRICS["lr"])
        body = kit.wait_until(lambda: (b := answer())["versions"] == {"lr": newer} and b)
        assert body["graph_version"] == second
        assert body["samples_learned"] == {"lr": newer * 10}


def test_ensembles_equal_river_by_hand(
    serve, graphs: GraphRegistry, store: SnapshotStore, published: dict[str, int]
) -> None:
    members = ["lr", "tree", "nb"]
    ensemble = lambda **kw: {"ensemble": {"members": members, **kw}}  # noqa: E731
    v_mean = graphs.apply({"name": "mean", "root": ensemble()}).version
    v_vote = graphs.apply({"name": "vote", "root": ensemble(combine="vote")}).version
    v_metric = graphs.apply(
        {"name": "metric", "root": ensemble(combine="weighted", weights="by_metric")}
    ).version
    v_fixed = graphs.apply(
        {"name": "fixed", "root": ensemble(combine="weighted", weights=[3, 1, 1])}
    ).version
    versions = {m: published[m] for m in members}
    est = loaded(store, versions)
    _, inputs = river_models()
    raw = [0.9, 0.6, 1 / (1 + 0.5)]  # Accuracy, Accuracy, LogLoss 0.5 → 1 / (1 + loss)
    by_metric = [r / sum(raw) for r in raw]
    fixed = [w / 5 for w in (3, 1, 1)]

    def weighted(weights: list[float] | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def expected(x: dict[str, Any]) -> dict[str, Any]:
            mean = mean_of([est[m].predict_proba_one(x) for m in members], weights)
            return answer(argmax(mean), mean, versions, "root.ensemble")

        return expected

    def voted(x: dict[str, Any]) -> dict[str, Any]:
        prediction, shares = vote_of([est[m].predict_one(x) for m in members])
        return answer(prediction, shares, versions, "root.ensemble")

    with serve() as (client, _):
        means = check(client, "mean", v_mean, inputs, weighted(None))
        votes = check(client, "vote", v_vote, inputs, voted)
        metric = check(client, "metric", v_metric, inputs, weighted(by_metric))
        check(client, "fixed", v_fixed, inputs, weighted(fixed))
    # the weights change the answer (else the test would prove little)
    assert [m["probabilities"] for m in means] != [m["probabilities"] for m in metric]
    assert {v["prediction"] for v in votes} == {True, False}
    assert any(len(set(v["probabilities"].values())) > 1 for v in votes)


def test_a_sequence_passes_the_anomaly_score_on(
    serve, graphs: GraphRegistry, store: SnapshotStore, published: dict[str, int]
) -> None:
    doc = {"sequence": {"steps": [{"model": "det", "as": "anomaly_score"}, "seq"]}}
    version = graphs.apply({"name": "seq", "root": doc}).version
    versions = {"det": published["det"], "seq": published["seq"]}
    est = loaded(store, versions)
    _, inputs = river_models()

    def expected(x: dict[str, Any]) -> dict[str, Any]:
        score = est["det"].score_one(x)
        proba = est["seq"].predict_proba_one({**x, "anomaly_score": score})
        return answer(argmax(proba), proba, versions, "root.sequence.steps[1]")

    with serve() as (client, _):
        check(client, "seq", version, inputs, expected)
    scores = {est["det"].score_one(x) for x in inputs}
    assert len(scores) > 1  # the detector discriminates, so its score matters downstream
    without = [est["seq"].predict_proba_one({**x, "anomaly_score": 0.0}) for x in inputs]
    assert [as_json(p) for p in without] != [expected(x)["probabilities"] for x in inputs]


RULES: dict[str, Any] = {
    "over": {"ensemble": {"members": ["lr", "tree", "nb"]}},
    "rules": [
        {
            "when": {"all": [{"feature": "long_url", "ge": 1}, {"feature": "ip_in_url", "eq": 1}]},
            "then": {"decision": "review", "reason": "long url with an ip"},
        },
        {
            "when": {"output": "proba.true", "ge": 0.8},
            "then": {"decision": "block", "prediction": True, "reason": "very likely"},
        },
        {"when": {"output": "proba.True", "lt": 0.2}, "then": {"decision": "allow"}},
    ],
}


def test_each_rule_outcome_and_each_switch_branch(
    serve, graphs: GraphRegistry, store: SnapshotStore, published: dict[str, int]
) -> None:
    v_rules = graphs.apply({"name": "fraud", "root": {"rules": RULES}}).version
    switch = {
        "cases": [
            {"when": {"feature": "https", "gt": 0.5}, "then": "lr"},
            {"when": {"feature": "is_popular", "is_missing": True}, "then": "nb"},
        ],
        "default": {"ensemble": {"members": ["tree", "nb"], "combine": "vote"}},
    }
    v_switch = graphs.apply({"name": "route", "root": {"switch": switch}}).version
    members = ["lr", "tree", "nb"]
    versions = {m: published[m] for m in members}
    est = loaded(store, versions)
    _, unseen = river_models()
    inputs = [*unseen, {**unseen[0], "long_url": 1.0, "ip_in_url": 1}]
    inputs += [{k: v for k, v in x.items() if k != "is_popular"} for x in unseen[:10]]
    outcomes: set[int | None] = set()

    def ruled(x: dict[str, Any]) -> dict[str, Any]:
        mean = mean_of([est[m].predict_proba_one(x) for m in members])
        p_true = mean.get(True, 0.0)
        matches = [
            x.get("long_url", 0) >= 1 and x.get("ip_in_url") == 1,
            p_true >= 0.8,
            p_true < 0.2,
        ]
        i = next((i for i, hit in enumerate(matches) if hit), None)
        outcomes.add(i)
        if i is None:
            return answer(argmax(mean), mean, versions, "root.rules.over.ensemble")
        then = RULES["rules"][i]["then"]
        where = f"root.rules.rules[{i}]"
        prediction = then.get("prediction", argmax(mean))
        # a rule's prediction comes with probabilities that agree: 1 for it, 0 for the others
        proba = {c: float(c == prediction) for c in mean} if "prediction" in then else mean
        return answer(
            prediction, proba, versions, where, (where,), then["decision"], then.get("reason")
        )

    branches: set[str] = set()

    def switched(x: dict[str, Any]) -> dict[str, Any]:
        if isinstance(x.get("https"), float | int) and x["https"] > 0.5:
            branches.add("lr")
            proba = est["lr"].predict_proba_one(x)
            where = "root.switch.cases[0]"
            return answer(argmax(proba), proba, {"lr": versions["lr"]}, f"{where}.then", (where,))
        if x.get("is_popular") is None:
            branches.add("nb")
            proba = est["nb"].predict_proba_one(x)
            where = "root.switch.cases[1]"
            return answer(argmax(proba), proba, {"nb": versions["nb"]}, f"{where}.then", (where,))
        branches.add("default")
        prediction, shares = vote_of([est[m].predict_one(x) for m in ("tree", "nb")])
        used = {m: versions[m] for m in ("tree", "nb")}
        where = "root.switch.default"
        return answer(prediction, shares, used, f"{where}.ensemble", (where,))

    with serve() as (client, _):
        check(client, "fraud", v_rules, inputs, ruled)
        check(client, "route", v_switch, inputs, switched)
    assert outcomes == {0, 1, 2, None}, outcomes  # every rule decided once, and none at all
    assert branches == {"lr", "nb", "default"}, branches


def test_a_graph_version_swaps_live_and_requests_never_fail(
    kit, serve, graphs: GraphRegistry, store: SnapshotStore, published: dict[str, int]
) -> None:
    _, inputs = river_models()
    v1 = graphs.apply({"name": "g", "root": "lr"}).version
    with serve() as (client, _):
        seen: list[tuple[int, int]] = []
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=10) as c:
                while not stop.is_set():
                    r = c.post("/v1/graphs/g/predict", json={"features": inputs[0]})
                    seen.append((r.status_code, r.json().get("graph_version", 0)))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            kit.wait_until(lambda: len(seen) >= 5)
            v2 = graphs.apply({"name": "g", "root": {"ensemble": {"members": ["lr", "nb"]}}})

            def swapped() -> dict[str, Any] | None:
                r = client.post("/v1/graphs/g/predict", json={"features": inputs[0]}).json()
                return r if r["graph_version"] == v2.version else None

            body = kit.wait_until(swapped)
            assert body["versions"] == {"lr": published["lr"], "nb": published["nb"]}
            count = len(seen)
            kit.wait_until(lambda: len(seen) >= count + 5)
        finally:
            stop.set()
            thread.join(timeout=10)
        assert {status for status, _ in seen} == {200}
        versions = [v for _, v in seen]
        assert versions == sorted(versions) and set(versions) == {v1, v2.version}

        graphs.rollback("g", reason="back")
        kit.wait_until(lambda: client.get("/v1/graphs/g").json()["version"] == v1)
        info = client.get("/v1/graphs").json()
        assert info == {
            "graphs": [{
                "graph": "g", "version": v1, "description": None, "models": ["lr"],
                "loaded_at": info["graphs"][0]["loaded_at"],
            }]
        }  # fmt: skip
        detail = client.get("/v1/graphs/g").json()
        assert detail["document"] == {"name": "g", "root": "lr"}
        assert detail["members"] == {"lr": published["lr"]}
        graphs.delete("g", reason="gone")
        kit.wait_until(lambda: client.get("/v1/graphs/g").status_code == 404)
        response = client.post("/v1/graphs/g/predict", json={"features": inputs[0]})
        assert response.status_code == 404 and response.json() == {"detail": "graph 'g' is unknown"}
        assert client.get("/v1/graphs").json() == {"graphs": []}
        text = client.get("/metrics").text
        assert 'riverstream_graph_swaps_total{graph="g"} 3.0' in text


def test_a_member_that_disappears_gives_503_with_the_reason(
    kit: Any, serve, graphs: GraphRegistry, store: SnapshotStore, published: dict[str, int]
) -> None:
    graphs.apply({"name": "g", "root": {"ensemble": {"members": ["lr", "tree"]}}})
    shadowed = {"shadow": {"primary": "lr", "shadows": ["tree"]}}
    v_shadow = graphs.apply({"name": "s", "root": shadowed}).version
    # the model is removed from Redis after the graphs were applied: a process started now
    # never loads it (a running one keeps serving the version it has)
    store.client.srem(store.keys.models, "tree")
    for key in store.client.scan_iter(f"{store.keys.prefix}:model:tree:*"):
        store.client.delete(key)
    _, inputs = river_models()
    with serve() as (client, app):
        response = client.post("/v1/graphs/g/predict", json={"features": inputs[0]})
        assert response.status_code == 503
        assert response.json() == {
            "detail": "graph 'g': model \"tree\" is not loaded (root.ensemble.members[1])"
        }
        batch = client.post("/v1/graphs/g/predict", json={"instances": inputs[:3]})
        assert batch.status_code == 503
        assert client.get("/v1/graphs/g").json()["members"] == {"lr": published["lr"], "tree": None}
        # a shadow whose model is gone fails off the response path: the request is fine
        response = client.post("/v1/graphs/s/predict", json={"features": inputs[0]})
        assert response.status_code == 200 and response.json()["graph_version"] == v_shadow
        # queued once the response is sent: wait for the failed run to be counted
        failed = (
            'riverstream_shadow_errors_total{graph="s",reason="member_unavailable",'
            'shadow="root.shadow.shadows[0]"} 1.0'
        )
        kit.wait_until(lambda: failed in client.get("/metrics").text)
        assert app.state.graphs.shadows.wait_idle(10)


def test_bad_requests_are_4xx(serve, graphs: GraphRegistry) -> None:
    split = {"branches": [{"weight": 1, "node": "lr"}, {"weight": 1, "node": "nb"}]}
    graphs.apply({"name": "ab", "root": {"split": split}})
    graphs.apply({"name": "g", "root": "lr"})
    _, inputs = river_models()
    with serve(max_body_bytes=4096) as (client, _):
        post = lambda g, body: client.post(f"/v1/graphs/{g}/predict", json=body)  # noqa: E731
        assert post("nope", {"features": {}}).status_code == 404
        r = post("ab", {"features": inputs[0]})  # a split needs an id (or its sticky feature)
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "graph_input"
        assert post("ab", {"features": inputs[0], "id": "user-1"}).status_code == 200
        r = post("ab", {"instances": [inputs[0]] * 2, "ids": ["a", 7]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
        r = post("g", {"features": {"https": "yes"}})  # the model cannot use a string
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "model_input"
        for body, kind in [
            ({"features": {"x": [1]}}, "feature_type"),
            ({"features": {}, "ids": ["a"]}, "value_error"),
            ({"instances": [{}], "ids": ["a", "b"]}, "ids"),
            ({"features": {}, "id": ""}, "request_id"),
            ({"features": {}, "id": True}, "request_id"),
            ({"features": {}, "extra": 1}, "extra_forbidden"),
            ({}, "value_error"),
        ]:
            r = post("g", body)
            assert r.status_code == 422 and r.json()["detail"][0]["type"] == kind, (body, r.text)
        big = client.post("/v1/graphs/g/predict", content=b'{"features": {"x": "' + b"a" * 5000)
        assert big.status_code == 413


def test_responses_do_not_depend_on_shadows_and_a_failing_shadow_fails_nothing(
    kit: Any, serve, graphs: GraphRegistry, metrics: ServingMetrics
) -> None:
    # `sel` looks at three features; the shadow `raw` raises on a string feature
    shadowed = {"shadow": {"primary": "sel", "shadows": ["raw"], "percent": 50}}
    graphs.apply({"name": "s", "root": shadowed})
    graphs.apply({"name": "plain", "root": "sel"})
    ids = [f"user-{i}" for i in range(40)]
    sampled = [i for i in ids if sticky_unit("root.shadow", i) * 100 < 50]
    skipped = [i for i in ids if i not in sampled]
    assert sampled and skipped
    _, inputs = river_models()
    with_note = [{**x, "note": "free text"} for x in inputs[:10]]
    for fast_path in (True, False):  # the documented route behaves as the fast path
        with serve(fast_path=fast_path) as (client, app):
            post = lambda g, body: client.post(f"/v1/graphs/{g}/predict", json=body)  # noqa: E731
            runs = 0
            for x in [*inputs[:10], *with_note]:
                shadowed_bytes = post("s", {"features": x, "id": sampled[0]})
                unshadowed_bytes = post("s", {"features": x, "id": skipped[0]})
                runs += 1
                assert shadowed_bytes.status_code == 200
                assert shadowed_bytes.content == unshadowed_bytes.content  # byte-identical
                plain = post("plain", {"features": x}).json()
                assert {**shadowed_bytes.json(), "graph": "plain", "decided_by": "root"} == {
                    **plain,
                    "graph_version": shadowed_bytes.json()["graph_version"],
                }
            batch = post("s", {"instances": with_note, "ids": [sampled[0]] * len(with_note)})
            assert batch.status_code == 200
            runs += len(with_note)

            def shadow_samples() -> dict[str, float]:
                return {
                    s.name + str(sorted(s.labels.items())): s.value
                    for f in metrics.registry.collect()
                    for s in f.samples
                    if s.name.startswith("riverstream_shadow_")
                }

            labels = [("graph", "s"), ("shadow", "root.shadow.shadows[0]")]
            failed = [("graph", "s"), ("reason", "model_input"), ("shadow", labels[1][1])]
            offset = 0 if fast_path else 1  # the second app shares the test's registry
            # The documented route queues a request's shadows in a background task that runs
            # after the response has reached the client: wait for every run, not just an
            # empty queue (under load the last request's task may not have queued them yet).
            expected = runs * (1 + offset)
            runs_key = f"riverstream_shadow_runs_total{labels}"
            kit.wait_until(
                lambda key=runs_key, n=expected: shadow_samples().get(key, 0) >= n, timeout=30
            )
            assert app.state.graphs.shadows.wait_idle(10)
            fam = shadow_samples()
            assert fam[runs_key] == expected
            assert fam[f"riverstream_shadow_errors_total{failed}"] == 20 * (1 + offset)
            agreements = fam.get(f"riverstream_shadow_agreements_total{labels}", 0)
            assert 0 < agreements <= 10 * (1 + offset)


def test_requests_without_an_id_are_shadowed_and_agreement_is_with_the_primary(
    kit: Any, serve, graphs: GraphRegistry, metrics: ServingMetrics
) -> None:
    """``percent`` is a share of requests: those without an id are sampled too (a random
    draw). A shadow is compared with its shadow node's primary (here the same model: it always
    agrees), not with the graph's answer, which a rule above the shadow node overrides."""
    shadowed = {"shadow": {"primary": "lr", "shadows": ["lr"], "percent": 50}}
    flip = {"when": {"feature": "https", "is_missing": False}, "then": {"decision": "flip", "prediction": "override"}}  # fmt: skip
    graphs.apply({"name": "s", "root": {"rules": {"over": shadowed, "rules": [flip]}}})
    _, inputs = river_models()
    n = 60
    with serve() as (client, app):
        for i in range(n):
            r = client.post("/v1/graphs/s/predict", json={"features": inputs[i % len(inputs)]})
            assert r.status_code == 200 and r.json()["prediction"] == "override"
            assert r.json()["probabilities"] == {"false": 0.0, "true": 0.0, "override": 1.0}
        labels = '{graph="s",shadow="root.rules.over.shadow.shadows[0]"}'

        def counts() -> tuple[float, float]:
            text = client.get("/metrics").text
            found = {"runs": 0.0, "agreements": 0.0}
            for line in text.splitlines():
                for what in found:
                    if line.startswith(f"riverstream_shadow_{what}_total{labels} "):
                        found[what] = float(line.split()[-1])
            return found["runs"], found["agreements"]

        # every shadow that ran agreed with its primary (and some ran: about half of them)
        kit.wait_until(lambda: (c := counts())[0] >= 5 and c[0] == c[1], timeout=30)
        assert app.state.graphs.shadows.wait_idle(10)
        runs, agreements = counts()
        assert 5 <= runs <= n - 5 and agreements == runs

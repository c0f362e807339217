"""Shadows scored on ground truth, on real Kafka and Redis: a graph predict logged with its id
(``"log": true``) logs the served answer and each shadow's, the labels come later over HTTP, and
the learner scores both: the served metric of the graph and of its shadow, and the paired
comparison primary vs shadow, equal a hand computation from the responses, the logged shadow
answers and the labels."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from typing import Any

import orjson
import pytest
from river import datasets, metrics

from learners.compare import PairedComparison
from learners.predictor import ServedModel
from learners.served import shadow_pair
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.kafka.client import read_all
from stream.learner.runtime import build_learner, snapshot_store
from stream.registry.graphs import GraphRegistry
from stream.store.comparisons import ComparisonStore
from tests.conftest import settings_env
from tests.serving.test_feedback import TOKEN, api, bearer
from tests.support.pipeline import fast, learn

pytestmark = pytest.mark.integration

BOOT, LIVE = 150, 120
BRANCH = "root.shadow.shadows[0]"
SHADOW = f"g@{BRANCH}"


def test_logged_graph_answers_and_their_shadows_are_scored_against_the_labels(
    settings: Settings, kit: Any
) -> None:
    s = fast(settings, ingest_token=TOKEN, serve_poll_seconds=0.2)
    samples = list(itertools.islice(datasets.Phishing(), BOOT + LIVE))
    specs = [
        ModelSpec("lr", "logreg", ("Accuracy",)),
        ModelSpec("tree", "hoeffding", ("Accuracy",)),
    ]
    with api(kit, s) as client:
        events = [
            {"id": f"b{i}", "time": i, "features": x} for i, (x, _) in enumerate(samples[:BOOT])
        ]
        labels = [
            {"id": f"b{i}", "time": i + 0.5, "label": y} for i, (_, y) in enumerate(samples[:BOOT])
        ]
        assert (
            client.post("/v1/features", json={"events": events}, headers=bearer()).status_code
            == 202
        )
        assert (
            client.post("/v1/labels", json={"labels": labels}, headers=bearer()).status_code == 202
        )
        learn(s, specs)
        store = snapshot_store(s)
        graph = {"name": "g", "root": {"shadow": {"primary": "lr", "shadows": ["tree"]}}}
        GraphRegistry(store.client, store.keys.prefix, by="test").apply(graph, reason="test")
        kit.wait_until(lambda: client.get("/v1/graphs/g").status_code == 200)

        answers = []
        for i, (x, _) in enumerate(samples[BOOT:], start=BOOT):
            body = {"id": f"p{i}", "time": i, "features": x, "log": True}
            assert client.post("/v1/graphs/g/predict", json=body).status_code == 401
            response = client.post("/v1/graphs/g/predict", json=body, headers=bearer())
            assert response.status_code == 200, response.text
            answers.append(response.json())
            unlogged = client.post("/v1/graphs/g/predict", json={"id": f"p{i}", "features": x})
            assert unlogged.status_code == 200
            del answers[-1]["id"], answers[-1]["time"]
            assert unlogged.json() == answers[-1]  # the same answer, logged or not
        bad = client.post("/v1/graphs/g/predict", json={"features": samples[0][0], "log": True},
                          headers=bearer())  # fmt: skip
        assert bad.status_code == 422 and "id" in bad.json()["detail"]
        for i, (_, y) in enumerate(samples[BOOT:], start=BOOT):
            label = {"id": f"p{i}", "time": i + 0.5, "label": y}
            assert client.post("/v1/labels", json=label, headers=bearer()).status_code == 202

    # The predictions topic: the served answer and the shadow's, tagged with its branch.
    assert s.kafka_bootstrap_servers is not None
    records = [
        orjson.loads(r.value) for r in read_all(s.kafka_bootstrap_servers, [s.topic_predictions])
    ]
    served = {r["id"]: r for r in records if r.get("shadow") is None}
    shadow = {r["id"]: r for r in records if r.get("shadow") == BRANCH}
    assert len(records) == 2 * LIVE and len(served) == len(shadow) == LIVE
    [graph_version] = {a["graph_version"] for a in answers}
    tree_version = store.latest_version("tree")
    assert tree_version is not None
    state, meta = store.load_model("tree", tree_version)
    tree = ServedModel.build(
        "tree", state.model, version=tree_version, kind="classifier", meta=meta
    )
    for i, (x, _) in enumerate(samples[BOOT:], start=BOOT):
        assert served[f"p{i}"]["prediction"] == answers[i - BOOT]["prediction"]
        assert shadow[f"p{i}"]["prediction"] == tree.predict(x)[0]  # what the shadow answered

    learner = build_learner(s, specs)
    try:
        learner.run(exit_when_idle=0.5)
    finally:
        learner.source.close()

    # By hand: accuracy of the served and of the shadow answers, and their paired comparison.
    primary, other = metrics.Accuracy(), metrics.Accuracy()
    paired = PairedComparison(alpha=0.05)
    for i, (_, y) in enumerate(samples[BOOT:], start=BOOT):
        a, b = answers[i - BOOT]["prediction"], shadow[f"p{i}"]["prediction"]
        primary.update(y, a)
        other.update(y, b)
        paired.update_correct(a == y, b == y)
    core = learner.core
    values = core.served_metric_values()
    assert values[("g", graph_version)] == {"Accuracy": primary.get()}
    assert values[(SHADOW, graph_version)] == {"Accuracy": other.get()}
    pair = shadow_pair("g", graph_version, BRANCH)  # one comparison per graph version
    comparison = core.served_comparisons[pair]
    assert comparison.stats.to_dict() == paired.to_dict()
    stored = ComparisonStore(store.client, store.keys.prefix).get(*pair)
    assert stored is not None and stored.comparison.stats.n == LIVE
    shown = subprocess.run(
        [sys.executable, "-m", "stream", "models", "compare", *pair, "--json"],
        env=settings_env(s), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    row = json.loads(shown.stdout)
    assert row["n"] == LIVE and row["champion_loss"] == paired.loss_a
    assert row["challenger_loss"] == paired.loss_b and row["difference"] == paired.difference

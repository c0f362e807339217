"""Property: whatever the body, a graph answers 200 or a 4xx, never a 5xx.

The graph below uses every node kind (rules over a switch whose branches are a split, a weighted
ensemble by metric, a sequence passing an anomaly score on and a vote; shadows that raise on some
inputs), over real River models trained a bit and published to the real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from river import anomaly, datasets, linear_model, naive_bayes, preprocessing, tree

from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.registry.graphs import GraphRegistry
from stream.store.snapshots import SnapshotStore
from tests.support.fuzz import json_values, scalars

pytestmark = pytest.mark.integration

PHISHING = [
    "empty_server_form_handler", "popup_window", "https", "request_from_other_domain",
    "anchor_from_other_domain", "is_popular", "long_url", "age_of_domain", "ip_in_url",
]  # fmt: skip

EVERYTHING = {
    "name": "all",
    "root": {
        "shadow": {
            "primary": {
                "rules": {
                    "over": {
                        "switch": {
                            "cases": [
                                {
                                    "when": {"feature": "https", "gt": 0.5},
                                    "then": {
                                        "split": {
                                            "sticky_by": "user",
                                            "branches": [
                                                {"weight": 1, "node": "lr"},
                                                {
                                                    "weight": 2,
                                                    "node": {
                                                        "ensemble": {
                                                            "members": ["lr", "tree", "nb"],
                                                            "combine": "weighted",
                                                            "weights": "by_metric",
                                                        }
                                                    },
                                                },
                                            ],
                                        }
                                    },
                                },
                                {
                                    "when": {
                                        "any": [
                                            {"feature": "is_popular", "is_missing": True},
                                            {"feature": "color", "in": ["red", 1, 2.5]},
                                        ]
                                    },
                                    "then": {
                                        "sequence": {
                                            "steps": [{"model": "det", "as": "score"}, "seq"]
                                        }
                                    },
                                },
                            ],
                            "default": {"ensemble": {"members": ["lr", "nb"], "combine": "vote"}},
                        }
                    },
                    "rules": [
                        {"when": {"feature": "long_url", "ge": 1}, "then": {"decision": "review"}},
                        {
                            "when": {"not": {"output": "proba.true", "le": 0.9}},
                            "then": {"decision": "block", "prediction": True},
                        },
                    ],
                }
            },
            "shadows": ["raw", {"ensemble": {"members": ["lr", "raw"]}}],
        }
    },
}

feature_names = st.sampled_from([*PHISHING, "user", "color", "score"]) | st.text(max_size=12)
features = st.dictionaries(feature_names, scalars | json_values, max_size=12)
ids = st.none() | st.text(max_size=300) | st.integers() | json_values
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda f, i: json.dumps({"features": f, **({} if i is None else {"id": i})}).encode(),
        features | json_values,
        ids,
    ),
    st.builds(
        lambda xs, i: json.dumps({"instances": xs, **({} if i is None else {"ids": i})}).encode(),
        st.lists(features | json_values, max_size=5) | json_values,
        st.none() | st.lists(ids, max_size=5) | json_values,
    ),
    st.builds(
        lambda f, extra: json.dumps({"features": f, **extra}).encode(),
        features,
        st.dictionaries(st.text(max_size=5), json_values, max_size=2),
    ),
)
names = st.sampled_from(["all", "ab", "missing", "a b", "%00", "all/../ab"])


def trained() -> dict[str, tuple[Any, str]]:
    data = list(datasets.Phishing())[:150]
    models: dict[str, tuple[Any, str]] = {
        "lr": (preprocessing.StandardScaler() | linear_model.LogisticRegression(), "classifier"),
        "tree": (tree.HoeffdingTreeClassifier(grace_period=30), "classifier"),
        "nb": (naive_bayes.GaussianNB(), "classifier"),
        "raw": (linear_model.LogisticRegression(), "classifier"),
        "det": (preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=1), "anomaly"),
        "seq": (preprocessing.StandardScaler() | linear_model.LogisticRegression(), "classifier"),
    }
    for x, y in data:
        for name in ("lr", "tree", "nb", "raw"):
            models[name][0].learn_one(x, y)
        models["det"][0].learn_one(x)
        models["seq"][0].learn_one({**x, "score": models["det"][0].score_one(x)}, y)
    return models


@pytest.fixture
def api(kit, store: SnapshotStore, redis_url: str, prefix: str) -> Iterator[httpx.Client]:
    metrics = {"lr": {"Accuracy": 0.8}, "tree": {"MAE": 0.3}, "nb": {}}
    for name, (model, kind) in trained().items():
        kit.publish(store, name, model, kind, metrics=metrics.get(name))
    graphs = GraphRegistry(store.client, store.keys.prefix)
    graphs.apply(EVERYTHING)
    graphs.apply({"name": "ab", "root": {"split": {"branches": [
        {"weight": 1, "node": "lr"}, {"weight": 1, "node": "nb"},
    ]}}})  # fmt: skip
    settings = kit.make_settings(redis_url, prefix, max_features=12)
    app = create_app(
        settings, metrics=ServingMetrics(CollectorRegistry()), max_instances=4, max_body_bytes=4096
    )
    with kit.serve_in_thread(app) as client:
        kit.wait_until(lambda: client.get("/readyz").status_code == 200)
        kit.wait_until(lambda: client.get("/v1/graphs/all").status_code == 200)
        yield client


@hsettings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=names, body=bodies)
def test_no_body_gives_a_5xx(api: httpx.Client, name: str, body: bytes) -> None:
    response = api.post(f"/v1/graphs/{name}/predict", content=body)
    assert response.status_code < 500, (response.status_code, response.text)
    data = response.json()
    if response.status_code == 200:
        # the client resolves dot segments: "all/../ab" asks for "ab"
        assert data["graph"] == name.split("/")[-1] and isinstance(data["graph_version"], int)
        answers = data.get("predictions", [data])
        assert all({"versions", "prediction", "path", "decided_by"} <= set(a) for a in answers)
    elif response.status_code == 422:
        assert data["detail"] and all({"loc", "msg", "type"} <= set(d) for d in data["detail"])
    else:
        assert response.status_code in (404, 413) and isinstance(data["detail"], str)


@hsettings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    x=st.fixed_dictionaries(
        {k: st.floats(0, 1) for k in PHISHING},
        optional={
            "user": st.integers(-(2**53), 2**53),
            "color": st.sampled_from([0, 1]),
        },
    ),
    request_id=st.none() | st.text(min_size=1, max_size=10),
)
def test_plausible_inputs_are_answered(
    api: httpx.Client, x: dict[str, Any], request_id: str | None
) -> None:
    """Numbers the models can use: every one is answered (the split keys on the feature or the
    id; when it has neither, the answer is a 422 naming what it needs)."""
    body: dict[str, Any] = {"features": x} | ({} if request_id is None else {"id": request_id})
    response = api.post("/v1/graphs/all/predict", json=body)
    needs_key = x["https"] > 0.5 and "user" not in x and request_id is None
    if needs_key:
        assert response.status_code == 422 and "request id" in response.text
    else:
        assert response.status_code == 200, response.text
        assert response.json()["prediction"] in (True, False)

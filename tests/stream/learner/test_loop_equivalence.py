"""Promise 1: through real Kafka and Redis, the learner equals River's progressive validation."""

from __future__ import annotations

import itertools
from typing import cast

import pytest
from river import evaluate, metrics
from river.base.typing import Dataset

from learners.datasets import load_dataset, river_delay
from learners.specs import ModelSpec, build_estimator
from schemas.settings import Settings
from tests.support.pipeline import fast, final_model, learn, replay

DELAYS = [0, 1, 50, "random:0-80"]


def river_score(dataset: str, spec: str, metric: str, delay: str | int, seed: int = 1):
    model = build_estimator(spec)
    score = evaluate.progressive_val_score(
        cast(Dataset, load_dataset(dataset)),
        model,
        getattr(metrics, metric)(),
        delay=river_delay(delay, seed),
    )
    return score.get(), model


@pytest.mark.parametrize("delay", DELAYS)
def test_phishing_logreg_accuracy_and_rocauc(settings: Settings, delay: str | int) -> None:
    s = fast(settings)
    replay(s, "Phishing", delay)
    [summary] = learn(s, [ModelSpec("lr", "logreg", ("Accuracy", "ROCAUC"))])
    accuracy, river_model = river_score("Phishing", "logreg", "Accuracy", delay)
    rocauc, _ = river_score("Phishing", "logreg", "ROCAUC", delay)
    assert summary["metrics"] == {"Accuracy": accuracy, "ROCAUC": rocauc}
    assert summary["samples_learned"] == 1250
    assert summary["late_events"] == 0  # the exit line says whether River's order was kept
    ours = final_model(s, "lr").model
    for x, _ in itertools.islice(load_dataset("Phishing"), 0, 1250, 97):
        assert ours.predict_proba_one(x) == river_model.predict_proba_one(x)


@pytest.mark.parametrize("delay", DELAYS)
def test_trump_approval_linreg_mae(settings: Settings, delay: str | int) -> None:
    s = fast(settings)
    replay(s, "TrumpApproval", delay)
    [summary] = learn(s, [ModelSpec("reg", "linreg", ("MAE",))])
    mae, river_model = river_score("TrumpApproval", "linreg", "MAE", delay)
    assert summary["metrics"] == {"MAE": mae}
    ours = final_model(s, "reg").model
    for x, _ in itertools.islice(load_dataset("TrumpApproval"), 0, 1001, 83):
        assert ours.predict_one(x) == river_model.predict_one(x)


def test_two_models_in_one_learner_each_match_river(settings: Settings) -> None:
    s = fast(settings)
    replay(s, "Phishing", 10)
    summaries = learn(s, [ModelSpec("lr", "logreg"), ModelSpec("tree", "hoeffding")])
    got = {item["model"]: item["metrics"]["Accuracy"] for item in summaries}
    assert got["lr"] == river_score("Phishing", "logreg", "Accuracy", 10)[0]
    assert got["tree"] == river_score("Phishing", "hoeffding", "Accuracy", 10)[0]

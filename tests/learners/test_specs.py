"""Every preset honours the same contract; bad specs fail early with `ModelSpecError`."""

from __future__ import annotations

import copy
import pickle
import sys
import textwrap
from typing import Any

import pytest

from learners.datasets import load_dataset
from learners.specs import PRESETS, ModelSpec, model_kind, parse_model_option
from schemas.errors import ModelSpecError

DATA = {
    "classifier": list(load_dataset("Phishing", limit=300)),
    "regressor": list(load_dataset("TrumpApproval", limit=300)),
}
DATA["anomaly"] = DATA["classifier"]
EXPECTED_KIND = {
    "logreg": "classifier",
    "linreg": "regressor",
    "hoeffding": "classifier",
    "hoeffding-reg": "regressor",
    "arf": "classifier",
    "halfspace": "anomaly",
}


def _trained(preset: str):
    model: Any = ModelSpec("m", preset).build()
    kind = model_kind(model)
    for x, y in DATA[kind]:
        model.learn_one(x) if kind == "anomaly" else model.learn_one(x, y)
    return model, kind


def _outputs(model, kind: str, x: dict) -> tuple:
    if kind == "anomaly":
        return (model.score_one(x),)
    if kind == "classifier":
        return (model.predict_one(x), model.predict_proba_one(x))
    return (model.predict_one(x),)


def test_presets_are_exactly_the_documented_ones():
    assert set(PRESETS) == set(EXPECTED_KIND)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_builds_fresh_models_of_its_kind(preset):
    spec = ModelSpec("m", preset)
    first, second = spec.build(), spec.build()
    assert first is not second
    assert model_kind(first) == EXPECTED_KIND[preset]
    default = {"classifier": ["Accuracy"], "regressor": ["MAE"], "anomaly": []}
    assert [type(m).__name__ for m in spec.build_metrics()] == default[EXPECTED_KIND[preset]]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_pickles_round_trip_with_equal_predictions(preset):
    model, kind = _trained(preset)
    restored = pickle.loads(pickle.dumps(model))
    for x, _ in DATA[kind][:50]:
        assert _outputs(restored, kind, x) == _outputs(model, kind, x)


def test_deep_regression_tree_still_pickles():
    """E-BST splitters on a monotonic feature are linked lists (see learners.river_compat)."""
    model: Any = ModelSpec("m", "hoeffding-reg").build()
    for n, (x, y) in enumerate(load_dataset("TrumpApproval")):
        model.learn_one(x, y)
        if n % 100 == 99:
            restored = pickle.loads(pickle.dumps(model))
            assert restored.predict_one(x) == model.predict_one(x)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_predicting_does_not_mutate_the_input(preset):
    model, kind = _trained(preset)
    for x, _ in DATA[kind][:50]:
        before = copy.deepcopy(x)
        _outputs(model, kind, x)
        assert x == before


def test_user_factory_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            from river import linear_model, preprocessing

            def scaled_pa():
                return preprocessing.StandardScaler() | linear_model.PAClassifier()

            def not_a_model():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = parse_model_option("pa=my_models:scaled_pa", ["Accuracy", "F1"])
    assert model_kind(spec.build()) == "classifier"
    assert [type(m).__name__ for m in spec.build_metrics()] == ["Accuracy", "F1"]
    with pytest.raises(ModelSpecError, match="returned int, not a River estimator"):
        parse_model_option("x=my_models:not_a_model")
    with pytest.raises(ModelSpecError, match="has no callable 'nope'"):
        parse_model_option("x=my_models:nope")
    sys.modules.pop("my_models", None)


def test_bare_spec_is_named_after_itself():
    assert parse_model_option("hoeffding-reg").name == "hoeffding-reg"
    assert parse_model_option("river.linear_model:LinearRegression").name == "LinearRegression"


@pytest.mark.parametrize(
    ("option", "metrics", "message"),
    [
        ("m=lgoreg", (), "unknown model spec 'lgoreg'"),
        ("m=no_such_module_xyz:f", (), "cannot import 'no_such_module_xyz'"),
        ("m=river.linear_model:Nope", (), "has no callable 'Nope'"),
        ("m=river.preprocessing:StandardScaler", (), "not a classifier, regressor or anomaly"),
        ("m=logreg", ("Accurcy",), "unknown metric 'Accurcy'"),
        ("m=logreg", ("ConfusionMatrix",), "'ConfusionMatrix' has no single value"),
        ("m=logreg", ("FBeta",), "cannot be built without parameters"),
        ("m=logreg", ("MAE",), "metric 'MAE' does not work with model 'm'"),
        ("m=linreg", ("Accuracy",), "metric 'Accuracy' does not work with model 'm'"),
        ("m=halfspace", ("Accuracy",), "does not work with model 'm' (halfspace, an anomaly"),
        ("m=logreg", ("Accuracy", "Accuracy"), "a metric is named twice"),
        ("bad name=logreg", (), "invalid model name 'bad name'"),
        ("=logreg", (), "empty name or spec"),
    ],
)
def test_bad_specs_raise_model_spec_error(option, metrics, message):
    with pytest.raises(ModelSpecError) as info:
        parse_model_option(option, metrics)
    assert message in str(info.value)


def test_anomaly_detector_can_be_scored_with_rocauc():
    spec = parse_model_option("hst=halfspace", ["ROCAUC"])
    assert [type(m).__name__ for m in spec.build_metrics()] == ["ROCAUC"]

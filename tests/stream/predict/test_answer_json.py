"""`ModelAnswers.answer_json` (what `score` writes to JSON Lines): the same bytes as the body's
JSON (`ModelAnswers.answer`, `encode`), whether the commonest answer is written from pieces
or another goes the general way; and a model's error is the same `SchemaError`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import linear_model, preprocessing, tree, utils

from learners.predictor import ServedModel
from schemas.errors import SchemaError
from stream.predict.answer import ModelAnswers


def _logreg() -> Any:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for i in range(200):
        model.learn_one({"a": i % 7, "b": (i * 3) % 5}, i % 7 > 3)
    return model


def _saturating() -> Any:
    """Answers probabilities of exactly 0 and 1 (River's sigmoid gives the integers 0 and 1
    past ± 30), and 0.5 at 0."""
    model = linear_model.LogisticRegression()
    model._weights = utils.VectorDict({"a": 1.0})
    return model


def _multiclass() -> Any:
    model = tree.HoeffdingTreeClassifier(grace_period=20)
    for i in range(100):
        model.learn_one({"a": float(i % 9)}, "abc"[i % 3])
    return model


def _regressor() -> Any:
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    for i in range(100):
        model.learn_one({"a": i % 7}, float(i % 7) * 2)
    return model


MODELS = {
    "logreg": ("classifier", _logreg()),
    "saturating": ("classifier", _saturating()),
    "multiclass": ("classifier", _multiclass()),
    "regressor": ("regressor", _regressor()),
}
ANSWERS = {
    name: ModelAnswers(ServedModel.build(name, model, version=7, kind=kind))
    for name, (kind, model) in MODELS.items()
}


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(sorted(ANSWERS)),
    row_id=st.text(max_size=12),
    a=st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, -40.0, 40.0, 1e300]),
    b=st.integers(-50, 50),
)
def test_the_json_alone_is_the_body_s_json(name: str, row_id: str, a: float, b: int) -> None:
    answers = ANSWERS[name]
    x = {"a": a, "b": b}
    try:
        expected = answers.answer(row_id, x)[1]
    except SchemaError as exc:
        with pytest.raises(SchemaError) as raised:
            answers.answer_json(row_id, x)
        assert str(raised.value) == str(exc)
        return
    body, encoded = answers.answer_json(row_id, x)
    assert body is None
    assert encoded == expected


def test_the_commonest_answer_takes_the_short_way() -> None:
    """Saturated and tied answers are the edge of the pieces (integers 0 and 1, 0.5)."""
    answers = ANSWERS["saturating"]
    for a, text in ((40.0, b'"true":1}'), (-40.0, b'"true":0}'), (0.0, b'"true":0.5}')):
        encoded = answers.answer_json("r", {"a": a})[1]
        assert text in encoded
        assert encoded == answers.answer("r", {"a": a})[1]

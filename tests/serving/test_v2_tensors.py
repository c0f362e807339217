"""`serving.v2_tensors`: the one-row answer (the commonest) gives the bytes of the general one,
whatever the labels and probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.v2_tensors import answer_head, binary_answer, one_row_answer, output_tensors

labels = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
    | st.sampled_from(["true", "1", "1.0", "", "None"])
    | st.integers(-3, 3).map(np.int64)
    | st.floats(-2, 2).map(np.float64)
    | st.booleans().map(np.bool_)
)
probabilities = st.none() | st.dictionaries(
    labels.filter(lambda c: c is not None), st.floats(0, 1) | st.floats(0, 1).map(np.float64),
    max_size=4,
)  # fmt: skip


@settings(max_examples=500)
@given(prediction=labels, proba=probabilities, samples=st.none() | st.integers(0, 10**6))
def test_one_row_answer_is_the_json_of_the_general_answer(
    prediction: Any, proba: Any, samples: int | None
) -> None:
    """Twice: the second answer reads the classes' pieces kept by the first."""
    head = {"model_name": "m", "model_version": "3", "parameters": {"samples_learned": samples}}
    tensors = output_tensors([prediction], [proba])
    expected = orjson.dumps(
        {**head, "outputs": list(tensors.values())}, option=orjson.OPT_NON_STR_KEYS
    )
    assert one_row_answer(answer_head(head), prediction, proba) == expected
    assert one_row_answer(answer_head(head), prediction, proba) == expected


def test_classes_equal_but_written_differently_are_not_confused() -> None:
    """1 == True == 1.0 and 0.0 == -0.0 as dict keys: each answer names its own classes."""
    for proba in ({True: 0.25, False: 0.75}, {1: 0.25, 0: 0.75}, {1.0: 0.25, 0.0: 0.75},
                  {1.0: 0.25, -0.0: 0.75}, {np.int64(1): 0.25, np.int64(0): 0.75}):  # fmt: skip
        expected = orjson.dumps(list(output_tensors([None], [proba]).values()))
        body = orjson.loads(one_row_answer(answer_head({"model_name": "m"}), None, proba))
        assert orjson.dumps(body["outputs"]) == expected


@given(prediction=st.booleans(), p=st.floats(0, 1), samples=st.none() | st.integers(0, 10**6))
def test_a_binary_answer_is_the_one_row_answer(
    prediction: bool, p: float, samples: int | None
) -> None:
    """A compiled linear classifier's ``{False: 1 - p, True: p}``, rendered without the loop."""
    head = answer_head({"model_name": "m", "parameters": {"samples_learned": samples}})
    proba = {False: 1.0 - p, True: p}
    assert binary_answer(head, prediction, proba) == one_row_answer(head, prediction, proba)
    numpy = {False: np.float64(1.0 - p), True: np.float64(p)}  # a loss answering numpy's floats
    assert binary_answer(head, prediction, numpy) == one_row_answer(head, prediction, numpy)

"""`serving.v2_tensors`: the one-row answer (the commonest) gives the tensors, and the bytes, of
the general one, whatever the labels and probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.v2_tensors import _one_row_tensors, output_tensors

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
@given(prediction=labels, proba=probabilities)
def test_one_row_tensors_are_the_general_ones(prediction: Any, proba: Any) -> None:
    fast = _one_row_tensors(prediction, proba)
    general = output_tensors([prediction], [proba])
    assert fast == general
    assert list(fast) == list(general)
    assert orjson.dumps(list(fast.values())) == orjson.dumps(list(general.values()))

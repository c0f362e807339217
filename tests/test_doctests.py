"""The runnable examples of serving/ and stream/snapshots.py (outside pytest's testpaths)."""

from __future__ import annotations

import doctest

import pytest

import learners.predictor
import serving.inputs
import stream.store.keys


@pytest.mark.parametrize("module", [serving.inputs, learners.predictor, stream.store.keys])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

"""Types of the C mean of an ensemble of classifiers (``learners/_ensemble_pass.c``)."""

from collections.abc import Sequence
from typing import Any

def configure(outcome: type[tuple[Any, ...]], /) -> None: ...
def mean_probabilities(
    outs: Sequence[tuple[Any, ...]], weights: Sequence[float] | None, /
) -> tuple[Any, dict[Any, float]] | None: ...

"""Types of the C pass of a standard scaler's learning (``learners/_linear_pass.c``)."""

from typing import Any

def scale_learn(
    x: dict[str, Any], counts: Any, means: Any, variances: Any, /
) -> dict[str, Any] | None: ...
def dot_scaled(
    x: dict[str, Any], means: Any, variances: Any, weights: dict[Any, Any], /
) -> float | None: ...
def sgd_learn(
    x: dict[str, Any],
    counts: Any,
    means: Any,
    variances: Any,
    weights: dict[Any, Any],
    intercept: Any,
    y: Any,
    loss_kind: int,
    loss: Any,
    clip: Any,
    lr: Any,
    intercept_lr: Any,
    /,
) -> float | None: ...
def dot_standardized(
    x: dict[str, Any], params: dict[Any, tuple[Any, float, float]], /
) -> float | None: ...

"""Types of the C passes of a learning Hoeffding tree's leaves (``learners/_tree_pass.c``)."""

from typing import Any

def configure(gaussian: type, var: type, mean: type, half_log_tau: float, /) -> None: ...
def update_gaussians(
    splitters: dict[Any, Any], x: dict[Any, Any], y: Any, w: float, disabled: Any, splitter: type, /
) -> int: ...
def add_log_densities(
    votes: dict[Any, float],
    classes: list[Any],
    x: dict[Any, Any],
    splitters: dict[Any, Any],
    splitter: type,
    /,
) -> bool: ...

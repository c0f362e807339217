"""The registry's pure decisions: which metric direction is better, whether the guarded policy
allows a promotion, the stack of promotions a rollback returns to, valid exclude ranges (no
I/O here; the records themselves are in `schemas.records`)."""

from __future__ import annotations

import contextlib
import getpass
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from schemas.errors import RegistryError
from schemas.records import HistoryEntry, Policy

_POINTER_ACTIONS = {"promote", "auto-promote", "rollback", "policy"}


# -- pure decisions ------------------------------------------------------------------------
def bigger_is_better(metric: str) -> bool:
    """Whether a higher value of the `river.metrics` class ``metric`` is better.

    >>> bigger_is_better("Accuracy"), bigger_is_better("MAE")
    (True, False)
    """
    from river import metrics

    cls = getattr(metrics, metric, None) if metric.isidentifier() else None
    if cls is not None:
        with contextlib.suppress(Exception):
            return bool(cls().bigger_is_better)
    raise RegistryError(f"unknown metric {metric!r}: not a class of river.metrics")


def guard_allows(
    candidate: Mapping[str, float], current: Mapping[str, float], policy: Policy
) -> tuple[bool, str]:
    """The ``guarded`` rule: is ``candidate`` not worse than ``current`` by more than the margin?

    >>> guard_allows({"Accuracy": 0.80}, {"Accuracy": 0.82}, Policy("guarded", 0.05))
    (True, 'Accuracy 0.8 vs 0.82 (margin 0.05)')
    >>> guard_allows({"MAE": 2.0}, {"MAE": 1.0}, Policy("guarded", 0.5))[0]
    False
    """
    common = sorted(set(candidate) & set(current))
    name = policy.metric or (common[0] if common else None)
    if name is None or name not in candidate or name not in current:
        return False, f"metric {name or '(none in common)'} missing"
    new, old = float(candidate[name]), float(current[name])
    if not (math.isfinite(new) and math.isfinite(old)):
        return False, f"{name} not finite ({new} vs {old})"
    gain = new - old if bigger_is_better(name) else old - new
    return gain >= -policy.margin, f"{name} {new:g} vs {old:g} (margin {policy.margin:g})"


def promotion_stack(entries: Iterable[HistoryEntry]) -> list[int]:
    """The promoted versions still "underneath" the current one, oldest first.

    A promotion pushes; a rollback to X drops everything above X (and X itself is kept).

    >>> e = lambda action, to: HistoryEntry(0, action, None, to, "", "")
    >>> promotion_stack([e("promote", 1), e("auto-promote", 2), e("promote", 3), e("rollback", 2)])
    [1, 2]
    >>> promotion_stack([e("promote", 1), e("promote", 5), e("rollback", 3), e("pin", 9)])
    [1, 3]
    """
    stack: list[int] = []
    for entry in entries:
        if entry.action not in _POINTER_ACTIONS or entry.to is None:
            continue
        if entry.action == "rollback":
            if entry.to in stack:
                del stack[len(stack) - stack[::-1].index(entry.to) :]
                continue
            while stack and stack[-1] > entry.to:
                stack.pop()
        if not stack or stack[-1] != entry.to:
            stack.append(entry.to)
    return stack


def rollback_target(
    entries: Iterable[HistoryEntry], current: int | None, older: Callable[[int], int | None]
) -> int | None:
    """The version a rollback returns to by default: the one promoted before ``current`` (the
    version served without a pin), else the newest version older than it, ``older(current)``.

    >>> e = lambda action, to: HistoryEntry(0, action, None, to, "", "")
    >>> rollback_target([e("promote", 1), e("auto-promote", 4)], 4, lambda v: v - 1)
    1
    >>> rollback_target([], 4, lambda v: v - 1), rollback_target([], None, lambda v: v - 1)
    (3, None)
    """
    if current is None:
        return None
    stack = promotion_stack(entries)
    if not stack or stack[-1] != current:
        stack.append(current)
    return stack[-2] if len(stack) >= 2 else older(current)


def rollback_target_from_tail(
    tail: Iterable[HistoryEntry], current: int | None
) -> tuple[bool, int | None]:
    """`rollback_target` from the newest entries of a history alone, when they decide it:
    ``(True, target)``, else ``(False, None)`` and the whole history is needed.

    They decide it when they hold no rollback: `promotion_stack` then only pushes, so the last
    two versions they push (consecutive repeats folded) are the top of the whole history's
    stack, whatever came before; one is enough when ``current`` is not it. Retention asks
    after every snapshot, and a history under an ``always`` or ``guarded`` policy ends with
    auto-promotions: its last entries, not its 10 000, decide (`bench/registry_history.py`).

    >>> e = lambda action, to: HistoryEntry(0, action, None, to, "", "")
    >>> rollback_target_from_tail([e("auto-promote", 7), e("prune", None), e("auto-promote", 8)], 8)
    (True, 7)
    >>> rollback_target_from_tail([e("auto-promote", 8)], 9), rollback_target_from_tail([], 9)
    ((True, 8), (False, None))
    >>> rollback_target_from_tail([e("promote", 3), e("promote", 5), e("rollback", 4)], 4)
    (False, None)
    """
    if current is None:
        return True, None
    pushed: list[int] = []
    for entry in tail:
        if entry.action not in _POINTER_ACTIONS or entry.to is None:
            continue
        if entry.action == "rollback":
            return False, None
        if not pushed or pushed[-1] != entry.to:
            pushed.append(entry.to)
    if len(pushed) >= 2:
        return True, pushed[-2] if pushed[-1] == current else pushed[-1]
    if pushed and pushed[0] != current:
        return True, pushed[0]
    return False, None


def check_ranges(ranges: Sequence[Sequence[float]]) -> list[list[float]]:
    """Validated ``[from_time, to_time]`` ranges (finite, from < to).

    >>> check_ranges([(1, 2.5)])
    [[1.0, 2.5]]
    >>> check_ranges([(3, 1)])
    Traceback (most recent call last):
    ...
    schemas.errors.RegistryError: bad exclude range 3-1: from must be before to
    """
    out = []
    for pair in ranges:
        if len(pair) != 2:
            raise RegistryError(f"bad exclude range {pair!r}: give FROM-TO")
        a, b = float(pair[0]), float(pair[1])
        if not (math.isfinite(a) and math.isfinite(b)):
            raise RegistryError(f"bad exclude range {a:g}-{b:g}: times must be finite")
        if not a < b:
            raise RegistryError(f"bad exclude range {a:g}-{b:g}: from must be before to")
        out.append([a, b])
    return out


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER") or "unknown"


def _int(raw: bytes | None) -> int | None:
    return None if raw is None else int(raw)

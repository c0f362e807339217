"""The registry's records and pure decisions: keys, policies, history entries, rollback
commands, and the rules that decide promotions and rollback targets (no I/O here)."""

from __future__ import annotations

import dataclasses
import getpass
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.errors import RiverstreamError
from stream.store.snapshots import SnapshotMeta

POLICIES = ("always", "manual", "guarded")
RESUMES = ("skip", "replay")
_POINTER_ACTIONS = {"promote", "auto-promote", "rollback", "policy"}

PolicyName = Literal["always", "manual", "guarded"]
Resume = Literal["skip", "replay"]


class RegistryError(RiverstreamError):
    """A registry operation was refused or failed; nothing was changed."""


@dataclass(frozen=True)
class RegistryKeys:
    """The registry's Redis keys, as a pure function of the store prefix.

    >>> k = RegistryKeys("rs")
    >>> k.pin("lr"), k.history("lr"), k.commands
    ('rs:model:lr:pin', 'rs:model:lr:history', 'rs:learner:commands')
    """

    prefix: str

    def promoted(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:promoted"

    def pin(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:pin"

    def history(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:history"

    def policy(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:policy"

    def retention(self, model: str) -> str:
        return f"{self.prefix}:model:{model}:retention"

    @property
    def commands(self) -> str:
        return f"{self.prefix}:learner:commands"


@dataclass(frozen=True)
class Policy:
    """How new snapshots of a model are promoted; ``metric`` None means the first in name order."""

    policy: PolicyName = "always"
    margin: float = 0.0
    metric: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a model's history; ``detail`` holds action-specific extras."""

    time: float
    action: str
    from_: int | None
    to: int | None
    reason: str
    by: str
    resume: str | None = None
    exclude: list[list[float]] | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["from"] = data.pop("from_")
        return data

    @classmethod
    def from_json(cls, raw: bytes | str) -> HistoryEntry:
        """Tolerant: fields missing from an entry (older or foreign writers) take defaults."""
        try:
            data = json.loads(raw)
            return cls(
                time=float(data.get("time", 0.0)),
                action=str(data.get("action", "?")),
                from_=data.get("from"),
                to=data.get("to"),
                reason=str(data.get("reason", "")),
                by=str(data.get("by", "")),
                resume=data.get("resume"),
                exclude=data.get("exclude"),
                detail=dict(data.get("detail") or {}),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise RegistryError(f"unreadable history entry {raw!r}: {exc}") from None


@dataclass(frozen=True)
class RollbackCommand:
    """What the learner must do after a rollback (popped from ``P:learner:commands``).

    ``exclude`` holds closed ranges ``[from_time, to_time]``: with ``resume == "replay"`` events
    whose time t satisfies ``from_time <= t <= to_time`` are not learned again.
    """

    id: str
    model: str
    action: str
    to: int
    resume: Resume
    exclude: list[list[float]]
    at: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> RollbackCommand:
        data = json.loads(raw)
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class VersionInfo:
    """A version's metadata and where the pointers stand."""

    meta: SnapshotMeta
    promoted: bool
    pinned: bool
    serving: bool
    has_checkpoint: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.meta),
            "promoted": self.promoted,
            "pinned": self.pinned,
            "serving": self.serving,
            "has_checkpoint": self.has_checkpoint,
        }


# -- pure decisions ------------------------------------------------------------------------
def bigger_is_better(metric: str) -> bool:
    """Whether a higher value of the `river.metrics` class ``metric`` is better.

    >>> bigger_is_better("Accuracy"), bigger_is_better("MAE")
    (True, False)
    """
    from river import metrics

    cls = getattr(metrics, metric, None) if metric.isidentifier() else None
    try:
        return bool(cls().bigger_is_better)  # type: ignore[misc]
    except Exception:
        raise RegistryError(f"unknown metric {metric!r}: not a class of river.metrics") from None


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


def check_ranges(ranges: Sequence[Sequence[float]]) -> list[list[float]]:
    """Validated ``[from_time, to_time]`` ranges (finite, from < to).

    >>> check_ranges([(1, 2.5)])
    [[1.0, 2.5]]
    >>> check_ranges([(3, 1)])
    Traceback (most recent call last):
    ...
    stream.registry.policy.RegistryError: bad exclude range 3-1: from must be before to
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

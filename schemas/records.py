"""Records shared by the rooms: snapshot and checkpoint metadata, registry history entries,
policies and rollback commands. Types and their JSON forms only; no I/O."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

from schemas.errors import RegistryError, SnapshotError

PolicyName = Literal["always", "manual", "guarded"]
Resume = Literal["skip", "replay"]

# Typed as tuples of the literals, so that ``x in RESUMES`` narrows a str to `Resume`.
POLICIES: tuple[PolicyName, ...] = ("always", "manual", "guarded")
RESUMES: tuple[Resume, ...] = ("skip", "replay")


def river_version() -> str:
    try:
        import river

        return str(river.__version__)
    except Exception:  # pragma: no cover - river is a dependency
        return "unknown"


class JsonRecord:
    """JSON (de)serialisation of a frozen dataclass; unreadable JSON is a `SnapshotError`."""

    _what: ClassVar[str]
    # Set by @dataclass on every subclass; declared so that the type checker sees a dataclass.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        try:
            data = json.loads(raw)
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
        except (ValueError, TypeError, KeyError) as exc:
            raise SnapshotError(f"unreadable {cls._what}: {exc!r}") from None


@dataclass(frozen=True)
class SnapshotMeta(JsonRecord):
    """Everything known about one version of one model, stored beside its blob."""

    _what: ClassVar[str] = "snapshot metadata"

    model: str
    version: int
    created_at: float
    samples_learned: int
    metrics: dict[str, float]
    offsets: dict[str, int]
    river_version: str
    python_version: str
    size: int
    sha256: str
    chunks: int
    kind: str
    spec: str

    @classmethod
    def describe(
        cls,
        model: str,
        blob: bytes,
        *,
        kind: str,
        spec: str,
        samples_learned: int,
        metrics: Mapping[str, float],
        offsets: Mapping[str, int],
        created_at: float | None = None,
    ) -> SnapshotMeta:
        """Metadata for ``blob``; `SnapshotStore.write` fills in version and chunks."""
        return cls(
            model=model,
            version=0,
            created_at=time.time() if created_at is None else created_at,
            samples_learned=samples_learned,
            metrics=dict(metrics),
            offsets=dict(offsets),
            river_version=river_version(),
            python_version=sys.version.split()[0],
            size=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
            chunks=0,
            kind=kind,
            spec=spec,
        )


@dataclass(frozen=True)
class CheckpointMeta(JsonRecord):
    """The learner checkpoint of one version: its blob and the input offsets it covers."""

    _what: ClassVar[str] = "checkpoint metadata"

    version: int
    created_at: float
    size: int
    sha256: str
    chunks: int
    offsets: dict[str, int]


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

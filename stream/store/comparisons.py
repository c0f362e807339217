"""The champion/challenger comparisons in Redis: what the learner wrote with its latest snapshot.

The learner keeps its comparisons inside the learning core, so they are checkpointed with the
models (exactly once). With every snapshot it also writes each one here, as JSON
(`learners.comparisons.ComparisonRecord` plus the snapshot version and the time), for readers
that must not unpickle a checkpoint nor import River: ``riverstream models compare`` and the
promotion policy (`stream.registry.challenger`). Keys (`stream.store.keys.RedisKeys`)::

    P:comparisons                          set of "CHAMPION:CHALLENGER"
    P:comparison:CHAMPION:CHALLENGER       the latest record of the pair

Only the latest record of a pair is kept: the comparison at an earlier version is in that
version's checkpoint. A pair the learner stopped comparing keeps its last record (with its
version, so a reader can tell it is old).

A pair is kept in one order only (``--compare all`` keeps the earlier model as the champion):
`ComparisonStore.find` reads either order, the reversed one mirrored
(`learners.compare.mirrored`), for every reader that names a champion and a challenger (the
operator's ``models compare``, the promotion policy).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from learners.compare import ComparisonSummary, mirrored
from learners.comparisons import ComparisonRecord, ModelComparison, Pair
from schemas.errors import SnapshotError
from stream.store.keys import RedisKeys
from stream.store.snapshots import wrapped


@dataclass(frozen=True, slots=True)
class StoredComparison:
    """A comparison as the learner wrote it with snapshot ``version`` at ``written_at``.

    ``mirrored``: read the other way round (`ComparisonStore.find`): ``pair``, `summary` and
    `to_dict` are those of the challenger against the champion of ``comparison`` (which stays
    as the learner wrote it)."""

    version: int
    written_at: float
    comparison: ModelComparison
    mirrored: bool = False

    @property
    def pair(self) -> Pair:
        """``(champion, challenger)`` as read (swapped when mirrored)."""
        c = self.comparison
        return (c.challenger, c.champion) if self.mirrored else (c.champion, c.challenger)

    def summary(self, margin: float = 0.0, min_labels: int = 0) -> ComparisonSummary:
        """The statistic's summary; the decision waits for the larger of ``min_labels`` and the
        comparison's own minimum (asymptotic regression comparisons need a few hundred)."""
        needed = max(min_labels, self.comparison.min_samples)
        summary = self.comparison.stats.summary(margin, needed)
        return mirrored(summary) if self.mirrored else summary

    def to_dict(self, margin: float = 0.0, min_labels: int = 0) -> dict[str, Any]:
        """JSON-ready: who, how, at which version, and the summary (infinities as None)."""
        summary = {
            key: (None if isinstance(value, float) and not _finite(value) else value)
            for key, value in self.summary(margin, min_labels).items()
        }
        c = self.comparison
        champion, challenger = self.pair
        extra = {"mirrored": True} if self.mirrored else {}
        return {
            "champion": champion,
            "challenger": challenger,
            **extra,
            "version": self.version,
            "written_at": self.written_at,
            "loss": c.loss,
            "alpha": c.stats.alpha,
            "margin": margin,
            "min_labels": max(min_labels, c.min_samples),
            **summary,
        }


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


class ComparisonStore:
    """The comparisons under ``prefix``; ``client`` may decode responses or not."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.keys = RedisKeys(prefix)

    def write(
        self, version: int, records: Sequence[ComparisonRecord], now: float | None = None
    ) -> None:
        """Store ``records`` as of snapshot ``version`` (one MULTI/EXEC)."""
        if not records:
            return
        written_at = time.time() if now is None else now
        with wrapped(f"comparisons of v{version}"):
            pipe = self.client.pipeline(transaction=True)
            for record in records:
                champion, challenger = record["champion"], record["challenger"]
                data = {**record, "version": version, "written_at": written_at}
                pipe.set(self.keys.comparison(champion, challenger), json.dumps(data))
                pipe.sadd(self.keys.comparisons, f"{champion}:{challenger}")
            pipe.execute()

    def pairs(self) -> list[Pair]:
        """Every pair with a stored comparison, sorted."""
        with wrapped("comparison pairs"):
            raw = self.client.smembers(self.keys.comparisons)
        pairs = []
        for member in raw:
            champion, _, challenger = _text(member).partition(":")
            pairs.append((champion, challenger))
        return sorted(pairs)

    def get(self, champion: str, challenger: str) -> StoredComparison | None:
        """The latest comparison of ``champion`` with ``challenger``, or None."""
        with wrapped(f"comparison {champion}:{challenger}"):
            raw = self.client.get(self.keys.comparison(champion, challenger))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return StoredComparison(
                int(data["version"]), float(data["written_at"]), ModelComparison.from_record(data)
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(
                f"comparison {champion}:{challenger} is unreadable: {exc}"
            ) from None

    def find(self, champion: str, challenger: str) -> StoredComparison | None:
        """The comparison of ``champion`` with ``challenger`` in whichever order the learner
        keeps it (the reversed pair mirrored), or None when it compares neither."""
        stored = self.get(champion, challenger)
        if stored is not None:
            return stored
        reversed_ = self.get(challenger, champion)
        return None if reversed_ is None else dataclasses.replace(reversed_, mirrored=True)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw

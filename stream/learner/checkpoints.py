"""The learner's checkpoints: what a snapshot saves, when one is due, and continuing from one.

`LearnerCheckpoints` is the part of `stream.learner.loop.Learner` that follows the protocol of
`stream.checkpoint.protocol`: a snapshot every N labels or T seconds (the first as soon as
labels were learned), holding only processed events, retried through a Redis outage (Redis
unreachable, or refusing writes for a while: `stream.store.snapshots.transient`); the final one
written in-process at shutdown; and, the other way, adopting a restored checkpoint and seeking
every partition to its offsets.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import redis

from learners.comparisons import ComparePairs
from learners.core import LearningCore
from learners.specs import ModelSpec
from learners.watermark import Watermark
from schemas.errors import SnapshotError
from schemas.settings import Settings
from stream.checkpoint.protocol import (
    Offsets,
    Restored,
    SkipRanges,
    SnapshotResult,
    Snapshotter,
    offsets_key,
    resume_positions,
)
from stream.kafka.client import RecordSource
from stream.learner.idleness import Idleness
from stream.learner.live import LivePublisher
from stream.learner.observing import LearnerStats
from stream.learner.outage import Outage
from stream.learner.trace import LINEAGE_EXTRA, TraceRecorder
from stream.registry.owners import claimed_owners
from stream.store.snapshots import (
    FENCE_FIELDS,
    FencedError,
    RedisUnavailableError,
    fenced_error,
    wrapped,
)

if TYPE_CHECKING:
    from stream.learner.observing import LearnerView, Observer

log = logging.getLogger(__name__)

_APPLIED_KEPT = 1000
FAILED_FIRST_RETRY_SECONDS = 0.5
FAILED_MAX_RETRY_SECONDS = 30.0
"""A snapshot that failed for a reason that is no outage (a registry step raising, a model
handed over): retried after 0.5 s, then twice as long each time, 30 s at most. Each attempt
writes a whole version first, so retrying at each pass of the loop piled them up in Redis."""

Source = tuple[int, int]


class LearnerCheckpoints:
    """Snapshots and restores of a learner (the attributes are set by `Learner.__init__`)."""

    settings: Settings
    specs: list[ModelSpec]
    source: RecordSource
    core: LearningCore
    offsets: Offsets
    watermark: Watermark
    idleness: Idleness
    snapshotter: Snapshotter
    live: LivePublisher
    outage: Outage
    trace: TraceRecorder
    stats: LearnerStats
    observer: Observer | None
    clock: Callable[[], float]
    compare: ComparePairs
    excluded: list[tuple[float, float]]
    applied: list[str]
    _topics: tuple[str, str]
    _sources: list[Source]
    _skip: SkipRanges
    _stop: threading.Event
    _labels_at_snapshot: int
    _last_snapshot_at: float
    _snapshot_failed: bool
    _failed_backoff: float
    _releases_unread: bool  # a model dropped as handed over since the commands were last read
    _failed_retry_at: float
    _first_snapshot_due: bool
    _last_command_check: float

    def _adopt(self, restored: Restored) -> None:
        """Continue from a restored checkpoint (at start, or on a rollback with replay)."""
        self.core = restored.core
        self.trace.adopt(self.core, restored.extras)
        self.core.set_comparisons(self.compare)  # the restored ones go on, new ones start
        self.offsets = restored.offsets
        self.watermark = restored.extras.get("watermark") or Watermark(self._sources)
        for span in restored.extras.get("excluded", []):
            if tuple(span) not in self.excluded:
                self.excluded.append(tuple(span))
        skip = restored.extras.get("skip", {})
        self._skip = {key: [(a, b) for a, b in ranges] for key, ranges in skip.items()}

    def _seek(self) -> None:
        positions = {
            (self._topics[t], p): self.offsets.get(offsets_key(self._topics[t], p), -1)
            for t, p in self._sources
        }
        self.source.assign(positions)
        self.idleness.reset()
        self._labels_at_snapshot = self.core.counters.labels_joined

    def extras(self) -> dict[str, Any]:
        """Adapter state saved in the checkpoint beside the core."""
        return {
            "watermark": self.watermark,
            "excluded": list(self.excluded),
            "applied": self.applied[-_APPLIED_KEPT:],
            LINEAGE_EXTRA: self.trace.extra(),
        }

    def _maybe_snapshot(self, now: float) -> None:
        result = self.snapshotter.poll()
        if result is not None:
            self._record(result)
        if self.snapshotter.busy or not self.outage.due():
            return
        if self._snapshot_failed and now < self._failed_retry_at:
            return  # a failure that is no outage: retried with its own backoff
        labels = self.core.counters.labels_joined - self._labels_at_snapshot
        due = (
            self._snapshot_failed  # retried as soon as the backoff allows
            or (not self.outage.up and self.outage.writes_failed)  # only a write ends it
            or (self._first_snapshot_due and labels > 0)
            or labels >= self.settings.snapshot_every_labels
            or (labels > 0 and now - self._last_snapshot_at >= self.settings.snapshot_every_seconds)
        )
        if due:
            self.snapshot_now()

    def snapshot_now(self, *, stalls: bool = True) -> SnapshotResult | None:
        """Checkpoint what has been processed. Events read but still buffered are left out
        (they are read again after a restore), so the checkpoint's size does not grow with
        the read-ahead: pickling 100k buffered events cost 0.1-0.25 s (measured)."""
        self._labels_at_snapshot = self.core.counters.labels_joined
        self._last_snapshot_at = self.clock()
        with self.core.processed_only() as unprocessed:
            by_key = {
                offsets_key(self._topics[kind], partition): found.offsets
                for (kind, partition), found in unprocessed.items()
            }
            offsets, skip = resume_positions(self.offsets, by_key, self._skip)
            extras = self.extras()
            extras["skip"] = skip
            extras["watermark"] = self.watermark.rewound(
                {source: found.earliest for source, found in unprocessed.items()}
            )
            try:
                result = self.snapshotter.take(
                    self.core, offsets, extras, trace=self.trace.for_snapshot(self.core)
                )
            except RedisUnavailableError as exc:  # no version could be handed out
                self._snapshot_failed = True
                self.outage.failed("snapshot", exc)
                return SnapshotResult(
                    0, False, 0.0, 0.0, how="inline", failure="unavailable", error=str(exc)
                )
        if result is not None:
            self._record(result, stalls=stalls)
        return result  # None while a forked child or the writer thread writes it

    def finish_snapshots(self) -> None:
        """Wait for a running snapshot, then write a final one in-process (no fork).

        Redis unreachable or refusing writes: retried with the outage's backoff until it is
        back, or `RedisOutageError` once the outage outlasts RIVERSTREAM_REDIS_OUTAGE_SECONDS.
        A model handed over to another learner meanwhile: dropped, as its release command
        would drop it (`_drop_handed_over`, which sets ``_releases_unread``), and the final
        snapshot written without it. Any other failure raises `SnapshotError` (a routine
        snapshot that fails is retried instead).
        """
        result = self.snapshotter.poll(block=True)
        if result is not None:
            self._record(result)
        use_fork = self.snapshotter.use_fork
        self.snapshotter.use_fork = False
        backoff = threading.Event()  # never set: a stop (which set `_stop`) waits out each delay
        try:
            while True:
                models = set(self.core.models)
                final = self.snapshot_now(stalls=False)
                if final is None or final.ok:  # None: never, in-process
                    return
                if final.failure == "ownership":
                    try:  # dropped as the refusal was recorded (`_record`), or now
                        if set(self.core.models) != models or self._drop_handed_over():
                            continue  # written without them, at once
                    except RedisUnavailableError as exc:
                        self.outage.failed("owners of the models", exc)
                        final.failure = "unavailable"
                if final.failure != "unavailable":
                    raise SnapshotError("the final snapshot could not be written (see the log)")
                backoff.wait(max(0.0, self.outage.retry_at - self.clock()))
        finally:
            self.snapshotter.use_fork = use_fork

    def _drop_handed_over(self, why: str = "the final snapshot leaves it out") -> list[str]:
        """Drop the models that another learner owns now, as their ``release`` command does
        (`release`), and name them: handed over (`stream.registry.owners`) while this learner
        did not read its commands, during an outage or after its last look at them, or whose
        release never came. Their new owner continues them from their latest version."""
        store = self.snapshotter.quick  # short timeouts: called on the learning thread
        with wrapped("owners of the models"):
            owned = claimed_owners(store.client, store.keys, list(self.core.models))
        # Only an owner that a claim or a handover named: an owner key lost (Redis restarted
        # without its last writes) is no handover, and the model stays (then SnapshotError).
        lost = {name: owner for name, owner in owned.items() if owner != store.keys.learner}
        for name, owner in sorted(lost.items()):
            log.error(
                "model %s is owned by learner %r now, not %r (handed over; its release command "
                "was not read): %s; dropped, this learner goes on without it",
                name, owner, store.keys.learner, why,
            )  # fmt: skip
            self.release(name)
        if lost:  # their release commands, queued by the handover, are still to be read
            self._releases_unread = True
        return sorted(lost)

    def release(self, model: str) -> None:
        """Stop learning ``model``: another learner learns it now."""
        if model in self.core.models:
            self.core.remove_models([model])
            self.specs = [spec for spec in self.specs if spec.name != model]
            log.warning("released %s: another learner learns it now", model)

    def _record(self, result: SnapshotResult, *, stalls: bool = True) -> None:
        if result.failure == "fenced":  # another process of this name started: it learns now
            raise self._fenced(result)
        self.stats.snapshots += int(result.ok)
        self._snapshot_failed = not result.ok
        if result.ok:
            self.stats.last_snapshot_version = result.version
            self.live.versioned(result.sizes)
            self._first_snapshot_due = False
            self.trace.written()
            self.outage.recovered()
            self._failed_backoff = 0.0
        elif result.failure == "unavailable" or (
            result.failure != "ownership" and self._redis_unreachable()
        ):
            result.failure = "unavailable"  # (a forked child that died may not have said so)
            unavailable: Exception = (
                redis.AuthenticationError(result.error or "credentials refused")
                if result.refused  # reported as refused credentials, not as an outage
                else ConnectionError(result.error or "unreachable")
            )
            self.outage.failed(f"snapshot v{result.version}", unavailable)
        elif result.failure == "ownership" and self._refused_handed_over(result):
            self._last_command_check = -1e9  # their releases are read (and acknowledged) next
            self._failed_retry_at = self.clock()  # written without them at once
        else:  # a model handed over (its release is read next) or an error: not at once
            self._last_command_check = -1e9
            self._failed_backoff = min(
                max(2 * self._failed_backoff, FAILED_FIRST_RETRY_SECONDS), FAILED_MAX_RETRY_SECONDS
            )
            self._failed_retry_at = self.clock() + self._failed_backoff
        if stalls:  # not the final snapshot at shutdown, nor one after a rollback
            self.stats.max_stall_seconds = max(self.stats.max_stall_seconds, result.stall_seconds)
        if self.observer is not None:
            # self is the whole `stream.learner.loop.Learner`, which has the view's shape
            self.observer.snapshot(cast("LearnerView", self), result)

    def _refused_handed_over(self, result: SnapshotResult) -> bool:
        """A snapshot was refused because another learner owns one of its models: drop every
        model the owner keys give to another learner (`_drop_handed_over`), whether or not its
        ``release`` command arrives (it may never: lost in a Redis failover, or removed by
        another process of this learner's name), so that the next snapshot, without them, is
        written. Whether some were dropped (none: an owner key lost, or an outage meanwhile;
        retried with the backoff)."""
        try:
            dropped = self._drop_handed_over(f"snapshot v{result.version} was refused for it")
        except RedisUnavailableError as exc:
            self.outage.failed("owners of the models", exc)
            return False
        return bool(dropped)

    def _fenced(self, result: SnapshotResult) -> FencedError:
        """The error that stops this process: another of its learner's name started (a forked
        child's failure carries no message: it is read again from the epoch)."""
        store = self.snapshotter.quick
        refused = None
        if store.epoch is not None:
            with contextlib.suppress(SnapshotError, redis.RedisError):
                with wrapped("the learner's epoch"):
                    fields = store.client.hmget(store.keys.epoch, *FENCE_FIELDS)
                refused = fenced_error(store.keys.learner, store.epoch, list(fields))
        if refused is None:
            refused = FencedError(
                result.error
                or f"another process of learner {store.keys.learner!r} started: "
                "this process stops without writing (see the log)"
            )
        log.error("learner %s: %s", store.keys.learner, refused)
        return refused

    def _redis_unreachable(self) -> bool:
        """After a snapshot failed for no known reason: was Redis unreachable? (A snapshot that
        fails with Redis up is retried too, but it is not an outage.) The outage's PING, with
        short timeouts: a hung Redis holds learning that long."""
        return not self.outage.answers()

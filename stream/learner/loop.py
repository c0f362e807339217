"""The learner process: Kafka records in, the pure `LearningCore` in the middle, snapshots out.

One loop, one thread: poll a batch → decode (bad records go to the dead-letter topic) → push into
the core → advance the watermark → maybe snapshot (see `stream.checkpoint.protocol` for the protocol).
Offsets are never committed to Kafka: the snapshot is the single source of truth for what has
been learned, which is what makes a restart exact.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from learners.comparisons import ComparePairs
from learners.core import LearningCore
from learners.specs import ModelSpec
from learners.watermark import Watermark
from schemas.errors import SnapshotError
from schemas.events import EventCodec, FeatureEvent, LabelEvent, Limits
from schemas.records import RollbackCommand
from schemas.settings import Settings
from stream.checkpoint.protocol import (
    Offsets,
    Restored,
    SkipRanges,
    SnapshotResult,
    Snapshotter,
    offsets_key,
    restore,
    resume_positions,
)
from stream.kafka.client import RecordSource
from stream.kafka.deadletter import DeadLetters
from stream.learner.groups import restore_learner
from stream.learner.idleness import Idleness
from stream.learner.ingest import Ingest
from stream.learner.live import LivePublisher
from stream.learner.observing import LearnerStats
from stream.learner.outage import Outage
from stream.learner.trace import LINEAGE_EXTRA, TraceRecorder
from stream.registry.owners import RELEASE
from stream.store.commands import CommandQueue
from stream.store.snapshots import RedisUnavailableError, SnapshotStore

if TYPE_CHECKING:
    from stream.learner.backfill import Backfill
    from stream.learner.observing import Observer

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_COMMAND_POLL_SECONDS = 0.2
_POLL_SECONDS = 0.1
_GC_GEN0_THRESHOLD = 50_000
_APPLIED_KEPT = 1000
_LABELS_PER_ROUND = 2000
"""Labels learned between two polls (≈ 10-60 ms of learning) while a backlog is learned."""
_READ_AHEAD = 200_000
"""Events read ahead of learning at most (≈ 500 B each: `bench/memory.py`)."""

_Event = TypeVar("_Event", FeatureEvent, LabelEvent)


class Learner:
    """Consumes the feature and label topics and keeps the models learning exactly once."""

    def __init__(
        self,
        settings: Settings,
        specs: list[ModelSpec],
        *,
        source: RecordSource,
        partitions: list[int],
        store: SnapshotStore,
        store_factory: Callable[[], SnapshotStore],
        dead_letters: DeadLetters,
        observer: Observer | None = None,
        commands: CommandQueue | None = None,
        clock: Clock = time.monotonic,
        use_fork: bool = True,
        compare: ComparePairs = (),
        backfill: Backfill | None = None,
    ) -> None:
        self.settings = settings
        self.specs = specs
        self.compare = compare
        self.source = source
        self.codec = EventCodec(Limits.from_settings(settings))
        self.dead_letters = dead_letters
        self.observer = observer
        self.clock = clock
        signing_key = settings.require_snapshot_key()
        self.snapshotter = Snapshotter(
            store,
            store_factory,
            signing_key,
            use_fork=use_fork,
            fork_min_bytes=settings.snapshot_fork_min_bytes,
        )
        # Serving follows the learner between versions: live updates (stream.learner.live).
        self.live = LivePublisher(
            store, signing_key, every_seconds=settings.live_every_seconds,
            max_bytes=settings.live_max_bytes, max_share=settings.live_max_share,
        )  # fmt: skip
        self.stats = LearnerStats()
        self._topics = (settings.topic_features, settings.topic_labels)
        self._sources = [(t, p) for t in range(2) for p in partitions]

        self.ingest = Ingest(
            self.codec, dead_letters, self._topics, self.stats.consumed, self.stats.dead_letters
        )
        self.idleness = Idleness(
            source, self._sources, self._topics, settings.watermark_idle_grace, clock
        )
        self._signing_key = signing_key
        self.commands = commands
        self.excluded: list[tuple[float, float]] = []
        self.applied: list[str] = []
        self._skip: SkipRanges = {}
        # The learning curve (stream.store.trace): marks every K labels, written with snapshots.
        self.trace = TraceRecorder(settings.trace_every_labels, settings.trace_max_points)
        # Learner groups (stream.learner.groups): its own checkpoint, or the one it takes over.
        start = restore_learner(store, signing_key, specs)
        restored = start.restored
        if restored is None:
            self.core = LearningCore(
                specs,
                join_ttl=settings.join_ttl,
                max_pending=settings.join_max_pending,
                compare=compare,
            )
            self.trace.attach(self.core)
            self.offsets: Offsets = {}
            self.watermark = Watermark(self._sources)
        else:
            self.stats.restored_from = restored.version
            self._adopt(restored)
            self.applied = list(restored.extras.get("applied", []))
        for name, version in start.at_position.items():  # handed over to it (not exact)
            self.core.models[name], _meta = store.load_model(name, version)
        if backfill is not None:  # new models catch up first (stream.learner.backfill)
            added = [] if restored is None else restored.added
            new = [name for name in added if name not in start.at_position]
            backfill.catch_up(self.core, new, self.offsets, self._skip, self.excluded)
        self._seek()
        self._last_snapshot_at = clock()
        self.outage = Outage(settings.redis_outage_seconds, clock)
        self._snapshot_failed = False
        # A fresh stream gets its first version as soon as labels were learned, not after
        # RIVERSTREAM_SNAPSHOT_EVERY_SECONDS: until then the API has no model to serve.
        self._first_snapshot_due = restored is None
        self._last_command_check = -1e9
        self._last_record_at = clock()
        self._stop = threading.Event()
        self._amortized: list[tuple[float, int]] = []

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

    def describe(self) -> list[str]:
        """Where the learner stands, for its start-up lines: models, topics, resume point."""
        s = self.settings
        models = ", ".join(f"{spec.name}={spec.spec}" for spec in self.specs)
        start = (
            f"resuming from v{self.stats.restored_from} at offsets "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.offsets.items()))
            if self.stats.restored_from is not None
            else "a fresh stream, from the earliest offsets"
        )
        return [
            f"learner: {s.learner}",
            f"models: {models}",
            f"topics: {s.topic_features} + {s.topic_labels} (dead letters: {s.topic_dlq})",
            f"redis: {s.redis_url} prefix {s.redis_prefix!r}; snapshots every "
            f"{s.snapshot_every_labels} labels or {s.snapshot_every_seconds:g} s",
            start,
        ]

    def extras(self) -> dict[str, Any]:
        """Adapter state saved in the checkpoint beside the core."""
        return {
            "watermark": self.watermark,
            "excluded": list(self.excluded),
            "applied": self.applied[-_APPLIED_KEPT:],
            LINEAGE_EXTRA: self.trace.extra(),
        }

    # -- operator commands -----------------------------------------------------------------
    def _check_commands(self, now: float) -> None:
        if self.commands is None or now - self._last_command_check < _COMMAND_POLL_SECONDS:
            return
        if not self.outage.due():
            return
        self._last_command_check = now
        try:
            commands = self.commands.peek()
            if commands:
                for command in commands:
                    if command.id not in self.applied:
                        self.apply(command)
                        self.applied.append(command.id)
                self.finish_snapshots()  # durable before acknowledged
                self.commands.ack(len(commands))
        except RedisUnavailableError as exc:  # applying again is harmless: ids are remembered
            self.outage.failed("learner commands", exc)
        else:
            self.outage.recovered()

    def apply(self, command: RollbackCommand) -> None:
        """Roll ``command.model`` back to version ``command.to``.

        ``skip``: the model continues from that version at the current input position; what
        it learned since is discarded. ``replay``: the whole learner goes back to that
        version's checkpoint and re-learns from its offsets, leaving out events whose time
        falls in ``command.exclude`` (models sharing this learner are rewound with it).
        """
        if command.action == RELEASE:  # handed over to another learner (stream.registry.owners)
            if command.model in self.core.models:
                self.core.remove_models([command.model])
                self.specs = [spec for spec in self.specs if spec.name != command.model]
                log.warning("released %s: another learner learns it now", command.model)
            return
        if command.action != "rollback" or command.model not in self.core.models:
            log.error(
                "ignoring command %s: not a rollback of one of this learner's models", command
            )
            return
        store = self.snapshotter.store
        if command.resume == "replay":
            restored = restore(
                store, self._signing_key, self.specs, version=command.to,
                may_drop=lambda name: name not in self.core.models,
            )  # fmt: skip
            if restored is None:  # pragma: no cover - checkpoint() raises instead
                raise SnapshotError(f"no checkpoint v{command.to}")
            if restored.added:  # a checkpoint of another learner, without some of ours
                log.error(
                    "ignoring command %s: checkpoint v%d does not hold %s, which learn here "
                    "(it was written before a handover): roll back with --resume skip",
                    command, command.to, restored.added,
                )  # fmt: skip
                return
            running = self.snapshotter.poll(block=True)
            if running is not None:
                self._record(running)
            self._adopt(restored)
            # the curve past the target is rewound by the next snapshot (stream.store.trace)
            self.trace.branch(command.id, self.core.counters.labels_joined)
            for a, b in command.exclude:
                if (a, b) not in self.excluded:
                    self.excluded.append((a, b))
            self._seek()
        else:
            state, _meta = store.load_model(command.model, command.to)
            self.core.models[command.model] = state
        log.warning("rolled %s back to v%d (%s)", command.model, command.to, command.resume)
        self.stats.rollbacks += 1

    # -- the loop ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, *, exit_when_idle: float | None = None) -> list[dict[str, Any]]:
        """Run until `stop` (or idle for ``exit_when_idle`` s); final snapshot; summaries."""
        # The learner holds many live objects (buffered events, pending features, the
        # models): the collector's full passes over them cost more than the learning. What
        # exists at start is frozen out of its reach, and young collections run less often
        # (measured: the ingest step 4x faster, the whole loop ≈ 1.4x).
        threshold = gc.get_threshold()
        gc.freeze()  # no full collection first: over many live objects it takes 0.1-0.3 s
        gc.set_threshold(_GC_GEN0_THRESHOLD, threshold[1], threshold[2])
        try:
            return self._run(exit_when_idle)
        finally:
            gc.set_threshold(*threshold)
            gc.unfreeze()

    def _run(self, exit_when_idle: float | None) -> list[dict[str, Any]]:
        more = False  # processing stopped at its round's label budget: work is left
        while not self._stop.is_set():
            # Reading runs ahead of learning, a round of labels at a time: the last records are
            # read (and their partitions' idle grace starts) while the backlog is learned, not
            # after. While work is left, a poll only takes what is queued (no wait), and none is
            # made once `_READ_AHEAD` events wait in the core.
            if more and self.core.counters.buffered_events >= _READ_AHEAD:
                records = []
            else:
                timeout = 0.0 if more else self.idleness.poll_timeout(self.watermark)
                records = self.source.poll(self.settings.consumer_batch, timeout)
            now = self.clock()
            if records:
                self._last_record_at = now
                self.ingest.push(
                    records, self.core, self.offsets, self.watermark, self.excluded, self._skip
                )
            self.idleness.update(now, bool(records), self.offsets, self.watermark)
            more = self._process()
            self._maybe_snapshot(now)
            if self.outage.up:  # a hung Redis must not hold learning for a live update
                version = self.stats.last_snapshot_version or self.stats.restored_from
                self.live.maybe_publish(self.core, version, now)
            self._check_commands(now)
            if self.observer is not None:
                self.observer.after_batch(self, records)
            if (
                exit_when_idle is not None
                and not records
                and not more
                and self.idleness.all_caught_up()
                and now - self._last_record_at >= exit_when_idle
            ):
                # The end of the input: what still waits for the watermark is processed. A
                # stop (SIGTERM) does not flush: the final checkpoint leaves buffered events
                # to be read again, in the order a restarted learner will see them.
                self.core.flush()
                self.ingest.dead_letter_unusable(self.core)
                break
        if self.observer is not None:  # what the last batch processed, before the snapshot
            self.observer.after_batch(self, [])
        self._last_command_check = -1e9  # a handover's release must precede the last snapshot
        self._check_commands(self.clock())
        self.finish_snapshots()
        if self.observer is not None:
            self.observer.close()
        return self.summaries()

    def _process(self) -> bool:
        """Learn what the watermark releases, at most a round (`_LABELS_PER_ROUND` labels);
        returns whether the round's budget ran out (work may be left)."""
        value = self.watermark.value()
        if value is None:
            if not self.idleness.all_idle():
                return False
            value = math.inf  # every input idle: release everything held
        every = self.settings.snapshot_every_labels
        counters = self.core.counters
        budget = _LABELS_PER_ROUND
        while True:
            # Versions are the granularity of rollback: the work is cut at the label count,
            # so a snapshot covers exactly N more labels (when one can be taken right away).
            cut = not self.snapshotter.busy and self.outage.up
            since = counters.labels_joined - self._labels_at_snapshot
            before = counters.labels_joined
            self._advance(value, min(budget, max(1, every - since)) if cut else budget)
            budget -= counters.labels_joined - before
            if cut and counters.labels_joined - self._labels_at_snapshot >= every:
                self._maybe_snapshot(self.clock())
                if budget > 0:
                    continue
            return budget <= 0

    def _advance(self, value: float, max_labels: int | None) -> None:
        labels_before = self.core.counters.labels_joined
        start = time.perf_counter()
        processed = self.core.advance(value, max_labels)
        self.trace.collect(self.core)
        if self.core.unusable:
            self.ingest.dead_letter_unusable(self.core)
        if processed and self.observer is not None:
            labels = self.core.counters.labels_joined - labels_before
            per_event = (time.perf_counter() - start) / processed
            self._amortized.append((per_event, labels))

    # -- what the observer reads ---------------------------------------------------------
    def timings(self) -> dict[str, dict[str, list[float]]]:
        """Per model: sampled ``predict_one`` latency on the latest features, and the learning
        loop's time per processed event amortized over each batch (join + predict + learn)."""
        amortized = [seconds for seconds, labels in self._amortized if labels]
        self._amortized.clear()
        x = self.core.last_features()
        out: dict[str, dict[str, list[float]]] = {}
        for name, state in self.core.models.items():
            predict: list[float] = []
            if x is not None:
                start = time.perf_counter()
                state.model.predict_one(x) if state.kind != "anomaly" else state.model.score_one(x)
                predict.append(time.perf_counter() - start)
            out[name] = {"predict": predict, "learn": amortized}
        return out

    def lags(self) -> dict[str, dict[int, int]]:
        """Messages behind the log end, per topic and partition (as of the last end check)."""
        return self.idleness.lags(self.offsets)

    def watermark_delay(self) -> float | None:
        """Newest event time seen minus the watermark, in event-time units."""
        value = self.watermark.value()
        seen = [self.watermark.max_seen(s) for s in self._sources]
        newest = max((t for t in seen if t is not None), default=None)
        if value is None or newest is None:
            return None
        return max(0.0, newest - value)

    # -- snapshots ---------------------------------------------------------------------------
    def _maybe_snapshot(self, now: float) -> None:
        result = self.snapshotter.poll()
        if result is not None:
            self._record(result)
        if self.snapshotter.busy or not self.outage.due():
            return
        labels = self.core.counters.labels_joined - self._labels_at_snapshot
        due = (
            self._snapshot_failed  # retried as soon as the backoff allows
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
                return SnapshotResult(0, False, 0.0, 0.0, forked=False, sizes={})
        if result is not None:
            self._record(result, stalls=stalls)
        return result  # None while a forked child writes it

    def finish_snapshots(self) -> None:
        """Wait for a running snapshot, then write a final one in-process (no fork); raise
        `SnapshotError` if that fails (a routine snapshot that fails is retried instead)."""
        result = self.snapshotter.poll(block=True)
        if result is not None:
            self._record(result)
        use_fork = self.snapshotter.use_fork
        self.snapshotter.use_fork = False
        try:
            while True:
                final = self.snapshot_now(stalls=False)
                if final is not None and final.ok:
                    break
                if self.outage.up:  # not an outage: a snapshot that cannot be written
                    raise SnapshotError("the final snapshot could not be written (see the log)")
                # Redis is away: retry (with the outage's backoff) until it is back or the
                # outage outlasts RIVERSTREAM_REDIS_OUTAGE_SECONDS (RedisOutageError).
                self._stop.wait(max(0.0, self.outage.retry_at - self.clock()))
        finally:
            self.snapshotter.use_fork = use_fork

    def _record(self, result: SnapshotResult, *, stalls: bool = True) -> None:
        self.stats.snapshots += int(result.ok)
        self._snapshot_failed = not result.ok
        if result.ok:
            self.stats.last_snapshot_version = result.version
            self.live.versioned(result.sizes)
            self._first_snapshot_due = False
            self.trace.written()
            self.outage.recovered()
        elif self._redis_unreachable():
            self.outage.failed(f"snapshot v{result.version}", ConnectionError("unreachable"))
        else:  # a model handed over to another learner fails snapshots until released
            self._last_command_check = -1e9
        if stalls:  # not the final snapshot at shutdown, nor one after a rollback
            self.stats.max_stall_seconds = max(self.stats.max_stall_seconds, result.stall_seconds)
        if self.observer is not None:
            self.observer.snapshot(self, result)

    def _redis_unreachable(self) -> bool:
        """After a failed snapshot: was Redis the cause? (A snapshot that fails with Redis up
        is retried too, but it is not an outage.)"""
        try:
            self.snapshotter.store.client.ping()
        except Exception:
            return True
        return False

    def summaries(self) -> list[dict[str, Any]]:
        return [
            {
                "model": name,
                "version": self.stats.last_snapshot_version,
                "samples_learned": state.samples_learned,
                "metrics": state.metric_values(),
            }
            for name, state in self.core.models.items()
        ]

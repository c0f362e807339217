"""The learner process: Kafka records in, the pure `LearningCore` in the middle, snapshots out.

One loop, one learning thread: poll a batch → decode (bad records go to the dead-letter topic) →
push into the core → advance the watermark, a round of labels at a time → maybe snapshot (see
`stream.checkpoint.protocol` for the protocol: a snapshot is written by a forked child or a
writer thread, reaped by the loop). Offsets are never committed to Kafka: the
snapshot is the single source of truth for what has been learned, which is what makes a
restart exact. The snapshots and restores are `stream.learner.checkpoints`, the operator's
commands `stream.learner.commands`.
"""

from __future__ import annotations

import contextlib
import gc
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from learners.comparisons import ComparePairs
from learners.core import LearningCore
from learners.specs import ModelSpec
from learners.watermark import Watermark
from schemas.errors import SnapshotError
from schemas.events import EventCodec, Limits
from schemas.settings import Settings
from stream.checkpoint.protocol import Offsets, SkipRanges, Snapshotter
from stream.kafka.client import RecordSource
from stream.kafka.deadletter import DeadLetters
from stream.learner.commands import LearnerCommands
from stream.learner.groups import restore_learner
from stream.learner.idleness import Idleness
from stream.learner.ingest import Ingest
from stream.learner.live import LivePublisher
from stream.learner.observing import GuardedObserver, LearnerStats
from stream.learner.outage import Outage
from stream.learner.trace import TraceRecorder
from stream.store.commands import CommandQueue
from stream.store.snapshots import RedisUnavailableError, SnapshotStore

if TYPE_CHECKING:
    import redis

    from stream.learner.backfill import Backfill
    from stream.learner.observing import Observer

Clock = Callable[[], float]
_GC_GEN0_THRESHOLD = 50_000
_LABELS_PER_ROUND = 10_000
"""Labels learned between two polls while a backlog is learned (≈ 0.2 s of logreg, 0.5 s of a
Hoeffding tree). Rounds of 2 000 cost a Hoeffding tree ≈ 10 % (`bench/learn_throughput.py`):
each poll's decoding between two rounds evicts the model from the caches."""

_READ_AHEAD = 50_000
"""Events read ahead of learning at most (≈ 500 B each: `bench/memory.py`). A snapshot sets the
read-ahead aside, one pass over it (≈ 20 ms per 100 000 events, measured): reading a whole
backlog ahead made logreg's snapshots cost ≈ 2 µs per sample."""


@contextlib.contextmanager
def learning_collector() -> Iterator[None]:
    """The collector as the learner runs under it (`Learner.run`; the benches that measure the
    core set it the same way). The learner holds many live objects (buffered events, pending
    features, the models): the collector's full passes over them cost more than the learning.
    What exists at start is frozen out of its reach, and young collections run less often
    (measured: the ingest step 4x faster, the whole loop ≈ 1.4x); both are undone after."""
    threshold = gc.get_threshold()
    gc.freeze()  # no full collection first: over many live objects it takes 0.1-0.3 s
    gc.set_threshold(_GC_GEN0_THRESHOLD, threshold[1], threshold[2])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


class Learner(LearnerCommands):
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
        quick: redis.Redis | None = None,
    ) -> None:
        """``store``: for the blobs (restores, the final snapshot); ``quick``: a client of the
        same Redis with short timeouts, for the learning thread's small calls (a version number,
        live updates, the outage's PING: `stream.learner.runtime`), else ``store``'s client."""
        self.settings = settings
        self.specs = specs
        self.compare = compare
        self.source = source
        self.codec = EventCodec(Limits.from_settings(settings))
        self.dead_letters = dead_letters
        self.stats = LearnerStats()
        self.observer = observer  # guarded: its failures never stop learning
        self.clock = clock
        signing_key = settings.require_snapshot_key()
        small = store if quick is None else store.using(quick)
        self.snapshotter = Snapshotter(
            store,
            store_factory,
            signing_key,
            use_fork=use_fork,
            fork_min_bytes=settings.snapshot_fork_min_bytes,
            quick=small,
        )
        # Serving follows the learner between versions: live updates (stream.learner.live).
        self.live = LivePublisher(
            small, signing_key, every_seconds=settings.live_every_seconds,
            max_bytes=settings.live_max_bytes, max_share=settings.live_max_share,
        )  # fmt: skip
        self._topics = (settings.topic_features, settings.topic_labels)
        self._sources = [(t, p) for t in range(2) for p in partitions]

        self.ingest = Ingest(
            self.codec, dead_letters, self._topics, self.stats.consumed, self.stats.dead_letters,
            max_future=settings.max_future_seconds,
        )  # fmt: skip
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
        wanted = {spec.name: spec.spec for spec in specs}
        for name, version in start.at_position.items():  # handed over to it (not exact)
            state, _meta = store.load_model(name, version)
            if state.spec.spec != wanted[name]:  # as `restore` refuses a checkpoint's model
                raise SnapshotError(
                    f"model {name} was snapshotted with spec {state.spec.spec!r}, not "
                    f"{wanted[name]!r}: learner {settings.learner!r} takes it over from v{version}"
                    f"; start it with --model {name}={state.spec.spec}"
                )
            self.core.models[name] = state
        if backfill is not None:  # new models catch up first (stream.learner.backfill)
            added = [] if restored is None else restored.added
            new = [name for name in added if name not in start.at_position]
            backfill.catch_up(self.core, new, self.offsets, self._skip, self.excluded)
        self._seek()
        self._last_snapshot_at = clock()
        # During an outage the learning thread only PINGs Redis, at each retry (a hung Redis
        # must not hold learning for a store call's 10 s): stream.learner.outage.
        self.outage = Outage(settings.redis_outage_seconds, clock, probe=small.client)
        self._snapshot_failed = False
        self._failed_backoff = 0.0  # a failed snapshot's retry, when no outage (checkpoints)
        self._failed_retry_at = 0.0
        self._releases_unread = False
        # A fresh stream gets its first version as soon as labels were learned, not after
        # RIVERSTREAM_SNAPSHOT_EVERY_SECONDS: until then the API has no model to serve.
        self._first_snapshot_due = restored is None
        self._last_command_check = -1e9
        self._last_record_at = clock()
        self._stop = threading.Event()
        self._amortized: list[tuple[float, int]] = []

    @property
    def observer(self) -> Observer | None:
        return self._observer

    @observer.setter
    def observer(self, observer: Observer | None) -> None:
        """An observer's exceptions are logged and counted (`GuardedObserver`), never raised
        into the loop: a valid event must not stop the learner through its metrics."""
        if observer is not None and not isinstance(observer, GuardedObserver):
            observer = GuardedObserver(observer, self.stats)
        self._observer = observer

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

    # -- the loop ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, *, exit_when_idle: float | None = None) -> list[dict[str, Any]]:
        """Run until `stop` (or idle for ``exit_when_idle`` s); final snapshot; summaries."""
        with learning_collector():
            return self._run(exit_when_idle)

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
                try:
                    self.live.maybe_publish(self.core, version, now)
                except RedisUnavailableError as exc:
                    self.outage.failed("live update", exc)
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
                self.core.unusable_kept = None
                self.core.flush()
                self.ingest.dead_letter_unusable(self.core)
                break
        if self.observer is not None:  # what the last batch processed, before the snapshot
            self.observer.after_batch(self, [])
        self._last_command_check = -1e9  # a handover's release must precede the last snapshot
        self._check_commands(self.clock())
        self.finish_snapshots()
        # A model dropped as handed over after the commands were read (by either snapshot):
        # its release is read and acknowledged now (a no-op), not left for the next start.
        while self._releases_unread:
            self._last_command_check = -1e9
            if not self._check_commands(self.clock()):
                break  # an outage: read at the next start, harmless then (`_handed_back`)
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
        self.core.unusable_kept = None  # drained below: every one is dead-lettered
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
                try:
                    if state.kind != "anomaly":
                        state.model.predict_one(x)
                    else:
                        state.model.score_one(x)
                except Exception:  # features the model cannot predict on
                    pass  # (the core counted it as a model error): no sample this time
                else:
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

    def summaries(self) -> list[dict[str, Any]]:
        """One line per model at exit; ``late_events``: events read after the watermark had
        passed their time (processed out of event-time order, so not River's order)."""
        late = self.core.counters.late_events
        return [
            {
                "model": name,
                "version": self.stats.last_snapshot_version,
                "samples_learned": state.samples_learned,
                "metrics": state.metric_values(),
                "late_events": late,
            }
            for name, state in self.core.models.items()
        ]

"""The learner's side of live updates (`stream.store.live`): when to publish, and at what cost.

Between versions the learning loop calls `LivePublisher.maybe_publish` after each batch. A model
gets a live update when it has learned something since its last one, at most every
``RIVERSTREAM_LIVE_EVERY_SECONDS``, and only while its blob is smaller than
``RIVERSTREAM_LIVE_MAX_BYTES`` (a large model's pickling would stall learning: its serving follows
the versions). The work is done on the learning thread (pickle, sign, one Lua call): it reads the
models and changes nothing, so learning stays exactly that of River and a crash loses nothing.

Cost bound: the CPU time a round took sets the earliest next round, ``cost /
RIVERSTREAM_LIVE_MAX_SHARE`` after it, so live updates never take more than that share of the
learner's time (5 % by default: a logreg round costs ≈ 0.5 ms, far below, so it publishes every
0.25 s; a round of 50 ms would wait 1 s). CPU time rather than wall-clock time: on a loaded
machine the wall-clock time of a round is mostly waiting for a processor, which is no cost of
the round and would space the updates out exactly when serving needs them. A model that the registry's rule refuses (a pin, another policy,
a rollback in flight, or a version not yet promoted) is tried again after `REFUSED_BACKOFF`.

Redis away (`stream.store.snapshots.RedisUnavailableError`: unreachable, hung, refusing writes)
ends the round and is raised: the learner's outage (`stream.learner.outage`) takes over, and no
live update is written until it ends (the version written then supersedes them). The learner
writes them with its client of short timeouts, so a hung Redis holds a round 0.5 s at most.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from learners.core import LearningCore
from learners.serialization import dump_signed
from schemas.errors import SnapshotError
from stream.store.live import LiveMeta, LiveStore
from stream.store.snapshots import RedisUnavailableError, SnapshotStore

log = logging.getLogger(__name__)

REFUSED_BACKOFF = 1.0
"""Seconds (of the loop's clock) before a model whose live update was refused is tried again."""


@dataclass
class LiveStats:
    """What live updates have cost so far (also read by benchmarks)."""

    published: int = 0
    refused: int = 0
    rounds: int = 0
    seconds: float = 0.0
    """Wall-clock time of the rounds."""
    cpu_seconds: float = 0.0
    """CPU time of the learning thread in the rounds (what the cost bound counts)."""


class LivePublisher:
    def __init__(
        self,
        store: SnapshotStore,
        signing_key: bytes,
        *,
        every_seconds: float,
        max_bytes: int,
        max_share: float,
    ) -> None:
        self.live = LiveStore(store)
        self.signing_key = signing_key
        self.every_seconds = every_seconds
        self.max_bytes = max_bytes
        self.max_share = max_share
        self.stats = LiveStats()
        self.sizes: dict[str, int] = {}
        """Latest blob size of each model (live update or version)."""
        self._learned: dict[str, int] = {}  # samples_learned of each model's last publication
        self._retry_at: dict[str, float] = {}
        self._next_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.every_seconds > 0

    def versioned(self, sizes: Mapping[str, int]) -> None:
        """A version was written (``sizes``: its blobs): refused models may try again."""
        self.sizes.update(sizes)
        self._retry_at.clear()

    def maybe_publish(self, core: LearningCore, version: int | None, now: float) -> int:
        """Publish the models that learned since their last live update, continuing
        ``version`` (the learner's latest), when due; returns how many were published. Raises
        `RedisUnavailableError` when Redis is away (the round ends there)."""
        if not self.enabled or version is None or now < self._next_at:
            return 0
        started, cpu_started = time.perf_counter(), time.thread_time()
        published = 0
        try:
            for name, state in core.models.items():
                learned = state.samples_learned
                if self._learned.get(name) == learned or self.sizes.get(name, 0) >= self.max_bytes:
                    continue
                if now < self._retry_at.get(name, 0.0):
                    continue
                blob = dump_signed(state, self.signing_key)
                self.sizes[name] = len(blob)
                if len(blob) >= self.max_bytes:
                    continue
                meta = LiveMeta.describe(
                    name, version, blob, kind=state.kind, spec=state.spec.spec,
                    samples_learned=learned, metrics=state.metric_values(),
                )  # fmt: skip
                try:
                    written = self.live.write(name, version, blob, meta)
                except RedisUnavailableError:  # the caller's outage handling takes over
                    self._retry_at[name] = now + REFUSED_BACKOFF
                    raise
                except SnapshotError as exc:
                    log.debug("live update of %s not written: %s", name, exc)
                    self._retry_at[name] = now + REFUSED_BACKOFF
                    continue
                if written:
                    published += 1
                    self._learned[name] = learned
                else:
                    self.stats.refused += 1
                    self._retry_at[name] = now + REFUSED_BACKOFF
        finally:
            cost = time.thread_time() - cpu_started
            self.stats.published += published
            self.stats.rounds += 1
            self.stats.seconds += time.perf_counter() - started
            self.stats.cpu_seconds += cost
            self._next_at = now + max(self.every_seconds, cost / self.max_share)
        return published

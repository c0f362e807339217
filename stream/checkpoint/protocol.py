"""The checkpoint protocol: how the learner's state reaches Redis, and how it comes back.

Taking a snapshot, in order (each step only after the previous one succeeded):

1. **Learn.** Snapshots are taken between batches, never inside one: every record consumed so
   far has been pushed into the `LearningCore` (processed, or buffered inside it).
2. **Cover.** The core's buffered (read, not yet processed) events are set aside
   (`LearningCore.processed_only`): the checkpoint covers processed events only. Per
   partition, the offset recorded is the first unprocessed one (`resume_positions`), with the
   ranges after it that were handled already (processed out of offset order, dead-lettered or
   excluded) to skip when they are read again; the watermark saved is rewound to the earliest
   unprocessed time of each such partition (`Watermark.rewound`). A version number is taken
   from Redis.
3. **Fork**, for a large state. The learner forks; the child holds a copy-on-write image of
   the core, so the learner goes on at once: its stall is the `fork()` call (milliseconds even
   for a large model), not the pickling (seconds for a large forest). A snapshot whose previous
   one was smaller than ``fork_min_bytes`` (the first one: whose models pickle smaller, counted
   up to that size) is serialized in the learner instead (step 4, ≈ 2 ms
   for a logistic regression: less than a fork) and written by a thread (step 5 and the
   registry's steps after it), so that its round trips to Redis wait beside the learning: 13
   for one model as a rule (the version number 1, the write 4, then per model the promotion 3
   and retention 4, or 5 when it prunes; the champion/challenger policies 1); one more in a
   model's steps when another learner owns it, or when the history's last entries do not
   decide its rollback target, and two more in the write with replicas to wait for. 31–39
   before they were batched (`tests/stream/registry/test_base.py` counts them).
4. **Serialize and sign** (in the child; or pickled in the learner, `pickle_snapshot`, and
   signed by the writer thread, `Pickled.signed`). Each model state becomes its own signed
   blob (what serving loads); the core without its models plus the offsets is the checkpoint
   blob.
5. **Write atomically** (in the child, or the writer thread: `commit_snapshot`).
   `SnapshotStore.write`: chunks first, then one MULTI/EXEC makes every model's version, its
   metadata and the checkpoint visible together, with the learning curve's points the
   checkpoint covers (`stream.store.trace`), then PUBLISH announces it. A crash before EXEC
   leaves nothing visible; EXEC makes all of it visible (a key of the wrong type, written into
   the prefix by something else, fails the write before anything is written: see
   `SnapshotStore.write`). Then the registry's steps (``after_write``: promotion policy,
   retention, champion/challenger policies).
6. **Reap.** The learner collects the child's exit status, or the thread's outcome; at most
   one snapshot is under way at a time, and a command (a rollback) is acknowledged only after
   it was reaped. The buffered events set aside in step 2 went back into the core right after
   the fork (or the serialization).

Restoring reverses it: load the latest checkpoint, load each model's blob of that same version
(all verified before unpickling), put the models back into the core, and seek every partition
to the checkpoint's offsets, skipping the handled ranges as they come. Whatever moment the
learner was killed at, it then continues from a state that has processed every record before
those offsets once, and none of the others: exactly once.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from learners.comparisons import ComparisonRecord
from learners.core import LearningCore, ModelState
from learners.serialization import load_signed, pickle_state, pickled_within, sign_pickled
from learners.specs import ModelSpec
from schemas.errors import RiverstreamError, SnapshotError
from schemas.records import SnapshotMeta
from stream.registry.base import RegistryUnavailableError
from stream.store.comparisons import ComparisonStore
from stream.store.snapshots import (
    FencedError,
    OwnershipLostError,
    RedisUnavailableError,
    SnapshotStore,
    denied_permission,
    refused_credentials,
)
from stream.store.trace import TraceWrite

log = logging.getLogger(__name__)

Offsets = dict[str, int]
"""``"topic:partition"`` → next offset to read."""

Failure = Literal["unavailable", "ownership", "fenced", "error"]
"""Why a snapshot failed (`failure_of`)."""

_EXIT_STATUS: dict[Failure, int] = {"error": 1, "unavailable": 75, "ownership": 76, "fenced": 77}
"""A snapshot child's exit status for each failure (75: EX_TEMPFAIL)."""
_REFUSED_STATUS = 78
"""A snapshot child's exit status when Redis refused its credentials (EX_CONFIG): failure
``unavailable``, `SnapshotResult.refused`."""
_DENIED_STATUS = 79
"""The same when Redis's ACL denied its user a command, key or channel (`denied_permission`)."""
_DENIED_ERROR = (
    "this user has no permissions to run one of a snapshot's commands on its keys or channel "
    "(the snapshot child's log quotes Redis)"
)
"""`SnapshotResult.error` of a child that exited with `_DENIED_STATUS`: Redis's words for it,
which `stream.store.snapshots.refusal` reads as the ACL's refusal."""


def failure_of(exc: BaseException) -> Failure:
    """``unavailable``: Redis was unreachable or refused for a while, in the write or in the
    registry's steps after it (`stream.store.snapshots.transient`): retried as an outage;
    ``ownership``: a model was handed over to another learner; ``fenced``: another process of
    the learner's name started since (`FencedError`: this one must stop); else ``error``.

    >>> failure_of(RedisUnavailableError("write version 3: redis unavailable: OOM"))
    'unavailable'
    >>> failure_of(ValueError("a bug"))
    'error'
    """
    if isinstance(exc, FencedError):
        return "fenced"
    if isinstance(exc, OwnershipLostError):
        return "ownership"
    if isinstance(exc, (RedisUnavailableError, RegistryUnavailableError)):
        return "unavailable"
    return "error"


@dataclass
class SnapshotResult:
    version: int
    ok: bool
    seconds: float
    stall_seconds: float
    how: Literal["fork", "thread", "inline"] = "fork"
    """Written by a forked child, by the writer thread, or in the learning thread."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Bytes of each model's signed blob (empty if the snapshot failed or was not read back)."""
    failure: Failure | None = None
    """Why it failed (`failure_of`; a forked child's from its exit status), None if it did not."""
    error: str = ""
    """The failure's message (a forked child logs its own)."""
    refused: bool = False
    """Redis refused this process's credentials, or its ACL a command, key or channel
    (`stream.store.snapshots.refused_credentials`; failure ``unavailable``): ridden out as an
    outage, reported as what it is (``error`` says which, `stream.store.snapshots.refusal`)."""


SkipRanges = dict[str, list[tuple[int, int]]]
"""``"topic:partition"`` → ``[start, end)`` offset ranges past the resume offset that were
handled already (processed, dead-lettered or excluded): skipped when they are read again."""


def offsets_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def resume_positions(
    consumed: Offsets, unprocessed: Mapping[str, list[int]], still_to_skip: SkipRanges
) -> tuple[Offsets, SkipRanges]:
    """Where a checkpoint that holds only processed events resumes (step 2).

    ``consumed``: the next offset to read per partition; ``unprocessed``: the sorted offsets of
    the events read but still buffered. A partition resumes at its first unprocessed offset,
    and what was handled between that and ``consumed`` is skipped on the way (usually nothing:
    a partition's events are processed in offset order). Ranges of an earlier restore not
    read again yet (``still_to_skip``) are carried over.

    >>> resume_positions({"f:0": 10, "f:1": 7}, {"f:0": [6, 7, 9]}, {})
    ({'f:0': 6, 'f:1': 7}, {'f:0': [(8, 9)]})
    """
    resume = dict(consumed)
    skip: SkipRanges = {}
    for key, position in consumed.items():
        ranges = [(max(a, position), b) for a, b in still_to_skip.get(key, ()) if b > position]
        buffered = unprocessed.get(key)
        if buffered:
            resume[key] = buffered[0]
            ranges = _handled_between(buffered, position) + ranges
        if ranges:
            skip[key] = ranges
    return resume, skip


def _handled_between(buffered: list[int], position: int) -> list[tuple[int, int]]:
    """The offset ranges, between the sorted ``buffered`` offsets and after the last one up to
    ``position``, that are not buffered: read and handled already.

    >>> _handled_between([3, 4, 6], 9), _handled_between([3, 4, 5], 9), _handled_between([3, 4, 5], 6)
    ([(5, 6), (7, 9)], [(6, 9)], [])
    >>> _handled_between([3, 5, 5], 6)  # the span of consecutive offsets, with a repeat
    [(4, 5)]
    """
    first, last = buffered[0], buffered[-1]
    # Usually every offset from the first buffered one on is buffered (a partition's events
    # are processed in offset order): one comparison in C instead of a pass in Python.
    if last - first == len(buffered) - 1 and buffered == list(range(first, last + 1)):
        return [(last + 1, position)] if position > last + 1 else []
    return [
        (previous + 1, following)
        for previous, following in zip(buffered, [*buffered[1:], position], strict=True)
        if following > previous + 1
    ]


def kept_indexes(offsets: list[int], ranges: list[tuple[int, int]]) -> list[int]:
    """Indexes of ``offsets`` (ascending) outside every ``[start, end)`` of ``ranges``.

    >>> kept_indexes([4, 5, 6, 7, 8], [(5, 7)])
    [0, 3, 4]
    """
    return [i for i, offset in enumerate(offsets) if not any(a <= offset < b for a, b in ranges)]


AfterWrite = Callable[[SnapshotStore, int, dict[str, SnapshotMeta]], None]
"""The registry's steps after a version is written (`stream.learner.runtime.promote_after_write`)."""


@dataclass(frozen=True)
class Prepared:
    """A snapshot serialized and signed (step 4), not written yet: only bytes and records, so
    another thread may write it while the learner goes on changing the core."""

    blobs: dict[str, tuple[bytes, SnapshotMeta]]
    checkpoint: bytes
    offsets: Offsets
    comparisons: list[ComparisonRecord]
    trace: TraceWrite | None


@dataclass(frozen=True)
class _About:
    """What a model's `SnapshotMeta` says besides its blob, read from the core when pickled."""

    kind: str
    spec: str
    samples_learned: int
    metrics: dict[str, float]
    created_at: float


@dataclass(frozen=True)
class Pickled:
    """A snapshot serialized (step 4's first half, where the core's state must be read), not
    signed yet: `signed` compresses, signs and checksums its bytes, which another thread may do
    while the learner goes on (zlib and the hashes release the GIL: a 180 kB Hoeffding tree's
    compression alone costs ≈ 5 ms, more than its pickling)."""

    models: dict[str, tuple[bytes, _About]]
    checkpoint: bytes
    offsets: Offsets
    comparisons: list[ComparisonRecord]
    trace: TraceWrite | None

    def signed(self, signing_key: bytes) -> Prepared:
        """Step 4's second half: each model's signed blob and meta, the signed checkpoint."""
        blobs: dict[str, tuple[bytes, SnapshotMeta]] = {}
        for name, (body, about) in self.models.items():
            blob = sign_pickled(body, signing_key)
            meta = SnapshotMeta.describe(
                name,
                blob,
                kind=about.kind,
                spec=about.spec,
                samples_learned=about.samples_learned,
                metrics=about.metrics,
                offsets=self.offsets,
                created_at=about.created_at,
            )
            blobs[name] = (blob, meta)
        checkpoint = sign_pickled(self.checkpoint, signing_key)
        return Prepared(blobs, checkpoint, self.offsets, self.comparisons, self.trace)


def pickle_snapshot(
    core: LearningCore,
    offsets: Offsets,
    extras: Mapping[str, Any] | None = None,
    *,
    trace: TraceWrite | None = None,
    pickled: Mapping[str, bytes] | None = None,
) -> Pickled:
    """Step 4's first half: each model's pickle and what its meta says, the pickle of the core
    without its models, and a readable copy of the comparisons. ``core.models`` is restored
    before returning. ``pickled``: the models' pickles made already (by `Snapshotter`'s size
    check)."""
    offsets = dict(offsets)  # the caller's may change once this returns
    models = core.models
    created_at = time.time()
    bodies: dict[str, tuple[bytes, _About]] = {}
    for name, state in models.items():
        made = None if pickled is None else pickled.get(name)
        body = pickle_state(state) if made is None else made
        about = _About(
            state.kind, state.spec.spec, state.samples_learned, state.metric_values(), created_at
        )
        bodies[name] = (body, about)
    core.models = {}
    try:
        payload = {
            "core": core,
            "offsets": offsets,
            "models": list(models),
            "extras": dict(extras or {}),
        }
        checkpoint = pickle_state(payload)
    finally:
        core.models = models
    compared = [*core.comparisons.values(), *core.served_comparisons.values()]  # + shadows
    records = [comparison.record() for comparison in compared]
    return Pickled(bodies, checkpoint, offsets, records, trace)


def prepare_snapshot(
    signing_key: bytes,
    core: LearningCore,
    offsets: Offsets,
    extras: Mapping[str, Any] | None = None,
    *,
    trace: TraceWrite | None = None,
    pickled: Mapping[str, bytes] | None = None,
) -> Prepared:
    """Step 4: `pickle_snapshot`, then `Pickled.signed`, in the calling thread."""
    return pickle_snapshot(core, offsets, extras, trace=trace, pickled=pickled).signed(signing_key)


def commit_snapshot(
    store: SnapshotStore, version: int, prepared: Prepared, after_write: AfterWrite | None = None
) -> dict[str, SnapshotMeta]:
    """Step 5 and the registry's steps after it: write ``prepared`` as ``version``, then the
    comparisons' readable copy (the checkpoint holds their exact state), then ``after_write``."""
    store.write(version, prepared.blobs, prepared.checkpoint, prepared.offsets, prepared.trace)
    if prepared.comparisons:
        ComparisonStore(store.client, store.keys.prefix).write(version, prepared.comparisons)
    metas = {name: meta for name, (_, meta) in prepared.blobs.items()}
    if after_write is not None:
        after_write(store, version, metas)
    return metas


def write_snapshot(
    store: SnapshotStore,
    signing_key: bytes,
    version: int,
    core: LearningCore,
    offsets: Offsets,
    extras: Mapping[str, Any] | None = None,
    after_write: AfterWrite | None = None,
    *,
    trace: TraceWrite | None = None,
) -> dict[str, SnapshotMeta]:
    """Steps 4 and 5 in the calling thread: serialize ``core`` and write it as ``version``.
    Mutates nothing visible to the caller except that ``core.models`` is restored before
    returning."""
    prepared = prepare_snapshot(signing_key, core, offsets, extras, trace=trace)
    return commit_snapshot(store, version, prepared, after_write)


WRITER_SWITCH_INTERVAL = 0.0005
"""Seconds: the interpreter's switch interval while the writer thread runs (`Snapshotter`)."""


@dataclass
class _Writing:
    """The snapshot under way: a forked child (``pid``) or the writer thread (``thread``)."""

    version: int
    start: float
    stall: float
    models: list[str]
    pid: int = 0
    thread: threading.Thread | None = None
    after_write: AfterWrite | None = None
    sizes: dict[str, int] | None = None
    """Set by the writer thread when the version is written (and the registry's steps ran)."""
    failed: BaseException | None = None
    """Set by the writer thread when it failed."""


class _SwitchInterval:
    """The interpreter's switch interval (a setting of the process), lowered to
    `WRITER_SWITCH_INTERVAL` while any writer thread runs and put back by the last one to end,
    whether or not its `Snapshotter` is ever polled again.

    A writer thread's round trips to Redis (step 3 above) each wait for the GIL once their answer is in:
    up to the switch interval (5 ms by default) while the learner computes. Shorter, the version
    is visible sooner (`bench/snapshot_writer.py`: ≈ 220 → 30-50 ms for logreg on the
    loopback); it costs the learner nothing measurable, since it only matters while another
    thread asks for the GIL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writers = 0
        self._before = 0.0

    def __enter__(self) -> None:
        with self._lock:
            if self._writers == 0:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(min(self._before, WRITER_SWITCH_INTERVAL))
            self._writers += 1

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._writers -= 1
            if self._writers == 0:
                sys.setswitchinterval(self._before)


_WHILE_WRITING = _SwitchInterval()


class Snapshotter:
    """Takes snapshots off the learning path, one at a time: a large state in a forked child,
    a small one serialized in the learner and written by a thread (`take`)."""

    def __init__(
        self,
        store: SnapshotStore,
        store_factory: Callable[[], SnapshotStore],
        signing_key: bytes,
        *,
        use_fork: bool = True,
        fork_min_bytes: int = 0,
        quick: SnapshotStore | None = None,
    ) -> None:
        self.store = store
        self.quick = store if quick is None else quick
        """For the calling thread's small calls (the version number, the metas read back after
        a child's write): ``store`` on a client with short timeouts, so that a hung Redis holds
        the learner that long (`stream.learner.runtime`); the blobs go through ``store``."""
        self._store_factory = store_factory
        self._signing_key = signing_key
        self.use_fork = use_fork and hasattr(os, "fork")
        """False: every snapshot is written in the calling thread, `take` returns its result."""
        self.fork_min_bytes = fork_min_bytes
        self.last_bytes: int | None = None  # size of the latest snapshot's model blobs
        self._writing: _Writing | None = None
        self._writer_store: SnapshotStore | None = None  # the writer thread's connections
        self.after_write: AfterWrite | None = None
        self.last_version: int | None = None
        self._gc_was_enabled = True

    @property
    def busy(self) -> bool:
        return self._writing is not None

    def take(
        self,
        core: LearningCore,
        offsets: Offsets,
        extras: Mapping[str, Any] | None = None,
        *,
        trace: TraceWrite | None = None,
    ) -> SnapshotResult | None:
        """Start a snapshot (steps 2-3); returns its result at once only with ``use_fork``
        off (else `poll` reaps it). ``trace``: the learning curve's points this snapshot
        covers, written in its transaction."""
        start = time.perf_counter()
        version = self.quick.next_version()
        if not self.use_fork:
            return self._inline(version, start, core, offsets, extras, trace)
        # A fork stalls for its page tables (≈ 7-10 ms here) and the learner then pays for
        # copy-on-write faults; for a small model, pickling it here stalls less (≈ 2 ms for
        # logreg) and a thread writes it: the round trips to Redis of the write and the
        # registry's steps wait beside the learning, not in it. The previous size decides;
        # when it is unknown (the first snapshot of a process, or after a forked one whose
        # sizes could not be read back), the models' pickles, made up to the threshold, do
        # (`_small`), and are kept for the snapshot.
        try:
            small, pickled = self._small(core)
        except Exception:  # a model that cannot be pickled: as a failed write (tried again)
            log.exception("snapshot v%d failed", version)
            elapsed = time.perf_counter() - start
            return SnapshotResult(version, False, elapsed, elapsed, how="thread", failure="error")
        if small:
            try:  # pickled here; the writer thread signs it (compression, MACs, checksums)
                serialized = pickle_snapshot(core, offsets, extras, trace=trace, pickled=pickled)
            except Exception:  # as a failed write: logged, and the next snapshot tries again
                log.exception("snapshot v%d failed", version)
                elapsed = time.perf_counter() - start
                return SnapshotResult(
                    version, False, elapsed, elapsed, how="thread", failure="error"
                )
            writing = _Writing(
                version, start, time.perf_counter() - start, list(core.models),
                after_write=self.after_write,
            )  # fmt: skip
            thread = threading.Thread(
                target=self._write, args=(writing, serialized), name=f"snapshot-v{version}",
                daemon=True,
            )  # fmt: skip
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: as a failed write, tried again later
                log.exception("snapshot v%d failed", version)
                elapsed = time.perf_counter() - start
                return SnapshotResult(
                    version, False, elapsed, writing.stall, how="thread", failure="error"
                )
            writing.thread = thread
            self._writing = writing
            return None
        # No automatic collection in the learner while the child runs: a full collection
        # would touch (and so copy) every page the two processes still share.
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        learner = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            status = 1
            try:
                _die_with_parent(learner)
                os.nice(10)  # the learner keeps the CPU; the snapshot takes what is left
                store = self._store_factory()
                write_snapshot(
                    store, self._signing_key, version, core, offsets, extras,
                    self.after_write, trace=trace,
                )  # fmt: skip
                status = 0
            except BaseException as exc:
                log.exception("snapshot v%d failed", version)
                status = (
                    _DENIED_STATUS if denied_permission(exc)
                    else _REFUSED_STATUS if refused_credentials(exc)
                    else _EXIT_STATUS[failure_of(exc)]
                )  # fmt: skip
            finally:
                os._exit(status)
        stall = time.perf_counter() - start
        self._writing = _Writing(version, start, stall, list(core.models), pid=pid)
        return None

    def _small(self, core: LearningCore) -> tuple[bool, dict[str, bytes] | None]:
        """Whether the models' state is under ``fork_min_bytes``, and their pickles if they
        were made to decide: by the previous snapshot's blobs, else by their pickles, made
        only up to the threshold (at most ``fork_min_bytes`` of pickling, ≈ 1-3 ms for the
        default 1 MB, where a fork of a learner that has read a backlog stalls ≈ 7-10 ms and
        its copy-on-write faults cost the learning more while the child lives); a small
        state's pickles are the snapshot's. Uncompressed pickles are larger than the
        compressed blobs: a model the previous size would call small may fork the first time.
        Raises what pickling a model raises."""
        limit = self.fork_min_bytes
        if self.last_bytes is not None:
            return self.last_bytes < limit, None
        if limit <= 0:
            return False, None
        pickles = pickled_within(core.models.values(), limit - 1)
        if pickles is None:
            return False, None
        return True, dict(zip(core.models, pickles, strict=True))

    def _inline(
        self,
        version: int,
        start: float,
        core: LearningCore,
        offsets: Offsets,
        extras: Mapping[str, Any] | None,
        trace: TraceWrite | None,
    ) -> SnapshotResult:
        sizes: dict[str, int] = {}
        failed: Exception | None = None
        try:
            metas = write_snapshot(
                self.store, self._signing_key, version, core, offsets, extras,
                self.after_write, trace=trace,
            )  # fmt: skip
        except Exception as exc:  # as a failed child: logged, and the next snapshot tries again
            log.exception("snapshot v%d failed", version)
            failed = exc
        else:
            sizes = {name: meta.size for name, meta in metas.items()}
            self.last_version = version
            self.last_bytes = sum(sizes.values())
        elapsed = time.perf_counter() - start
        return SnapshotResult(
            version, failed is None, elapsed, elapsed, how="inline", sizes=sizes,
            **_why(failed),
        )  # fmt: skip

    def _write(self, writing: _Writing, serialized: Pickled) -> None:
        """The writer thread: step 4's signing, step 5 and the registry's steps. Its outcome
        is read by `poll` once the thread has ended (``sizes`` stays None if it failed)."""
        try:
            prepared = serialized.signed(self._signing_key)
            with _WHILE_WRITING:
                if self._writer_store is None:
                    self._writer_store = self._store_factory()
                metas = commit_snapshot(
                    self._writer_store, writing.version, prepared, writing.after_write
                )
        except Exception as exc:
            log.exception("snapshot v%d failed", writing.version)
            writing.failed = exc
        else:
            writing.sizes = {name: meta.size for name, meta in metas.items()}

    def poll(self, block: bool = False) -> SnapshotResult | None:
        """Step 6: reap the running child or writer thread, if it has finished (or wait)."""
        writing = self._writing
        if writing is None:
            return None
        if writing.thread is not None:
            if block:
                writing.thread.join()
            elif writing.thread.is_alive():
                return None
            self._writing = None
            sizes = writing.sizes
            if sizes is not None:
                self.last_version = writing.version
                self.last_bytes = sum(sizes.values())
            seconds = time.perf_counter() - writing.start
            return SnapshotResult(
                writing.version, sizes is not None, seconds, writing.stall, how="thread",
                sizes=sizes or {}, **_why(writing.failed if sizes is None else None),
            )  # fmt: skip
        waited, status = os.waitpid(writing.pid, 0 if block else os.WNOHANG)
        if waited == 0:
            return None
        self._writing = None
        if self._gc_was_enabled:  # the child is gone: the collector may touch pages again
            gc.enable()
        code = os.waitstatus_to_exitcode(status)
        ok = code == 0
        sizes = {}
        if ok:
            self.last_version = writing.version
            self.last_bytes = None  # unknown: the next one's pickles decide (`_small`)
            with contextlib.suppress(RiverstreamError):
                sizes = {
                    name: self.quick.meta(name, writing.version).size for name in writing.models
                }
                self.last_bytes = sum(sizes.values())
        else:
            log.error("snapshot v%d failed (child exit status %s)", writing.version, status)
        seconds = time.perf_counter() - writing.start
        refused = code in (_REFUSED_STATUS, _DENIED_STATUS)
        failure = (
            None if ok else "unavailable" if refused else _FAILURE_OF_STATUS.get(code, "error")
        )
        return SnapshotResult(
            writing.version, ok, seconds, writing.stall, sizes=sizes, failure=failure,
            error=_DENIED_ERROR if code == _DENIED_STATUS else "", refused=refused,
        )  # fmt: skip


_FAILURE_OF_STATUS = {status: failure for failure, status in _EXIT_STATUS.items()}


def _why(failed: BaseException | None) -> dict[str, Any]:
    """`SnapshotResult`'s ``failure`` and ``error`` for ``failed`` (nothing if None)."""
    if failed is None:
        return {}
    return {
        "failure": failure_of(failed), "error": str(failed),
        "refused": refused_credentials(failed),
    }  # fmt: skip


def _die_with_parent(learner: int) -> None:
    """Linux: the snapshot child is killed with the learner, so a kill -9 of the learner never
    leaves a writer behind (whatever it wrote before EXEC stays invisible). A learner already
    gone before the request (killed between the fork and here) is not told of by the kernel:
    the child, re-parented, exits at once."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != learner:
        os._exit(1)


@dataclass
class Restored:
    version: int
    core: LearningCore
    offsets: Offsets
    extras: dict[str, Any]
    added: list[str] = field(default_factory=list)
    """Models the learner was started with that the checkpoint did not hold: fresh ones."""


def restore(
    store: SnapshotStore,
    signing_key: bytes,
    specs: list[ModelSpec],
    version: int | None = None,
    *,
    may_drop: Callable[[str], bool] | None = None,
) -> Restored | None:
    """Load the latest checkpoint (or ``version``) and its models, verified before unpickling.

    ``specs`` may name models the checkpoint does not hold: they join the stream fresh, at the
    checkpoint's position (`LearningCore.add_models`), and the models of the checkpoint go on
    untouched. That is how a challenger is added to a stream that is already learning. Every
    model of the checkpoint must still be in ``specs`` (with the same spec), except those for
    which ``may_drop`` says yes: models handed over to another learner, left out of the restored
    core (`LearningCore.remove_models`; `stream.learner.groups`)."""
    latest = store.latest_checkpoint() if version is None else store.checkpoint(version)
    if latest is None:
        return None
    version, blob, _offsets = latest
    payload: Mapping[str, Any] = load_signed(blob, signing_key)
    core: LearningCore = payload["core"]
    names: list[str] = payload["models"]
    wanted = {spec.name: spec for spec in specs}
    missing = sorted(set(names) - set(wanted))
    dropped = [name for name in missing if may_drop is not None and may_drop(name)]
    missing = [name for name in missing if name not in dropped]
    if missing:
        raise SnapshotError(
            f"checkpoint v{version} holds models {sorted(names)} but the learner was started "
            f"without {missing}: start it with every model of the stream (models may be added, "
            "not removed, or handed over to another learner with `riverstream snapshots "
            "handover`), or use a new RIVERSTREAM_REDIS_PREFIX for a different set of models"
        )
    models = {}
    for name in names:
        if name in dropped:  # never loaded: a placeholder keeps the positions until removed
            models[name] = cast("ModelState", None)
            continue
        state, _meta = store.load_model(name, version)
        if state.spec.spec != wanted[name].spec:
            raise SnapshotError(
                f"model {name} was snapshotted with spec {state.spec.spec!r}, "
                f"not {wanted[name].spec!r}"
            )
        models[name] = state
    core.models = models
    if dropped:
        core.remove_models(dropped)
        log.warning("checkpoint v%d: leaving out %s (learned elsewhere now)", version, dropped)
    added = [spec for spec in specs if spec.name not in models]
    core.add_models(added)  # none: only re-points the comparisons at the models
    if added:
        log.warning(
            "checkpoint v%d: new models %s start fresh at its position",
            version, ", ".join(spec.name for spec in added),
        )  # fmt: skip
    return Restored(
        version,
        core,
        dict(payload["offsets"]),
        dict(payload.get("extras", {})),
        [spec.name for spec in added],
    )

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
   one was smaller than ``fork_min_bytes`` is written in-process instead (steps 4-5 below,
   without a child): for a small model that stalls less than a fork.
4. **Serialize and sign** (in the child). Each model state becomes its own signed blob (what
   serving loads); the core without its models plus the offsets is the checkpoint blob.
5. **Write atomically** (in the child). `SnapshotStore.write`: chunks first, then one
   MULTI/EXEC makes every model's version, its metadata and the checkpoint visible together,
   with the learning curve's points the checkpoint covers (`stream.store.trace`), then PUBLISH
   announces it. A crash before EXEC leaves nothing visible.
6. **Reap.** The learner collects the child's exit status; at most one child runs at a time.
   The buffered events set aside in step 2 went back into the core right after the fork.

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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from learners.core import LearningCore, ModelState
from learners.serialization import dump_signed, load_signed
from learners.specs import ModelSpec
from schemas.errors import RiverstreamError, SnapshotError
from schemas.records import SnapshotMeta
from stream.store.comparisons import ComparisonStore
from stream.store.snapshots import SnapshotStore
from stream.store.trace import TraceWrite

log = logging.getLogger(__name__)

Offsets = dict[str, int]
"""``"topic:partition"`` → next offset to read."""


@dataclass
class SnapshotResult:
    version: int
    ok: bool
    seconds: float
    stall_seconds: float
    forked: bool = True
    sizes: dict[str, int] = field(default_factory=dict)
    """Bytes of each model's signed blob (empty if the snapshot failed or was not read back)."""


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


def write_snapshot(
    store: SnapshotStore,
    signing_key: bytes,
    version: int,
    core: LearningCore,
    offsets: Offsets,
    extras: Mapping[str, Any] | None = None,
    after_write: Callable[[SnapshotStore, int, dict[str, SnapshotMeta]], None] | None = None,
    *,
    trace: TraceWrite | None = None,
) -> dict[str, SnapshotMeta]:
    """Steps 4 and 5: serialize ``core`` and write it as ``version``. Mutates nothing visible
    to the caller except that ``core.models`` is restored before returning."""
    models = core.models
    blobs: dict[str, tuple[bytes, SnapshotMeta]] = {}
    for name, state in models.items():
        blob = dump_signed(state, signing_key)
        meta = SnapshotMeta.describe(
            name,
            blob,
            kind=state.kind,
            spec=state.spec.spec,
            samples_learned=state.samples_learned,
            metrics=state.metric_values(),
            offsets=offsets,
        )
        blobs[name] = (blob, meta)
    core.models = {}
    try:
        payload = {
            "core": core,
            "offsets": offsets,
            "models": list(models),
            "extras": dict(extras or {}),
        }
        checkpoint = dump_signed(payload, signing_key)
    finally:
        core.models = models
    store.write(version, blobs, checkpoint, offsets, trace)
    compared = [*core.comparisons.values(), *core.served_comparisons.values()]  # + shadows
    if compared:  # a readable copy (the checkpoint holds the exact state)
        records = [comparison.record() for comparison in compared]
        ComparisonStore(store.client, store.keys.prefix).write(version, records)
    metas = {name: meta for name, (_, meta) in blobs.items()}
    if after_write is not None:
        after_write(store, version, metas)
    return metas


class Snapshotter:
    """Takes snapshots off the learning path (fork), one at a time."""

    def __init__(
        self,
        store: SnapshotStore,
        store_factory: Callable[[], SnapshotStore],
        signing_key: bytes,
        *,
        use_fork: bool = True,
        fork_min_bytes: int = 0,
    ) -> None:
        self.store = store
        self._store_factory = store_factory
        self._signing_key = signing_key
        self.use_fork = use_fork and hasattr(os, "fork")
        self.fork_min_bytes = fork_min_bytes
        self.last_bytes: int | None = None  # size of the latest snapshot's model blobs
        self._child: tuple[int, int, float, float, list[str]] | None = None
        self.after_write: Callable[[SnapshotStore, int, dict[str, SnapshotMeta]], None] | None = (
            None
        )
        self.last_version: int | None = None
        self._gc_was_enabled = True

    @property
    def busy(self) -> bool:
        return self._child is not None

    def take(
        self,
        core: LearningCore,
        offsets: Offsets,
        extras: Mapping[str, Any] | None = None,
        *,
        trace: TraceWrite | None = None,
    ) -> SnapshotResult | None:
        """Start a snapshot (steps 2-3); returns a result at once when not forking. ``trace``:
        the learning curve's points this snapshot covers, written in its transaction."""
        start = time.perf_counter()
        version = self.store.next_version()
        # A fork stalls for its page tables (≈ 7-10 ms here) and the learner then pays for
        # copy-on-write faults; writing a small snapshot in-process stalls less (≈ 5 ms for
        # logreg). The size of the previous snapshot decides; the first one forks.
        small = self.last_bytes is not None and self.last_bytes < self.fork_min_bytes
        if not self.use_fork or small:
            sizes: dict[str, int] = {}
            try:
                metas = write_snapshot(
                    self.store,
                    self._signing_key,
                    version,
                    core,
                    dict(offsets),
                    extras,
                    self.after_write,
                    trace=trace,
                )
            except Exception:  # as a failed child: logged, and the next snapshot tries again
                log.exception("snapshot v%d failed", version)
                ok = False
            else:
                ok = True
                sizes = {name: meta.size for name, meta in metas.items()}
                self.last_version = version
                self.last_bytes = sum(sizes.values())
            elapsed = time.perf_counter() - start
            return SnapshotResult(version, ok, elapsed, elapsed, forked=False, sizes=sizes)
        # No automatic collection in the learner while the child runs: a full collection
        # would touch (and so copy) every page the two processes still share.
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            status = 1
            try:
                _die_with_parent()
                os.nice(10)  # the learner keeps the CPU; the snapshot takes what is left
                store = self._store_factory()
                write_snapshot(
                    store, self._signing_key, version, core, dict(offsets), extras,
                    self.after_write, trace=trace,
                )  # fmt: skip
                status = 0
            except BaseException:
                log.exception("snapshot v%d failed", version)
            finally:
                os._exit(status)
        stall = time.perf_counter() - start
        self._child = (pid, version, start, stall, list(core.models))
        return None

    def poll(self, block: bool = False) -> SnapshotResult | None:
        """Step 6: reap the running child, if it has finished (or wait for it)."""
        if self._child is None:
            return None
        pid, version, start, stall, models = self._child
        waited, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        if waited == 0:
            return None
        self._child = None
        if self._gc_was_enabled:  # the child is gone: the collector may touch pages again
            gc.enable()
        ok = os.waitstatus_to_exitcode(status) == 0
        sizes: dict[str, int] = {}
        if ok:
            self.last_version = version
            self.last_bytes = None  # unknown: the next one forks
            with contextlib.suppress(RiverstreamError):
                sizes = {name: self.store.meta(name, version).size for name in models}
                self.last_bytes = sum(sizes.values())
        else:
            log.error("snapshot v%d failed (child exit status %s)", version, status)
        return SnapshotResult(version, ok, time.perf_counter() - start, stall, sizes=sizes)


def _die_with_parent() -> None:
    """Linux: the snapshot child is killed with the learner, so a kill -9 of the learner never
    leaves a writer behind (whatever it wrote before EXEC stays invisible)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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

"""Where the learner's time goes per sample, phase by phase (for `learn_throughput.py --phases`).

A learner from `stream.learner.runtime.build_learner` runs over topics already published, with
each step of its loop wrapped in a timer that adds up the thread's CPU time
(`time.thread_time`) and the wall-clock time: the poll (librdkafka hands over the records),
the ingest (decode, watermark, push into the join), the core's advance (the join's ordering
and bookkeeping, predict, the metric, learn), within it `ModelState.predict` and
`ModelState.learn` (metric + learn_one) and the metric's update alone, the snapshots, the
live updates, the commands check and the idleness check. Each timer costs ≈ 0.5 µs, so this
run is slower than the timed one: read its split, not its total.

``coarse``: only the loop's steps are timed (no timer per sample), and the core's pushes and
advances are recorded, then replayed into a fresh `LearningCore` in this process right after
the run (the same event objects, the collector set as the learner sets it), three times: what
the join and the models cost away from the loop (Kafka's threads, the broker, the decoding in
between), beside what they cost in it. Both modes print the collector's time (`gc.callbacks`).
"""

from __future__ import annotations

import functools
import gc
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

from learners.core import LearningCore, ModelState
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.kafka.client import EventProducer
from stream.learner.loop import learning_collector
from stream.learner.runtime import build_learner


class Timers:
    """CPU and wall seconds per phase, added up by wrapped callables."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        """Time ``owner.name`` (an instance's or a class's attribute) as ``phase``."""
        original = getattr(owner, name)
        own = isinstance(owner, type) and name in vars(owner)  # not inherited
        cpu, wall = self.cpu, self.wall
        thread_time, perf_counter = time.thread_time, time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            c, w = thread_time(), perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                cpu[phase] += thread_time() - c
                wall[phase] += perf_counter() - w

        setattr(owner, name, timed)
        if own:
            self._undo.append(lambda: setattr(owner, name, original))
        else:  # an instance's (or a subclass's) attribute over the class's method
            self._undo.append(lambda: delattr(owner, name))

    def undo(self) -> None:
        for step in reversed(self._undo):
            step()
        self._undo.clear()


class _Until:
    """Observer: stops the learner once ``n`` labels were learned."""

    def __init__(self, n: int) -> None:
        self.n = n

    def after_batch(self, learner: Any, records: list[Any]) -> None:
        if learner.core.counters.labels_joined >= self.n:
            learner.stop()

    def snapshot(self, learner: Any, result: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _Collector:
    """The collector's CPU time and collections per generation, from `gc.callbacks`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._start
            self.collections[info["generation"]] += 1


class _Recorder:
    """Records the core's pushes and advances (wrapping the class's methods: a snapshot pickles
    the instance)."""

    def __init__(self, timers: Timers) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        calls = self.calls
        for name in ("push_features", "push_labels", "advance"):
            original = getattr(LearningCore, name)

            def recorded(
                self: LearningCore, *args: Any, _name: str = name, _f: Any = original
            ) -> Any:
                calls.append((_name, args))
                return _f(self, *args)

            setattr(LearningCore, name, recorded)
            timers._undo.append(functools.partial(setattr, LearningCore, name, original))

    def replay(self, spec: ModelSpec) -> float:
        """CPU seconds of a fresh core's advances over the recorded calls, per joined label."""
        core = LearningCore([spec])
        seconds = 0.0
        for name, args in self.calls:
            if name == "advance":
                start = time.thread_time()
                core.advance(*args)
                seconds += time.thread_time() - start
            else:
                getattr(core, name)(*args)
        return seconds / max(1, core.counters.labels_joined)


def phase_run(settings: Settings, spec: ModelSpec, n: int, *, coarse: bool = False) -> str:
    """Run a learner over the ``n`` samples already in ``settings``' topics; the breakdown."""
    timers = Timers()
    learner = build_learner(settings, [spec], observer=_Until(n))
    metric_class = type(learner.core.models[spec.name].metrics[0])
    for owner, name, phase in [
        (learner.source, "poll", "poll (librdkafka → runs)"),
        (learner.ingest, "push", "ingest (decode, watermark, push)"),
        (LearningCore, "advance", "advance (join + models)"),
        (ModelState, "predict", "  predict"),
        (ModelState, "learn", "  metric + learn"),
        (metric_class, "update", "    metric update"),
        (learner, "_maybe_snapshot", "snapshots"),
        (learner.live, "maybe_publish", "live updates"),
        (learner, "_check_commands", "commands check"),
        (learner.idleness, "update", "idleness check"),
    ]:
        if not (coarse and phase.startswith(" ")):
            timers.wrap(owner, name, phase)
    recorder = _Recorder(timers) if coarse else None
    collector = _Collector()
    gc.callbacks.append(collector)
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    try:
        learner.run(exit_when_idle=0.5)
    finally:
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        gc.callbacks.remove(collector)
        timers.undo()
        learner.source.close()
        cast(EventProducer, learner.dead_letters.producer).close()
    us = 1e6 / n
    lines = [f"    {'phase':44s} {'CPU µs/sample':>13s} {'wall µs/sample':>14s}"]
    for phase in timers.cpu:
        lines.append(
            f"    {phase:44s} {timers.cpu[phase] * us:13.2f} {timers.wall[phase] * us:14.2f}"
        )
    if not coarse:
        model = timers.cpu["  predict"] + timers.cpu["  metric + learn"]
        glue = timers.cpu["advance (join + models)"] - model
        lines.append(f"    {'  join + core bookkeeping (advance − models)':44s} {glue * us:13.2f}")
    lines.append(
        f"    {'  of which the collector':44s} {collector.seconds * us:13.2f}"
        f"   (collections by generation: {collector.collections})"
    )
    lines.append(f"    {'whole run (thread CPU / wall)':44s} {cpu * us:13.2f} {wall * us:14.2f}")
    if recorder is not None:
        with learning_collector():  # as the learner's run sets it
            replays = [recorder.replay(spec) * 1e6 for _ in range(3)]
        lines.append(
            f"    {'advance replayed in process (3 runs)':44s} "
            + " / ".join(f"{r:.2f}" for r in replays)
            + " (µs a joined label: the same calls, the same events, right after the run)"
        )
    return "\n".join(lines)

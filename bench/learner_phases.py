"""Where the learner's time goes per sample, phase by phase (for `learn_throughput.py --phases`).

A learner from `stream.learner.runtime.build_learner` runs over topics already published, with
each step of its loop wrapped in a timer that adds up the thread's CPU time
(`time.thread_time`) and the wall-clock time: the poll (librdkafka hands over the records),
the ingest (decode, watermark, push into the join), the core's advance (the join's ordering
and bookkeeping, predict, the metric, learn), within it `ModelState.predict` and
`ModelState.learn` (metric + learn_one) and the metric's update alone, the snapshots, the
live updates, the commands check and the idleness check. Each timer costs ≈ 0.5 µs, so this
run is slower than the timed one: read its split, not its total.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

from learners.core import LearningCore, ModelState
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.kafka.client import EventProducer
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


def phase_run(settings: Settings, spec: ModelSpec, n: int) -> str:
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
        timers.wrap(owner, name, phase)
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    try:
        learner.run(exit_when_idle=0.5)
    finally:
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        timers.undo()
        learner.source.close()
        cast(EventProducer, learner.dead_letters.producer).close()
    us = 1e6 / n
    model = timers.cpu["  predict"] + timers.cpu["  metric + learn"]
    glue = timers.cpu["advance (join + models)"] - model
    lines = [f"    {'phase':44s} {'CPU µs/sample':>13s} {'wall µs/sample':>14s}"]
    for phase in timers.cpu:
        lines.append(
            f"    {phase:44s} {timers.cpu[phase] * us:13.2f} {timers.wall[phase] * us:14.2f}"
        )
    lines.append(f"    {'  join + core bookkeeping (advance − models)':44s} {glue * us:13.2f}")
    lines.append(f"    {'whole run (thread CPU / wall)':44s} {cpu * us:13.2f} {wall * us:14.2f}")
    return "\n".join(lines)

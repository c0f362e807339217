"""Shadow jobs for the shadow runner's tests (`serving.shadows.ShadowRunner`), without a graph:
one answer whose one pending shadow runs a given function."""

from __future__ import annotations

from typing import Any

from learners.graph import GraphAnswer, Outcome, PendingShadow, StaticModels
from serving.shadows import ShadowJob, ShadowsDone

BRANCH = "root.shadow.shadows[0]"
"""The path of the shadow of `shadow_job`'s answer."""


def answering(prediction: Any, decided_by: str) -> Any:
    """A shadow's runner that answers ``prediction`` at once."""

    def run(x: dict[str, Any], context: Any) -> Outcome:
        return Outcome(prediction, None, "classifier", decided_by)

    return run


def shadow_job(runner: Any, then: ShadowsDone | None = None, graph: str = "g") -> ShadowJob:
    """The job of one answer of ``graph`` whose one shadow (at `BRANCH`) is ``runner``
    (``runner(features, context) -> Outcome``); ``then``: the job's log, if logged."""
    pending = PendingShadow(BRANCH, runner, None, None, True)
    answer = GraphAnswer(True, None, "classifier", {}, (), "root", shadows=(pending,))
    return ShadowJob(graph, ((answer, {}),), StaticModels({}), then)  # type: ignore[arg-type]

"""The core keeps the served metrics of the latest `VERSIONS_KEPT` versions of each target and
the shadow comparisons of the latest graph versions of each pair (`learners.served`): a learner
running for weeks made thousands of versions, and kept (and checkpointed) a metric for every
one its logged answers ever named."""

from __future__ import annotations

import pickle
from typing import Any

from river import metrics

from learners.comparisons import ModelComparison
from learners.core import LearningCore
from learners.served import VERSIONS_KEPT, shadow_pair, shadow_target
from learners.specs import ModelSpec
from tests.support.metrics import SHADOW_BRANCH, push_served

SHADOW = shadow_target("g", SHADOW_BRANCH)


def fresh() -> LearningCore:
    return LearningCore([ModelSpec("lr", "logreg", ("Accuracy",))])


def kept(core: LearningCore) -> dict[str, list[int]]:
    """The versions kept, per target and for the shadow pair."""
    out: dict[str, list[int]] = {}
    for target, version in core.served_metrics:
        out.setdefault(target, []).append(version)
    out["pair"] = [v for v in range(10_000) if shadow_pair("g", v, SHADOW_BRANCH) in
                   core.served_comparisons]  # fmt: skip
    assert len(out["pair"]) == len(core.served_comparisons)
    return {target: sorted(versions) for target, versions in out.items()}


def state(core: LearningCore) -> tuple[Any, ...]:
    """Everything the served answers left in the core, comparable across cores."""
    return (
        core.served_metric_values(),
        {pair: c.stats.summary() for pair, c in core.served_comparisons.items()},
    )


def pickled_size(core: LearningCore) -> int:
    core.drain_outcomes()  # bounded on their own (OUTCOMES_KEPT), not what is measured here
    return len(pickle.dumps(core))


def test_a_long_run_keeps_the_latest_versions_of_each_target_and_shadow_pair() -> None:
    core = fresh()
    push_served(core, range(1, 101))
    latest = list(range(101 - VERSIONS_KEPT, 101))
    assert kept(core) == {"lr": latest, "g": latest, SHADOW: latest, "pair": latest}
    size = pickled_size(core)

    push_served(core, range(101, 401))  # 300 more versions: the checkpoint does not grow
    latest = list(range(401 - VERSIONS_KEPT, 401))
    assert kept(core) == {"lr": latest, "g": latest, SHADOW: latest, "pair": latest}
    assert pickled_size(core) < size * 1.05  # it was 3.9 times as large, growing per version

    # the kept versions were never cut short: equal to a core that saw only them
    alone = fresh()
    push_served(alone, range(1, 401 - VERSIONS_KEPT))  # the same events, ids and answers...
    alone.served_metrics.clear()
    alone.served_comparisons.clear()  # ...but what those versions left is forgotten
    push_served(alone, latest)
    assert state(alone) == state(core)


def test_an_answer_of_a_dropped_version_is_never_scored_again() -> None:
    """A straggler's version restarting from zero, and dropping a version still in use, would
    both misreport: an answer older than every kept version is left out."""
    core = fresh()
    push_served(core, range(1, 101))
    before = state(core)
    push_served(core, [5, 50, 100 - VERSIONS_KEPT])  # all dropped already
    assert state(core) == before
    push_served(core, [101])
    latest = list(range(102 - VERSIONS_KEPT, 102))
    assert kept(core) == {"lr": latest, "g": latest, SHADOW: latest, "pair": latest}
    push_served(core, [101 - VERSIONS_KEPT])  # dropped just now
    assert kept(core)["lr"] == latest


def test_a_restart_from_a_checkpoint_equals_an_uninterrupted_run() -> None:
    uninterrupted = fresh()
    push_served(uninterrupted, range(1, 121))
    restarted = fresh()
    push_served(restarted, range(1, 71))
    restarted = pickle.loads(pickle.dumps(restarted))
    push_served(restarted, range(71, 121))
    assert state(restarted) == state(uninterrupted)


def test_a_checkpoint_written_before_the_bound_loads_with_the_latest_versions() -> None:
    """A core pickled before the bound held every version; loaded, it holds what a learner
    with the bound would (the latest of each target), the rest of its state untouched."""
    old = fresh()
    old.served_metrics = {(target, v): metrics.Accuracy() for target in ("lr", "g", SHADOW)
                          for v in range(1, 201)}  # fmt: skip
    old.served_metrics[("other", 3)] = metrics.Accuracy()
    pairs = [shadow_pair("g", v, SHADOW_BRANCH) for v in range(1, 201)]
    pairs.append(("g", SHADOW))  # unversioned: dropped at the next shadow answer, not here
    old.served_comparisons = {pair: ModelComparison.fresh(*pair, "classifier") for pair in pairs}
    loaded = pickle.loads(pickle.dumps(old))
    latest = list(range(201 - VERSIONS_KEPT, 201))
    assert sorted(loaded.served_metrics) == sorted(
        [(t, v) for t in ("lr", "g", SHADOW) for v in latest] + [("other", 3)]
    )
    assert sorted(loaded.served_comparisons) == sorted(
        [shadow_pair("g", v, SHADOW_BRANCH) for v in latest] + [("g", SHADOW)]
    )
    push_served(loaded, [201])  # and it goes on
    assert ("lr", 201) in loaded.served_metrics
    assert ("lr", 201 - VERSIONS_KEPT) not in loaded.served_metrics
    assert ("g", SHADOW) not in loaded.served_comparisons

    older = fresh()  # written before served answers were scored at all
    del older.served_metrics, older.served_comparisons
    assert pickle.loads(pickle.dumps(older)).served_metrics == {}

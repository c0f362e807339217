"""The champion/challenger policy against the real Redis, on what it reads and what it may
record: a comparison the learner keeps the other way round (``--compare all`` keeps the pair in
model order), a graph that does not serve the champion (refused when the policy is set; never
recorded as a promotion when it changed after), and ``models compare`` reading the same mirror.

Comparisons are written as the learner writes them (`ComparisonStore.write` of
`ModelComparison.record`), fed with 0/1 outcomes chosen here."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from learners.compare import mirrored
from learners.comparisons import ModelComparison, all_pairs
from schemas.errors import RegistryError
from schemas.settings import Settings
from stream.cli.models import models_app
from stream.registry.challenger import ChallengerPolicies
from stream.registry.graphs import GraphRegistry
from stream.store.snapshots import SnapshotStore
from tests.conftest import settings_env
from tests.stream.registry.test_policy import graphs, policies, write

pytestmark = pytest.mark.integration

__all__ = ["graphs", "policies"]  # fixtures shared with the policy tests


def compared(
    champion: str, challenger: str, n: int, right_a: float, right_b: float
) -> ModelComparison:
    """``champion`` right with probability ``right_a``, ``challenger`` with ``right_b``."""
    comparison = ModelComparison.fresh(champion, challenger, "classifier")
    rng = random.Random(0)
    for _ in range(n):
        u = rng.random()
        comparison.stats.update_correct(u < right_a, u < right_b)
    return comparison


def test_a_pair_kept_the_other_way_round_is_read_mirrored_and_promotes(
    store: SnapshotStore, graphs: GraphRegistry, policies: ChallengerPolicies, settings: Settings
) -> None:
    graphs.apply({"name": "g", "root": {"shadow": {"primary": "tree", "shadows": ["hat"]}}})
    # `--model hat=... --model tree=... --compare all`: the pair is kept as hat:tree
    [pair] = all_pairs({"hat": "classifier", "tree": "classifier"})
    assert pair == ("hat", "tree")
    kept = compared(*pair, 3000, 0.85, 0.70)  # hat (kept as champion) is the better one
    write(store, kept, version=9)
    policies.set("g", "tree", "hat", margin=0.01, min_labels=500)

    [promotion] = policies.evaluate()
    assert graphs.show("g").document["root"] == {
        "shadow": {"primary": "hat", "shadows": ["tree"], "percent": 100.0}
    }
    evidence = promotion.evidence
    summary = mirrored(kept.stats.summary(0.01, 500))
    assert (evidence["champion"], evidence["challenger"]) == ("tree", "hat")
    assert evidence["decision"] == "b_better" == summary["decision"]
    assert evidence["champion_loss"] == kept.stats.loss_b  # tree's loss
    assert evidence["challenger_loss"] == kept.stats.loss_a  # hat's loss
    assert evidence["difference"] == -kept.stats.difference > 0.01
    assert evidence["interval"] == [summary["lower"], summary["upper"]]
    assert evidence["snapshot_version"] == 9
    fired = policies.get("g")
    assert fired is not None and fired.promoted is not None

    # the operator's command reads the same mirror, from the same rule
    runner, env = CliRunner(), settings_env(settings)
    shown = runner.invoke(models_app, ["compare", "tree", "hat", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.stdout)
    assert (row["champion"], row["challenger"], row["mirrored"]) == ("tree", "hat", True)
    assert row["decision"] == "b_better" and row["difference"] == evidence["difference"]
    assert (row["lower"], row["upper"]) == (summary["lower"], summary["upper"])
    assert row["champion_accuracy"] == 1.0 - kept.stats.loss_b
    as_kept = json.loads(
        runner.invoke(models_app, ["compare", "hat", "tree", "--json"], env=env).stdout
    )
    assert "mirrored" not in as_kept and as_kept["decision"] == "a_better"


@pytest.mark.parametrize(
    ("root", "problem"),
    [
        ("lr", "serves lr"),  # neither model
        ({"shadow": {"primary": "lr", "shadows": ["tree"]}}, "serves lr"),  # only shadowed
        ({"shadow": {"primary": "hat", "shadows": ["lr"]}}, "serves hat"),  # the challenger
    ],
)
def test_a_policy_for_a_graph_that_does_not_serve_the_champion_is_refused(
    graphs: GraphRegistry, policies: ChallengerPolicies, root: object, problem: str
) -> None:
    graphs.apply({"name": "fraud", "root": root})
    with pytest.raises(RegistryError, match=rf"graph fraud v\d+ does not serve tree .*{problem}"):
        policies.set("fraud", "tree", "hat", margin=0.0, min_labels=500)
    with pytest.raises(RegistryError, match="no served graph named nograph"):
        policies.set("nograph", "tree", "hat", margin=0.0, min_labels=500)
    assert policies.all() == []


def test_a_promotion_that_changes_nothing_is_never_recorded(
    store: SnapshotStore, graphs: GraphRegistry, policies: ChallengerPolicies
) -> None:
    graphs.apply({"name": "fraud", "root": {"ensemble": {"members": ["tree", "lr"]}}})
    policies.set("fraud", "tree", "hat", margin=0.0, min_labels=500)
    replaced = graphs.apply({"name": "fraud", "root": "lr"}, reason="the operator's own choice")
    write(store, compared("tree", "hat", 3000, 0.70, 0.85))

    assert policies.evaluate() == []
    armed = policies.get("fraud")
    assert armed is not None and armed.promoted is None  # nothing was promoted: still armed
    assert graphs.show("fraud").version == replaced.version
    assert [e.action for e in graphs.history("fraud")] == ["apply", "apply"]

    # served again with the champion, the policy promotes for real
    graphs.apply({"name": "fraud", "root": {"ensemble": {"members": ["tree", "lr"]}}})
    [promotion] = policies.evaluate()
    assert graphs.show("fraud").document["root"]["ensemble"]["members"] == ["hat", "lr"]
    fired = policies.get("fraud")
    assert fired is not None and fired.promoted is not None
    assert fired.promoted["graph_version"] == promotion.applied.version


def test_a_challenger_already_in_the_champions_place_is_only_marked(
    store: SnapshotStore, graphs: GraphRegistry, policies: ChallengerPolicies
) -> None:
    """What a learner killed between the graph's new version and the policy's update sees."""
    graphs.apply({"name": "g", "root": {"shadow": {"primary": "tree", "shadows": ["hat"]}}})
    policies.set("g", "tree", "hat", margin=0.0, min_labels=100)
    swapped = graphs.apply(
        {"name": "g", "root": {"shadow": {"primary": "hat", "shadows": ["tree"]}}}
    )
    write(store, compared("tree", "hat", 2000, 0.6, 0.8))
    assert policies.evaluate() == []
    assert [e.action for e in graphs.history("g")] == ["apply", "apply"]
    marked = policies.get("g")
    assert marked is not None and marked.promoted is not None
    assert marked.promoted["graph_version"] == swapped.version

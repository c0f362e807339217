"""The champion/challenger policy against the real Redis: when it fires and when it does not,
what it writes into the graph and its history, and that it fires once. And the registry's pure
decisions (`stream.registry.policy`): the rollback target read from a history's tail.

Comparisons are written as the learner writes them (`ComparisonStore.write` of
`ModelComparison.record`), fed with 0/1 outcomes chosen here."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners.comparisons import ModelComparison
from schemas.errors import RegistryError
from schemas.records import HistoryEntry
from stream.registry.challenger import ChallengerPolicies, swap_champion
from stream.registry.graphs import GraphRegistry
from stream.registry.policy import rollback_target, rollback_target_from_tail
from stream.store.comparisons import ComparisonStore
from stream.store.snapshots import SnapshotStore
from tests.support.registry import write_version

_ACTIONS = ["promote", "auto-promote", "rollback", "policy", "pin", "unpin", "prune", "import"]
_entries = st.lists(
    st.builds(
        lambda action, to: HistoryEntry(0.0, action, None, to, "", ""),
        st.sampled_from(_ACTIONS),
        st.one_of(st.none(), st.integers(1, 9)),
    ),
    max_size=40,
)


@settings(max_examples=3000, deadline=None)
@given(_entries, st.one_of(st.none(), st.integers(1, 9)), st.integers(0, 45))
def test_the_tail_decides_the_rollback_target_as_the_whole_history_does(
    entries: list[HistoryEntry], current: int | None, tail: int
) -> None:
    known, target = rollback_target_from_tail(entries[max(0, len(entries) - tail) :], current)
    if known:
        assert target == rollback_target(entries, current, lambda v: -v)  # (-v: "older" asked)
    if current is not None and tail >= len(entries):
        # the whole history as its tail: it decides unless a rollback or too few promotions
        pointers = [e for e in entries if e.action in {"promote", "auto-promote", "policy"}]
        if (
            not any(e.action == "rollback" for e in entries)
            and len({e.to for e in pointers if e.to}) >= 2
        ):
            assert known


def compared(n: int, champion_right: float, challenger_right: float) -> ModelComparison:
    """A classification comparison of ``n`` labels with the given accuracies (paired)."""
    rng = random.Random(5)
    comparison = ModelComparison.fresh("tree", "hat", "classifier")
    for _ in range(n):
        u = rng.random()
        comparison.stats.update_correct(u < champion_right, u < challenger_right)
    return comparison


@pytest.fixture
def graphs(store: SnapshotStore, key: bytes) -> GraphRegistry:
    write_version(store, key, {"tree": {"Accuracy": 0.7}, "hat": {"Accuracy": 0.8}, "lr": {}})
    return GraphRegistry(store.client, store.keys.prefix, by="tester")


@pytest.fixture
def policies(store: SnapshotStore) -> ChallengerPolicies:
    return ChallengerPolicies(store.client, store.keys.prefix, by="tester")


def write(store: SnapshotStore, comparison: ModelComparison, version: int = 7) -> None:
    ComparisonStore(store.client, store.keys.prefix).write(version, [comparison.record()])


@pytest.mark.integration
def test_the_policy_waits_for_enough_labels_and_a_decision_beyond_the_margin(
    store: SnapshotStore, graphs: GraphRegistry, policies: ChallengerPolicies
) -> None:
    first = graphs.apply({"name": "g", "root": {"ensemble": {"members": ["tree", "lr"]}}})
    policies.set("g", "tree", "hat", margin=0.05, min_labels=1500)
    assert policies.evaluate() == []  # no comparison written yet
    write(store, compared(1000, 0.70, 0.90))  # wins clearly, but on too few labels
    assert policies.evaluate() == []
    write(store, compared(3000, 0.70, 0.73))  # enough labels, wins by less than the margin
    assert policies.evaluate() == []
    write(store, compared(3000, 0.90, 0.70))  # the champion is better
    assert policies.evaluate() == []
    assert [e.action for e in graphs.history("g")] == ["apply"]

    winning = compared(3000, 0.70, 0.80)
    write(store, winning, version=9)
    [promotion] = policies.evaluate()
    assert promotion.applied.previous == first.version
    assert graphs.show("g").document["root"] == {
        "ensemble": {"members": ["hat", "lr"], "combine": "mean"}
    }
    entry = graphs.history("g")[-1]
    assert (entry.action, entry.from_, entry.to, entry.by) == (
        "challenger", first.version, promotion.applied.version, "policy:tester",
    )  # fmt: skip
    summary = winning.stats.summary(0.05, 1500)
    evidence = entry.detail["evidence"]
    assert evidence["n"] == 3000 and evidence["snapshot_version"] == 9
    assert evidence["interval"] == [summary["lower"], summary["upper"]]
    assert evidence["difference"] == summary["difference"] and summary["lower"] > 0.05
    assert "hat beats tree on 3000 labels" in entry.reason

    # it fired once: a rollback by the operator is not undone by the next snapshot
    graphs.rollback("g", reason="not yet")
    assert policies.evaluate() == []
    assert graphs.show("g").version == first.version
    fired = policies.get("g")
    assert fired is not None and fired.promoted is not None
    assert fired.promoted["graph_version"] == promotion.applied.version
    # set again, it is armed again
    policies.set("g", "tree", "hat", margin=0.05, min_labels=1500)
    assert len(policies.evaluate()) == 1


@pytest.mark.integration
def test_a_graph_already_without_the_champion_is_only_marked(
    store: SnapshotStore, graphs: GraphRegistry, policies: ChallengerPolicies
) -> None:
    """What a learner killed between the graph's new version and the policy's update sees."""
    graphs.apply({"name": "g", "root": "tree"})
    policies.set("g", "tree", "hat", margin=0.0, min_labels=100)
    graphs.apply({"name": "g", "root": "hat"})
    write(store, compared(2000, 0.6, 0.8))
    assert policies.evaluate() == []
    assert [e.action for e in graphs.history("g")] == ["apply", "apply"]
    marked = policies.get("g")
    assert marked is not None and marked.promoted is not None


@pytest.mark.integration
def test_policies_are_listed_deleted_and_checked(
    store: SnapshotStore, graphs: GraphRegistry, policies: ChallengerPolicies
) -> None:
    graphs.apply({"name": "a", "root": "lr"})
    graphs.apply({"name": "b", "root": "tree"})
    policies.set("b", "tree", "hat", margin=0.01, min_labels=10)
    policies.set("a", "lr", "tree", margin=0.0, min_labels=500)
    assert [(p.graph, p.champion) for p in policies.all()] == [("a", "lr"), ("b", "tree")]
    assert policies.delete("a") and not policies.delete("a")
    assert [p.graph for p in policies.all()] == ["b"]
    with pytest.raises(RegistryError, match="two models"):
        policies.set("g", "tree", "tree", margin=0.0, min_labels=10)
    with pytest.raises(RegistryError, match="margin"):
        policies.set("g", "tree", "hat", margin=-0.1, min_labels=10)


@pytest.mark.integration
def test_swap_champion_keeps_rules_switches_splits_and_shadows_meaningful() -> None:
    from schemas.graph_parser import parse_graph
    from schemas.graphs import graph_to_dict

    doc = {
        "name": "g",
        "root": {
            "rules": {
                "rules": [{"when": {"feature": "x", "gt": 1}, "then": {"decision": "review"}}],
                "over": {
                    "switch": {
                        "cases": [{"when": {"feature": "y", "eq": 1}, "then": "tree"}],
                        "default": {
                            "split": {
                                "branches": [
                                    {"weight": 1, "node": {"shadow": {
                                        "primary": "tree", "shadows": ["hat", "lr"]}}},
                                    {"weight": 1, "node": {"sequence": {
                                        "steps": ["tree", {"model": "lr"}]}}},
                                ]
                            }
                        },
                    }
                },
            }
        },
    }  # fmt: skip
    swapped = graph_to_dict(swap_champion(parse_graph(doc), "tree", "hat"))
    over = swapped["root"]["rules"]["over"]["switch"]
    assert over["cases"][0]["then"] == "hat"
    shadow, sequence = (b["node"] for b in over["default"]["split"]["branches"])
    assert shadow == {"shadow": {"primary": "hat", "shadows": ["tree", "lr"], "percent": 100.0}}
    assert sequence == {"sequence": {"steps": [{"model": "hat", "as": "tree"}, "lr"]}}
    assert parse_graph(swapped).model_names() == ("hat", "lr", "tree")

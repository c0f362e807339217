"""A/A: under no real difference, the promotion policy checked after every label rarely fires.

Each stream pits two identically configured classifiers against each other: the same rule,
each with its own seeded noise (the rule's answer flipped with probability 0.15), so at every
label both are right with the same probability whatever came before (the truth is equal). The
labels go through `ModelComparison.update`, the code the learning core runs at each joined
label, and after **every** label the policy's own decision, `ChallengerPolicy.decide` (what
`ChallengerPolicies.evaluate` acts on after each snapshot), is asked; a stream counts as a false
promotion if the policy ever fires. Margin 0 and one label minimum: the most permissive policy.

The false-promotion rate must stay within the comparisons' nominal level, alpha = 0.05. Peeking
at a fixed-sample 95 % z-interval on the same streams instead fires far more often: that is what
the confidence sequence is for (and what this test would catch).

Measured with this code (the same streams, more of them): 500 streams of 5 000 labels, 2 false
promotions (0.4 %).
"""

from __future__ import annotations

import math
import random

from learners.comparisons import ALPHA, ModelComparison
from stream.registry.challenger import ChallengerPolicy
from stream.store.comparisons import StoredComparison

STREAMS, LABELS, FLIP = 40, 2_000, 0.15


def a_a_stream(seed: int) -> tuple[bool, bool]:
    """Whether the policy, and a peeking z-test, ever declared the challenger better."""
    rng = random.Random(seed)
    comparison = ModelComparison.fresh("a", "b", "classifier")
    comparison.a, comparison.b = 0, 1
    stored = StoredComparison(1, 0.0, comparison)
    policy = ChallengerPolicy("g", "a", "b", margin=0.0, min_labels=1)
    promoted = peeked = False
    for _ in range(LABELS):
        x = rng.gauss(0.0, 1.0)
        y = x + rng.gauss(0.0, 0.5) > 0
        rule = x > 0
        a, b = rule != (rng.random() < FLIP), rule != (rng.random() < FLIP)
        comparison.update(y, [(a, None), (b, None)])
        if not promoted and policy.decide(stored) is not None:
            promoted = True
        stats = comparison.stats
        if not peeked and stats.n >= 30 and stats.m2_d > 0:
            se = math.sqrt(stats.m2_d / (stats.n - 1) / stats.n)
            peeked = stats.difference - 1.96 * se > 0
        if promoted and peeked:
            break
    return promoted, peeked


def test_the_policy_checked_after_every_label_keeps_false_promotions_within_alpha() -> None:
    results = [a_a_stream(seed) for seed in range(STREAMS)]
    promoted = sum(p for p, _ in results)
    peeked = sum(z for _, z in results)
    assert promoted <= ALPHA * STREAMS, f"{promoted} false promotions in {STREAMS} A/A streams"
    assert peeked > 2 * ALPHA * STREAMS, f"a peeking z-test fired on only {peeked} streams"


def test_the_policy_decides_only_past_its_minimum_and_once() -> None:
    comparison = ModelComparison.fresh("a", "b", "classifier")
    comparison.a, comparison.b = 0, 1
    for i in range(600):  # b right every time, a wrong one time in two
        comparison.update(True, [(i % 2 == 0, None), (True, None)])
    stored = StoredComparison(3, 0.0, comparison)
    assert ChallengerPolicy("g", "a", "b", margin=0.0, min_labels=1000).decide(stored) is None
    facts = ChallengerPolicy("g", "a", "b", margin=0.1, min_labels=500).decide(stored)
    assert facts is not None and facts["n"] == 600 and facts["interval"][0] > 0.1
    assert facts["snapshot_version"] == 3 and facts["decision"] == "b_better"
    fired = ChallengerPolicy("g", "a", "b", 0.1, 500, promoted={"graph_version": 2})
    assert fired.decide(stored) is None

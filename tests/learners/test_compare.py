"""`learners.compare.PairedComparison`: coverage, power, anytime validity, River, persistence."""

from __future__ import annotations

import json
import math
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners.compare import PairedComparison, mirrored

ALPHA = 0.05
N_STREAMS, STREAM_LENGTH = 400, 2000
# Binomial standard deviation of a 5 % rate over 400 streams is 0.011: two of them.
TOLERANCE = 0.02


def feed(comparison: PairedComparison, p_a: float, p_b: float, n: int, rng: random.Random) -> None:
    for _ in range(n):
        comparison.update_correct(rng.random() < p_a, rng.random() < p_b)


def test_interval_shrinks_with_n_and_contains_the_true_difference() -> None:
    rng = random.Random(11)
    comparison = PairedComparison(alpha=ALPHA)
    assert comparison.interval() == (-1.0, 1.0)
    assert comparison.decision() == "undecided"
    true_difference = 0.80 - 0.75  # independent Bernoulli correctness
    widths = []
    for checkpoint in (100, 1_000, 10_000):
        feed(comparison, 0.75, 0.80, checkpoint - comparison.n, rng)
        lower, upper = comparison.interval()
        assert -1.0 <= lower < true_difference < upper <= 1.0
        widths.append(upper - lower)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.05
    assert comparison.difference == pytest.approx(true_difference, abs=0.02)


def test_a_clearly_better_challenger_is_detected_within_hundreds_of_labels() -> None:
    detected_at = []
    for seed in range(5):
        rng = random.Random(seed)
        comparison = PairedComparison(alpha=ALPHA)
        while comparison.decision() == "undecided" and comparison.n < 5_000:
            feed(comparison, 0.7, 0.8, 1, rng)
        assert comparison.decision() == "b_better"
        detected_at.append(comparison.n)
    assert max(detected_at) < 1_000, detected_at
    # and symmetric: swapping the models gives the mirror decision
    rng = random.Random(0)
    mirrored = PairedComparison(alpha=ALPHA)
    feed(mirrored, 0.8, 0.7, 1_000, rng)
    assert mirrored.decision() == "a_better"
    assert mirrored.decision(margin=0.5) == "undecided"
    assert mirrored.decision(min_samples=1_001) == "undecided"


@pytest.fixture(scope="module")
def null_streams() -> tuple[np.ndarray, np.ndarray]:
    """A/A streams: both models right with the same probability at every label.

    Like real models, the pairs are correlated (70 % of the time B is right exactly when A
    is) and the stream is non-stationary (accuracy drifts from 0.85 to 0.65), but at every
    label neither model is better: any declared winner is a false alarm.
    """
    rng = np.random.default_rng(20240601)
    shape = (N_STREAMS, STREAM_LENGTH)
    p = np.linspace(0.85, 0.65, STREAM_LENGTH)
    correct_a = rng.random(shape) < p
    correct_b = np.where(rng.random(shape) < 0.7, correct_a, rng.random(shape) < p)
    return correct_a, correct_b


def test_checking_after_every_label_keeps_false_alarms_below_alpha(
    null_streams: tuple[np.ndarray, np.ndarray],
) -> None:
    correct_a, correct_b = null_streams
    alarms = 0
    for row_a, row_b in zip(correct_a.tolist(), correct_b.tolist(), strict=True):
        comparison = PairedComparison(alpha=ALPHA)
        for a, b in zip(row_a, row_b, strict=True):
            comparison.update_correct(a, b)
            if comparison.decision() != "undecided":  # peek after EVERY label
                alarms += 1
                break
    assert alarms / N_STREAMS <= ALPHA + TOLERANCE  # measured: 1 / 400


def test_a_peeked_fixed_sample_z_test_raises_false_alarms_far_above_alpha(
    null_streams: tuple[np.ndarray, np.ndarray],
) -> None:
    correct_a, correct_b = null_streams
    d = correct_b.astype(float) - correct_a.astype(float)  # loss_a - loss_b
    n = np.arange(1, STREAM_LENGTH + 1)
    mean = np.cumsum(d, axis=1) / n
    var = (np.cumsum(d * d, axis=1) - n * mean**2) / np.maximum(n - 1, 1)
    start = 29  # only look from 30 labels on, to be fair to the normal approximation
    mean, var, n = mean[:, start:], var[:, start:], n[start:]
    z = np.divide(mean, np.sqrt(var / n), out=np.zeros_like(mean), where=var > 0)
    critical = 1.959964  # two-sided 5 %
    single_look = float(np.mean(np.abs(z[:, -1]) > critical))
    peeked = float(np.mean((np.abs(z) > critical).any(axis=1)))
    assert single_look <= ALPHA + 0.03  # one look at a fixed n is fine (measured: 0.0625)
    assert peeked > 4 * ALPHA  # measured: 0.42, against 0.0025 for the sequence


@pytest.mark.parametrize("challenger", ["hat", "arf"])
def test_a_drift_aware_challenger_beats_a_hoeffding_tree_after_concept_drift(
    challenger: str,
) -> None:
    from river import forest, tree
    from river.datasets import synth

    # Sine with its label function inverted (classification_function 0 -> 1) at label 1000.
    stream = synth.ConceptDriftStream(
        stream=synth.Sine(classification_function=0, seed=7),
        drift_stream=synth.Sine(classification_function=1, seed=8),
        position=1_000,
        width=20,
        seed=7,
    )
    champion = tree.HoeffdingTreeClassifier()
    model = (
        tree.HoeffdingAdaptiveTreeClassifier(seed=1)
        if challenger == "hat"
        else forest.ARFClassifier(n_models=3, seed=1)
    )
    comparison = PairedComparison(alpha=ALPHA)
    decisions = set()
    for x, y in stream.take(4_000):  # progressive validation: predict, then learn
        y_a, y_b = champion.predict_one(x), model.predict_one(x)
        if y_a is not None and y_b is not None:
            comparison.update_correct(y_a == y, y_b == y)
            decisions.add(comparison.decision())
        champion.learn_one(x, y)
        model.learn_one(x, y)
    summary = comparison.summary()
    assert summary["decision"] == "b_better", summary
    assert "a_better" not in decisions
    assert summary["accuracy_b"] is not None and summary["accuracy_a"] is not None
    assert summary["accuracy_b"] > summary["accuracy_a"] + 0.05


def test_regression_bounded_and_asymptotic() -> None:
    rng = random.Random(3)
    bounded = PairedComparison(kind="regression", bound=4.0)
    asymptotic = PairedComparison(kind="regression")
    assert asymptotic.interval() == (-math.inf, math.inf)
    for _ in range(3_000):
        shared = rng.gauss(0.0, 1.0)
        error_a = min(abs(shared + rng.gauss(0.0, 1.0)), 4.0)  # absolute errors
        error_b = min(abs(shared + rng.gauss(0.0, 0.5)), 4.0)
        bounded.update(error_a, error_b)
        asymptotic.update(error_a, error_b)
    for comparison in (bounded, asymptotic):
        assert comparison.decision(min_samples=200) == "b_better"
        lower, upper = comparison.interval()
        assert lower < comparison.difference < upper
        assert comparison.summary()["accuracy_a"] is None
    with pytest.raises(ValueError):
        bounded.update(4.5, 1.0)
    with pytest.raises(ValueError):
        asymptotic.update(math.inf, 1.0)


def test_invalid_arguments_are_rejected() -> None:
    for kwargs in ({"alpha": 0.0}, {"alpha": 1.5}, {"bound": 2.0}, {"max_bet": 1.0}):
        with pytest.raises(ValueError):
            PairedComparison(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PairedComparison(kind="regression", bound=-1.0)
    with pytest.raises(ValueError):
        PairedComparison().update(1.5, 0.0)
    with pytest.raises(ValueError):
        PairedComparison().update(math.nan, 0.0)


def same_future(
    one: PairedComparison, other: PairedComparison, pairs: list[tuple[float, float]]
) -> None:
    """Both continue identically (summaries hold NaN means before the first label)."""
    for loss_a, loss_b in pairs:
        one.update(loss_a, loss_b)
        other.update(loss_a, loss_b)
    assert one.to_dict() == other.to_dict()
    assert one.interval() == other.interval()
    if one.n:
        assert one.summary() == other.summary()


losses = st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)), min_size=0, max_size=60)


@settings(max_examples=60, deadline=None)
@given(past=losses, future=losses, kind=st.sampled_from(["classification", "regression"]))
def test_pickle_and_json_round_trips_are_exact(
    past: list[tuple[float, float]], future: list[tuple[float, float]], kind: str
) -> None:
    comparison = PairedComparison(alpha=0.1, kind=kind)  # type: ignore[arg-type]
    for loss_a, loss_b in past:
        comparison.update(loss_a, loss_b)
    state = comparison.to_dict()
    from_json = PairedComparison.from_dict(json.loads(json.dumps(state, allow_nan=False)))
    from_pickle = pickle.loads(pickle.dumps(comparison))
    assert from_json == comparison == from_pickle
    lower, upper = comparison.interval()
    assert lower <= upper
    same_future(from_json, comparison, future)
    same_future(from_pickle, PairedComparison.from_dict(state), future)


def test_deterministic_and_small() -> None:
    def run() -> PairedComparison:
        comparison = PairedComparison()
        feed(comparison, 0.6, 0.65, 500, random.Random(9))
        return comparison

    first, second = run(), run()
    assert first.to_dict() == second.to_dict()
    assert first.summary() == second.summary()
    assert not hasattr(first, "__dict__")  # slots: plain numbers only
    assert all(isinstance(v, int | float | str | type(None)) for v in first.to_dict().values())
    assert len(pickle.dumps(first)) < 1_000
    with pytest.raises(ValueError):
        PairedComparison.from_dict({**first.to_dict(), "format": 99})


@pytest.mark.parametrize(
    ("kind", "bound", "scale"),
    [("classification", None, 1.0), ("regression", 5.0, 5.0), ("regression", None, 5.0)],
)
@pytest.mark.parametrize("margin", [0.0, 0.02])
def test_the_mirror_is_the_comparison_fed_the_other_way_round(
    kind: str, bound: float | None, scale: float, margin: float
) -> None:
    """`mirrored` (what a reader of the pair B:A kept as A:B gets) equals the statistic of B
    against A: losses swapped, the difference and interval negated, the decision turned."""
    rng = random.Random(5)
    a_b = PairedComparison(alpha=ALPHA, kind=kind, bound=bound)  # type: ignore[arg-type]
    b_a = PairedComparison(alpha=ALPHA, kind=kind, bound=bound)  # type: ignore[arg-type]
    for _ in range(1_500):
        u = rng.random()
        loss_a = scale * float(u > 0.70) if kind == "classification" else scale * rng.random()
        loss_b = scale * float(u > 0.78) if kind == "classification" else 0.8 * loss_a
        a_b.update(loss_a, loss_b)
        b_a.update(loss_b, loss_a)
    mirror = mirrored(a_b.summary(margin, 100))
    direct = b_a.summary(margin, 100)
    assert mirror["decision"] == direct["decision"] == "a_better"
    assert a_b.summary(margin, 100)["decision"] == "b_better"
    for field, value in direct.items():
        if isinstance(value, float):
            assert mirror[field] == pytest.approx(value, rel=1e-9, abs=1e-12), field  # type: ignore[literal-required]
        else:
            assert mirror[field] == value, field  # type: ignore[literal-required]
    assert mirror["difference"] == -a_b.difference
    assert (mirror["lower"], mirror["upper"]) == tuple(-x for x in reversed(a_b.interval()))


def test_losses_near_the_float_limit_are_skipped_and_the_state_stays_finite() -> None:
    """Finite losses whose difference's mean or variance passes the floats (served answers of
    1.7e308) made mean_d and m2_d -inf: the interval's sqrt raised in the learner's observer,
    and the record was no longer finite JSON."""
    comparison = PairedComparison(ALPHA, "regression", bound=None)
    comparison.update(1.7e308, 0.0)
    comparison.update(0.0, 1.7e308)  # a difference of -3.4e308: past the floats
    comparison.update(1.0, 2.0)
    comparison.update(3.0, 1.0)
    state = comparison.to_dict()
    assert (comparison.n, comparison.mean_d, comparison.m2_d) == (2, 0.5, 4.5) and all(
        math.isfinite(v) for v in state.values() if isinstance(v, float)
    )
    assert comparison.summary(0.0, 0)["n"] == 2  # no ValueError
    comparison.update(1e100, 0.0)
    comparison.update(1.0, 1e101)
    assert comparison.n == 3
    json.dumps(state, allow_nan=False)

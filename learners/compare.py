"""A paired champion/challenger comparison that may be checked after every label.

`PairedComparison` receives, for each label that both models scored, the loss of model A (the
champion) and of model B (the challenger), and keeps a **confidence sequence** (CS) for the
mean paired difference ``d = E[loss_a - loss_b]`` (positive: B is better).

Why a confidence sequence and not a t/z-test? A fixed-sample test controls its type-I error
for ONE look at a sample size fixed in advance. A champion/challenger monitor looks after
every label and stops as soon as one model wins: with repeated looks, the chance that a
fixed-sample test ever crosses its threshold under no real difference grows towards 1 (law
of the iterated logarithm); with 2 000 looks at a nominal 5 % it is several times 5 %
(`tests/learners/test_compare.py` measures it). A (1 - alpha) confidence sequence covers the
true difference at all times simultaneously, ``P(exists n: d not in CS_n) <= alpha``, so it is
valid at any data-dependent stopping time: checking after every label, and stopping whenever,
declares a false winner with probability at most alpha.

Methods (deterministic, O(1) state of plain floats):

* **bounded losses** (classification: 0/1 or any loss in [0, 1]; regression with ``bound``:
  losses in [0, bound]): the difference is mapped to x in [0, 1] and the *predictable
  plug-in empirical-Bernstein* (PrPl-EB) CS of Waudby-Smith & Ramdas (2024), "Estimating
  means of bounded random variables by betting", JRSS-B 86(1), Theorem 2, is used::

      sum(l_i x_i) / sum(l_i)  +-  (log(2/alpha) + sum(v_i psi(l_i))) / sum(l_i)

  with predictable bets ``l_i`` from the running variance. It is nonasymptotic and
  variance-adaptive: it refines the empirical-Bernstein CS of Howard, Ramdas, McAuliffe &
  Sekhon (2021), "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann.
  Statist. 49(2), and, on correlated pairs (the models mostly agree, so the difference has a
  small variance), is much narrower than a Hoeffding (sub-Gaussian) normal-mixture bound.
  Its supermartingale argument needs no stationarity: it covers the bet-weighted average of
  the *conditional* mean differences. Hence, under "neither model is better at any time"
  (even while the stream drifts), a false winner is declared with probability at most
  alpha; under drift, the interval tracks a weighted average over the comparison so far
  (earlier labels weigh somewhat more), so start a new comparison when a new challenger
  is deployed. No running intersection is taken: it is only valid for a constant mean.
* **unbounded regression losses** (``bound=None``): the *asymptotic* CS of Waudby-Smith,
  Arbour, Sinha, Kennedy & Ramdas (2021), "Time-uniform central limit theory and asymptotic
  confidence sequences", Theorem 2.2: the two-sided normal-mixture (Robbins) boundary of
  Howard et al. (2021) with the running (Welford) variance plugged in, tightest near
  ``tuned_for`` labels. Its coverage only holds asymptotically, so give `decision` a
  ``min_samples`` of a few hundred.

Examples
--------
>>> import random
>>> rng = random.Random(1)
>>> cmp = PairedComparison(alpha=0.05)
>>> for _ in range(2000):
...     u = rng.random()
...     cmp.update_correct(u < 0.70, u < 0.80)  # B right whenever A is, and 10 % more often
>>> cmp.decision()
'b_better'
>>> lower, upper = cmp.interval()
>>> 0 < lower < cmp.difference < upper
True
>>> PairedComparison.from_dict(cmp.to_dict()).summary() == cmp.summary()
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, TypedDict

Kind = Literal["classification", "regression"]
Decision = Literal["b_better", "a_better", "undecided"]

LOSS_LIMIT = 1e100
"""A loss above this is skipped (`PairedComparison.update`): the squares of the differences of
the losses kept stay far inside the floats, whatever the number of labels."""
_FORMAT = 1
_CONFIG = ("alpha", "kind", "bound", "max_bet", "tuned_for")
_STATE = (
    "n",
    "sum_a",
    "sum_b",
    "mean_d",
    "m2_d",
    "lam_sum",
    "lam_x_sum",
    "penalty_sum",
    "x_sum",
    "x_sq_sum",
)


class ComparisonSummary(TypedDict):
    """One row for metrics and CLI tables (accuracies are ``None`` for regression)."""

    kind: Kind
    n: int
    loss_a: float
    loss_b: float
    accuracy_a: float | None
    accuracy_b: float | None
    difference: float
    lower: float
    upper: float
    decision: Decision


@dataclass(slots=True)
class PairedComparison:
    """Anytime-valid comparison of model A (champion) against model B (challenger).

    ``alpha``: the probability, over the whole unbounded stream, that the CS ever misses the
    true difference (hence the false-winner rate, however often `decision` is called).
    ``kind``: ``"classification"`` (losses in [0, 1], typically 0/1) or ``"regression"``.
    ``bound``: losses lie in [0, bound]; 1 for classification; for regression, ``None`` for
    the asymptotic CS. ``max_bet``: the cap ``c`` on the bets of the betting CS (1/2 or 3/4 in
    the paper). ``tuned_for``: sample size at which the asymptotic CS is tightest.
    """

    alpha: float = 0.05
    kind: Kind = "classification"
    bound: float | None = None
    max_bet: float = 0.5
    tuned_for: int = 1000
    n: int = field(default=0, init=False)
    sum_a: float = field(default=0.0, init=False)
    sum_b: float = field(default=0.0, init=False)
    mean_d: float = field(default=0.0, init=False)  # Welford, on the raw difference
    m2_d: float = field(default=0.0, init=False)
    lam_sum: float = field(default=0.0, init=False)  # betting CS, on x = (d + B) / 2B
    lam_x_sum: float = field(default=0.0, init=False)
    penalty_sum: float = field(default=0.0, init=False)
    x_sum: float = field(default=0.0, init=False)
    x_sq_sum: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.kind not in ("classification", "regression"):
            raise ValueError(f"kind must be 'classification' or 'regression', got {self.kind!r}")
        if self.kind == "classification":
            if self.bound not in (None, 1.0):
                raise ValueError("classification losses are in [0, 1]: leave bound unset")
            self.bound = 1.0
        elif self.bound is not None and not (self.bound > 0.0 and math.isfinite(self.bound)):
            raise ValueError(f"bound must be a positive finite number, got {self.bound}")
        if not 0.0 < self.max_bet < 1.0:
            raise ValueError(f"max_bet must be in (0, 1), got {self.max_bet}")
        if self.tuned_for < 1:
            raise ValueError(f"tuned_for must be >= 1, got {self.tuned_for}")

    # -- feeding ---------------------------------------------------------------------------

    def update(self, loss_a: float, loss_b: float) -> None:
        """One label scored by both models: their losses (0/1 for classification). A label
        with a loss over `LOSS_LIMIT` (1e100), or one that would take the sums, the mean or
        the variance of the differences past the floats, is skipped: the statistic stays
        finite (a served answer of 1.7e308 made them -inf, and a square root raise)."""
        loss_a, loss_b = float(loss_a), float(loss_b)
        top = math.inf if self.bound is None else self.bound
        for loss in (loss_a, loss_b):
            if not (0.0 <= loss <= top and math.isfinite(loss)):
                raise ValueError(f"loss {loss} outside [0, {top}]")
        if loss_a > LOSS_LIMIT or loss_b > LOSS_LIMIT:
            return
        n = self.n + 1
        sum_a, sum_b = self.sum_a + loss_a, self.sum_b + loss_b
        d = loss_a - loss_b
        delta = d - self.mean_d
        mean_d = self.mean_d + delta / n
        m2_d = self.m2_d + delta * (d - mean_d)
        if not all(map(math.isfinite, (sum_a, sum_b, mean_d, m2_d))):
            return
        self.n, self.sum_a, self.sum_b, self.mean_d, self.m2_d = n, sum_a, sum_b, mean_d, m2_d
        if self.bound is not None:
            self._bet((d + self.bound) / (2.0 * self.bound))

    def update_correct(self, correct_a: bool, correct_b: bool) -> None:
        """Classification convenience: whether each model's prediction was right."""
        self.update(0.0 if correct_a else 1.0, 0.0 if correct_b else 1.0)

    def _bet(self, x: float) -> None:
        # Waudby-Smith & Ramdas (2024), Theorem 2: self.n already counts x (t = self.n).
        t = self.n
        log_term = math.log(2.0 / self.alpha)
        mu_prev = (0.5 + self.x_sum) / t  # mu_hat_{t-1}, predictable
        var_prev = (0.25 + self.x_sq_sum) / t  # sigma_hat^2_{t-1}, predictable
        lam = min(math.sqrt(2.0 * log_term / (var_prev * t * math.log1p(t))), self.max_bet)
        psi = (-math.log1p(-lam) - lam) / 4.0
        self.lam_sum += lam
        self.lam_x_sum += lam * x
        self.penalty_sum += 4.0 * (x - mu_prev) ** 2 * psi
        self.x_sum += x
        self.x_sq_sum += (x - (0.5 + self.x_sum) / (t + 1)) ** 2

    # -- reading ---------------------------------------------------------------------------

    @property
    def loss_a(self) -> float:
        return self.sum_a / self.n if self.n else math.nan

    @property
    def loss_b(self) -> float:
        return self.sum_b / self.n if self.n else math.nan

    @property
    def difference(self) -> float:
        """Mean of loss_a - loss_b (positive: B better); NaN before any label."""
        return self.mean_d if self.n else math.nan

    def interval(self) -> tuple[float, float]:
        """The current (1 - alpha) confidence-sequence interval for the mean difference."""
        if self.bound is not None:
            if self.n == 0:
                return -self.bound, self.bound
            centre = self.lam_x_sum / self.lam_sum
            width = (math.log(2.0 / self.alpha) + self.penalty_sum) / self.lam_sum
            scale = 2.0 * self.bound
            lo, hi = max(centre - width, 0.0), min(centre + width, 1.0)
            return lo * scale - self.bound, hi * scale - self.bound
        if self.n < 2:
            return -math.inf, math.inf
        # Waudby-Smith et al. (2021), Theorem 2.2, rho tuned for `tuned_for` samples.
        t = self.n
        sd = math.sqrt(self.m2_d / t)
        log_inv = -2.0 * math.log(self.alpha)
        rho2 = (log_inv + math.log(log_inv + 1.0)) / self.tuned_for
        grown = t * rho2 + 1.0
        radius = sd * math.sqrt(
            2.0 * grown / (t * t * rho2) * math.log(math.sqrt(grown) / self.alpha)
        )
        return self.mean_d - radius, self.mean_d + radius

    def decision(self, margin: float = 0.0, min_samples: int = 0) -> Decision:
        """``b_better`` if the whole interval is above ``margin``, ``a_better`` if it is below
        ``-margin``, else (or before ``min_samples`` labels) ``undecided``."""
        if self.n == 0 or self.n < min_samples:
            return "undecided"
        lower, upper = self.interval()
        if lower > margin:
            return "b_better"
        if upper < -margin:
            return "a_better"
        return "undecided"

    def summary(self, margin: float = 0.0, min_samples: int = 0) -> ComparisonSummary:
        lower, upper = self.interval()
        classify = self.kind == "classification"
        return ComparisonSummary(
            kind=self.kind,
            n=self.n,
            loss_a=self.loss_a,
            loss_b=self.loss_b,
            accuracy_a=1.0 - self.loss_a if classify else None,
            accuracy_b=1.0 - self.loss_b if classify else None,
            difference=self.difference,
            lower=lower,
            upper=upper,
            decision=self.decision(margin, min_samples),
        )

    # -- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, float | int | str | None]:
        """JSON-ready state (all numbers finite); `from_dict` restores it exactly."""
        out: dict[str, float | int | str | None] = {"format": _FORMAT}
        out.update({name: getattr(self, name) for name in _CONFIG + _STATE})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, float | int | str | None]) -> PairedComparison:
        if data.get("format") != _FORMAT:
            raise ValueError(f"unknown PairedComparison format {data.get('format')!r}")
        if data["kind"] not in ("classification", "regression"):
            raise ValueError(f"unknown kind {data['kind']!r}")
        kind: Kind = "classification" if data["kind"] == "classification" else "regression"
        bound = data["bound"]
        new = cls(
            alpha=float(_number(data["alpha"])),
            kind=kind,
            bound=None if bound is None else float(_number(bound)),
            max_bet=float(_number(data["max_bet"])),
            tuned_for=int(_number(data["tuned_for"])),
        )
        new.n = int(_number(data["n"]))
        for name in _STATE[1:]:
            setattr(new, name, float(_number(data[name])))
        return new


_FLIPPED: dict[Decision, Decision] = {
    "b_better": "a_better",
    "a_better": "b_better",
    "undecided": "undecided",
}


def mirrored(summary: ComparisonSummary) -> ComparisonSummary:
    """The summary of the comparison of B with A, from that of A with B: the losses (and
    accuracies) swapped, the difference and its interval negated, the decision turned round.
    Exact: the confidence sequence of ``loss_b - loss_a`` is the negated one of
    ``loss_a - loss_b``, so the mirror pair need not be kept (`learners.comparisons.all_pairs`).

    >>> cmp = PairedComparison()
    >>> for _ in range(200):
    ...     cmp.update_correct(False, True)
    >>> s, m = cmp.summary(), mirrored(cmp.summary())
    >>> m["loss_a"] == s["loss_b"], m["difference"] == -s["difference"], m["decision"]
    (True, True, 'a_better')
    >>> (m["lower"], m["upper"]) == (-s["upper"], -s["lower"])
    True
    """
    return ComparisonSummary(
        kind=summary["kind"],
        n=summary["n"],
        loss_a=summary["loss_b"],
        loss_b=summary["loss_a"],
        accuracy_a=summary["accuracy_b"],
        accuracy_b=summary["accuracy_a"],
        difference=-summary["difference"],
        lower=-summary["upper"],
        upper=-summary["lower"],
        decision=_FLIPPED[summary["decision"]],
    )


def _number(value: float | int | str | None) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return value

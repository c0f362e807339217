"""A served Hoeffding tree's answer without River's per-request work, equal to River's to the bit.

`river.tree.HoeffdingTreeClassifier.predict_proba_one` walks from the root to a leaf (a chain of
generators, one per level) and asks the leaf for its class probabilities. A served tree never
learns, so most of that work gives the same result on every request:

- a **majority-class** leaf (``leaf_prediction="mc"``, and an adaptive leaf whose majority
  class has been right more often than its naive Bayes) answers its normalised class counts
  whatever the features: River's own ``prediction`` is called once per leaf, when a version is
  loaded, and each request gets a copy (≈ 4 µs of a 6 µs prediction, 30 features);
- a **naive Bayes** leaf (``"nb"``, or ``"nba"`` when naive Bayes has done better) adds, per
  class, the log density of each feature under the class's Gaussian: ``(x - mu) ** 2 /
  (-2.0 * var) - HALF_LOG_TAU - 0.5 * log(var)``. The parts that do not depend on ``x``
  (``mu``, ``-2.0 * var``, ``0.5 * log(var)``) are read once; each request evaluates the same
  expression, left to right, on the same numbers, in the same order of classes and features,
  with the same log-sum-exp, so every float is River's (``tree.utils.do_naive_bayes_prediction``
  and ``proba.Gaussian.log_pdf``). A pair whose density is ``-inf`` whatever ``x`` (no variance
  yet) adds nothing in River and is left out. A leaf whose observers are not all Gaussian (a
  nominal feature) is answered by River's own ``prediction``;
- the walk is a loop over River's own ``next`` and ``most_common_path`` (a missing feature or an
  unseen category takes the most traversed child, as ``Branch.walk`` does).

Each leaf compiled for naive Bayes must answer a probe as River does, and the whole tree two
more (`_agrees`), else River serves. Anything but the exact class (Hoeffding adaptive or
extremely fast trees walk and answer otherwise) gives ``None``.

>>> from river import tree
>>> model = tree.HoeffdingTreeClassifier(grace_period=20)
>>> for i in range(300):
...     model.learn_one({"a": i % 7, "b": (i * 13) % 5}, i % 7 > 3)
>>> fast = compile_tree(model)
>>> x = {"a": 5, "b": 1.5, "never seen": "text"}
>>> fast(x) == model.predict_proba_one(x)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

from river import proba, stats, tree
from river.tree.base import Branch
from river.tree.nodes.htc_nodes import LeafMajorityClass, LeafNaiveBayes, LeafNaiveBayesAdaptive
from river.tree.splitter import GaussianSplitter

TreePredict = Callable[[dict[str, Any]], dict[Any, float]]
"""Features → what River's ``predict_proba_one`` answers."""

_HALF_LOG_TAU = 0.5 * math.log(math.tau)  # River's constant, the same expression
MAX_TERMS = 200_000
"""Naive Bayes terms kept per tree (a tuple each, about 100 bytes); the leaves past them are
answered by River's own code, so a large tree's copy stays a fraction of its size."""
_ABSENT = object()
# Per class: (class, log prior or None when the class weighs 0, [(feature, mu, -2 var, ½ log var)])
_Terms = list[tuple[Any, float | None, list[tuple[Any, float, float, float]]]]


def compile_tree(estimator: Any) -> TreePredict | None:
    """The fast answer of a `river.tree.HoeffdingTreeClassifier` (the module docstring says
    why it equals River's), or ``None`` for anything else or a state it cannot read."""
    try:
        if type(estimator) is not tree.HoeffdingTreeClassifier:
            return None
        predict = _compiled(estimator)
        if predict is None or not _agrees(predict, estimator):
            return None
    except Exception:  # River's internals moved: serve with River itself
        return None
    return predict


def _compiled(model: Any) -> TreePredict | None:
    if _HALF_LOG_TAU != proba.gaussian._HALF_LOG_TAU:
        return None
    template = {c: 0.0 for c in sorted(model.classes)}
    root = model._root
    if root is None:
        return lambda x: dict(template)
    fixed: dict[int, dict[Any, float]] = {}  # leaf id → the answer, for x-independent leaves
    bayes: dict[int, _Terms] = {}  # leaf id → its naive Bayes terms
    kept = 0
    nodes: Any = root  # River's nodes are untyped
    leaves = list(nodes.iter_leaves()) if isinstance(root, Branch) else [root]
    for leaf in leaves:
        if _fixed_answer(leaf, model):
            answer = dict(template)
            answer.update(leaf.prediction(None, tree=model))
            fixed[id(leaf)] = answer
            continue
        terms = _bayes_terms(leaf)
        if terms is None:
            continue  # River's own prediction
        size = sum(len(features) for _, _, features in terms)
        if kept + size <= MAX_TERMS and _leaf_agrees(leaf, terms, model, template):
            bayes[id(leaf)] = terms
            kept += size

    branches = frozenset(map(type, nodes.iter_branches())) if isinstance(root, Branch) else ()

    def predict_proba(x: dict[str, Any]) -> dict[Any, float]:
        node = root
        while type(node) in branches:  # the served tree's own branch types: it never changes
            try:
                node = node.next(x)
            except KeyError:  # a missing feature or an unseen value: the most traversed child
                node = node.most_common_path()[1]
        key = id(node)
        answer = fixed.get(key)
        if answer is not None:
            return answer.copy()
        out = template.copy()
        terms = bayes.get(key)
        out.update(node.prediction(x, tree=model) if terms is None else _naive_bayes(x, terms))
        return out

    return predict_proba


def _fixed_answer(leaf: Any, model: Any) -> bool:
    """Whether River's ``leaf.prediction`` ignores the features (the majority class)."""
    kind = type(leaf)
    if kind is LeafMajorityClass:
        return True
    if kind is LeafNaiveBayes:
        return not (leaf.is_active() and leaf.total_weight >= model.nb_threshold)
    if kind is LeafNaiveBayesAdaptive:
        return not (leaf.is_active() and leaf._nb_correct_weight >= leaf._mc_correct_weight)
    return False


def _bayes_terms(leaf: Any) -> _Terms | None:
    """The x-independent parts of a naive Bayes leaf's answer, or ``None`` when its observers
    are not all River's Gaussian ones (or the leaf is not a naive Bayes one)."""
    if type(leaf) not in (LeafNaiveBayes, LeafNaiveBayesAdaptive) or not leaf.stats:
        return None
    total = sum(leaf.stats.values())
    if total == 0:
        return None
    splitters = leaf.splitters or {}
    if any(type(s) is not GaussianSplitter for s in splitters.values()):
        return None
    terms: _Terms = []
    for label, weight in leaf.stats.items():
        if not weight > 0:
            terms.append((label, None, []))
            continue
        features = []
        for feature, splitter in splitters.items():
            gaussian = splitter._att_dist_per_class.get(label)
            if gaussian is None:
                continue  # -inf: adds nothing
            if type(gaussian) is not proba.Gaussian or type(gaussian._var) is not stats.Var:
                return None
            var = gaussian._var
            n = var.mean.n
            if n > var.ddof:
                variance = var._S / (n - var.ddof)
                if variance > 0.0:
                    features.append(
                        (feature, var.mean._mean, -2.0 * variance, 0.5 * math.log(variance))
                    )
        terms.append((label, math.log(weight / total), features))
    return terms


def _naive_bayes(x: dict[str, Any], terms: _Terms) -> dict[Any, float]:
    """`tree.utils.do_naive_bayes_prediction` for one leaf's terms: the same floats."""
    votes: dict[Any, float] = {}
    get = x.get
    for label, prior, features in terms:
        if prior is None:
            votes[label] = 0.0
            continue
        vote = prior
        for feature, mu, minus_two_var, half_log_var in features:
            xi = get(feature, _ABSENT)
            if xi is _ABSENT:
                continue
            log_p = (xi - mu) ** 2 / minus_two_var - _HALF_LOG_TAU - half_log_var
            if log_p > -math.inf:
                vote += log_p
        votes[label] = vote
    max_ll = max(votes.values())
    lse = max_ll + math.log(sum(math.exp(log_p - max_ll) for log_p in votes.values()))
    for label in votes:
        votes[label] = math.exp(votes[label] - lse)
    return votes


def _leaf_agrees(leaf: Any, terms: _Terms, model: Any, template: dict[Any, float]) -> bool:
    """One probe (each feature at a class's mean plus one) answered as River's leaf does."""
    probe = {f: mu + 1.0 for _label, _prior, features in terms for f, mu, _a, _b in features}
    ours, river = template.copy(), template.copy()
    ours.update(_naive_bayes(probe, terms))
    river.update(leaf.prediction(probe, tree=model))
    return repr(ours) == repr(river)


def _agrees(predict: TreePredict, model: Any) -> bool:
    """Two probes answered as River does: no features (every split takes the most traversed
    child) and each branch's feature just past its threshold."""
    probes: list[dict[str, Any]] = [{}]
    root: Any = model._root
    if isinstance(root, Branch):
        probe: dict[str, Any] = {}
        for branch in cast(Any, root).iter_branches():
            threshold = getattr(branch, "threshold", None)
            if isinstance(threshold, float | int):
                probe.setdefault(branch.feature, threshold + 0.5)
        probes.append(probe)
    return all(repr(predict(x)) == repr(model.predict_proba_one(x)) for x in probes)

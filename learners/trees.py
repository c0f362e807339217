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
- the walk is a loop: a numeric binary split is inlined as River's ``x[feature] <= threshold``
  (checked against River's own split at load), its most traversed child read once (a served
  tree's weights are fixed); other splits call River's own ``next`` and ``most_common_path``. A
  missing feature or an unseen category takes the most traversed child, as ``Branch.walk`` does.

A `river.tree.HoeffdingTreeRegressor` (``hoeffding-reg``) is walked the same way; a leaf that
answers its mean (``mean`` leaves, and ``adaptive`` ones whose mean has done better than their
linear model) is read once, a model leaf is River's own ``prediction``.

An adaptive random forest (`river.forest.ARFClassifier`, the ``arf`` spec) answers through its
members compiled so, weighted by their metrics (read once: a served forest's metrics do not
move) and added up as River does, in the same order, with the same `collections.Counter`.

Each leaf compiled for naive Bayes must answer a probe as River does, and the whole model two
more (`_agrees`), else River serves. Anything but these exact classes (Hoeffding adaptive or
extremely fast trees walk and answer otherwise) gives ``None``, as does a leaf whose
``prediction`` is not one of River's three.

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
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from river import forest, proba, stats, tree
from river.forest.adaptive_random_forest import BaseTreeClassifier
from river.tree.base import Branch
from river.tree.nodes.branch import NumericBinaryBranch
from river.tree.nodes.htc_nodes import LeafMajorityClass, LeafNaiveBayes, LeafNaiveBayesAdaptive
from river.tree.nodes.htr_nodes import LeafAdaptive, LeafMean
from river.tree.splitter import GaussianSplitter

TreePredict = Callable[[dict[str, Any]], Any]
"""Features → what River's ``predict_proba_one`` (a classifier) or ``predict_one`` (a
regressor) answers."""

_HALF_LOG_TAU = 0.5 * math.log(math.tau)  # River's constant, the same expression
MAX_TERMS = 200_000
"""Naive Bayes terms kept per tree (a tuple each, about 100 bytes); the leaves past them are
answered by River's own code, so a large tree's copy stays a fraction of its size."""
_ABSENT = object()
# Per class: (class, log prior or None when the class weighs 0, [(feature, mu, -2 var, ½ log var)])
_Terms = list[tuple[Any, float | None, list[tuple[Any, float, float, float]]]]


_TREES = (tree.HoeffdingTreeClassifier, BaseTreeClassifier)  # the forest's members: the same walk


def compile_tree(estimator: Any) -> TreePredict | None:
    """The fast answer of a `river.tree.HoeffdingTreeClassifier`, a
    `river.forest.ARFClassifier` or a `river.tree.HoeffdingTreeRegressor` (the module docstring
    says why it equals River's), or ``None`` for anything else or a state it cannot read."""
    try:
        predict: TreePredict | None
        if type(estimator) is forest.ARFClassifier:
            predict, roots = _forest(estimator), [m._root for m in estimator]
        elif type(estimator) in _TREES:
            predict, roots = _compiled(estimator), [estimator._root]
        elif type(estimator) is tree.HoeffdingTreeRegressor:
            predict, roots = _regressor(estimator), [estimator._root]
        else:
            return None
        if predict is None or not _agrees(predict, estimator, roots):
            return None
    except Exception:  # River's internals moved: serve with River itself
        return None
    return predict


def _forest(model: Any) -> TreePredict | None:
    """`river.forest.ARFClassifier.predict_proba_one` over the compiled members."""
    if len(model) == 0:
        return None  # an empty forest starts itself on its first prediction: River's to do
    if any(type(member) is not BaseTreeClassifier for member in model):
        return None
    weighted = not model.disable_weighted_vote
    members = []
    for member, metric in zip(model, model._metrics, strict=True):
        metric_value = metric.get()  # each member's answer times it, when > 0
        compiled = _compiled(member, metric_value if weighted and metric_value > 0.0 else None)
        if compiled is None:
            return None
        members.append(compiled)

    def predict_proba(x: dict[str, Any]) -> dict[Any, float]:
        # River adds the members' answers up in a Counter: `Counter.update`'s own arithmetic
        # (the first answer copied, then ``value + get(key, 0)``), without its calls.
        y_pred: dict[Any, float] = {}
        for member in members:
            y_proba = member(x)
            if y_pred:
                get = y_pred.get
                for k, val in y_proba.items():
                    y_pred[k] = val + get(k, 0)
            else:
                y_pred.update(y_proba)
        total = sum(y_pred.values())
        if total > 0:
            return {label: p / total for label, p in y_pred.items()}
        return cast(dict[Any, float], Counter(y_pred))  # a Counter, as River answers

    return predict_proba


class _Fixed:
    """A leaf whose answer does not depend on the features: that answer."""

    __slots__ = ("answer",)

    def __init__(self, answer: Any) -> None:
        self.answer = answer


class _Bayes:
    """A naive Bayes leaf: its terms."""

    __slots__ = ("terms",)

    def __init__(self, terms: _Terms) -> None:
        self.terms = terms


class _RiverLeaf:
    """A leaf answered by River's own ``prediction``."""

    __slots__ = ("leaf",)

    def __init__(self, leaf: Any) -> None:
        self.leaf = leaf


class _RiverBranch:
    """A branch walked by River's own ``next``: its children by identity."""

    __slots__ = ("branch", "children")

    def __init__(self, branch: Any, children: dict[int, Any]) -> None:
        self.branch, self.children = branch, children


class _Compiler:
    """Turns a tree's nodes into the walk of `_leaf_of`: a numeric binary split becomes
    ``(feature, threshold, left, right, most traversed)``, other splits `_RiverBranch`, and
    each leaf what ``leaf`` makes of it (`_Fixed`, `_Bayes` or `_RiverLeaf`)."""

    def __init__(self, leaf: Callable[[Any], Any]) -> None:
        self.leaf = leaf

    def node(self, node: Any) -> Any:
        if not isinstance(node, Branch):
            return self.leaf(node)
        branch: Any = node  # River's nodes are untyped
        children = [self.node(child) for child in branch.children]
        common = children[branch.most_common_path()[0]]  # a served tree's weights are fixed
        if _inlinable(branch):
            return (branch.feature, branch.threshold, children[0], children[1], common)
        return _RiverBranch(
            branch, {id(c): w for c, w in zip(branch.children, children, strict=True)}
        )


class _ClassifierLeaves:
    """A classifier's leaves: `_Fixed` probabilities (times ``scale``), `_Bayes` terms (at
    most `MAX_TERMS` in all) or `_RiverLeaf`."""

    def __init__(self, model: Any, template: dict[Any, float], scale: float | None) -> None:
        self.model, self.template, self.scale, self.kept = model, template, scale, 0

    def __call__(self, leaf: Any) -> Any:
        model, template = self.model, self.template
        if _fixed_answer(leaf, model):
            answer = dict(template)
            answer.update(leaf.prediction(None, tree=model))
            if self.scale is not None:
                answer = _scaled(answer, self.scale)
            return _Fixed(answer)
        terms = _bayes_terms(leaf)
        if terms is None:
            return _RiverLeaf(leaf)
        size = sum(len(features) for _, _, features in terms)
        if self.kept + size > MAX_TERMS or not _leaf_agrees(leaf, terms, model, template):
            return _RiverLeaf(leaf)
        self.kept += size
        return _Bayes(terms)


def _leaf_of(walk: Any, x: dict[str, Any]) -> Any:
    """The compiled leaf that River's ``Branch.traverse`` reaches for ``x``."""
    node = walk
    while True:
        kind = type(node)
        if kind is tuple:  # River's NumericBinaryBranch.next, inlined
            feature, threshold, left, right, common = node
            try:
                value = x[feature]
            except KeyError:  # a missing feature: the most traversed child
                node = common
                continue
            node = left if value <= threshold else right
        elif kind is _RiverBranch:
            try:
                child = node.branch.next(x)
            except KeyError:  # a missing feature or an unseen value
                child = node.branch.most_common_path()[1]
            node = node.children[id(child)]
        else:
            return node


def _inlinable(branch: Any) -> bool:
    """Whether ``branch`` is a numeric binary split that River still walks as ``x[feature] <=
    threshold`` (left) or not (right): checked on both sides of its threshold."""
    if type(branch) is not NumericBinaryBranch or type(branch.threshold) is not float:
        return False
    branch = cast(Any, branch)
    at, above = branch.threshold, math.nextafter(branch.threshold, math.inf)
    left, right = branch.children
    return (
        branch.next({branch.feature: at}) is left and branch.next({branch.feature: above}) is right
    )


def _scaled(answer: dict[Any, float], scale: float) -> dict[Any, float]:
    return {k: val * scale for k, val in answer.items()}  # the forest's expression


def _compiled(model: Any, scale: float | None = None) -> TreePredict | None:
    """``model.predict_proba_one``, times ``scale`` when given (a forest's member)."""
    if _HALF_LOG_TAU != proba.gaussian._HALF_LOG_TAU:
        return None
    template = {c: 0.0 for c in sorted(model.classes)}
    if model._root is None:
        empty = template if scale is None else _scaled(template, scale)
        return lambda x: dict(empty)
    walk = _Compiler(_ClassifierLeaves(model, template, scale)).node(model._root)

    def predict_proba(x: dict[str, Any]) -> dict[Any, float]:
        node = _leaf_of(walk, x)
        kind = type(node)
        if kind is _Fixed:
            return cast(dict[Any, float], node.answer.copy())
        out = template.copy()
        if kind is _Bayes:
            out.update(_naive_bayes(x, node.terms))
        else:
            out.update(node.leaf.prediction(x, tree=model))
        return out if scale is None else _scaled(out, scale)

    return predict_proba


def _regressor(model: Any) -> TreePredict:
    """`river.tree.HoeffdingTreeRegressor.predict_one`: a leaf that answers its mean (the
    ``mean`` leaves, and ``adaptive`` ones whose mean has done better than their model) is
    read once; a model leaf is River's own ``prediction``."""
    if model._root is None:
        return lambda x: 0.0

    def leaf(node: Any) -> Any:
        prediction = type(node).prediction
        if prediction is LeafMean.prediction or (
            prediction is LeafAdaptive.prediction and node._fmse_mean < node._fmse_model
        ):
            return _Fixed(node.prediction(None, tree=model))
        return _RiverLeaf(node)

    walk = _Compiler(leaf).node(model._root)

    def predict(x: dict[str, Any]) -> Any:
        node = _leaf_of(walk, x)
        if type(node) is _Fixed:
            return node.answer
        return node.leaf.prediction(x, tree=model)

    return predict


def _fixed_answer(leaf: Any, model: Any) -> bool:
    """Whether River's ``leaf.prediction`` ignores the features (the majority class)."""
    prediction = type(leaf).prediction  # the forest's random leaves inherit River's three
    if prediction is LeafMajorityClass.prediction:
        return True
    if prediction is LeafNaiveBayes.prediction:
        return not (leaf.is_active() and leaf.total_weight >= model.nb_threshold)
    if prediction is LeafNaiveBayesAdaptive.prediction:
        return not (leaf.is_active() and leaf._nb_correct_weight >= leaf._mc_correct_weight)
    return False


def _bayes_terms(leaf: Any) -> _Terms | None:
    """The x-independent parts of a naive Bayes leaf's answer, or ``None`` when its observers
    are not all River's Gaussian ones (or the leaf is not a naive Bayes one)."""
    naive_bayes = (LeafNaiveBayes.prediction, LeafNaiveBayesAdaptive.prediction)
    if type(leaf).prediction not in naive_bayes or not leaf.stats:
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


def _naive_bayes(
    x: dict[str, Any],
    terms: _Terms,
    absent: object = _ABSENT,
    half_log_tau: float = _HALF_LOG_TAU,
    minus_inf: float = -math.inf,
) -> dict[Any, float]:
    """`tree.utils.do_naive_bayes_prediction` for one leaf's terms: the same floats. (The
    constants are parameters: local names, read faster than globals in the inner loop.)"""
    votes: dict[Any, float] = {}
    get = x.get
    for label, prior, features in terms:
        if prior is None:
            votes[label] = 0.0
            continue
        vote = prior
        for feature, mu, minus_two_var, half_log_var in features:
            xi = get(feature, absent)
            if xi is not absent:
                log_p = (xi - mu) ** 2 / minus_two_var - half_log_tau - half_log_var
                if log_p > minus_inf:
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


def _agrees(predict: TreePredict, model: Any, roots: list[Any]) -> bool:
    """Two probes answered as River does: no features (every split takes the most traversed
    child) and each branch's feature just past its threshold."""
    probe: dict[str, Any] = {}
    for root in roots:
        for branch in cast(Any, root).iter_branches() if isinstance(root, Branch) else ():
            threshold = getattr(branch, "threshold", None)
            if isinstance(threshold, float | int):
                probe.setdefault(branch.feature, threshold + 0.5)
    river = (
        model.predict_one if type(model) is tree.HoeffdingTreeRegressor else model.predict_proba_one
    )
    return all(repr(predict(x)) == repr(river(x)) for x in ({}, probe))

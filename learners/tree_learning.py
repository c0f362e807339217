"""The learner's Hoeffding trees: River's own steps, with a leaf's Gaussian observers read and
updated in C, equal to River to the bit.

A `river.tree.HoeffdingTreeClassifier` (the ``hoeffding`` spec) spends most of a sample in its
leaf's naive Bayes: River's ``do_naive_bayes_prediction`` adds, per class, the log density of
each feature under the class's Gaussian, once when the tree predicts (an adaptive leaf whose
naive Bayes has done better) and once more when it learns (the adaptive leaf scores its naive
Bayes against the label), then the leaf updates one Gaussian per feature (Welford's update).
Each is a handful of Python calls per feature: on Agrawal's 9 features, half of the tree's
time went to the densities and a fifth to the updates (a profile of River's loop).

`compile_tree_learning` returns a `TreeLearning` whose ``learn_one`` and ``predict_proba_one``
follow River's methods step by step, in River's order, on River's objects: the walk to the
leaf (numeric binary splits), the adaptive leaf's scoring and learning, the growth checks and
the split attempts (River's own ``_attempt_to_split``). Two steps run in C
(``learners/_tree_pass.c``) when the extension is built and the sample is of the kinds it
takes: the sums of log densities (`naive_bayes`) and the Gaussian updates (`update_splitters`),
with River's expressions on River's numbers; their docstrings say what goes back to River.
Anything else goes to River's own methods whole: a tree without a root yet, a missing feature
on the way (River's walk picks the most traversed branch), another kind of split or leaf (a
nominal split, a majority-class or naive Bayes leaf), a value River's comparisons must judge
(the walk raises; River then raises the same, after the same changes). The state stays River's
objects: a snapshot pickles them as River's own loop would have left them.

Before it is used, a fresh clone of the tree (the same parameters) learns probe samples two
ways, River's and this one, and both must answer alike along the way and end in the same
pickled state; else `compile_tree_learning` gives None and River learns (a River release that
learns otherwise).

>>> from river import tree
>>> model, river = tree.HoeffdingTreeClassifier(grace_period=50), tree.HoeffdingTreeClassifier(
...     grace_period=50)
>>> fast = compile_tree_learning(model)
>>> for i in range(400):
...     x, y = {"a": i % 7, "b": (i * 13) % 5 + 0.5}, i % 7 > 3
...     assert fast.predict_proba_one(x) == river.predict_proba_one(x)
...     fast.learn_one(x, y)
...     river.learn_one(x, y)
>>> model.height, tree_state(model) == tree_state(river)
(2, True)
"""

from __future__ import annotations

import io
import math
import pickle
import random
from collections.abc import Callable
from itertools import islice
from typing import Any, cast

from river import proba, stats, tree
from river.proba import gaussian
from river.tree.nodes.branch import NumericBinaryBranch
from river.tree.nodes.htc_nodes import LeafNaiveBayesAdaptive
from river.tree.splitter import GaussianSplitter
from river.tree.utils import do_naive_bayes_prediction
from river.utils.norm import normalize_values_in_dict

update_gaussians_in_c: Callable[..., int] | None
add_log_densities_in_c: Callable[..., bool] | None
try:  # the leaf's Gaussians in C (learners/_tree_pass.c), built by pip install when it can be
    from learners import _tree_pass

    _tree_pass.configure(proba.Gaussian, stats.Var, stats.Mean, gaussian._HALF_LOG_TAU)
    update_gaussians_in_c = _tree_pass.update_gaussians
    add_log_densities_in_c = _tree_pass.add_log_densities
except (ImportError, AttributeError):  # no compiler at install, or River moved its constant
    update_gaussians_in_c = add_log_densities_in_c = None


def river_naive_bayes(
    x: dict[str, Any], observed: dict[Any, float], splitters: dict[str, Any]
) -> dict[Any, float]:
    """River's own ``do_naive_bayes_prediction``."""
    return cast("dict[Any, float]", do_naive_bayes_prediction(x, observed, splitters))


def naive_bayes(
    x: dict[str, Any], observed: dict[Any, float], splitters: dict[str, Any]
) -> dict[Any, float]:
    """River's ``do_naive_bayes_prediction(x, observed, splitters)``: the same priors, the same
    log-sum-exp, in Python; the per-class sums of log densities in C when every observer of a
    feature of ``x`` is a `GaussianSplitter` and every value a finite number (else River's own
    function answers the whole)."""
    if add_log_densities_in_c is None:
        return river_naive_bayes(x, observed, splitters)
    total_weight = sum(observed.values())
    if not observed or total_weight == 0:
        return {}
    votes: dict[Any, float] = {}
    scored = []
    for class_index, class_weight in observed.items():
        if class_weight > 0:
            votes[class_index] = math.log(class_weight / total_weight)
            scored.append(class_index)
        else:
            votes[class_index] = 0.0
    if not add_log_densities_in_c(votes, scored, x, splitters, GaussianSplitter):
        return river_naive_bayes(x, observed, splitters)
    max_ll = max(votes.values())
    lse = max_ll + math.log(sum(math.exp(log_proba - max_ll) for log_proba in votes.values()))
    for class_index in votes:
        votes[class_index] = math.exp(votes[class_index] - lse)
    return votes


def update_splitters(leaf: Any, x: dict[str, Any], y: Any, w: float, nominal: Any) -> None:
    """The leaf's ``update_splitters(x, y, w, nominal)``: the features whose observer is a
    `GaussianSplitter` that has seen ``y`` are updated in C, in ``x``'s order, up to the first
    that is not (a new feature or class, a nominal one, a value that is not a finite number);
    the leaf's own method learns that one and the rest."""
    done = 0 if update_gaussians_in_c is None else update_gaussians_in_c(
        leaf.splitters, x, y, w, leaf._disabled_attrs, GaussianSplitter
    )  # fmt: skip
    if done < len(x):
        rest = x if done == 0 else dict(islice(x.items(), done, None))
        leaf.update_splitters(rest, y, w, nominal)


def _majority(observed: dict[Any, float]) -> dict[Any, float]:
    """`LeafMajorityClass.prediction`: the class counts normalised, on a copy (River's deep
    copy of a dict of floats is this shallow one)."""
    return cast("dict[Any, float]", normalize_values_in_dict(dict(observed)))


_W: float = (tree.HoeffdingTreeClassifier.learn_one.__kwdefaults__ or {}).get("w", 1.0)
"""River's default sample weight, the object itself: a leaf stores it as a class's first count,
and River's memory estimate counts each object once (by ``id``)."""


class TreeLearning:
    """``learn_one``, ``predict_one`` and ``predict_proba_one`` of a Hoeffding tree classifier,
    River's steps with the leaf's Gaussians in C (see the module docstring); built by
    `compile_tree_learning`."""

    def __init__(self, model: tree.HoeffdingTreeClassifier) -> None:
        self.model: Any = model  # River's tree (its methods are untyped)

    def _leaf(self, x: dict[str, Any]) -> tuple[Any, Any] | None:
        """The leaf ``x`` reaches and its parent, through numeric binary splits on features
        ``x`` has; None for anything else (River's own walk then decides)."""
        node = self.model._root
        parent = None
        try:
            while type(node) is NumericBinaryBranch:
                parent, node = node, node.children[0 if x[node.feature] <= node.threshold else 1]
        except Exception:  # a missing feature, or a value River's walk raises on (after its
            return None  # first changes, which its own learn_one then makes)
        if type(node) is not LeafNaiveBayesAdaptive:
            return None
        return parent, node

    def predict_proba_one(self, x: dict[str, Any]) -> dict[Any, float]:
        """What ``model.predict_proba_one(x)`` answers."""
        model = self.model
        found = self._leaf(x)
        if found is None:
            return cast("dict[Any, float]", model.predict_proba_one(x))
        leaf = found[1]
        proba = {c: 0.0 for c in sorted(model.classes)}
        if leaf.is_active() and leaf._nb_correct_weight >= leaf._mc_correct_weight:
            proba.update(naive_bayes(x, leaf.stats, leaf.splitters))
        else:
            proba.update(_majority(leaf.stats))
        return proba

    def predict_one(self, x: dict[str, Any]) -> Any:
        """What ``model.predict_one(x)`` answers (River's `base.Classifier.predict_one`)."""
        y_pred = self.predict_proba_one(x)
        if y_pred:
            return max(y_pred, key=y_pred.__getitem__)
        return None

    def learn_one(self, x: dict[str, Any], y: Any) -> None:
        """What ``model.learn_one(x, y)`` does."""
        model = self.model
        found = self._leaf(x)
        if found is None:
            model.learn_one(x, y)
            return
        parent, leaf = found
        w = _W
        model.classes.add(y)
        model._train_weight_seen_by_model += w
        # LeafNaiveBayesAdaptive.learn_one: score both predictions against y, then learn
        if leaf.is_active():
            observed = leaf.stats
            mc_pred = _majority(observed)
            if len(observed) == 0 or max(mc_pred, key=mc_pred.__getitem__) == y:
                leaf._mc_correct_weight += w
            nb_pred = naive_bayes(x, observed, leaf.splitters)
            if len(nb_pred) > 0 and max(nb_pred, key=nb_pred.__getitem__) == y:
                leaf._nb_correct_weight += w
        leaf.update_stats(y, w)
        if leaf.is_active():
            update_splitters(leaf, x, y, w, model.nominal_attributes)
        # HoeffdingTreeClassifier.learn_one, after the leaf learned
        if model._growth_allowed and leaf.is_active():
            if leaf.depth >= model.max_depth:
                leaf.deactivate()
                model._n_active_leaves -= 1
                model._n_inactive_leaves += 1
            else:
                weight_seen = leaf.total_weight
                weight_diff = weight_seen - leaf.last_split_attempt_at
                if weight_diff >= model.grace_period:
                    p_branch = None if parent is None else parent.branch_no(x)  # a DTBranch
                    model._attempt_to_split(leaf, parent, p_branch)
                    leaf.last_split_attempt_at = weight_seen
        if model._train_weight_seen_by_model % model.memory_estimate_period == 0:
            model._estimate_model_size()


def compile_tree_learning(model: Any) -> TreeLearning | None:
    """A `TreeLearning` of ``model`` when it is exactly a `HoeffdingTreeClassifier` whose clone
    learns the probe samples exactly as River does, else None: River's own methods serve."""
    if type(model) is not tree.HoeffdingTreeClassifier:
        return None
    try:
        if not _learns_alike(model):
            return None
    except Exception:  # River's internals moved: River learns
        return None
    return TreeLearning(model)


def _probes() -> list[tuple[dict[str, Any], bool]]:
    """Samples that grow a tree of a few numeric splits: floats and ints, a feature that is
    sometimes missing, in changing orders."""
    samples = []
    for i in range(900):
        a = (i * 37) % 101 / 10.0
        b = (i * 11) % 13
        x: dict[str, Any] = {"riverstream probe a": a, "riverstream probe b": b}
        if i % 4:
            x["riverstream probe c"] = (i % 17) * 0.25 - 1.0
        if i % 2:
            x = dict(reversed(x.items()))
        samples.append((x, a + b * 0.3 > 5.5 if i % 23 else a < 2.0))
    return samples


def _learns_alike(model: tree.HoeffdingTreeClassifier) -> bool:
    """Whether a clone learning the probes through `TreeLearning` answers as a clone learning
    them through River on the way, and ends in its pickled state."""
    river: Any = model.clone()
    fast = TreeLearning(model.clone())
    for i, (x, y) in enumerate(_probes()):
        if i % 10 == 0 and (
            repr(fast.predict_proba_one(dict(x))) != repr(river.predict_proba_one(dict(x)))
            or repr(fast.predict_one(dict(x))) != repr(river.predict_one(dict(x)))
        ):
            return False
        fast.learn_one(dict(x), y)
        river.learn_one(dict(x), y)
    grown = fast.model._root is not None and fast.model.height > 1
    return grown and tree_state(fast.model) == tree_state(river)


class _StatePickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> str | None:
        return "rng" if isinstance(obj, random.Random) else None


def tree_state(model: Any) -> bytes:
    """``model`` pickled, each random generator as one token: every Gaussian of a River tree
    seeds its own from the system (for sampling, which learning and predicting never do), so
    two trees that learned alike differ by those alone."""
    out = io.BytesIO()
    _StatePickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(model)
    return out.getvalue()

"""The node compilers of serving graphs: one closure per node, built once per graph.

`compile_node` walks a `schemas.graphs.Node` and returns its `Runner`; `learners.graph` wraps
the root's in a `CompiledGraph`. Everything a request does not change is computed here:
children's runners, paths, conditions, normalised weights, hash prefixes.

Semantics, node by node:

- model: the model's ``predict``; the model is pinned in the context on first use.
- sequence: every step but the last is a model whose output becomes feature ``as`` of a copy of
  the features (a classifier's: `learners.graph.positive_probability`; a regressor's: its
  prediction; an anomaly detector's: its score; an output of ``None`` removes the feature).
- ensemble: every member answers; ``mean`` averages the classifiers' probabilities per class
  (a class a member leaves out counts 0) and predicts the most probable class, or averages
  the others' predictions; ``vote`` predicts the most frequent prediction, with the vote
  shares as probabilities for classifiers; ``weighted`` is ``mean`` with the fixed weights or
  the members' metrics (``by_metric``). Ties go to the class whose ``repr`` sorts first; a
  member answering ``None`` (untrained) abstains. Mixing classifiers and others is a
  `GraphError`. A member whose rule decided counts with that rule's prediction (and `certain`
  probabilities), and the ensemble answers with that decision and reason (the first such
  member's, in order): a decision reaches the answer through every node. ``decided_by`` stays
  the ensemble; ``path`` names the rule.
- rules: the over node answers, then the first rule matching the features and that answer
  decides (its decision, its reason, its prediction if it has one); no match: the over node's.
  A rule's prediction replaces a classifier's probabilities by `certain`'s (1 for it, 0 for the
  model's other classes), so that they never contradict it.
- switch: the first case whose condition holds, else the default.
- split: the branch where `learners.graph.sticky_unit` of the sticky key falls in cumulative
  weight shares; the key is the request id (``sticky_by: id``) or the feature's value, or the
  request id when the feature is missing; neither raises `GraphInputError`.
- shadow: the primary answers; when the request id's unit falls under ``percent`` (always at
  100; a request without an id: a random draw, ``Context.draw``), every shadow is listed in the
  answer for `learners.graph.run_shadows`, with the primary's prediction it is compared with.

A caller may work out some models' answers itself (``Context.given``: a linear model's from the
request's bytes, `serving.graph_service`): a model node then answers with that, pinning its
model as ever. It does so only for a graph whose features nothing but its models reads
(`models_alone`), since the features are then never built.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

from learners.conditions import compile_condition
from learners.graph_context import (
    Context,
    GraphInputError,
    MemberUnavailable,
    Outcome,
    PendingShadow,
    Runner,
    positive_probability,
    sticky_hasher,
)
from schemas.graph_errors import GraphError
from schemas.graphs import (
    Comparison,
    Condition,
    EnsembleNode,
    ModelNode,
    Node,
    Not,
    RulesNode,
    SequenceNode,
    ShadowNode,
    SplitNode,
    SwitchNode,
    walk,
)

mean_probabilities_in_c: (
    Callable[[Sequence[Outcome], Sequence[float] | None], tuple[Any, dict[Any, float]] | None]
    | None
)
try:  # a classifiers' mean in C (learners/_ensemble_pass.c), built by pip install when it can be
    from learners import _ensemble_pass

    _ensemble_pass.configure(Outcome)
    mean_probabilities_in_c = _ensemble_pass.mean_probabilities
except ImportError:  # without a C compiler at install (tests require it: here and in CI)
    mean_probabilities_in_c = None


def compile_node(node: Node, path: str) -> Runner:
    """The runner of ``node``, found at ``path`` in its graph (``root``...)."""
    if isinstance(node, ModelNode):
        return _model(node, path)
    body = f"{path}.{node.tag}"
    if isinstance(node, SequenceNode):
        return _sequence(node, body)
    if isinstance(node, EnsembleNode):
        return _ensemble(node, body)
    if isinstance(node, RulesNode):
        return _rules(node, body)
    if isinstance(node, SwitchNode):
        return _switch(node, body)
    if isinstance(node, SplitNode):
        return _split(node, body)
    if isinstance(node, ShadowNode):
        return _shadow(node, body)
    raise GraphError(path, f"not a graph node: {type(node).__name__}")


def _model(node: ModelNode, path: str) -> Runner:
    name = node.model

    def run(x: dict[str, Any], ctx: Context) -> Outcome:
        used = ctx.used
        model = used.get(name)
        if model is None:  # its first use in this request: pinned for the rest of it
            model = ctx.models.get(name)
            if model is None:
                raise MemberUnavailable(name, path)
            used[name] = model
        if ctx.given is not None:
            prediction, probabilities = ctx.given[name]
        elif ctx.complete:
            prediction, probabilities = model.predict(x, complete=True)
        else:
            prediction, probabilities = model.predict(x)
        return _outcome(Outcome, (prediction, probabilities, model.kind, path, None, None))

    return run


_outcome = tuple.__new__
"""``_outcome(Outcome, fields)``: `Outcome` with every field given, without the Python call of
its ``__new__`` (≈ 0.2 µs: the model node answers every request of every graph)."""


def models_alone(root: Node) -> tuple[str, ...] | None:
    """The models of a graph whose features nothing but its models reads (its nodes are models,
    ensembles, and rules whose conditions look at outputs only), once each, in the order an
    evaluation first uses them (depth first: the order of an answer's ``versions``); None for any
    other graph (a sequence feeds its models other features; a switch, a split or a feature
    condition reads them; a shadow runs later on them).

    >>> from schemas.graph_parser import parse_graph
    >>> models_alone(parse_graph({"name": "g", "root": {"rules": {
    ...     "over": {"ensemble": {"members": ["b", "a"]}},
    ...     "rules": [{"when": {"output": "prediction", "eq": 1}, "then": {"decision": "x"}}],
    ... }}}).root)
    ('b', 'a')
    >>> models_alone(parse_graph({"name": "g", "root": {"rules": {"over": "a",
    ...     "rules": [{"when": {"not": {"feature": "f", "gt": 1}}, "then": {"decision": "x"}}],
    ... }}}).root) is None
    True
    """
    names: dict[str, None] = {}
    for node in walk(root):
        if isinstance(node, ModelNode):
            names[node.model] = None
        elif isinstance(node, RulesNode):
            if any(_reads_features(rule.when) for rule in node.rules):
                return None
        elif not isinstance(node, EnsembleNode):
            return None
    return tuple(names)


def _reads_features(condition: Condition) -> bool:
    if isinstance(condition, Comparison):
        return condition.target == "feature"
    if isinstance(condition, Not):
        return _reads_features(condition.condition)
    return any(_reads_features(c) for c in condition.conditions)


def feed_value(out: Outcome) -> Any:
    """What a sequence step passes on (see the module docstring)."""
    if out.kind == "classifier":
        return positive_probability(out.probabilities, out.prediction)
    return out.prediction


def _sequence(node: SequenceNode, path: str) -> Runner:
    runners = [compile_node(s, f"{path}.steps[{i}]") for i, s in enumerate(node.steps)]
    feeds = []
    for i, (step, runner) in enumerate(zip(node.steps[:-1], runners, strict=False)):
        if not isinstance(step, ModelNode):
            raise GraphError(f"{path}.steps[{i}]", "only a model can feed the next step")
        feeds.append((runner, step.feature_name))
    last = runners[-1]

    def run(x: dict[str, Any], ctx: Context) -> Outcome:
        for runner, feature in feeds:
            value = feed_value(runner(x, ctx))
            x = {**x, feature: value}  # a copy: the caller's features are never modified
            if value is None:
                del x[feature]
        return last(x, ctx)

    return run


def _argmax(scores: dict[Any, float]) -> Any:
    keys, values = list(scores), list(scores.values())
    best = max(values)
    if values.count(best) == 1:
        return keys[values.index(best)]
    return min((k for k, v in zip(keys, values, strict=True) if v == best), key=repr)


def combine(
    outs: Sequence[Outcome], how: str, weights: Sequence[float] | None, path: str
) -> Outcome:
    """The ensemble at ``path``'s answer from its members' (``weights`` None: equal).
    Classifiers' ``mean`` and ``weighted`` are summed in C when they can be (the same
    numbers: `learners/_ensemble_pass.c`)."""
    if how != "vote" and mean_probabilities_in_c is not None:
        done = mean_probabilities_in_c(outs, weights)
        if done is not None:
            return _outcome(Outcome, (done[0], done[1], "classifier", path, None, None))
    kind = outs[0].kind
    for o in outs:
        if o.kind != kind:
            kinds = ", ".join(sorted({o.kind for o in outs}))
            raise GraphError(path, f"members mix {kinds}: their answers cannot be combined")
    classifier = kind == "classifier"
    if weights is None:
        weights = [1.0] * len(outs)
    if how == "vote":
        votes: dict[Any, float] = {}
        for o in outs:
            if o.prediction is not None:
                votes[o.prediction] = votes.get(o.prediction, 0.0) + 1.0
        if not votes:
            return Outcome(None, {} if classifier else None, kind, path)
        n = sum(votes.values())
        shares = {k: v / n for k, v in votes.items()} if classifier else None
        return Outcome(_argmax(votes), shares, kind, path)
    if classifier:
        sums: dict[Any, float] = {}
        total = 0.0
        get = sums.get
        for o, w in zip(outs, weights, strict=True):
            proba = o.probabilities
            if not proba:
                if o.prediction is None:
                    continue  # an untrained member abstains
                proba = {o.prediction: 1.0}
            total += w
            for label, p in proba.items():
                sums[label] = get(label, 0.0) + w * p
        if total <= 0 or not sums:
            return Outcome(None, {}, kind, path)
        if total != 1.0:  # normalised weights of members that all answered sum to 1
            for label, s in sums.items():
                sums[label] = s / total
        return Outcome(_argmax(sums), sums, kind, path)
    acc = total = 0.0
    for o, w in zip(outs, weights, strict=True):
        if o.prediction is not None:
            acc += w * o.prediction
            total += w
    return Outcome(acc / total if total > 0 else None, None, kind, path)


def _ensemble(node: EnsembleNode, path: str) -> Runner:
    runners = tuple(compile_node(m, f"{path}.members[{i}]") for i, m in enumerate(node.members))
    how = node.combine
    fixed: list[float] | None = None
    names: tuple[str, ...] = ()
    if node.weights == "by_metric":
        for i, member in enumerate(node.members):
            if not isinstance(member, ModelNode):
                raise GraphError(f"{path}.members[{i}]", "weights: by_metric needs models")
            names += (member.model,)
    elif how == "weighted" and node.weights is not None:
        total = sum(node.weights)
        fixed = [w / total for w in node.weights]

    if not any(isinstance(n, RulesNode) for m in node.members for n in walk(m)):

        def run(x: dict[str, Any], ctx: Context) -> Outcome:
            outs = [runner(x, ctx) for runner in runners]
            weights = ctx.models.weights(names) if names else fixed
            return combine(outs, how, weights, path)

        return run

    def decided(x: dict[str, Any], ctx: Context) -> Outcome:  # a member may hold rules
        outs = [runner(x, ctx) for runner in runners]
        weights = ctx.models.weights(names) if names else fixed
        out = combine(outs, how, weights, path)
        for o in outs:  # the first member a rule decided passes its decision on
            if o.decision is not None:
                return out._replace(decision=o.decision, reason=o.reason)
        return out

    return decided


def certain(prediction: Any, probabilities: dict[Any, float] | None) -> dict[Any, float]:
    """A classifier's probabilities once a rule has set its ``prediction``: 1 for it, 0 for
    every other class the model gave.

    >>> certain(True, {False: 0.9, True: 0.1}), certain("b", None)
    ({False: 0.0, True: 1.0}, {'b': 1.0})
    """
    sure = dict.fromkeys(probabilities, 0.0) if probabilities else {}
    sure[prediction] = 1.0
    return sure


def _rules(node: RulesNode, path: str) -> Runner:
    over = compile_node(node.over, f"{path}.over")
    rules = tuple(
        (compile_condition(rule.when), rule.then, f"{path}.rules[{i}]")
        for i, rule in enumerate(node.rules)
    )

    def run(x: dict[str, Any], ctx: Context) -> Outcome:
        out = over(x, ctx)
        for test, then, where in rules:
            if test(x, out.prediction, out.probabilities):
                ctx.path.append(where)
                if then.prediction is None:
                    prediction, probabilities = out.prediction, out.probabilities
                else:
                    prediction = then.prediction
                    probabilities = out.probabilities
                    if out.kind == "classifier":
                        probabilities = certain(prediction, probabilities)
                return Outcome(
                    prediction, probabilities, out.kind, where, then.decision, then.reason
                )
        return out

    return run


def _switch(node: SwitchNode, path: str) -> Runner:
    cases = tuple(
        (
            compile_condition(case.when),
            compile_node(case.then, f"{path}.cases[{i}].then"),
            f"{path}.cases[{i}]",
        )
        for i, case in enumerate(node.cases)
    )
    default_path = f"{path}.default"
    default = compile_node(node.default, default_path)

    def run(x: dict[str, Any], ctx: Context) -> Outcome:
        for test, runner, where in cases:
            if test(x, None, None):
                ctx.path.append(where)
                return runner(x, ctx)
        ctx.path.append(default_path)
        return default(x, ctx)

    return run


def _split(node: SplitNode, path: str) -> Runner:
    runners = tuple(
        compile_node(b.node, f"{path}.branches[{i}].node") for i, b in enumerate(node.branches)
    )
    wheres = tuple(f"{path}.branches[{i}]" for i in range(len(node.branches)))
    cumulative = list(accumulate(b.weight for b in node.branches))
    total = cumulative[-1]
    if not total > 0:
        raise GraphError(f"{path}.branches", "weights must not all be zero")
    last = max(i for i, b in enumerate(node.branches) if b.weight > 0)  # rounding never goes past
    unit = sticky_hasher(path if node.salt is None else node.salt)
    feature = None if node.sticky_by == "id" else node.sticky_by

    def run(x: dict[str, Any], ctx: Context) -> Outcome:
        key = ctx.request_id if feature is None else x.get(feature)
        if key is None:
            key = ctx.request_id
            if key is None:
                wanted = (
                    "a request id" if feature is None else f"feature {feature!r} or a request id"
                )
                raise GraphInputError(f"{path}: {wanted} is needed to choose a branch")
        i = min(bisect_right(cumulative, unit(key) * total), last)
        ctx.path.append(wheres[i])
        return runners[i](x, ctx)

    return run


def _shadow(node: ShadowNode, path: str) -> Runner:
    primary = compile_node(node.primary, f"{path}.primary")
    shadows = tuple(
        (f"{path}.shadows[{i}]", compile_node(s, f"{path}.shadows[{i}]"))
        for i, s in enumerate(node.shadows)
    )
    percent = node.percent
    unit = sticky_hasher(path)

    def run(x: dict[str, Any], ctx: Context) -> Outcome:
        out = primary(x, ctx)
        rid = ctx.request_id
        if percent >= 100 or (
            percent > 0 and (unit(rid) if rid is not None else ctx.draw()) * 100 < percent
        ):
            inputs = None if x is ctx.top else x
            for where, runner in shadows:
                ctx.shadows.append(PendingShadow(where, runner, inputs, rid, out.prediction))
        return out

    return run

"""Serving graphs: how several models answer one prediction request together.

A graph is data, written in YAML or JSON by an operator and read by `schemas.graph_parser.parse_graph` into frozen
dataclasses; `learners.graph` compiles and evaluates it. Nothing here performs I/O, and
conditions are data as well: nothing is ever handed to ``eval``. The published JSON Schema of
the same format is ``schemas/jsonschema/graph.json``.

The format
----------
A graph document has a ``name`` (the model-name rule: `GRAPH_NAME_PATTERN`), an optional
``description`` and a ``root`` node. A node is a model name, ``{model: NAME, as: FEATURE}``, or
a mapping with exactly one key, the node's kind, whose value holds the node's fields::

    name: fraud
    root:
      rules:
        over:
          ensemble: {members: [lr, tree], combine: weighted, weights: by_metric}
        rules:
          - when: {output: proba.True, ge: 0.9}
            then: {decision: block, reason: very likely fraud}
          - when: {all: [{feature: amount, gt: 5000}, {not: {feature: country, in: [FR, DE]}}]}
            then: {decision: review, prediction: true}

========  ====================================================================================
kind      fields
========  ====================================================================================
model     ``model``: a model name; ``as``: the feature its output becomes in a sequence
          (default: the model name)
sequence  ``steps``: nodes; every step but the last is a model whose output becomes feature
          ``as`` of the next step's input; the last step answers
ensemble  ``members``: nodes; ``combine``: ``mean`` (the default), ``vote`` or ``weighted``;
          ``weights`` (``weighted`` only): ``by_metric`` (every member a model) or one
          non-negative number per member
rules     ``over``: the node evaluated first; ``rules``: ``{when: CONDITION, then: {decision,
          reason, prediction}}`` in order, the first that matches decides (``prediction``
          overrides the over node's)
switch    ``cases``: ``{when: CONDITION, then: NODE}`` in order, conditions on features only;
          ``default``: the node used when no case matches (required)
split     ``branches``: ``{weight, node}`` (weights ≥ 0, normalised by their sum); ``sticky_by``:
          ``id`` (the request id, the default) or a feature name; ``salt``: hash salt
          (default: the node's path)
shadow    ``primary``: the node that answers; ``shadows``: nodes evaluated off the response
          path; ``percent``: share of requests shadowed, 0–100 (default 100)
========  ====================================================================================

A condition is ``{feature: NAME, OP: VALUE}``, ``{output: prediction | proba.CLASS, OP: VALUE}``
(rules only: the over node's answer), ``{all: [...]}``, ``{any: [...]}`` or ``{not: {...}}``.
``OP`` is one of ``gt ge lt le`` (a number), ``eq ne`` (a string, number or boolean), ``in`` (a
list of those) or ``is_missing`` (a boolean). An absent or null value is missing and every
comparison with it is false, ``ne`` included; ``gt``... are false for anything but a number
(a boolean is not a number) and ``eq`` never equates a boolean with a number. ``proba.CLASS``
names the class as ``str(label)`` would (``proba.True``; ``proba.true`` works for booleans); a
class the answer's probabilities leave out (a misspelt one) is missing too. An ``in`` list may
not mix booleans with strings (YAML 1.1 reads an unquoted ``no`` as false: quote it).

Examples
--------
>>> from schemas.graph_parser import parse_graph
>>> spec = parse_graph({"name": "g", "root": {"ensemble": {"members": ["lr", "tree"]}}})
>>> spec.root
EnsembleNode(members=(ModelNode(model='lr', as_=None), ModelNode(model='tree', as_=None)), combine='mean', weights=None)
>>> spec.model_names()
('lr', 'tree')
>>> doc = {"name": "g", "root": {"rules": {
...     "over": {"ensemble": {"members": ["lr", "tre"]}},
...     "rules": [{"when": {"output": "prediction", "eq": True}, "then": {"decision": "block"}}],
... }}}
>>> parse_graph(doc, known_models=["lr", "tree"])
Traceback (most recent call last):
...
schemas.graph_errors.GraphError: root.rules.over.ensemble.members[1]: unknown model "tre" (did you mean "tree"?)
>>> graph_to_dict(parse_graph(doc))["root"]["rules"]["rules"]
[{'when': {'output': 'prediction', 'eq': True}, 'then': {'decision': 'block'}}]
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias

GRAPH_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
"""Graph and model names: 1–128 characters, a letter or digit then letters, digits, ``._-``
(match the whole name, with `re.fullmatch`)."""

MAX_DEPTH = 32
"""Deepest nesting of nodes and conditions accepted (a guard against runaway documents)."""

MAX_TEXT = 256
"""Longest feature name, decision, salt accepted; a reason may be 4 times as long."""

NODE_KINDS = ("model", "sequence", "ensemble", "rules", "switch", "split", "shadow")
COMBINES = ("mean", "vote", "weighted")
ORDER_OPS = ("gt", "ge", "lt", "le")
OPS = (*ORDER_OPS, "eq", "ne", "in", "is_missing")

Op = Literal["gt", "ge", "lt", "le", "eq", "ne", "in", "is_missing"]
Combine = Literal["mean", "vote", "weighted"]
Scalar: TypeAlias = str | int | float | bool

_NAME = re.compile(GRAPH_NAME_PATTERN)


# --- conditions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """``{feature: name, op: value}`` (``target="feature"``) or ``{output: name, op: value}``
    (``target="output"``, name ``prediction`` or ``proba.<class>``). ``value`` is a number for
    ``gt ge lt le``, a scalar for ``eq ne``, a tuple of scalars for ``in``, a bool for
    ``is_missing``."""

    target: Literal["feature", "output"]
    name: str
    op: Op
    value: Any


@dataclass(frozen=True, slots=True)
class AllOf:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    condition: Condition


Condition: TypeAlias = Comparison | AllOf | AnyOf | Not


# --- nodes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What a matching rule decides; ``prediction``, when not None, replaces the over node's."""

    decision: str
    reason: str | None = None
    prediction: Scalar | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    when: Condition
    then: Decision


@dataclass(frozen=True, slots=True)
class ModelNode:
    tag: ClassVar[str] = "model"
    model: str
    as_: str | None = None

    @property
    def feature_name(self) -> str:
        """The feature this model's output becomes for the next step of a sequence."""
        return self.as_ if self.as_ is not None else self.model


@dataclass(frozen=True, slots=True)
class SequenceNode:
    tag: ClassVar[str] = "sequence"
    steps: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class EnsembleNode:
    tag: ClassVar[str] = "ensemble"
    members: tuple[Node, ...]
    combine: Combine = "mean"
    weights: Literal["by_metric"] | tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class RulesNode:
    tag: ClassVar[str] = "rules"
    rules: tuple[Rule, ...]
    over: Node


@dataclass(frozen=True, slots=True)
class Case:
    when: Condition
    then: Node


@dataclass(frozen=True, slots=True)
class SwitchNode:
    tag: ClassVar[str] = "switch"
    cases: tuple[Case, ...]
    default: Node


@dataclass(frozen=True, slots=True)
class Branch:
    weight: float
    node: Node


@dataclass(frozen=True, slots=True)
class SplitNode:
    tag: ClassVar[str] = "split"
    branches: tuple[Branch, ...]
    sticky_by: str = "id"
    salt: str | None = None


@dataclass(frozen=True, slots=True)
class ShadowNode:
    tag: ClassVar[str] = "shadow"
    primary: Node
    shadows: tuple[Node, ...]
    percent: float = 100.0


Node: TypeAlias = (
    ModelNode | SequenceNode | EnsembleNode | RulesNode | SwitchNode | SplitNode | ShadowNode
)


@dataclass(frozen=True, slots=True)
class GraphSpec:
    name: str
    root: Node
    description: str | None = None

    def model_names(self) -> tuple[str, ...]:
        """Every model the graph may call (shadows included), sorted, once each."""
        return tuple(sorted({n.model for n in walk(self.root) if isinstance(n, ModelNode)}))


def children(node: Node) -> tuple[Node, ...]:
    """The nodes directly under ``node``."""
    if isinstance(node, SequenceNode):
        return node.steps
    if isinstance(node, EnsembleNode):
        return node.members
    if isinstance(node, RulesNode):
        return (node.over,)
    if isinstance(node, SwitchNode):
        return (*(case.then for case in node.cases), node.default)
    if isinstance(node, SplitNode):
        return tuple(branch.node for branch in node.branches)
    if isinstance(node, ShadowNode):
        return (node.primary, *node.shadows)
    return ()


def walk(node: Node) -> Iterator[Node]:
    """``node`` and every node under it, depth first."""
    yield node
    for child in children(node):
        yield from walk(child)


# --- back to a document -------------------------------------------------------------------


def graph_to_dict(spec: GraphSpec) -> dict[str, Any]:
    """The document of ``spec`` (JSON-ready): ``parse_graph(graph_to_dict(s)) == s``."""
    doc: dict[str, Any] = {"name": spec.name, "root": node_to_dict(spec.root)}
    if spec.description is not None:
        doc["description"] = spec.description
    return doc


def node_to_dict(node: Node) -> Any:
    if isinstance(node, ModelNode):
        return node.model if node.as_ is None else {"model": node.model, "as": node.as_}
    body: dict[str, Any]
    if isinstance(node, SequenceNode):
        body = {"steps": [node_to_dict(s) for s in node.steps]}
    elif isinstance(node, EnsembleNode):
        body = {"members": [node_to_dict(m) for m in node.members], "combine": node.combine}
        if node.weights is not None:
            w = node.weights
            body["weights"] = w if isinstance(w, str) else list(w)
    elif isinstance(node, RulesNode):
        body = {"over": node_to_dict(node.over), "rules": [_rule_to_dict(r) for r in node.rules]}
    elif isinstance(node, SwitchNode):
        cases = [
            {"when": condition_to_dict(c.when), "then": node_to_dict(c.then)} for c in node.cases
        ]
        body = {"cases": cases, "default": node_to_dict(node.default)}
    elif isinstance(node, SplitNode):
        branches = [{"weight": b.weight, "node": node_to_dict(b.node)} for b in node.branches]
        body = {"branches": branches, "sticky_by": node.sticky_by}
        if node.salt is not None:
            body["salt"] = node.salt
    else:
        shadows = [node_to_dict(s) for s in node.shadows]
        body = {"primary": node_to_dict(node.primary), "shadows": shadows, "percent": node.percent}
    return {node.tag: body}


def _rule_to_dict(rule: Rule) -> dict[str, Any]:
    then: dict[str, Any] = {"decision": rule.then.decision}
    if rule.then.reason is not None:
        then["reason"] = rule.then.reason
    if rule.then.prediction is not None:
        then["prediction"] = rule.then.prediction
    return {"when": condition_to_dict(rule.when), "then": then}


def condition_to_dict(condition: Condition) -> dict[str, Any]:
    if isinstance(condition, AllOf):
        return {"all": [condition_to_dict(c) for c in condition.conditions]}
    if isinstance(condition, AnyOf):
        return {"any": [condition_to_dict(c) for c in condition.conditions]}
    if isinstance(condition, Not):
        return {"not": condition_to_dict(condition.condition)}
    value = list(condition.value) if condition.op == "in" else condition.value
    return {condition.target: condition.name, condition.op: value}

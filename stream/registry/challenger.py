"""The champion/challenger policy: promote a challenger into a graph's champion slot when the
paired comparison on ground truth says it wins.

A policy belongs to one serving graph (``riverstream models policy GRAPH --champion A
--challenger B --margin M --min-labels N``), stored in Redis as JSON::

    P:challenger:graphs            set of graphs with a policy
    P:graph:NAME:challenger        the policy (`ChallengerPolicy`)

The learner evaluates every armed policy after each snapshot (in the snapshot's ``after_write``
step, like the models' promotion policy: `stream.learner.runtime.promote_after_write`), from the
comparison it has just written (`stream.store.comparisons`; the learner may keep the pair as
B:A, e.g. ``--compare all`` in model order: it is then read mirrored, `ComparisonStore.find`).
It fires when the comparison of A with B, over at least N labels that both scored, decides
``b_better`` with margin M: the whole anytime-valid confidence interval of ``loss(A) - loss(B)``
is above M (`learners.compare`: the decision may be checked after every snapshot without
inflating false promotions). Then:

1. the graph's served document is rewritten by `swap_champion`: every ``model`` node naming A
   names B instead, except in the ``shadows`` of a shadow node, where B (the challenger that was
   shadowed) becomes A (the old champion is shadowed in its turn);
2. the result is applied as a new version of the graph (`GraphRegistry.apply`, action
   ``challenger``), whose history entry carries the evidence: n, both losses, the difference, the
   interval, alpha, margin, minimum labels and the snapshot version of the comparison; every API
   process then serves it, as after any ``graphs apply``;
3. the policy records that it fired (``promoted``) and is not evaluated again: a rollback of the
   graph by the operator is not undone by the policy. Setting the policy again re-arms it.

A policy is only set on a served graph that names A outside its shadow branches (else it could
never promote anything). A crash between 2 and 3 is harmless: the served graph then names A
nowhere outside shadows and B there, so the next evaluation finds nothing to swap and only
records the promotion. A graph changed meanwhile to name neither (the operator applied another
document) is left alone and the policy stays armed: a promotion is never recorded without B in
A's place. Nothing here imports River.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from schemas.errors import RegistryError
from schemas.graph_parser import parse_graph
from schemas.graphs import (
    Branch,
    Case,
    EnsembleNode,
    GraphSpec,
    ModelNode,
    Node,
    RulesNode,
    SequenceNode,
    ShadowNode,
    SplitNode,
    SwitchNode,
    children,
    graph_to_dict,
)
from schemas.names import MODEL_NAME_RULE, is_model_name
from stream.registry.base import registry_error
from stream.registry.graphs import Applied, GraphRegistry
from stream.registry.policy import _user
from stream.store.comparisons import ComparisonStore, StoredComparison
from stream.store.graphs import GraphStore
from stream.store.keys import RedisKeys

__all__ = [
    "ChallengerPolicies",
    "ChallengerPolicy",
    "Promotion",
    "evidence",
    "served_models",
    "swap_champion",
]

log = logging.getLogger(__name__)

ACTION = "challenger"
"""The action of the graph history entry a promotion writes."""


@dataclass(frozen=True, slots=True)
class ChallengerPolicy:
    """Promote ``challenger`` into ``graph``'s ``champion`` slot once it wins by ``margin``
    (in loss: error rate for classifiers, mean absolute error for regressors) after at least
    ``min_labels`` labels both scored. ``promoted`` is set once it fired (the graph version,
    the snapshot version and the evidence)."""

    graph: str
    champion: str
    challenger: str
    margin: float = 0.0
    min_labels: int = 500
    by: str = ""
    created_at: float = 0.0
    promoted: dict[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        for what, name in (("graph", self.graph), ("champion", self.champion)):
            if not is_model_name(name):
                raise RegistryError(f"invalid {what} name {name!r}: use {MODEL_NAME_RULE}")
        if not is_model_name(self.challenger):
            raise RegistryError(f"invalid challenger name {self.challenger!r}")
        if self.champion == self.challenger:
            raise RegistryError("the champion and the challenger must be two models")
        if not (math.isfinite(self.margin) and self.margin >= 0.0):
            raise RegistryError(f"margin must be a finite number >= 0, got {self.margin}")
        if self.min_labels < 1:
            raise RegistryError(f"min-labels must be >= 1, got {self.min_labels}")

    def decide(self, stored: StoredComparison) -> dict[str, Any] | None:
        """The evidence for promoting, if the comparison ``stored`` says the challenger wins by
        the margin after at least the minimum labels; None otherwise (or once it fired). Pure:
        `ChallengerPolicies.evaluate` acts on it, and the A/A check
        (`tests/stream/registry/test_challenger.py`) calls it after every label."""
        if self.promoted is not None:
            return None
        facts = evidence(stored, self)
        return facts if facts["decision"] == "b_better" else None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ChallengerPolicy:
        try:
            data = json.loads(raw)
            return cls(
                graph=str(data["graph"]),
                champion=str(data["champion"]),
                challenger=str(data["challenger"]),
                margin=float(data.get("margin", 0.0)),
                min_labels=int(data.get("min_labels", 500)),
                by=str(data.get("by", "")),
                created_at=float(data.get("created_at", 0.0)),
                promoted=data.get("promoted"),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise RegistryError(f"unreadable challenger policy {raw!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Promotion:
    """What one evaluation did to a graph."""

    graph: str
    applied: Applied
    evidence: dict[str, Any]


def evidence(stored: StoredComparison, policy: ChallengerPolicy) -> dict[str, Any]:
    """The numbers a promotion is decided on, for the graph's history (JSON-ready)."""
    summary = stored.summary(policy.margin, policy.min_labels)
    c = stored.comparison
    champion, challenger = stored.pair
    return {
        "champion": champion,
        "challenger": challenger,
        "n": summary["n"],
        "loss": c.loss,
        "champion_loss": summary["loss_a"],
        "challenger_loss": summary["loss_b"],
        "difference": summary["difference"],
        "interval": [summary["lower"], summary["upper"]],
        "alpha": c.stats.alpha,
        "margin": policy.margin,
        "min_labels": max(policy.min_labels, c.min_samples),
        "decision": summary["decision"],
        "snapshot_version": stored.version,
    }


def swap_champion(spec: GraphSpec, champion: str, challenger: str) -> GraphSpec:
    """``spec`` with ``challenger`` in every place of ``champion``, and ``champion`` in the
    place of ``challenger`` among shadow branches (see the module). A model node that feeds the
    next step of a sequence keeps the feature name it gave (``as``).

    >>> g = parse_graph({"name": "g", "root": {"shadow": {"primary": "a", "shadows": ["b"]}}})
    >>> graph_to_dict(swap_champion(g, "a", "b"))["root"]
    {'shadow': {'primary': 'b', 'shadows': ['a'], 'percent': 100.0}}
    >>> g = parse_graph({"name": "g", "root": {"sequence": {"steps": ["a", "lr"]}}})
    >>> graph_to_dict(swap_champion(g, "a", "b"))["root"]
    {'sequence': {'steps': [{'model': 'b', 'as': 'a'}, 'lr']}}
    """
    return dataclasses.replace(spec, root=_swap(spec.root, champion, challenger, False, False))


def served_models(node: Node) -> set[str]:
    """The models ``node`` may answer with: every model node outside the ``shadows`` of a
    shadow node (whose answers are only logged, never served).

    >>> g = parse_graph({"name": "g", "root": {"shadow": {"primary": "a", "shadows": ["b"]}}})
    >>> sorted(served_models(g.root))
    ['a']
    """
    if isinstance(node, ModelNode):
        return {node.model}
    if isinstance(node, ShadowNode):
        return served_models(node.primary)
    return set().union(*(served_models(child) for child in children(node)))


def _swap(node: Node, champion: str, challenger: str, shadowed: bool, feeds: bool) -> Node:
    def again(child: Node, *, in_shadow: bool = shadowed, feeding: bool = False) -> Node:
        return _swap(child, champion, challenger, in_shadow, feeding)

    if isinstance(node, ModelNode):
        old, new = (challenger, champion) if shadowed else (champion, challenger)
        if node.model != old:
            return node
        keep = node.as_ if node.as_ is not None else (old if feeds else None)
        return ModelNode(new, keep)
    if isinstance(node, SequenceNode):
        last = len(node.steps) - 1
        return SequenceNode(tuple(again(s, feeding=i < last) for i, s in enumerate(node.steps)))
    if isinstance(node, EnsembleNode):
        members = tuple(again(m) for m in node.members)
        return dataclasses.replace(node, members=members)
    if isinstance(node, RulesNode):
        return dataclasses.replace(node, over=again(node.over))
    if isinstance(node, SwitchNode):
        cases = tuple(Case(c.when, again(c.then)) for c in node.cases)
        return SwitchNode(cases, again(node.default))
    if isinstance(node, SplitNode):
        branches = tuple(Branch(b.weight, again(b.node)) for b in node.branches)
        return dataclasses.replace(node, branches=branches)
    shadows = tuple(again(s, in_shadow=True) for s in node.shadows)  # a ShadowNode
    return dataclasses.replace(node, primary=again(node.primary), shadows=shadows)


class ChallengerPolicies:
    """The champion/challenger policies of the graphs under ``prefix`` (see the module)."""

    def __init__(self, client: redis.Redis, prefix: str, *, by: str | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self.by = by or _user()

    # -- the operator's side ---------------------------------------------------------------
    def set(
        self, graph: str, champion: str, challenger: str, *, margin: float, min_labels: int
    ) -> ChallengerPolicy:
        """Store (or replace, re-armed) the policy of ``graph``; `RegistryError` unless the
        graph is served and names ``champion`` outside its shadow branches."""
        policy = ChallengerPolicy(
            graph, champion, challenger, margin, min_labels, self.by, time.time()
        )
        served = self._call(f"graph {graph}", GraphStore(self.client, self.prefix).served, graph)
        if served is None:
            raise RegistryError(f"no served graph named {graph}: apply it before its policy")
        version, document = served
        serves = served_models(parse_graph(document).root)
        if champion not in serves:
            raise RegistryError(
                f"graph {graph} v{version} does not serve {champion} (outside shadow branches "
                f"it serves {', '.join(sorted(serves)) or 'no model'}): the policy could never "
                f"promote {challenger} in its place"
            )
        self._write(policy)
        return policy

    def get(self, graph: str) -> ChallengerPolicy | None:
        raw = self._call(
            f"policy of graph {graph}", self.client.get, self.keys.challenger_policy(graph)
        )
        return None if raw is None else ChallengerPolicy.from_json(raw)

    def all(self) -> list[ChallengerPolicy]:
        """Every policy, by graph name."""
        names = self._call("challenger policies", self.client.smembers, self.keys.challenger_graphs)
        found = (self.get(_text(name)) for name in sorted(names))
        return [policy for policy in found if policy is not None]

    def delete(self, graph: str) -> bool:
        """Remove the policy of ``graph``; whether there was one."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.challenger_policy(graph))
        pipe.srem(self.keys.challenger_graphs, graph)
        removed = self._call(f"delete policy of graph {graph}", pipe.execute)
        return bool(removed[0])

    # -- the learner's side ----------------------------------------------------------------
    def evaluate(self) -> list[Promotion]:
        """Evaluate every armed policy once (after a snapshot); returns the promotions made."""
        comparisons = ComparisonStore(self.client, self.prefix)
        graphs = GraphStore(self.client, self.prefix)
        done: list[Promotion] = []
        for policy in self.all():
            if policy.promoted is not None:
                continue
            stored = comparisons.find(policy.champion, policy.challenger)
            facts = None if stored is None else policy.decide(stored)
            if facts is None:
                continue
            served = graphs.served(policy.graph)
            if served is None:
                continue
            version, document = served
            spec = parse_graph(document)
            swapped = swap_champion(spec, policy.champion, policy.challenger)
            if swapped == spec:  # the champion is served nowhere: nothing to swap
                if policy.challenger not in served_models(spec.root):
                    log.warning(
                        "graph %s v%d serves neither %s nor %s: policy not applied",
                        policy.graph, version, policy.champion, policy.challenger,
                    )  # fmt: skip
                    continue
                # the challenger is already in its place (a run that crashed, or by hand)
                self._write(
                    dataclasses.replace(
                        policy, promoted={"graph_version": version, "evidence": facts}
                    )
                )
                continue
            reason = (
                f"{policy.challenger} beats {policy.champion} on {facts['n']} labels: "
                f"{facts['loss']} loss {facts['champion_loss']:.4g} vs "
                f"{facts['challenger_loss']:.4g}, difference {facts['difference']:.4g} in "
                f"[{facts['interval'][0]:.4g}, {facts['interval'][1]:.4g}] "
                f"(alpha {facts['alpha']:g}, margin {policy.margin:g})"
            )
            registry = GraphRegistry(self.client, self.prefix, by=f"policy:{policy.by}")
            applied = registry.apply(
                graph_to_dict(swapped), reason, action=ACTION, detail={"evidence": facts}
            )
            promoted = {"graph_version": applied.version, "evidence": facts}
            self._write(dataclasses.replace(policy, promoted=promoted))
            log.warning("graph %s v%d: %s", policy.graph, applied.version, reason)
            done.append(Promotion(policy.graph, applied, facts))
        return done

    # -- helpers ---------------------------------------------------------------------------
    def _write(self, policy: ChallengerPolicy) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.challenger_policy(policy.graph), policy.to_json())
        pipe.sadd(self.keys.challenger_graphs, policy.graph)
        self._call(f"policy of graph {policy.graph}", pipe.execute)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise registry_error(f"{what}: redis error: {exc}", exc) from exc


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw

"""Parsing graph documents into the types of `schemas.graphs`: `parse_graph`, structure checked
node by node, each problem named by its path in the document. Types only, no I/O."""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Mapping
from typing import Any, Literal, cast

from schemas.graph_errors import GraphError
from schemas.graphs import (
    _NAME,
    COMBINES,
    GRAPH_NAME_PATTERN,
    MAX_DEPTH,
    MAX_TEXT,
    NODE_KINDS,
    OPS,
    ORDER_OPS,
    AllOf,
    AnyOf,
    Branch,
    Case,
    Comparison,
    Condition,
    Decision,
    EnsembleNode,
    GraphSpec,
    ModelNode,
    Node,
    Not,
    Op,
    Rule,
    RulesNode,
    SequenceNode,
    ShadowNode,
    SplitNode,
    SwitchNode,
)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or _is_number(value)


class Parser:
    def __init__(self, known_models: Collection[str] | None) -> None:
        self.known = None if known_models is None else frozenset(known_models)

    def graph(self, obj: Any) -> GraphSpec:
        doc = self.fields(obj, "graph", ("name", "root"), ("description",))
        name = doc["name"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise GraphError("name", f"invalid graph name {name!r}: use {GRAPH_NAME_PATTERN}")
        description = doc.get("description")
        if description is not None and not isinstance(description, str):
            raise GraphError("description", f"expected a string, got {_kind(description)}")
        return GraphSpec(name, self.node(doc["root"], "root", 1), description)

    # helpers

    def fields(
        self, obj: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if not isinstance(obj, Mapping):
            raise GraphError(path, f"expected a mapping, got {_kind(obj)}")
        unknown = [key for key in obj if key not in required and key not in optional]
        if unknown:
            expected = ", ".join((*required, *optional))
            raise GraphError(path, f"unknown key {unknown[0]!r} (expected: {expected})")
        for key in required:
            if key not in obj:
                raise GraphError(path, f"missing key {key!r}")
        for key, value in obj.items():
            if value is None:
                where = key if path == "graph" else f"{path}.{key}"  # top-level keys: bare
                raise GraphError(where, "null is not allowed: leave the key out")
        return dict(obj)

    def items(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise GraphError(path, f"expected a list, got {_kind(value)}")
        if not value:
            raise GraphError(path, "expected a non-empty list")
        return list(value)

    def text(self, value: Any, path: str, limit: int = MAX_TEXT) -> str:
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            got = f"{len(value)} characters" if isinstance(value, str) else _kind(value)
            raise GraphError(path, f"expected a string of 1 to {limit} characters, got {got}")
        return value

    def number(self, value: Any, path: str, low: float, high: float = math.inf) -> float:
        if not _is_number(value) or not low <= value <= high:
            bounds = f"from {low:g} to {high:g}" if high < math.inf else f"≥ {low:g}"
            raise GraphError(path, f"expected a finite number {bounds}, got {value!r}")
        return cast(float, value)

    def model_name(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise GraphError(path, f"invalid model name {value!r}: use {GRAPH_NAME_PATTERN}")
        if self.known is not None and value not in self.known:
            close = difflib.get_close_matches(value, sorted(self.known), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise GraphError(path, f'unknown model "{value}"{hint}')
        return value

    # nodes

    def node(self, obj: Any, path: str, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise GraphError(path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(obj, str):
            return ModelNode(self.model_name(obj, path))
        if isinstance(obj, Mapping) and "model" in obj:
            doc = self.fields(obj, path, ("model",), ("as",))
            name = self.model_name(doc["model"], f"{path}.model")
            alias = doc.get("as")
            return ModelNode(name, None if alias is None else self.text(alias, f"{path}.as"))
        if not isinstance(obj, Mapping) or len(obj) != 1 or next(iter(obj)) not in NODE_KINDS:
            got = f"keys {', '.join(map(repr, obj))}" if isinstance(obj, Mapping) else _kind(obj)
            raise GraphError(
                path,
                "expected a model name or a mapping with one key among "
                f"{', '.join(NODE_KINDS)} (got {got})",
            )
        ((tag, body),) = obj.items()
        parse = getattr(self, f"_{tag}")
        return cast(Node, parse(body, f"{path}.{tag}", depth + 1))

    def _sequence(self, body: Any, path: str, depth: int) -> SequenceNode:
        doc = self.fields(body, path, ("steps",))
        items = self.items(doc["steps"], f"{path}.steps")
        steps = tuple(self.node(s, f"{path}.steps[{i}]", depth) for i, s in enumerate(items))
        for i, step in enumerate(steps[:-1]):
            if not isinstance(step, ModelNode):
                raise GraphError(
                    f"{path}.steps[{i}]",
                    "only a model can feed the next step (its output becomes feature `as`)",
                )
        return SequenceNode(steps)

    def _ensemble(self, body: Any, path: str, depth: int) -> EnsembleNode:
        doc = self.fields(body, path, ("members",), ("combine", "weights"))
        items = self.items(doc["members"], f"{path}.members")
        members = tuple(self.node(m, f"{path}.members[{i}]", depth) for i, m in enumerate(items))
        combine = doc.get("combine", "mean")
        if combine not in COMBINES:
            raise GraphError(
                f"{path}.combine", f"expected one of {', '.join(COMBINES)}, got {combine!r}"
            )
        raw = doc.get("weights")
        if combine == "weighted" and raw is None:
            raise GraphError(path, "combine: weighted needs `weights` (by_metric or a list)")
        if combine != "weighted" and raw is not None:
            raise GraphError(
                f"{path}.weights", f"weights only apply to combine: weighted, not {combine}"
            )
        weights: Literal["by_metric"] | tuple[float, ...] | None = None
        if raw == "by_metric":
            weights = "by_metric"
            for i, member in enumerate(members):
                if not isinstance(member, ModelNode):
                    raise GraphError(
                        f"{path}.members[{i}]", "weights: by_metric needs models as members"
                    )
        elif raw is not None:
            if not isinstance(raw, list | tuple) or len(raw) != len(members):
                raise GraphError(
                    f"{path}.weights", f'expected "by_metric" or a list of {len(members)} numbers'
                )
            weights = tuple(self.number(w, f"{path}.weights[{i}]", 0) for i, w in enumerate(raw))
            if not sum(weights) > 0:
                raise GraphError(f"{path}.weights", "weights must not all be zero")
        return EnsembleNode(members, combine, weights)

    def _rules(self, body: Any, path: str, depth: int) -> RulesNode:
        doc = self.fields(body, path, ("over", "rules"))
        over = self.node(doc["over"], f"{path}.over", depth)
        rules = []
        for i, item in enumerate(self.items(doc["rules"], f"{path}.rules")):
            where = f"{path}.rules[{i}]"
            rule = self.fields(item, where, ("when", "then"))
            when = self.condition(rule["when"], f"{where}.when", True, depth)
            then = self.fields(
                rule["then"], f"{where}.then", ("decision",), ("reason", "prediction")
            )
            decision = self.text(then["decision"], f"{where}.then.decision")
            reason = then.get("reason")
            if reason is not None:
                reason = self.text(reason, f"{where}.then.reason", 4 * MAX_TEXT)
            prediction = then.get("prediction")
            if prediction is not None and not _is_scalar(prediction):
                raise GraphError(
                    f"{where}.then.prediction",
                    f"expected a string, number or boolean, got {_kind(prediction)}",
                )
            rules.append(Rule(when, Decision(decision, reason, prediction)))
        return RulesNode(tuple(rules), over)

    def _switch(self, body: Any, path: str, depth: int) -> SwitchNode:
        doc = self.fields(body, path, ("cases", "default"))
        cases = []
        for i, item in enumerate(self.items(doc["cases"], f"{path}.cases")):
            where = f"{path}.cases[{i}]"
            case = self.fields(item, where, ("when", "then"))
            when = self.condition(case["when"], f"{where}.when", False, depth)
            cases.append(Case(when, self.node(case["then"], f"{where}.then", depth)))
        return SwitchNode(tuple(cases), self.node(doc["default"], f"{path}.default", depth))

    def _split(self, body: Any, path: str, depth: int) -> SplitNode:
        doc = self.fields(body, path, ("branches",), ("sticky_by", "salt"))
        branches = []
        for i, item in enumerate(self.items(doc["branches"], f"{path}.branches")):
            where = f"{path}.branches[{i}]"
            branch = self.fields(item, where, ("weight", "node"))
            weight = self.number(branch["weight"], f"{where}.weight", 0)
            branches.append(Branch(weight, self.node(branch["node"], f"{where}.node", depth)))
        if not sum(b.weight for b in branches) > 0:
            raise GraphError(f"{path}.branches", "weights must not all be zero")
        sticky_by = self.text(doc.get("sticky_by", "id"), f"{path}.sticky_by")
        salt = doc.get("salt")
        salt = None if salt is None else self.text(salt, f"{path}.salt")
        return SplitNode(tuple(branches), sticky_by, salt)

    def _shadow(self, body: Any, path: str, depth: int) -> ShadowNode:
        doc = self.fields(body, path, ("primary", "shadows"), ("percent",))
        primary = self.node(doc["primary"], f"{path}.primary", depth)
        items = self.items(doc["shadows"], f"{path}.shadows")
        shadows = tuple(self.node(s, f"{path}.shadows[{i}]", depth) for i, s in enumerate(items))
        percent = self.number(doc.get("percent", 100.0), f"{path}.percent", 0, 100)
        return ShadowNode(primary, shadows, float(percent))

    # conditions

    def condition(self, obj: Any, path: str, outputs: bool, depth: int) -> Condition:
        if depth > MAX_DEPTH:
            raise GraphError(path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(obj, Mapping) and ("all" in obj or "any" in obj):
            key = "all" if "all" in obj else "any"
            doc = self.fields(obj, path, (key,))
            items = self.items(doc[key], f"{path}.{key}")
            parts = tuple(
                self.condition(c, f"{path}.{key}[{i}]", outputs, depth + 1)
                for i, c in enumerate(items)
            )
            return AllOf(parts) if key == "all" else AnyOf(parts)
        if isinstance(obj, Mapping) and "not" in obj:
            doc = self.fields(obj, path, ("not",))
            return Not(self.condition(doc["not"], f"{path}.not", outputs, depth + 1))
        if not isinstance(obj, Mapping) or ("feature" in obj) == ("output" in obj):
            raise GraphError(path, "expected a mapping with one of feature, output, all, any, not")
        target: Literal["feature", "output"] = "feature" if "feature" in obj else "output"
        if target == "output" and not outputs:
            raise GraphError(
                f"{path}.output", "only a rule can test an output: a switch tests features"
            )
        ops = [key for key in obj if key != target]
        if len(ops) != 1 or ops[0] not in OPS:
            raise GraphError(
                path,
                f"expected exactly one operator among {', '.join(OPS)} (got {', '.join(map(repr, ops)) or 'none'})",
            )
        op = cast(Op, ops[0])
        name = self.text(obj[target], f"{path}.{target}")
        if (
            target == "output"
            and name != "prediction"
            and not (name.startswith("proba.") and len(name) > 6)
        ):
            raise GraphError(
                f"{path}.output", f'expected "prediction" or "proba.<class>", got {name!r}'
            )
        return Comparison(target, name, op, self.operand(op, obj[op], f"{path}.{op}"))

    def operand(self, op: Op, value: Any, path: str) -> Any:
        if op in ORDER_OPS:
            return self.number(value, path, -math.inf)
        if op == "is_missing":
            if not isinstance(value, bool):
                raise GraphError(path, f"expected true or false, got {_kind(value)}")
            return value
        if op == "in":
            values = self.items(value, path)
            for i, item in enumerate(values):
                if not _is_scalar(item):
                    raise GraphError(
                        f"{path}[{i}]", f"expected a string, number or boolean, got {_kind(item)}"
                    )
            if any(isinstance(v, str) for v in values):
                flag = next((i for i, v in enumerate(values) if isinstance(v, bool)), None)
                if flag is not None:
                    raise GraphError(
                        f"{path}[{flag}]",
                        f"a boolean ({values[flag]!r}) among strings: YAML reads an unquoted "
                        'no/yes/off/on as a boolean, quote it ("NO")',
                    )
            return tuple(values)
        if not _is_scalar(value):
            raise GraphError(
                path,
                f"expected a string, number or boolean, got {_kind(value)} (use is_missing for null)",
            )
        return value


def parse_graph(obj: Mapping[str, Any], known_models: Collection[str] | None = None) -> GraphSpec:
    """Validate a graph document (already decoded from YAML or JSON) and build its `GraphSpec`.

    ``known_models``, when given, are the only model names the graph may use. Raises
    `GraphError` naming the first problem's path (``root.switch.cases[0].when.feature``).
    """
    return Parser(known_models).graph(obj)

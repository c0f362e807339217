"""Serving graphs over the Open Inference Protocol v2 (`serving.v2`): what v2 reads of the
graph service, a graph's metadata, and a ``/v1/graphs`` answer as output tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

import orjson

from learners.predictor import ServedModel
from schemas.graphs import GraphSpec
from serving.v2_tensors import (
    JSON_INPUT,
    PROBA_PREFIX,
    known_classes,
    label_datatype,
    label_text,
    output_tensors,
    select_outputs,
)


class ServedGraphLike(Protocol):
    """What v2 reads of a served graph (`stream.store.graph_follower.ServedGraph`)."""

    @property
    def version(self) -> int: ...

    @property
    def spec(self) -> GraphSpec: ...


class GraphSource(Protocol):
    def get(self, name: str) -> ServedGraphLike | None: ...


class GraphBackend(Protocol):
    """What v2 uses of the graph service (`serving.graph_service.GraphService`): its follower,
    the answer of ``/v1/graphs/{name}/predict`` to a batch of parsed rows, and running that
    answer's shadows."""

    @property
    def follower(self) -> GraphSource: ...

    def answer_rows(
        self, name: str, rows: list[dict[str, Any]], request_id: str | None = None
    ) -> tuple[int, dict[str, Any], Any]: ...

    def run_later(self, job: Any) -> None: ...


GRAPH_PLATFORM: Final = "riverstream-graph"
GRAPH_OUTPUTS: Final = ("decided_by", "decision", "reason", "path", "versions", "samples_learned")
"""A graph answer's ``BYTES`` outputs: ``versions`` and ``samples_learned`` (JSON objects by
member) name the state of every member that answered, as ``/v1/graphs`` does (a member may be
served by a live update continuing its version)."""


def graph_metadata(
    name: str, graph: ServedGraphLike, models: Mapping[str, ServedModel]
) -> dict[str, Any]:
    """The ``GET /v2/models/{graph}`` answer: outputs as the members loaded here suggest."""
    members = [models[m] for m in graph.spec.model_names() if m in models]
    kinds = {m.kind for m in members}
    if kinds == {"classifier"}:
        classes = {label_text(c): c for m in members for c in known_classes(m)}
        ordered = [classes[t] for t in sorted(classes)]
        outputs = [{"name": "prediction", "datatype": label_datatype(ordered), "shape": [-1]}]
        outputs += [
            {"name": PROBA_PREFIX + label_text(c), "datatype": "FP64", "shape": [-1]}
            for c in ordered
        ]
    else:
        datatype = "FP64" if kinds and "classifier" not in kinds else "BYTES"
        outputs = [{"name": "prediction", "datatype": datatype, "shape": [-1]}]
    outputs += [{"name": o, "datatype": "BYTES", "shape": [-1]} for o in GRAPH_OUTPUTS]
    return {
        "name": name,
        "versions": [str(graph.version)],
        "platform": GRAPH_PLATFORM,
        "inputs": [{"name": JSON_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
    }


def v1_problems(detail: Any) -> str:
    """``/v1``'s error detail (a message, or a list of ``{"loc", "msg", "type"}``) as text."""
    if not isinstance(detail, list):
        return str(detail)
    return "; ".join(
        f"{'.'.join(str(p) for p in d.get('loc', [])[1:]) or 'body'}: {d.get('msg')}"
        for d in detail
    )


def _graph_cells(answer: dict[str, Any]) -> tuple[str, ...]:
    """One answer's BYTES outputs (`GRAPH_OUTPUTS`, in that order) as text."""
    return (
        label_text(answer["decided_by"]),
        label_text(answer["decision"]),
        label_text(answer["reason"]),
        orjson.dumps(list(answer["path"])).decode(),
        orjson.dumps(answer["versions"]).decode(),
        orjson.dumps(answer.get("samples_learned", {})).decode(),
    )


def graph_outputs(content: dict[str, Any], requested: list[dict[str, Any]] | None) -> list[Any]:
    """Output tensors of a ``/v1/graphs`` batch answer."""
    answers = content["predictions"]
    columns = (
        zip(*map(_graph_cells, answers), strict=True) if answers else [[]] * len(GRAPH_OUTPUTS)
    )
    tensors = output_tensors(
        [a["prediction"] for a in answers],
        [a["probabilities"] for a in answers],
        {name: list(column) for name, column in zip(GRAPH_OUTPUTS, columns, strict=True)},
    )
    return select_outputs(tensors, requested)


_TAIL_PARTS: Final = tuple(
    b',{"name":"%b","datatype":"BYTES","shape":[1],"data":[' % name.encode()
    for name in GRAPH_OUTPUTS
)


def graph_row_tail(answer: dict[str, Any]) -> bytes:
    """The JSON of one answer's BYTES output tensors, each after a comma, as `graph_outputs`
    writes them: `serving.v2_tensors.one_row_answer`'s ``tail`` for a graph's one-row answer
    (from pieces of JSON, as that function does).

    >>> answer = {"decided_by": "root.rules[0]", "decision": "review", "reason": None,
    ...           "path": ["root.rules[0]"], "versions": {"lr": 3}, "samples_learned": {"lr": 30}}
    >>> tensors = orjson.loads(b"[" + graph_row_tail(answer)[1:] + b"]")
    >>> [(t["name"], t["data"]) for t in tensors][:3]
    [('decided_by', ['root.rules[0]']), ('decision', ['review']), ('reason', [''])]
    """
    parts: list[bytes] = []
    for head, cell in zip(_TAIL_PARTS, _graph_cells(answer), strict=True):
        parts += (head, orjson.dumps(cell), b"]}")
    return b"".join(parts)

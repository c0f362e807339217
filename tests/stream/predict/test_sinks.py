"""The answer files of `riverstream score` (`stream.predict.sinks`): Parquet holds the cells of
the CSV sink, a graph's columns included."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from stream.predict.sinks import GRAPH_COLUMNS, CsvSink, ParquetSink, Sink, file_sink


def _graph_rows() -> list[tuple[str, dict[str, Any] | None, bytes]]:
    bodies: list[dict[str, Any]] = [
        {"id": "u1", "target": "fraud", "graph_version": 3, "versions": {"lr": 7},
         "prediction": "review", "probabilities": None, "kind": "classifier",
         "path": ["root.rules.rules[0]"], "decided_by": "root.rules.rules[0]",
         "decision": "review", "reason": "large amount"},
        {"id": "u2", "target": "fraud", "graph_version": 3, "versions": {"lr": 7, "tree": 2},
         "prediction": True, "probabilities": {False: 0.25, True: 0.75}, "kind": "classifier",
         "path": [], "decided_by": "root.rules.over", "decision": None, "reason": None},
    ]  # fmt: skip
    return [(b["id"], b, b"") for b in bodies]


def test_parquet_holds_the_csv_cells_of_a_graph(tmp_path: Path) -> None:
    rows = _graph_rows()
    sinks: list[Sink] = [
        CsvSink(tmp_path / "a.csv", graph=True),
        ParquetSink(tmp_path / "a.parquet", graph=True),
    ]
    for sink in sinks:
        sink.write(rows[:1])
        sink.write([])
        sink.write(rows[1:])  # two row groups
        sink.close()
    with (tmp_path / "a.csv").open(newline="") as handle:
        from_csv = list(csv.DictReader(handle))
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.column_names == list(GRAPH_COLUMNS)
    from_parquet = table.to_pylist()
    assert [r["graph_version"] for r in from_parquet] == [3, 3]
    assert from_parquet[1]["probabilities"] == '{"false":0.25,"true":0.75}'
    assert from_parquet[1]["decision"] == "null"  # JSON text, as in the CSV cell
    assert [{k: str(v) for k, v in r.items()} for r in from_parquet] == from_csv


def test_the_sink_follows_the_suffix(tmp_path: Path) -> None:
    for name, kind in (("o.jsonl", "JsonLinesSink"), ("o.csv", "CsvSink"),
                       ("o.PARQUET", "ParquetSink")):  # fmt: skip
        sink = file_sink(tmp_path / name)
        assert type(sink).__name__ == kind
        sink.close()

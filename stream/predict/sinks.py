"""Where ``riverstream score`` writes its answers: a JSON Lines, CSV or Parquet file, and a
Redis lookup table (`stream.store.lookup`). Rows arrive in input order, a chunk at a time
(`stream.predict.batch.score_rows`), and hold no clock time: a pinned version gives the same
bytes every run.

- JSON Lines: one answer per line, encoded as the API encodes it.
- CSV and Parquet: the columns ``id, target, versions, prediction, probabilities, decided_by``
  (a graph's: ``id, target, graph_version, versions, prediction, probabilities, kind, path,
  decided_by, decision, reason``); the cells of `JSON_CELLS` hold JSON text (a prediction may
  be a class of any type, a number or null), the others their value. Parquet's columns are
  strings but ``graph_version`` (int64). Parquet needs pyarrow (`stream.kafka.parquet`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any, Protocol, cast

from schemas.errors import RiverstreamError
from stream.kafka.parquet import require_pyarrow
from stream.predict.answer import encode_value
from stream.store.lookup import TableWriter

Scored = list[tuple[str, dict[str, Any] | None, bytes]]
"""``(id, answer fields or None, answer JSON)`` of consecutive scored rows."""

COLUMNS = ("id", "target", "versions", "prediction", "probabilities", "decided_by")
GRAPH_COLUMNS = (
    "id", "target", "graph_version", "versions", "prediction", "probabilities", "kind",
    "path", "decided_by", "decision", "reason",
)  # fmt: skip
JSON_CELLS = frozenset(("versions", "prediction", "probabilities", "path", "decision", "reason"))
"""Columns whose cells hold JSON (``decision`` and ``reason`` may be null)."""


class Sink(Protocol):
    needs_body: bool
    """Whether `write` reads the answer fields (else they are not kept: ≈ 1 µs a row)."""

    def write(self, rows: Scored) -> None:
        """Write consecutive scored rows."""
        ...

    def close(self) -> None: ...


def table_rows(rows: Scored, columns: tuple[str, ...]) -> list[list[Any]]:
    """The cells of ``rows`` in ``columns``: JSON text in `JSON_CELLS` (strings included:
    ``"cat"`` is ``"\\"cat\\""``), the value elsewhere.

    >>> table_rows([("7", {"id": "7", "target": "lr", "versions": {"lr": 3}, "prediction": True,
    ...     "probabilities": {True: 0.75, False: 0.25}, "decided_by": "lr"}, b"")], COLUMNS)
    [['7', 'lr', '{"lr":3}', 'true', '{"true":0.75,"false":0.25}', 'lr']]
    >>> versions = {"reg": 2}
    >>> table_rows([(i, {"id": i, "target": "reg", "versions": versions, "prediction": p,
    ...     "probabilities": None, "decided_by": "reg"}, b"") for i, p in (("a", 2.5), ("b", "x"))],
    ...     COLUMNS)
    [['a', 'reg', '{"reg":2}', '2.5', 'null', 'reg'], ['b', 'reg', '{"reg":2}', '"x"', 'null', 'reg']]
    """

    def cell(value: Any) -> str:
        return encode_value(value).decode()

    bodies = [body for _, body, _ in cast("list[tuple[str, dict[str, Any], bytes]]", rows)]
    if columns is not COLUMNS:
        return [[cell(b[c]) if c in JSON_CELLS else b[c] for c in columns] for b in bodies]
    # The commonest, unrolled: a model's rows share one ``versions`` (encoded once while it is
    # the same object) and most predictions are booleans.
    out = []
    versions: Any = None  # a body's versions are a dict, never None
    versions_text = ""
    for b in bodies:
        if b["versions"] is not versions:
            versions = b["versions"]
            versions_text = cell(versions)
        prediction = b["prediction"]
        out.append([
            b["id"], b["target"], versions_text,
            _BOOLEAN_TEXT[prediction] if prediction.__class__ is bool else cell(prediction),
            cell(b["probabilities"]), b["decided_by"],
        ])  # fmt: skip
    return out


_BOOLEAN_TEXT = {True: "true", False: "false"}


class JsonLinesSink:
    needs_body = False

    def __init__(self, path: Path) -> None:
        self._file: IO[bytes] = path.open("wb")

    def write(self, rows: Scored) -> None:
        if rows:  # one join, no per-row concatenation
            self._file.write(b"\n".join([encoded for _, _, encoded in rows]) + b"\n")

    def close(self) -> None:
        self._file.close()


class CsvSink:
    needs_body = True

    def __init__(self, path: Path, *, graph: bool = False) -> None:
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._columns = GRAPH_COLUMNS if graph else COLUMNS
        self._writer.writerow(self._columns)

    def write(self, rows: Scored) -> None:
        self._writer.writerows(table_rows(rows, self._columns))

    def close(self) -> None:
        self._file.close()


class ParquetSink:
    """The CSV sink's columns in a Parquet file, a row group per chunk of rows."""

    needs_body = True

    def __init__(self, path: Path, *, graph: bool = False) -> None:
        pq = require_pyarrow()
        import pyarrow as pa

        self._pa = pa
        self._columns = GRAPH_COLUMNS if graph else COLUMNS
        self._schema = pa.schema(
            [(c, pa.int64() if c == "graph_version" else pa.string()) for c in self._columns]
        )
        self._writer = pq.ParquetWriter(path, self._schema)

    def write(self, rows: Scored) -> None:
        if not rows:
            return
        cells = table_rows(rows, self._columns)
        columns = [[row[i] for row in cells] for i in range(len(self._columns))]
        self._writer.write_table(self._pa.Table.from_arrays(columns, schema=self._schema))

    def close(self) -> None:
        self._writer.close()


class TableSink:
    """Rows into a Redis lookup table (`stream.store.lookup`)."""

    needs_body = False

    def __init__(self, writer: TableWriter) -> None:
        self.writer = writer

    def write(self, rows: Scored) -> None:
        for row_id, _, encoded in rows:
            self.writer.add(row_id, encoded)

    def close(self) -> None:
        pass


def file_sink(path: Path, *, graph: bool = False) -> Sink:
    """The sink for ``path``'s format (by its suffix; a graph's answers with ``graph``)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return JsonLinesSink(path)
    if suffix == ".csv":
        return CsvSink(path, graph=graph)
    if suffix == ".parquet":
        return ParquetSink(path, graph=graph)
    raise RiverstreamError(
        f"{path}: unknown output format {suffix!r}; use .jsonl, .csv or .parquet"
    )

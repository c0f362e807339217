"""Parquet files of events, read for ``riverstream publish`` and ``riverstream score`` as CSV
files are (`stream.kafka.publish.read_rows` turns each event into JSON and checks it): one
event per row, the ``id`` and ``time`` columns (and ``label`` for labels; ``id`` and ``target``
for prediction requests) the event's, every other column a feature of a feature event or a
request.

Parquet is typed, so cells keep their types (integers, floats, text, booleans, nulls), with two
readings that files written by dataframes need: an integer ``id`` becomes its text (event ids
are strings), and a float NaN is a missing value (``null``), as pandas writes one. Values JSON
cannot hold (bytes, decimals...) make the row a rejection, with its row number.

pyarrow is an optional dependency: ``pip install 'riverstream[parquet]'``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from schemas.errors import RiverstreamError

BATCH_ROWS = 4096
"""Rows read from the file at a time."""


def require_pyarrow() -> ModuleType:
    """``pyarrow.parquet``, or an error saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RiverstreamError(
            "Parquet needs pyarrow: pip install 'riverstream[parquet]' (or use JSON Lines or CSV)"
        ) from None
    return pq


def _missing_nan(value: Any) -> Any:
    return None if value.__class__ is float and math.isnan(value) else value


def parquet_events(path: Path, own: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, the event as a dict)`` of each row of the file at ``path``; ``own``
    are the event's own columns (`stream.kafka.publish.OWN_COLUMNS`): ``id``, ``time`` and
    ``label`` for labels, otherwise every other column is a feature."""
    pq = require_pyarrow()
    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and OSError for what is not Parquet
        raise RiverstreamError(f"{path}: not a Parquet file ({exc})") from None
    rest = [name for name in own if name != "id"]
    features = None if "label" in own else [n for n in file.schema_arrow.names if n not in own]
    number = 0
    for batch in file.iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            number += 1
            event_id = row.get("id")
            event: dict[str, Any] = {
                "id": str(event_id) if event_id.__class__ is int else event_id,
            }
            for name in rest:
                event[name] = _missing_nan(row.get(name))
            if features is not None:
                event["features"] = {name: _missing_nan(row[name]) for name in features}
            yield number, event

"""Parquet files of events (`stream.kafka.parquet`), read through `read_rows` as `publish` and
`score` read them."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.errors import RiverstreamError, SchemaError
from stream.kafka.parquet import require_pyarrow
from stream.kafka.publish import read_rows


def test_labels_keep_their_types_and_extra_columns_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    pq.write_table(
        pa.table({"id": [5, 6], "time": [1.5, float("nan")], "label": [True, False],
                  "note": ["a", "b"]}),
        path,
    )  # fmt: skip
    rows = list(read_rows(path, "labels"))
    assert [(n, orjson.loads(raw)) for n, raw in rows if isinstance(raw, bytes)] == [
        (1, {"id": "5", "time": 1.5, "label": True}),
        (2, {"id": "6", "time": None, "label": False}),  # NaN: missing (the codec refuses it)
    ]


def test_features_are_every_other_column_and_bad_values_are_rejections(tmp_path: Path) -> None:
    path = tmp_path / "features.parquet"
    pq.write_table(
        pa.table({"time": [1, 2, 3], "id": ["a", "b", "c"], "x": [1.5, None, float("nan")],
                  "n": [1, 2, 3], "c": ["k", "k", "k"], "raw": [None, b"\x00", None]}),
        path,
    )  # fmt: skip
    rows = list(read_rows(path, "features"))
    assert [n for n, _ in rows] == [1, 2, 3]
    assert orjson.loads(rows[0][1]) == {  # type: ignore[arg-type]
        "id": "a",
        "time": 1,
        "features": {"x": 1.5, "n": 1, "c": "k", "raw": None},
    }
    error = rows[1][1]
    assert isinstance(error, SchemaError) and error.reason == "not_json"
    assert orjson.loads(rows[2][1])["features"]["x"] is None  # type: ignore[arg-type]


def test_what_is_not_parquet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    path.write_text("id,time\n")
    with pytest.raises(RiverstreamError, match="not a Parquet file"):
        list(read_rows(path, "features"))


def test_without_pyarrow_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if absent
    with pytest.raises(RiverstreamError, match=r"pip install 'riverstream\[parquet\]'"):
        require_pyarrow()

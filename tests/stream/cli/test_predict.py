"""`riverstream score` (stream/cli/predict.py) refuses a run that would only damage: an ``--out``
that is its input file, a reversed time range, and a run that scores no row never replaces the
served lookup table with an empty one. Real CLI processes, the real Redis and Kafka."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.events import FeatureEvent
from schemas.settings import Settings
from stream.store.lookup import LookupTables
from stream.store.snapshots import SnapshotStore
from tests.support.pipeline import publish
from tests.support.scoring import publish_clf, run_score

pytestmark = pytest.mark.integration


def events_file(path: Path, inputs: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(
        orjson.dumps({"id": f"e{i}", "time": i, "features": x}) + b"\n"
        for i, x in enumerate(inputs)
    ))  # fmt: skip
    return path


def test_an_out_that_is_the_input_is_refused_before_anything_is_opened(
    kit: Any, store: SnapshotStore, settings: Settings, tmp_path: Path
) -> None:
    _version, inputs = publish_clf(kit, store, settings)
    source = events_file(tmp_path / "in.jsonl", inputs)
    before = source.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.jsonl").hardlink_to(source)
    for out in (source, tmp_path / "sub" / ".." / "in.jsonl", tmp_path / "link.jsonl"):
        code, report, text = run_score(settings, ["clf", str(source), "--out", str(out)],
                                       tmp_path / "log")  # fmt: skip
        assert code == 2 and report is None, text
        assert "is the input file" in " ".join(text.split()), text
        assert source.read_bytes() == before  # not emptied


def test_a_reversed_time_range_is_refused(
    kit: Any, store: SnapshotStore, settings: Settings, tmp_path: Path
) -> None:
    _version, inputs = publish_clf(kit, store, settings)
    assert publish(settings, [FeatureEvent(f"k{i}", float(i), inputs[i]) for i in range(5)]).sent
    spec = f"kafka:{settings.topic_features}:4-1"
    code, report, text = run_score(settings, ["clf", spec, "--out", str(tmp_path / "o.jsonl")],
                                   tmp_path / "log")  # fmt: skip
    assert code == 2 and report is None, text
    assert "FROM is after TO" in text, text


def test_a_run_that_scores_nothing_keeps_the_served_table(
    kit: Any, store: SnapshotStore, settings: Settings, tmp_path: Path
) -> None:
    """An empty input, every row rejected, every event outside the range: no table is published
    (exit status 2, a message), the one served before still answers."""
    _version, inputs = publish_clf(kit, store, settings)
    assert publish(settings, [FeatureEvent(f"k{i}", float(i), inputs[i]) for i in range(5)]).sent
    into = ["--into", "redis", "--ttl", "100"]
    code, report, text = run_score(
        settings, ["clf", str(events_file(tmp_path / "in.jsonl", inputs)), *into], tmp_path / "log"
    )
    assert code == 0 and report is not None, text
    served = report["lookup_table"]["table"]
    tables = LookupTables(store.client, store.keys)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    rejected = tmp_path / "bad.jsonl"
    rejected.write_bytes(b'{"id": "b1", "time": 1, "features": {\n{"id": "b2"}\n')
    for source, rejections in (
        (str(empty), 0),
        (str(rejected), 2),
        (f"kafka:{settings.topic_features}:100-200", 0),
    ):
        code, report, text = run_score(settings, ["clf", source, *into], tmp_path / "log")
        assert code == 2, (source, text)
        assert report is not None and report["lookup_table"] is None, text
        assert report["scored"] == 0 and report["rejected"] == rejections, text
        flat = " ".join(text.split())  # the console wraps long lines
        assert "no row scored" in flat and "no lookup table published" in flat, text
        current = tables.current("clf")
        assert current is not None and current.table == served, source
        assert current.rows == len(inputs)
        assert tables.answer("clf", "e0") is not None

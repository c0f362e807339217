"""Publishing against the real broker: events read back intact, labels beside their features."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson

from schemas.settings import Settings
from stream.kafka.client import read_all
from stream.kafka.publish import Publisher, read_rows
from tests.conftest import settings_env


def _features(n: int) -> list[dict[str, object]]:
    return [
        {"id": f"e{i}", "time": i, "features": {"x": i * 0.5, "c": f"k{i % 3}", "b": i % 2 == 0}}
        for i in range(n)
    ]


def test_events_read_back_intact_and_labels_share_partition(
    settings: Settings, tmp_path: Path
) -> None:
    features = _features(60)
    labels = [{"id": f"e{i}", "time": i + 5, "label": i % 2 == 0} for i in range(60)]
    feature_file = tmp_path / "features.jsonl"
    feature_file.write_bytes(b"\n".join(orjson.dumps(e) for e in features))
    label_file = tmp_path / "labels.csv"
    label_file.write_text(
        "id,time,label\n" + "".join(f"e{i},{i + 5},{i % 2 == 0}\n" for i in range(60))
    )

    publisher = Publisher(settings)
    try:
        assert publisher.publish_rows(read_rows(feature_file, "features"), "features").sent == 60
        assert publisher.publish_rows(read_rows(label_file, "labels"), "labels").sent == 60
    finally:
        publisher.close()

    assert settings.kafka_bootstrap_servers is not None
    records = read_all(
        settings.kafka_bootstrap_servers, [settings.topic_features, settings.topic_labels]
    )
    by_topic: dict[str, dict[str, tuple[int, dict[str, object]]]] = {}
    for r in records:
        payload = orjson.loads(r.value)
        assert r.key == payload["id"].encode()
        by_topic.setdefault(r.topic, {})[payload["id"]] = (r.partition, payload)
    got_features = by_topic[settings.topic_features]
    got_labels = by_topic[settings.topic_labels]
    assert {k: v[1] for k, v in got_features.items()} == {e["id"]: e for e in features}
    assert {k: v[1] for k, v in got_labels.items()} == {e["id"]: e for e in labels}
    assert len({p for p, _ in got_features.values()}) > 1  # keys spread over partitions
    for event_id, (partition, _) in got_labels.items():
        assert got_features[event_id][0] == partition


def test_cli_reports_bad_rows_with_line_numbers(settings: Settings, tmp_path: Path) -> None:
    good = _features(3)
    lines = [
        orjson.dumps(good[0]),
        b'{"id": "bad-json", ',
        orjson.dumps(good[1]),
        b'{"id": "no-time", "features": {}}',
        b'{"id": "inf", "time": 1, "features": {"x": 1e999}}',
        orjson.dumps(good[2]),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines))
    result = subprocess.run(
        [sys.executable, "-m", "stream", "publish", "features", str(path)],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["sent"] == 3
    assert report["rejected"] == 3
    assert [r["line"] for r in report["rejections"]] == [2, 4, 5]
    reasons = [r["reason"] for r in report["rejections"]]
    assert reasons[0].startswith("bad_json")
    assert reasons[1].startswith("schema at time: Object missing required field")
    assert reasons[2].startswith("not_finite")
    assert "line 2: rejected" in result.stderr
    assert settings.kafka_bootstrap_servers is not None
    records = read_all(settings.kafka_bootstrap_servers, [settings.topic_features])
    assert sorted(orjson.loads(r.value)["id"] for r in records) == ["e0", "e1", "e2"]


def test_csv_cell_out_of_float_range_is_reported_not_published_as_null(
    settings: Settings, tmp_path: Path
) -> None:
    """``1e400`` in a CSV cell is infinity: rejected with its line and field, never sent as a
    ``null`` feature (orjson writes infinity as null)."""
    path = tmp_path / "events.csv"
    path.write_text("id,time,x,y\na,1,1.5,2\nb,2,1e400,3\nc,3,,4\n")
    result = subprocess.run(
        [sys.executable, "-m", "stream", "publish", "features", str(path)],
        env=settings_env(settings), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert (report["sent"], report["rejected"]) == (2, 1)
    assert report["rejections"][0]["line"] == 3
    assert report["rejections"][0]["reason"].startswith("not_finite at features.x")
    assert settings.kafka_bootstrap_servers is not None
    records = read_all(settings.kafka_bootstrap_servers, [settings.topic_features])
    sent = {orjson.loads(r.value)["id"]: orjson.loads(r.value)["features"] for r in records}
    assert sent == {"a": {"x": 1.5, "y": 2}, "c": {"x": None, "y": 4}}

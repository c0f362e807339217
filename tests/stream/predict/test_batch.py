"""Batch predicting end to end: `riverstream score` (a real CLI process) over files and a Kafka
topic, its answers compared with the API's for the same version, and the lookup table it
stores in Redis served by ``GET /v1/models/{name}/predictions/{id}``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from river import linear_model, preprocessing

from schemas.events import FeatureEvent
from schemas.settings import Settings
from serving.app import create_app
from stream.kafka.client import EventProducer, create_topics, read_all
from stream.predict.batch import CHUNK, kafka_rows
from stream.store.snapshots import SnapshotStore
from tests.support.pipeline import publish
from tests.support.scoring import publish_clf, run_score

pytestmark = pytest.mark.integration


@pytest.fixture
def clf(
    kit: Any, store: SnapshotStore, predict_settings: Settings
) -> tuple[int, list[dict[str, Any]]]:
    """A classifier published to Redis: its version and inputs it can score."""
    return publish_clf(kit, store, predict_settings)


def score(settings: Settings, args: list[str], log: Path) -> tuple[int, dict[str, Any], str]:
    """Run ``riverstream score ARGS``: exit status, its JSON report, everything it printed."""
    code, report, text = run_score(settings, args, log)
    assert report is not None, text
    return code, report, text


def v1_answers(
    kit: Any, settings: Settings, features: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What ``POST /v1/models/clf/predict`` answers for each of ``features``."""
    with kit.serve_in_thread(create_app(settings)) as api:
        kit.wait_until(lambda: api.get("/readyz").status_code == 200)
        out = []
        for x in features:
            response = api.post("/v1/models/clf/predict", json={"features": x})
            assert response.status_code == 200
            out.append(response.json())
        return out


def assert_equal_to_v1(row: dict[str, Any], v1: dict[str, Any], row_id: str) -> None:
    assert row == {
        "id": row_id,
        "target": "clf",
        "versions": {"clf": v1["version"]},
        "prediction": v1["prediction"],
        "probabilities": v1["probabilities"],
        "decided_by": "clf",
    }


def test_score_answers_equal_the_api_and_bad_rows_are_reported_by_line(
    kit: Any, clf: tuple[int, list[dict[str, Any]]], predict_settings: Settings, tmp_path: Path
) -> None:
    version, inputs = clf
    good: list[dict[str, Any]] = [
        {"id": f"e{i}", "time": i, "features": x} for i, x in enumerate(inputs)
    ]
    lines = [orjson.dumps(e) for e in good]
    bad = {  # line number → reason
        3: (b'{"id": "b1", "time": 1, "features": {', "bad_json"),
        7: (orjson.dumps({"id": "b2", "features": inputs[0]}), "schema"),
        12: (
            orjson.dumps(
                {"id": "b3", "time": 1, "features": {**inputs[0], "empty_server_form_handler": "x"}}
            ),
            "model_input",
        ),
    }
    for line, (raw, _) in sorted(bad.items()):
        lines.insert(line - 1, raw)
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    code, report, text = score(
        predict_settings, ["clf", str(source), "--out", str(out)], tmp_path / "log"
    )
    assert code == 1, text  # rows were not scored
    assert report["scored"] == len(good) and report["rejected"] == len(bad)
    assert report["versions"] == {"clf": version}
    for line, (_, reason) in bad.items():
        assert re.search(rf"^line {line}: not scored: {reason}", text, re.M), (line, text)
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["id"] for r in rows] == [e["id"] for e in good]  # input order, nothing dropped
    for row, event, v1 in zip(rows, good, v1_answers(kit, predict_settings, inputs), strict=True):
        assert_equal_to_v1(row, v1, event["id"])
    assert len({r["prediction"] for r in rows}) == 2


def test_a_pinned_version_gives_byte_identical_output(
    kit: Any, clf: tuple[int, list[dict[str, Any]]], store: SnapshotStore, predict_settings: Settings,
    tmp_path: Path,
) -> None:  # fmt: skip
    version, inputs = clf
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "time", *inputs[0]])
        writer.writeheader()
        for i, x in enumerate(inputs):
            writer.writerow({"id": f"c{i}", "time": i, **x})
    args = ["clf", str(source), "--version", str(version), "--out"]
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    assert score(predict_settings, [*args, str(first)], tmp_path / "log")[0] == 0
    # a newer version is served meanwhile; the pinned run does not change
    newer = preprocessing.StandardScaler() | linear_model.LogisticRegression(l2=1.0)
    newer.learn_one(inputs[0], True)
    kit.publish(store, "clf", newer, "classifier", key=predict_settings.require_snapshot_key())
    assert score(predict_settings, [*args, str(second)], tmp_path / "log")[0] == 0
    assert first.read_bytes() == second.read_bytes()
    unpinned = tmp_path / "c.csv"
    code, report, _ = score(
        predict_settings, ["clf", str(source), "--out", str(unpinned)], tmp_path / "log"
    )
    assert code == 0 and report["versions"] == {"clf": version + 1}
    assert unpinned.read_bytes() != first.read_bytes()
    # the CSV holds the JSON Lines answers: JSON cells, the same rows
    as_jsonl = tmp_path / "a.jsonl"
    assert score(predict_settings, [*args, str(as_jsonl)], tmp_path / "log")[0] == 0
    with first.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    answers = [orjson.loads(line) for line in as_jsonl.read_bytes().splitlines()]
    assert [r["id"] for r in rows] == [a["id"] for a in answers]
    assert [r["id"] for r in rows] == [f"c{i}" for i in range(len(inputs))]
    for row, answer in zip(rows, answers, strict=True):
        assert answer["versions"] == {"clf": version}
        assert {
            "id": row["id"], "target": row["target"], "decided_by": row["decided_by"],
            **{k: json.loads(row[k]) for k in ("versions", "prediction", "probabilities")},
        } == answer  # fmt: skip


def test_worker_processes_give_the_same_bytes_and_the_same_rejections(
    kit: Any, clf: tuple[int, list[dict[str, Any]]], predict_settings: Settings, tmp_path: Path
) -> None:
    """``--workers 2``: chunks answered in two forked processes, written here in input order.
    Several chunks (`CHUNK` rows each), rows not scored in the first and the last (a row the
    reader refuses, one the codec refuses, one the model cannot use): the same files, the
    same report and the same lines about the rejected rows as one process."""
    version, inputs = clf
    n = 2 * CHUNK + 500
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "time", *inputs[0]])
        writer.writeheader()
        for i in range(n):
            writer.writerow({"id": f"r{i}", "time": i, **inputs[i % len(inputs)]})
    lines = source.read_text().splitlines()
    lines[5] = "short,row"  # the reader: not as many cells as the header
    lines[CHUNK + 7] = lines[CHUNK + 7].replace(f",{CHUNK + 6},", ",,", 1)  # no time: the codec
    cells = lines[n - 3].split(",")
    cells[3] = "text"  # a string where the model needs a number
    lines[n - 3] = ",".join(cells)
    source.write_text("\n".join(lines) + "\n")
    outputs: dict[str, list[bytes]] = {}
    reports = []
    for workers in ("1", "2"):
        out = [tmp_path / f"w{workers}.{suffix}" for suffix in ("jsonl", "csv", "parquet")]
        for path in out:
            code, report, text = score(
                predict_settings,
                ["clf", str(source), "--version", str(version), "--out", str(path),
                 "--workers", workers],
                tmp_path / "log",
            )  # fmt: skip
            assert code == 1, text
            report.pop("seconds"), report.pop("rows_per_second")
            assert report.pop("workers") == int(workers)
            reports.append((report, sorted(re.findall(r"^line \d+: not scored: .*$", text, re.M))))
        outputs[workers] = [path.read_bytes() for path in out]
    assert outputs["1"] == outputs["2"]
    assert all(r == reports[0] for r in reports), reports
    report, rejected = reports[0]
    assert report["scored"] == n - 3 and report["rejected"] == 3
    assert [line.split(":")[0] for line in rejected] == [
        f"line {CHUNK + 8}",
        f"line {n - 2}",
        "line 6",
    ]  # sorted as text here; the command lists them in input order


def test_score_a_kafka_topic_in_an_event_time_range(
    clf: tuple[int, list[dict[str, Any]]], predict_settings: Settings, tmp_path: Path
) -> None:
    _version, inputs = clf
    events = [FeatureEvent(f"k{i}", float(i), inputs[i % len(inputs)]) for i in range(60)]
    assert publish(predict_settings, events).sent == len(events)
    assert predict_settings.kafka_bootstrap_servers
    producer = EventProducer(predict_settings.kafka_bootstrap_servers)
    producer.send(predict_settings.topic_features, b"bad", b"not json", partition=1)
    producer.flush()
    producer.close()
    out = tmp_path / "out.jsonl"
    spec = f"kafka:{predict_settings.topic_features}:10-39"
    code, report, text = score(predict_settings, ["clf", spec, "--out", str(out)], tmp_path / "log")
    assert code == 1, text
    assert report["scored"] == 30 and report["rejected"] == 1 and report["outside_range"] == 30
    records = read_all(predict_settings.kafka_bootstrap_servers, [predict_settings.topic_features])
    bad = next(r for r in records if r.key == b"bad")
    assert f"partition 1 offset {bad.offset}: not scored: bad_json" in text
    expected = [  # partition by partition, in offset order
        orjson.loads(r.value)["id"]
        for r in sorted(records, key=lambda r: (r.partition, r.offset))
        if r.key != b"bad" and 10 <= orjson.loads(r.value)["time"] <= 39
    ]
    assert [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()] == expected


def test_a_kafka_input_is_the_topic_as_it_stands_at_the_start(
    predict_settings: Settings,
) -> None:
    """Every partition's end is read before the first row: a message written to a later
    partition while the first is read is not part of the run (the README's promise; before,
    each partition's end was read when the run reached it)."""
    s = predict_settings
    assert s.kafka_bootstrap_servers
    create_topics(s.kafka_bootstrap_servers, s.topics())
    producer = EventProducer(s.kafka_bootstrap_servers)
    for partition in (0, 1):
        producer.send(s.topic_features, b"k", b"before %d" % partition, partition=partition)
    producer.flush()
    rows = kafka_rows(s.kafka_bootstrap_servers, s.topic_features)
    first = next(rows)  # partition 0 is being read
    producer.send(s.topic_features, b"k", b"meanwhile", partition=1)
    producer.flush()
    producer.close()
    values = [first[1], *(value for _, value in rows)]
    assert values == [b"before 0", b"before 1"]


def test_the_lookup_table_serves_the_stored_answers(
    kit: Any, clf: tuple[int, list[dict[str, Any]]], store: SnapshotStore, predict_settings: Settings,
    tmp_path: Path,
) -> None:  # fmt: skip
    version, inputs = clf
    source = tmp_path / "in.jsonl"
    rows = [orjson.dumps({"id": f"u/{i}", "time": i, "features": x}) for i, x in enumerate(inputs)]
    source.write_bytes(b"\n".join(rows) + b"\n")
    out = tmp_path / "out.jsonl"
    args = ["clf", str(source), "--into", "redis", "--ttl", "100", "--out", str(out)]
    code, report, text = score(predict_settings, args, tmp_path / "log")
    assert code == 0, text
    table = report["lookup_table"]
    assert table["rows"] == len(inputs) and table["ttl_seconds"] == 100
    stored = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    pointer = store.keys.lookup("clf")
    assert 0 < store.client.pttl(pointer) <= 100_000
    assert 0 < store.client.pttl(store.keys.lookup_table("clf", table["table"])) <= 100_000
    with kit.serve_in_thread(create_app(predict_settings)) as api:
        for row in stored:
            response = api.get(f"/v1/models/clf/predictions/{row['id']}")  # ids hold a '/'
            assert response.status_code == 200
            assert response.json() == {
                **row, "table": table["table"], "computed_at": table["computed_at"],
            }  # fmt: skip
            assert row["versions"] == {"clf": version}
        assert api.get("/v1/models/clf/predictions/nope").status_code == 404
        assert api.get("/v1/models/other/predictions/u/0").status_code == 404
        # a new run replaces the table as a whole: ids it does not hold are gone
        source.write_bytes(orjson.dumps({"id": "u/0", "time": 0, "features": inputs[1]}) + b"\n")
        code, report, text = score(predict_settings, args[:-2], tmp_path / "log")
        assert code == 0, text
        assert report["lookup_table"]["table"] > table["table"]
        again = api.get("/v1/models/clf/predictions/u/0").json()
        assert again["table"] == report["lookup_table"]["table"]
        assert again["prediction"] == stored[1]["prediction"]
        assert again["probabilities"] == stored[1]["probabilities"]
        assert api.get("/v1/models/clf/predictions/u/1").status_code == 404
    # the replaced table expires after a short grace
    assert 0 < store.client.ttl(store.keys.lookup_table("clf", table["table"])) <= 60


def test_parquet_in_and_out_hold_the_json_lines_answers(
    kit: Any, clf: tuple[int, list[dict[str, Any]]], predict_settings: Settings, tmp_path: Path
) -> None:
    """A Parquet file of feature events is scored as the same events in JSON Lines are (typed
    cells kept, an integer id read as text, a NaN as a missing value), rows JSON cannot hold are
    reported by row number, and the Parquet output holds the CSV sink's cells, the same bytes
    on every run of a pinned version."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    version, inputs = clf
    names = list(inputs[0])
    rows = [{"id": i, "time": float(i), **x} for i, x in enumerate(inputs)]
    rows[1][names[0]] = float("nan")  # pandas' missing value
    columns: dict[str, Any] = {k: [r[k] for r in rows] for k in ("id", "time", *names)}
    columns["blob"] = [None] * len(rows)
    columns["blob"][2] = b"\x00\x01"  # a value JSON cannot hold: row 3 is rejected
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table(columns), source)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(b"".join(
        orjson.dumps({"id": str(i), "time": float(i), "features": {
            **x, names[0]: None if i == 1 else x[names[0]], "blob": None}}) + b"\n"
        for i, x in enumerate(inputs) if i != 2
    ))  # fmt: skip
    pinned = ["--version", str(version)]
    first, second, expected = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "e.jsonl"
    code, report, text = score(
        predict_settings, ["clf", str(source), *pinned, "--out", str(first)], tmp_path / "log"
    )
    assert code == 1 and report["rejected"] == 1 and report["scored"] == len(inputs) - 1, text
    assert re.search(r"line 3: not scored: not_json", text), text
    assert score(predict_settings, ["clf", str(source), *pinned, "--out", str(second)],
                 tmp_path / "log")[0] == 1  # fmt: skip
    assert first.read_bytes() == second.read_bytes()
    assert score(predict_settings, ["clf", str(jsonl), *pinned, "--out", str(expected)],
                 tmp_path / "log")[0] == 0  # fmt: skip
    answers = [orjson.loads(line) for line in expected.read_bytes().splitlines()]
    table = pq.read_table(first)
    assert table.column_names == [
        "id",
        "target",
        "versions",
        "prediction",
        "probabilities",
        "decided_by",
    ]
    got = table.to_pylist()
    assert [r["id"] for r in got] == [str(i) for i in range(len(inputs)) if i != 2]
    for row, answer in zip(got, answers, strict=True):
        assert {
            "id": row["id"], "target": row["target"], "decided_by": row["decided_by"],
            **{k: json.loads(row[k]) for k in ("versions", "prediction", "probabilities")},
        } == answer  # fmt: skip


def test_a_negative_ttl_is_refused_before_anything_is_opened(
    clf: tuple[int, list[dict[str, Any]]], store: SnapshotStore, predict_settings: Settings,
    tmp_path: Path,
) -> None:  # fmt: skip
    """``--ttl -1`` is a bad argument, refused as ``--workers -1`` is (exit status 2, the
    option named), before the input, the output or Redis is opened. Before, the run scored and
    published a table with no expiry (a negative ttl fell to the ``0: no expiry`` branch)."""
    _version, inputs = clf
    source = tmp_path / "in.jsonl"
    source.write_bytes(orjson.dumps({"id": "a", "time": 0, "features": inputs[0]}) + b"\n")
    out = tmp_path / "out.jsonl"
    args = ["clf", str(source), "--into", "redis", "--ttl", "-1", "--out", str(out)]
    code, report, text = run_score(predict_settings, args, tmp_path / "log")
    assert code == 2 and report is None, text
    assert "Invalid value for '--ttl'" in text, text
    assert not out.exists()
    assert store.client.get(store.keys.lookup("clf")) is None
    assert store.client.get(store.keys.lookup_seq) is None  # no table was even numbered

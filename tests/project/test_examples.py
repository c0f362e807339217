"""The files of examples/ stay usable with the commands the README shows them with, offline: the
events and labels read and decode with the codec the learner and `publish` use, the requests with
the prediction worker's, the graph validates and names the models of the README's `learn`
example, and every ``examples/…`` path the README names exists."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from schemas.events import EventCodec, FeatureEvent, LabelEvent, Limits
from schemas.graph_parser import parse_graph
from schemas.predictions import RequestCodec
from stream.cli.graphs import load_document
from stream.cli.main import app
from stream.kafka.publish import read_rows

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
README = (ROOT / "README.md").read_text()
CODEC = EventCodec(Limits())


def features(path: Path) -> list[FeatureEvent]:
    rows = list(read_rows(path, "features"))
    assert all(isinstance(raw, bytes) for _, raw in rows), rows
    return [CODEC.decode_feature(raw) for _, raw in rows if isinstance(raw, bytes)]


def learned_models() -> set[str]:
    """The model names of the README's first ``riverstream learn --model NAME=SPEC ...`` line
    (in *Using it*, beside the commands that use the examples)."""
    line = re.findall(r"^riverstream learn (.*)$", README, re.M)[0]
    return set(re.findall(r"--model (\w+)=", line))


def test_events_and_labels_decode_and_match() -> None:
    events = features(EXAMPLES / "events.jsonl")
    rows = list(read_rows(EXAMPLES / "labels.csv", "labels"))
    labels = [CODEC.decode_label(raw) for _, raw in rows if isinstance(raw, bytes)]
    assert len(labels) == len(rows) and 24 <= len(events) == len(labels)
    assert len({e.id for e in events}) == len(events)
    times = {e.id: e.time for e in events}
    assert {label.id for label in labels} == set(times)
    assert all(isinstance(label, LabelEvent) and label.time >= times[label.id] for label in labels)
    assert {label.label for label in labels} == {True, False}  # a classifier sees both classes
    assert all(e.features for e in events)


def test_the_parquet_file_holds_the_same_events() -> None:
    # pyarrow: a dev dependency (`riverstream[parquet]` for users), never skipped
    parquet = features(EXAMPLES / "events.parquet")
    assert parquet == features(EXAMPLES / "events.jsonl")


def test_requests_decode_and_ask_the_example_targets() -> None:
    codec = RequestCodec(Limits())
    rows = list(read_rows(EXAMPLES / "requests.jsonl", "requests"))
    requests = [codec.decode(raw) for _, raw in rows if isinstance(raw, bytes)]
    assert len(requests) == len(rows) > 0
    graph = parse_graph(load_document(EXAMPLES / "fraud.yaml"))
    assert {r.target for r in requests} == learned_models() | {graph.name}


def test_the_graph_validates_offline_over_the_learned_models() -> None:
    nowhere = {"RIVERSTREAM_REDIS_URL": "redis://127.0.0.1:9/0"}  # validate never connects
    result = CliRunner().invoke(
        app, ["graphs", "validate", str(EXAMPLES / "fraud.yaml")], env=nowhere
    )
    assert result.exit_code == 0, result.output
    graph = parse_graph(load_document(EXAMPLES / "fraud.yaml"))
    assert set(graph.model_names()) == learned_models() == {"lr", "tree"}
    # its rule reads a feature the example events have
    first = features(EXAMPLES / "events.jsonl")[0]
    found = re.search(r"feature: (\w+)", (EXAMPLES / "fraud.yaml").read_text())
    assert found is not None
    assert found[1] in first.features


def test_the_readme_names_only_example_files_that_exist() -> None:
    named = set(re.findall(r"\bexamples/[\w.-]+", README))
    assert {"examples/events.jsonl", "examples/labels.csv", "examples/fraud.yaml"} <= named
    assert [name for name in sorted(named) if not (ROOT / name).is_file()] == []

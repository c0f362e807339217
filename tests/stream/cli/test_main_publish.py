"""`riverstream publish`: its help names every format it reads, and `publish requests` writes
asynchronous prediction requests to the real requests topic as `predict-worker` reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas.events import Limits
from schemas.predictions import RequestCodec
from schemas.settings import Settings
from stream.cli.main import app
from stream.kafka.client import read_all
from tests.conftest import settings_env


@pytest.mark.parametrize("command", [[], ["features"], ["labels"], ["requests"]])
def test_the_help_names_parquet(command: list[str]) -> None:
    result = CliRunner().invoke(app, ["publish", *command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Parquet" in result.output or ".parquet" in result.output, result.output


@pytest.mark.integration
def test_requests_reach_the_requests_topic(settings: Settings, tmp_path: Path) -> None:
    """JSON Lines and CSV, keyed by id, validated by the worker's codec (a bad target is a
    rejection with its line, not a message); nothing goes to the feature topic."""
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text(
        '{"id": "r1", "target": "lr", "features": {"x": 1.5, "c": "fr"}}\n'
        '{"id": "r2", "target": "no/such", "features": {}}\n'
        '{"id": "r3", "target": "fraud", "features": {"amount": 120.5}}\n'
    )
    csv = tmp_path / "requests.csv"
    csv.write_text("id,target,x,zip\nr4,lr,2.5,01234\n")
    runner, env = CliRunner(), settings_env(settings)
    result = runner.invoke(app, ["publish", "requests", str(jsonl)], env=env)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["sent"], report["rejected"]) == (2, 1)
    assert report["rejections"][0]["line"] == 2
    assert report["rejections"][0]["reason"].startswith("bad_target")
    result = runner.invoke(app, ["publish", "requests", str(csv)], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sent"] == 1

    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap is not None
    records = read_all(bootstrap, [settings.topic_requests])
    codec = RequestCodec(Limits())
    got = {}
    for record in records:
        request = codec.decode(record.value)
        assert record.key == request.id.encode()
        got[request.id] = (request.target, request.features)
    assert got == {
        "r1": ("lr", {"x": 1.5, "c": "fr"}),
        "r3": ("fraud", {"amount": 120.5}),
        "r4": ("lr", {"x": 2.5, "zip": "01234"}),  # a CSV cell reads as JSON would have it
    }
    assert read_all(bootstrap, [settings.topic_features]) == []

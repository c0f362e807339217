"""`riverstream graphs …` through typer's runner, with the test's settings in the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from schemas.settings import Settings
from stream.cli.graphs import graphs_app
from stream.cli.main import app
from stream.store.graphs import GraphStore
from stream.store.snapshots import SnapshotStore
from tests.conftest import settings_env
from tests.support.registry import dump_all, write_version

pytestmark = pytest.mark.integration

FRAUD_YAML = """\
name: fraud
description: the issue's example
root:
  rules:
    rules:                      # business logic, in order, the first match decides
      - when: {feature: amount, gt: 10000}
        then: {decision: review, reason: large amount}
      - when: {output: proba.true, lt: 0.2}
        then: {decision: allow}
    over:
      ensemble:
        combine: weighted
        weights: by_metric
        members:
          - model: lr
          - model: tree
"""


@pytest.fixture
def run(settings: Settings):
    runner = CliRunner()
    env = settings_env(settings)

    def invoke(*args: str, env: dict[str, str] = env) -> Any:
        return runner.invoke(graphs_app, list(args), env=env)

    return invoke


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "fraud.yaml").write_text(FRAUD_YAML)
    doc = {"name": "fraud", "root": {"ensemble": {"members": ["lr", "tree"], "combine": "vote"}}}
    (tmp_path / "vote.json").write_text(json.dumps(doc))
    (tmp_path / "typo.yaml").write_text(FRAUD_YAML.replace("model: tree", "model: tre"))
    (tmp_path / "bad.yaml").write_text(FRAUD_YAML.replace("combine: weighted", "combine: median"))
    (tmp_path / "broken.yaml").write_text("name: fraud\nroot: [unclosed\n")
    (tmp_path / "broken.json").write_text('{"name": "fraud",}')
    return tmp_path


def test_the_group_is_registered_on_the_command() -> None:
    result = CliRunner().invoke(app, ["graphs", "--help"])
    assert result.exit_code == 0 and "validate" in result.output and "rollback" in result.output


def test_validate_is_offline_and_names_the_bad_node(run, files: Path) -> None:
    nowhere = {"RIVERSTREAM_REDIS_URL": "redis://127.0.0.1:9/0"}  # validate never connects
    result = run("validate", str(files / "fraud.yaml"), env=nowhere)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "OK: graph fraud: 4 nodes, models lr, tree"
    data = json.loads(run("validate", str(files / "vote.json"), "--json", env=nowhere).stdout)
    assert data == {"ok": True, "graph": "fraud", "nodes": 3, "models": ["lr", "tree"]}
    result = run("validate", str(files / "bad.yaml"), env=nowhere)
    assert result.exit_code == 1
    assert f"error: {files / 'bad.yaml'}: root.rules.over.ensemble.combine: expected one of mean, vote, weighted, got 'median'" in " ".join(result.output.split())  # fmt: skip
    result = run("validate", str(files / "broken.yaml"), env=nowhere)
    assert result.exit_code == 1 and "invalid YAML" in result.output
    result = run("validate", str(files / "broken.json"), env=nowhere)
    assert result.exit_code == 1 and "invalid JSON" in result.output
    assert run("validate", str(files / "missing.yaml"), env=nowhere).exit_code == 2  # usage


def test_apply_list_show_history_rollback_delete(
    run, files: Path, store: SnapshotStore, key: bytes
) -> None:
    write_version(store, key, {"lr": {"Accuracy": 0.8}, "tree": {"Accuracy": 0.7}})
    result = run("apply", str(files / "fraud.yaml"), "--reason", "first", "--by", "alice")
    assert result.exit_code == 0, result.output
    graphs = GraphStore(store.client, store.keys.prefix)
    v1 = graphs.promoted("fraud")
    assert v1 is not None and f"fraud: applied v{v1} (was -)" in result.stdout
    again = run("apply", str(files / "fraud.yaml"), "--json")
    assert json.loads(again.stdout) | {"models": []} == {
        "name": "fraud", "version": v1, "previous": v1, "changed": False, "models": [],
    }  # fmt: skip
    applied = json.loads(run("apply", str(files / "vote.json"), "--json").stdout)
    v2 = applied["version"]
    assert applied["changed"] and applied["previous"] == v1

    assert json.loads(run("list", "--json").stdout) == [
        {"graph": "fraud", "version": v2, "versions": 2, "models": ["lr", "tree"]}
    ]
    assert "fraud" in run("list").stdout
    shown = run("show", "fraud", "--version", str(v1))
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == graphs.document("fraud", v1)  # `apply` takes it back
    assert json.loads(run("show", "fraud", "--json").stdout)["version"] == v2

    result = run("rollback", "fraud", "--reason", "votes are worse", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == v1 and graphs.promoted("fraud") == v1
    history = json.loads(run("history", "fraud", "--json").stdout)
    assert [(h["action"], h["from"], h["to"], h["by"]) for h in history] == [
        ("apply", None, v1, "alice"), ("apply", v1, v2, history[1]["by"]),
        ("rollback", v2, v1, history[2]["by"]),
    ]  # fmt: skip
    assert "votes are worse" in run("history", "fraud").stdout

    result = run("delete", "fraud", "--reason", "retired")
    assert result.exit_code == 0, result.output
    assert graphs.names() == [] and json.loads(run("list", "--json").stdout) == []
    assert run("show", "fraud").exit_code == 2  # unknown graph: exit 2, "error: ..."


def test_apply_refuses_a_missing_model_and_changes_nothing(
    run, files: Path, store: SnapshotStore, key: bytes
) -> None:
    write_version(store, key, {"lr": {"Accuracy": 0.8}, "tree": {"Accuracy": 0.7}})
    before = dump_all(store)
    result = run("apply", str(files / "typo.yaml"))
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert (
        'root.rules.over.ensemble.members[1].model: unknown model "tre" (did you mean "tree"?)'
        in message
    )
    assert dump_all(store) == before
    result = run("rollback", "nope", "--reason", "x")
    assert result.exit_code == 2 and "unknown graph 'nope'" in result.output

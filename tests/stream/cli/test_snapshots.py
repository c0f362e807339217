"""`riverstream snapshots …` through typer's runner, with the test's settings in the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas.settings import Settings
from stream.cli.snapshots import snapshots_app
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotStore
from tests.conftest import settings_env
from tests.support.registry import dump_all, write_version

pytestmark = pytest.mark.integration


@pytest.fixture
def run(settings: Settings):
    runner = CliRunner()
    env = settings_env(settings)

    def invoke(*args: str):
        return runner.invoke(snapshots_app, list(args), env=env)

    return invoke


def test_list_show_promote_history(run, store: SnapshotStore, key: bytes) -> None:
    v1 = write_version(store, key, {"m": {"Accuracy": 0.61}}, samples=7)
    v2 = write_version(store, key)
    result = run("list", "m")
    assert result.exit_code == 0, result.output
    assert "m: 2 versions" in result.output and "serving" in result.output
    rows = json.loads(run("list", "m", "--json").stdout)
    assert [r["version"] for r in rows] == [v1, v2] and rows[1]["serving"]
    shown = json.loads(run("show", "m", str(v1), "--verify", "--json").stdout)
    assert shown["verified"] is True and shown["samples_learned"] == 7
    assert run("show", "m", str(v1), "--verify").exit_code == 0
    result = run("promote", "m", str(v1), "--reason", "good one", "--by", "alice")
    assert result.exit_code == 0, result.output
    history = json.loads(run("history", "m", "--json").stdout)
    assert history[-1] | {"time": 0} == {
        "time": 0, "action": "promote", "from": None, "to": v1, "reason": "good one",
        "by": "alice", "resume": None, "exclude": None, "detail": {},
    }  # fmt: skip
    assert "good one" in run("history", "m").stdout


def test_rollback_pin_policy_prune(run, store: SnapshotStore, key: bytes) -> None:
    vs = [write_version(store, key) for _ in range(5)]
    registry = Registry(store)
    for v in vs[:3]:
        registry.promote("m", v, "")
    result = run("rollback", "m", "--reason", "poisoned", "--resume", "replay",
                 "--exclude", "100-250.5", "--exclude", "-5--1", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["to"] == vs[1] and data["exclude"] == [[100.0, 250.5], [-5.0, -1.0]]
    assert registry.serving_version("m") == vs[1]
    assert run("pin", "m", str(vs[4])).exit_code == 0 and registry.serving_version("m") == vs[4]
    assert run("unpin", "m").exit_code == 0 and registry.serving_version("m") == vs[1]
    assert run("policy", "m", "guarded", "--margin", "0.02").exit_code == 0
    assert json.loads(run("policy", "m", "--json").stdout)["policy"] == "guarded"
    removed = json.loads(run("prune", "m", "--keep-last", "1", "--json").stdout)["removed"]
    assert vs[1] not in removed and vs[4] not in removed and removed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("list", "nope"), "unknown model"),
        (("show", "m", "999"), "no version 999"),
        (("promote", "m", "999"), "no version 999"),
        (("rollback", "m", "--to", "999", "--reason", "x"), "no version 999"),
        (
            (
                "rollback",
                "m",
                "--to",
                "1",
                "--resume",
                "replay",
                "--exclude",
                "9-3",
                "--reason",
                "x",
            ),
            "from must be before",
        ),
        (
            (
                "rollback",
                "m",
                "--to",
                "1",
                "--resume",
                "replay",
                "--exclude",
                "abc",
                "--reason",
                "x",
            ),
            "bad exclude range",
        ),
        (("rollback", "m", "--reason", "x", "--resume", "sideways"), "resume must be"),
        (("unpin", "m"), "not pinned"),
        (("policy", "m", "often"), "policy must be"),
        (("prune", "m", "--keep-last", "0"), "keep-last"),
    ],
)
def test_errors_exit_non_zero_and_change_nothing(
    run, store: SnapshotStore, key: bytes, args: tuple[str, ...], message: str
) -> None:
    write_version(store, key)
    write_version(store, key)
    before = dump_all(store)
    result = run(*args)
    assert result.exit_code != 0
    assert "error:" in result.output and message in result.output
    assert dump_all(store) == before


def test_export_import_and_tampered_import(
    run, store: SnapshotStore, key: bytes, tmp_path: Path
) -> None:
    v1 = write_version(store, key)
    file = tmp_path / "m.rsx"
    assert run("export", "m", str(v1), str(file)).exit_code == 0
    data = file.read_bytes()
    bad = tmp_path / "bad.rsx"
    bad.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    before = dump_all(store)
    result = run("import", str(bad))
    assert result.exit_code != 0 and "signature mismatch" in result.output
    assert dump_all(store) == before
    result = run("import", str(file), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] > v1


def test_snapshot_commands_import_no_river(
    settings: Settings, store: SnapshotStore, key: bytes
) -> None:
    """`snapshots list` and `history` read Redis without importing River or SciPy (≈ 1-2.5 s)."""
    from tests.stream.cli.test_main import heavy_imports

    v = write_version(store, key)
    Registry(store).promote("m", v, "for the history")
    env = settings_env(settings)
    for command in ("list", "history"):
        found = heavy_imports([], ["snapshots", command, "m", "--json"], env=env)
        assert found == {"code": 0, "heavy": []}, command

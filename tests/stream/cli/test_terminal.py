"""Text from outside the code reaches people as it is: rich reads ``[word]`` as markup and drops
it, so errors, rejection reasons, paths and operators' reasons are printed as plain text
(`stream.cli.terminal`). The pyarrow case runs the real entry point (`stream.cli.main.main`) in a
fresh interpreter, against the real Kafka, with pyarrow made unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas.settings import Settings
from stream.cli.main import app
from stream.store.snapshots import SnapshotStore
from tests.conftest import settings_env
from tests.support.registry import write_version

ROOT = Path(__file__).resolve().parents[3]

# ``import pyarrow.parquet`` raises ImportError, as on a machine without the parquet extra
WITHOUT_PYARROW = """
import sys
sys.modules["pyarrow"] = None
from stream.cli.main import main
sys.argv = ["riverstream", *sys.argv[1:]]
main()
"""


def riverstream_without_pyarrow(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PYARROW, *args], cwd=ROOT, env=settings_env(settings),
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


@pytest.mark.integration
def test_the_install_hint_keeps_its_extra(settings: Settings, tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    events.write_bytes(b"PAR1")  # never opened: pyarrow is missing
    result = riverstream_without_pyarrow(settings, "publish", "features", str(events))
    assert result.returncode == 2, result.stderr
    assert "error: Parquet needs pyarrow: pip install 'riverstream[parquet]'" in result.stderr


def test_a_path_with_brackets_is_printed_whole(tmp_path: Path) -> None:
    """The top-level printer (a missing file, found before any service is asked) and the graph
    commands' own (an unreadable document)."""
    missing = tmp_path / "events[parquet].jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "stream", "publish", "features", str(missing)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"error: {missing}: no such file" in result.stderr
    broken = tmp_path / "fraud[v2].yaml"
    broken.write_text("name: fraud\nroot: [unclosed\n")
    invoked = CliRunner().invoke(app, ["graphs", "validate", str(broken)])
    assert invoked.exit_code == 1
    assert f"error: {broken}: invalid YAML" in invoked.output


@pytest.mark.integration
def test_reasons_and_rejections_keep_their_brackets(
    settings: Settings, tmp_path: Path, store: SnapshotStore, key: bytes
) -> None:
    runner, env = CliRunner(), settings_env(settings) | {"COLUMNS": "300"}
    write_version(store, key, {"lr": {"Accuracy": 0.8}})
    graph = tmp_path / "one.yaml"
    graph.write_text("name: one\nroot: {model: lr}\n")
    reason = "[urgent] rules [ticket 12]"
    applied = runner.invoke(app, ["graphs", "apply", str(graph), "--reason", reason], env=env)
    assert applied.exit_code == 0, applied.output
    history = runner.invoke(app, ["graphs", "history", "one"], env=env)
    assert history.exit_code == 0 and reason in history.stdout, history.output
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"id": "a", "target": "[parquet]", "features": {}}\n')
    result = runner.invoke(app, ["publish", "requests", str(requests)], env=env)
    assert result.exit_code == 1
    [rejection] = json.loads(result.stdout)["rejections"]
    assert rejection["reason"].startswith("bad_target at target: '[parquet]' is not a model name")
    assert f"line 1: rejected: {rejection['reason']}" in result.stderr  # as in the report

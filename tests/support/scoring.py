"""`riverstream score` in tests: a classifier published to score with, and the command run as a
real CLI process (its exit status, JSON report and output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.settings import Settings
from stream.store.snapshots import SnapshotStore
from tests.support.pipeline import spawn_cli


def publish_clf(
    kit: Any, store: SnapshotStore, settings: Settings
) -> tuple[int, list[dict[str, Any]]]:
    """A classifier published to Redis as ``clf``: its version and inputs it can score."""
    model, kind, inputs = kit.trained_models()["clf"]
    version = kit.publish(
        store, "clf", kit.state(model, kind), kind, key=settings.require_snapshot_key()
    )
    return version, inputs


def run_score(
    settings: Settings, args: list[str], log: Path, timeout: float = 120
) -> tuple[int, dict[str, Any] | None, str]:
    """Run ``riverstream score ARGS`` to its end: exit status, its JSON report (None when it
    printed none) and everything it printed."""
    proc = spawn_cli(settings, ["score", *args], log)
    code = proc.wait(timeout=timeout)
    text = log.read_text()
    reports = [json.loads(line) for line in text.splitlines() if line.startswith('{"target"')]
    log.unlink()
    return code, reports[-1] if reports else None, text

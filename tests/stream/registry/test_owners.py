"""Handovers (`stream.registry.owners`) on the real Redis: a rollback the previous owner had
not carried out yet goes with the model to its new owner.

Before, it stayed in the previous owner's command list: the new owner never carried it out, and
its first automatic promotion (the promotion hold reads the owner's list only) served a version
that continued from before the rollback, undoing it.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from schemas.settings import Settings
from stream.cli.snapshots import snapshots_app
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotStore
from tests.conftest import settings_env
from tests.support.registry import write_version

pytestmark = pytest.mark.integration


def test_a_pending_rollback_moves_to_the_new_owner(
    settings: Settings, store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1 = write_version(store, key, {"m": {"Accuracy": 0.5}, "n": {"Accuracy": 0.5}})
    write_version(store, key, {"m": {"Accuracy": 0.6}, "n": {"Accuracy": 0.6}})
    rollback = registry.rollback("m", to=v1, resume="skip", reason="bad labels")
    other = registry.rollback("n", to=v1, resume="skip", reason="stays")  # another model's

    result = CliRunner().invoke(
        snapshots_app, ["handover", "m", "--to", "b", "--json"], env=settings_env(settings)
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["moved_commands"] == [rollback.id]
    text = CliRunner().invoke(
        snapshots_app, ["handover", "m", "--to", "c"], env=settings_env(settings)
    )  # moved again, with the model: the output says so
    assert text.exit_code == 0, text.output
    assert f"rollback {rollback.id} of m to v{v1} (skip)" in text.output
    assert "moved to learner 'c'" in text.output

    def pending(learner: str) -> list[tuple[str, str]]:
        raw = store.client.lrange(store.keys.learner_commands(learner), 0, -1)
        return [(c["model"], c["action"]) for c in map(json.loads, raw)]

    assert pending("default") == [("n", "rollback"), ("m", "release")]
    assert pending("b") == [("m", "release")]
    assert pending("c") == [("m", "rollback")]
    assert [c.id for c in registry.pending_commands() if c.model == "n"] == [other.id]
    handovers = [e for e in registry.history("m") if e.action == "handover"]
    assert handovers[0].detail["moved_commands"] == [rollback.id]

    # The promotion hold sees it at the new owner: its next version does not undo the rollback.
    c = SnapshotStore(store.client, store.keys.prefix, key, learner="c")
    v3 = write_version(c, key, {"m": {"Accuracy": 0.9}})
    registry.auto_promote("m", v3, {"Accuracy": 0.9})
    assert registry.serving_version("m") == v1

"""The console's views of the registry (real Redis): what they read."""

from __future__ import annotations

import json

import pytest

from console.state import HISTORY_SHOWN, model_view
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotStore
from tests.support.registry import history_parses, key, registry, store, write_version

__all__ = ["history_parses", "key", "registry", "store"]  # fixtures

pytestmark = pytest.mark.integration


def test_a_model_view_reads_only_the_history_it_shows(
    store: SnapshotStore, registry: Registry, key: bytes, history_parses: list[bytes | str]
) -> None:
    """A page updates at every notification: its history is the newest entries, read and
    parsed alone, not the whole list (up to 10 000 entries)."""
    version = write_version(store, key)
    older = [json.dumps({"time": i, "action": "pin", "to": version}) for i in range(300)]
    store.client.rpush(registry.keys.history("m"), *older)
    registry.promote("m", version, "newest")
    history_parses.clear()
    view = model_view(registry, "m")
    assert len(view["history"]) == HISTORY_SHOWN == len(history_parses)
    assert view["history"][-1]["action"] == "promote"
    assert view["history"][0]["time"] == 300 - HISTORY_SHOWN + 1
    assert [e.action for e in registry.history("m", last=2)] == ["pin", "promote"]
    assert len(registry.history("m")) == 301

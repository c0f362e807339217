"""A broker of one test, to kill and restart without disturbing the rest of the suite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.settings import Settings
from stream.dev.ports import PORTS_FILE
from stream.dev.services import ServiceManager, free_port


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[tuple[ServiceManager, str]]:
    """A broker of this test (started like `riverstream services up`), so that killing it
    leaves the rest of the suite alone: ``(its manager, its address)``."""
    state = tmp_path / "kafka-state"
    manager = ServiceManager(Settings(state_dir=state))
    (state / "kafka").mkdir(parents=True)
    ports = {"broker": free_port(), "controller": free_port()}
    (state / "kafka" / PORTS_FILE).write_text(json.dumps(ports))
    try:
        yield manager, manager.up(("kafka",))["kafka"].address
    finally:
        manager.down(("kafka",), purge=True)

"""The suite's own isolation: settings made without a state directory (`kit.make_settings`, a
plain ``Settings()``), and the processes started with them, use one of the test run, never the
developer's (``~/.local/state/riverstream``). `riverstream serve` started by a test registered
itself with the developer's Prometheus there, and a failing one stayed registered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemas.settings import Settings


def test_settings_without_a_state_dir_use_one_of_the_test_run(
    kit, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = tmp_path_factory.getbasetemp()
    made = kit.make_settings("redis://127.0.0.1:1/0", "prefix")
    assert made.state_dir.is_relative_to(run), made.state_dir
    assert Path(made.to_environment()["RIVERSTREAM_STATE_DIR"]).is_relative_to(run)
    assert Settings().state_dir == made.state_dir
    # a child given this environment without RIVERSTREAM_STATE_DIR defaults to the XDG one
    assert Path(os.environ["XDG_STATE_HOME"]).is_relative_to(run)

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


def test_the_slow_files_are_collected_first_and_still_exist(
    request: pytest.FixtureRequest,
) -> None:
    """`tests.conftest.SLOW_FILES` names files that exist (a renamed one would silently run in
    its usual place again), and a session's tests begin with them, slowest first."""
    from tests.conftest import SLOW_FILES

    root = request.config.rootpath
    assert all((root / name).is_file() for name in SLOW_FILES), SLOW_FILES
    order = [item.path.relative_to(root).as_posix() for item in request.session.items]
    slow = [name for name in order if name in SLOW_FILES]
    assert slow == order[: len(slow)], "the slow files are not collected first"
    firsts = list(dict.fromkeys(slow))
    assert firsts == sorted(firsts, key=lambda name: -SLOW_FILES[name])

"""The local services' state directory is one per user, found from any working directory.

With the old default (``.state`` under the current directory), `riverstream services up` in one
directory and `riverstream publish` in another failed with "no Kafka address". The default is
now ``$XDG_STATE_HOME/riverstream`` or ``~/.local/state/riverstream``; ``RIVERSTREAM_STATE_DIR``
still wins, so a project (or the test suite) may keep its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.settings import Settings
from stream.dev.services import STATE_FILE, stop_pid

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RIVERSTREAM_* or XDG_STATE_HOME variable, HOME in ``tmp_path``, cwd elsewhere."""
    for name in list(os.environ):
        if name.startswith("RIVERSTREAM_") or name == "XDG_STATE_HOME":
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # no .env file is read from the repository
    return home


def test_default_is_under_the_home_directory(clean_env: Path) -> None:
    assert Settings().state_dir == clean_env / ".local" / "state" / "riverstream"


def test_xdg_state_home_is_followed_when_absolute(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert Settings().state_dir == tmp_path / "xdg" / "riverstream"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")  # invalid by the XDG rule: ignored
    assert Settings().state_dir == clean_env / ".local" / "state" / "riverstream"


def test_a_project_may_set_its_own(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RIVERSTREAM_STATE_DIR", str(tmp_path / "project" / ".state"))
    assert Settings().state_dir == tmp_path / "project" / ".state"


@pytest.mark.integration
def test_services_started_in_one_directory_are_found_from_another(tmp_path: Path) -> None:
    """`services up` in one directory, `services status` in another: the same Redis."""
    home = tmp_path / "home"
    first, second = tmp_path / "first", tmp_path / "second"
    for path in (home, first, second):
        path.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERSTREAM_")}
    env.pop("XDG_STATE_HOME", None)
    env |= {"HOME": str(home), "PYTHONPATH": str(ROOT)}
    state = home / ".local" / "state" / "riverstream"

    def riverstream(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stream", *args], cwd=cwd, env=env,
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip

    try:
        up = riverstream(first, "services", "up", "redis")
        assert up.returncode == 0, up.stderr
        status = riverstream(second, "services", "status", "--json")
        assert status.returncode == 0, status.stderr
        found = json.loads(status.stdout)
        recorded = json.loads((state / STATE_FILE).read_text())["redis"]
        assert found["redis_url"] == recorded["url"]
        assert found["services"]["redis"]["pid"] == recorded["pid"]
        assert not (first / ".state").exists() and not (second / ".state").exists()
    finally:
        started = [
            record["pid"]
            for path in (state / STATE_FILE, first / ".state" / STATE_FILE)  # now, and before
            if path.exists()
            for record in json.loads(path.read_text()).values()
        ]
        down = riverstream(second, "services", "down", "redis", "--purge")
        for pid in started:  # whatever `down` did not find, stopped by pid
            stop_pid(pid, "redis-server")
    assert down.returncode == 0, down.stderr

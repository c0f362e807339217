"""The README is the front door: its configuration table and commands must stay true."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from schemas.settings import Settings
from stream.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PER_USER = {"cache_dir", "state_dir"}  # defaults under the user's home, not one fixed value


def test_every_setting_is_documented_with_its_default() -> None:
    documented = dict(re.findall(r"^\| `RIVERSTREAM_([A-Z0-9_]+)` \| `([^`]*)` \|", README, re.M))
    assert set(documented) == {name.upper() for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        if name not in PER_USER:
            assert documented[name.upper()] == str(field.default), name
    # computed per user: documented as the rule (tests/stream/dev/test_services_state_dir.py tests it)
    assert documented["STATE_DIR"] == "$XDG_STATE_HOME/riverstream"
    assert "`~/.local/state/riverstream`" in README


def test_the_two_commands_and_the_cli_examples_exist() -> None:
    assert "riverstream demo" in README and "python -m pytest" in README
    registered: set[str | None] = {
        c.name or cast(Callable[..., Any], c.callback).__name__ for c in app.registered_commands
    }
    registered |= {g.name for g in app.registered_groups}
    used = set(re.findall(r"^riverstream ([a-z][a-z-]*)", README, re.M))
    assert used and used <= registered, used - registered


def test_ci_runs_the_readmes_test_command() -> None:
    """CI's last step is the command the README gives under "Test it", word for word."""
    [command] = re.findall(r"&& (python -m pytest[^#\n]*?)\s*#", README)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == command

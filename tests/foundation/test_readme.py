"""The README is the front door: its configuration table and commands must stay true."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.settings import Settings
from stream.cli.main import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    documented = dict(re.findall(r"^\| `RIVERSTREAM_([A-Z0-9_]+)` \| `([^`]*)` \|", README, re.M))
    assert set(documented) == {name.upper() for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        if name != "cache_dir":
            assert documented[name.upper()] == str(field.default), name


def test_the_two_commands_and_the_cli_examples_exist() -> None:
    assert "riverstream demo" in README and "python -m pytest" in README
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    registered |= {g.name for g in app.registered_groups}
    used = set(re.findall(r"^riverstream ([a-z]+)", README, re.M))
    assert used and used <= registered, used - registered

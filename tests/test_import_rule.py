"""The rooms' import rule, checked on the source of every module (static, by `ast`):

    schemas ← learners ← stream.{kafka, store, checkpoint, learner, registry} ← serving

- `schemas` imports no other room; `learners` imports only `schemas`;
- the runtime rooms of `stream` import `schemas`, `learners` and each other, never `serving`,
  `observability`, `stream.dev` or `stream.cli`;
- `serving` uses only `stream.store` of `stream`;
- `console` (the operator's page, `riverstream console`) uses `stream.store` and
  `stream.registry` of `stream`;
- only `stream.cli` imports `stream.dev`, `serving`, `observability` and `console`; nothing
  imports `stream.cli`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("schemas", "learners", "stream", "serving", "observability", "console")
RUNTIME = (
    "stream.kafka", "stream.store", "stream.checkpoint", "stream.learner", "stream.registry",
    "stream.predict",
)  # fmt: skip


def room_of(module: str) -> str:
    """``stream.store.keys`` → ``stream.store``; ``serving.app`` → ``serving``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "stream" and len(parts) > 1 else parts[0]


def allowed(importer: str, imported: str) -> bool:
    """Whether a module of room ``importer`` may import a module of room ``imported``."""
    if imported == importer or imported.split(".")[0] not in ROOMS:
        return True
    if importer == "stream.__main__":  # `python -m stream`: the entry point runs the CLI
        return imported == "stream.cli"
    if imported == "stream.cli":
        return False
    if importer == "schemas":
        return False
    if importer == "learners":
        return imported == "schemas"
    if importer in RUNTIME:
        return imported in ("schemas", "learners", *RUNTIME)
    if importer == "serving":  # reads the store; produces events it is given (the closed loop)
        return imported in ("schemas", "learners", "stream.store", "stream.kafka")
    if importer == "observability":
        return imported in ("schemas", "learners")
    if importer == "console":
        return imported in ("schemas", "learners", "stream.store", "stream.registry")
    if importer == "stream.cli":
        return True
    if importer == "stream.dev":
        return imported in ("schemas", "learners", *RUNTIME)
    return False


def imports_of(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``source``, relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base])
            found.append((node.lineno, base.strip(".")))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if base in ROOMS]
    return found


def violations(root: Path) -> list[str]:
    out = []
    for room in ROOMS:
        for path in sorted((root / room).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            package = module.rpartition(".")[0] if path.name != "__init__.py" else module
            importer = room_of(module)
            for line, imported in imports_of(path.read_text(), package):
                target = room_of(imported)
                if not allowed(importer, target):
                    out.append(
                        f"{path.relative_to(root)}:{line}: {importer} must not import {target}"
                    )
    return out


def test_every_module_follows_the_import_rule() -> None:
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    ("room", "line", "expected"),
    [
        (
            "serving/bad.py",
            "from stream.learner.loop import Learner",
            "serving must not import stream.learner",
        ),
        (
            "learners/bad.py",
            "import redis\nfrom stream.store.keys import RedisKeys",
            "learners must not import stream.store",
        ),
        (
            "stream/store/bad.py",
            "from serving.app import create_app",
            "stream.store must not import serving",
        ),
        (
            "stream/learner/bad.py",
            "from stream.dev.services import resolve",
            "stream.learner must not import stream.dev",
        ),
        (
            "stream/dev/bad.py",
            "from stream.cli.main import app",
            "stream.dev must not import stream.cli",
        ),
        (
            "schemas/bad.py",
            "from learners.core import LearningCore",
            "schemas must not import learners",
        ),
        (
            "console/bad.py",
            "from stream.learner.loop import Learner",
            "console must not import stream.learner",
        ),
        (
            "serving/bad.py",
            "from console.app import create_console",
            "serving must not import console",
        ),
    ],
)
def test_a_wrong_import_is_reported(tmp_path: Path, room: str, line: str, expected: str) -> None:
    """The rule catches each kind of wrong import (the test fails on a wrong import)."""
    for name in ROOMS:
        (tmp_path / name).mkdir()
    target = tmp_path / room
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(line + "\n")
    assert any(expected in v for v in violations(tmp_path))

"""Operator commands stay quick: the CLI and the registry's path import neither River nor SciPy.

River (and SciPy through it) takes ≈ 1–2.5 s to import, more than everything else the operator
commands do; `bench/cli_startup.py` measures the whole processes. These tests do not time
anything: each runs a fresh interpreter and looks at ``sys.modules``, which is what a regression
(one module-level ``import river`` anywhere on the path) changes, whatever the machine's load.
The snapshot commands are run against the real Redis in tests/stream/cli/test_snapshots.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("river", "scipy")

# Run in a fresh interpreter: ``argv`` for `stream.cli.main.main` (none: import only), then the
# heavy modules that were imported, as JSON on the last line of stdout.
PROBE = """
import json, sys
modules = json.loads(sys.argv[1])
argv = json.loads(sys.argv[2])
heavy = json.loads(sys.argv[3])
import importlib
for module in modules:
    importlib.import_module(module)
code = None
if argv is not None:
    from stream.cli.main import main
    sys.argv = ["riverstream", *argv]
    try:
        main()
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in heavy if m in sys.modules]}))
"""


def heavy_imports(
    modules: list[str], argv: list[str] | None = None, env: dict[str, str] | None = None
) -> dict[str, object]:
    """Exit code of the CLI run with ``argv`` (if any) and the heavy modules it imported."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules), json.dumps(argv), json.dumps(HEAVY)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def modules_of(*packages: str) -> list[str]:
    """Every module of ``packages`` (``stream/store`` → ``stream.store.keys``, ...)."""
    found = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue  # running it is not importing it
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_the_probe_sees_a_heavy_import() -> None:
    """The check can fail: importing the learner's wiring does import River."""
    assert heavy_imports(["stream.learner.runtime"])["heavy"] == list(HEAVY)


def test_cli_help_imports_no_river() -> None:
    assert heavy_imports(["stream.cli.main"], ["--help"]) == {"code": 0, "heavy": []}


@pytest.mark.parametrize("package", ["schemas", "stream/store", "stream/registry", "stream/cli"])
def test_registry_path_imports_no_river(package: str) -> None:
    modules = modules_of(package)
    assert modules
    assert heavy_imports(modules)["heavy"] == [], package

"""The tests mirror the code, so that the tests of any module are found in one guess.

A test of ``stream/learner/loop.py`` lives in ``tests/stream/learner/test_loop.py``, or in
``test_loop_<aspect>.py`` when one module has several (``test_loop_crash.py``). Repo-wide rules
(the import rule, purity, doctests, this file) sit at the top of ``tests/``; the README, Compose
file and Dockerfile in ``tests/project``; helpers in ``tests/support``, which holds no tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
NOT_MIRRORED = {"project", "support"}


def misplaced(tests: Path, root: Path) -> list[str]:
    """Test files under ``tests`` that name no module of the package their folder mirrors."""
    wrong = []
    for path in sorted(tests.rglob("test_*.py")):
        folder = path.parent.relative_to(tests)
        if folder == Path(".") or folder.parts[0] in NOT_MIRRORED:
            if folder.parts and folder.parts[0] == "support":
                wrong.append(f"{path.relative_to(root)}: tests/support holds helpers, no tests")
            continue
        package = root / folder
        if not (package / "__init__.py").is_file():
            wrong.append(f"{path.relative_to(root)}: {folder} is not a package of the code")
            continue
        stem = path.stem.removeprefix("test_")
        modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
        if not any(stem == m or stem.startswith(m + "_") for m in modules):
            wrong.append(f"{path.relative_to(root)}: no module {folder}/{stem.split('_')[0]}…py")
    return wrong


def test_every_test_file_names_the_module_it_tests() -> None:
    assert misplaced(TESTS, ROOT) == []


@pytest.mark.parametrize(
    ("test_file", "reason"),
    [
        ("tests/stream/learner/test_nothing.py", "no module"),
        ("tests/stream/nowhere/test_loop.py", "not a package"),
        ("tests/support/test_helpers.py", "holds helpers"),
    ],
)
def test_a_misplaced_test_is_reported(tmp_path: Path, test_file: str, reason: str) -> None:
    for package in ("stream", "stream/learner"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    (tmp_path / "stream/learner/loop.py").touch()
    (tmp_path / "tests/stream/learner").mkdir(parents=True)
    (tmp_path / "tests/stream/learner/test_loop_crash.py").touch()
    assert misplaced(tmp_path / "tests", tmp_path) == []
    (tmp_path / test_file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / test_file).touch()
    [problem] = misplaced(tmp_path / "tests", tmp_path)
    assert problem.startswith(test_file) and reason in problem
